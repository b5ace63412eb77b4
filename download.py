"""Download Qwen2.5 (or Qwen3 dense) weights and the GSM8K data (or a math set) into the repository.

    python download.py                          # Qwen2.5-3B-Instruct + GSM8K
    python download.py --dataset gsm8k_zh       # Chinese GSM8K instead
    python download.py --skip-model             # data only
    python download.py --model Qwen/Qwen2.5-0.5B-Instruct
    python download.py --model Qwen/Qwen3-1.7B  # any Qwen3 dense repo: the same files
    python download.py --skip-model --dataset math500     # MATH-500 (also amc23, aime24, olympiadbench, math_train)

Layout (under --dest, default: the repository root):

    checkpoints/Qwen2.5-3B-Instruct/   config.json, tokenizer files, *.safetensors
    datasets/gsm8k/train.jsonl         7473 problems  (openai/grade-school-math, MIT)
    datasets/gsm8k/test.jsonl          1319 problems
    datasets/gsm8k_zh/{train,test}.jsonl   meta-math/GSM8K_zh, same JSONL format
    datasets/math500/test.jsonl        500 MATH problems (HuggingFaceH4/MATH-500), LaTeX answers
    datasets/amc23/test.jsonl          40 AMC 2023 problems (AI-MO/aimo-validation-amc, the 2023 rows)
    datasets/aime24/test.jsonl         30 AIME 2024 problems (HuggingFaceH4/aime_2024)
    datasets/olympiadbench/test.jsonl  675 OlympiadBench problems (Hothan/OlympiadBench, OE_TO_maths_en_COMP)
    datasets/math_train/train.jsonl    MATH's 7500 training problems (DigitalLearningGmbH/MATH-lighteval)

Where each piece comes from:
  * model: huggingface_hub.snapshot_download, only config, tokenizer and
    safetensors files (no PyTorch .bin duplicates, no ONNX).
  * GSM8K: the original JSONL from the openai/grade-school-math GitHub repo,
    fetched with urllib. (The Hub copy `openai/gsm8k` is parquet, which needs
    pyarrow; this project avoids that dependency.)
  * the math sets (MATH_SETS): one file of a Hub dataset each, rewritten as JSONL rows
    {"question", "answer" (the final answer as written, e.g. "\\frac{1}{2}"), "id", and "subject" /
    "level" where the set has them}: what data/gsm8k.py's load_problems reads and scripts/eval.py
    scores with the math checker (data/math_answer.py). MATH-500's copy is JSONL; the others are
    parquet only, read with pyarrow (pip install pyarrow, the `parquet` extra; without it one line says
    so). --source FILE reads a copy you fetched by hand (JSONL, JSON or parquet) instead.
  * GSM8K_zh: `GSM8K_zh.json` from the Hub dataset meta-math/GSM8K_zh (one JSON
    list of rows with question/answer, question_zh/answer_zh and split),
    rewritten into GSM8K's question/answer-with-#### JSONL. The gold number is
    always taken from the English answer, which the translation cannot garble.

Re-runnable: complete files are skipped without touching the network, and
files are written atomically (temp file + os.replace), so an interrupted run
never leaves a half-written file behind. Without network the script prints
one line per missing piece (model, data) saying where to put its files by
hand, and exits 1; --verbose adds the library's own error message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download

from data.gsm8k import parse_line, split_solution
from data.math_sets import MATH_SETS

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = "Qwen/Qwen2.5-3B-Instruct"
CHECKPOINTS_DIR = REPO_ROOT / "checkpoints"
DATASETS_DIR = REPO_ROOT / "datasets"
DEFAULT_DATA_DIR = DATASETS_DIR / "gsm8k"  # holds train.jsonl and test.jsonl
DATASETS = ("gsm8k", "gsm8k_zh", "math500", "amc23", "aime24", "olympiadbench", "math_train")

# Everything the from-scratch model and tokenizer need, nothing else.
MODEL_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "*.safetensors",
    "model.safetensors.index.json",
]
GSM8K_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{split}.jsonl"
GSM8K_ZH_REPO = "meta-math/GSM8K_zh"
GSM8K_ZH_FILE = "GSM8K_zh.json"
EXPECTED_ROWS = {"train": 7473, "test": 1319}


class DownloadError(Exception):
    """A download finished but its content is not what we expected."""


def default_model_dir(model: str = DEFAULT_MODEL, root: Path = REPO_ROOT) -> Path:
    """checkpoints/<model name without the organisation>, e.g. checkpoints/Qwen2.5-3B-Instruct."""
    return Path(root) / "checkpoints" / model.rstrip("/").rsplit("/", 1)[-1]


def data_dir(dataset: str = "gsm8k", root: Path = REPO_ROOT) -> Path:
    """datasets/<dataset>, the folder holding train.jsonl and test.jsonl."""
    return Path(root) / "datasets" / dataset


# ---------------------------------------------------------------- small helpers


def fetch_url(url: str, timeout: float = 60.0) -> bytes:
    """GET a URL with the standard library (the one network call for GSM8K)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)  # atomic on one filesystem: readers see old or new, never half
    except BaseException:
        os.unlink(tmp)
        raise


def count_rows(path: Path) -> int:
    """Number of non-blank lines in a text file."""
    with path.open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def rows_complete(path: Path, expected: int | None) -> bool:
    """True when `path` exists (and, if `expected` is given, has that many rows)."""
    return path.is_file() and (expected is None or count_rows(path) == expected)


def model_complete(model_dir: Path) -> bool:
    """True when config, tokenizer and every weight shard are on disk."""
    if not (model_dir / "config.json").is_file() or not (model_dir / "tokenizer.json").is_file():
        return False
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():  # sharded checkpoint: every shard named in the index must exist
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        return all((model_dir / shard).is_file() for shard in shards)
    return any(model_dir.glob("*.safetensors"))


def _one_line(err: BaseException) -> str:
    """'Type: message' squeezed onto one short line."""
    text = " ".join(str(err).split()) or "no details"
    return f"{type(err).__name__}: {text if len(text) <= 160 else text[:160] + '...'}"


# ---------------------------------------------------------------- model


def download_model(model: str, model_dir: Path) -> None:
    """Fetch config, tokenizer and safetensors weights of `model` into `model_dir`."""
    if model_complete(model_dir):
        print(f"model: {model_dir} already complete, skipping")
        return
    print(f"model: downloading {model} into {model_dir} (several GB for 3B) ...")
    snapshot_download(repo_id=model, local_dir=model_dir, allow_patterns=MODEL_FILES)
    if not model_complete(model_dir):
        raise DownloadError(
            f"{model} downloaded but {model_dir} lacks config.json, tokenizer.json or safetensors weights: "
            "check the model name on huggingface.co"
        )


# ---------------------------------------------------------------- GSM8K


def download_gsm8k(out_dir: Path) -> None:
    """Fetch train.jsonl/test.jsonl, check row counts and every row, write atomically."""
    for split, expected in EXPECTED_ROWS.items():
        path = out_dir / f"{split}.jsonl"
        if rows_complete(path, expected):
            print(f"gsm8k: {path} already complete, skipping")
            continue
        url = GSM8K_URL.format(split=split)
        print(f"gsm8k: downloading {url}")
        lines = [line for line in fetch_url(url).decode("utf-8").splitlines() if line.strip()]
        if len(lines) != expected:
            raise DownloadError(f"{url} has {len(lines)} rows, expected {expected}: the download was cut short, re-run")
        for number, line in enumerate(lines, start=1):
            parse_line(line, where=f"{url}:{number}")  # raises a one-line ValueError on a bad row
        write_atomic(path, "\n".join(lines) + "\n")


def normalise_gsm8k_zh(records: list[dict]) -> dict[str, list[dict]]:
    """Rewrite GSM8K_zh.json rows into {"train": [...], "test": [...]} GSM8K-format rows.

    A source row has the English `question`/`answer`, the Chinese
    `question_zh`/`answer_zh` (the test split may lack `answer_zh`) and
    `split`. The output row is {"question": Chinese question, "answer":
    Chinese reasoning (English if missing) + "\\n#### " + English gold number}.
    """
    out: dict[str, list[dict]] = {split: [] for split in EXPECTED_ROWS}
    for index, record in enumerate(records):
        where = f"{GSM8K_ZH_FILE} row {index}"
        if not isinstance(record, dict) or record.get("split") not in out:
            raise DownloadError(f"{where}: expected an object with split 'train' or 'test'; the file format changed")
        try:
            english_solution, gold = split_solution(str(record.get("answer", "")))
        except ValueError as err:
            raise DownloadError(f"{where}: English answer unusable ({err})") from None
        question = (record.get("question_zh") or record.get("question") or "").strip()
        if not question:
            raise DownloadError(f"{where}: no question_zh or question text")
        answer_zh = (record.get("answer_zh") or "").strip()
        # Keep only the Chinese reasoning; the number after #### comes from English.
        solution = answer_zh.rpartition("####")[0].strip() if "####" in answer_zh else answer_zh
        out[record["split"]].append({"question": question, "answer": f"{solution or english_solution}\n#### {gold}"})
    return out


def read_json_rows(path: Path) -> list[dict]:
    """Rows of a JSON list file (or, just in case, a JSONL file)."""
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not isinstance(rows, list):
        raise DownloadError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
    return rows


def download_gsm8k_zh(out_dir: Path, source_json: Path | None = None) -> None:
    """Fetch GSM8K_zh.json from the Hub (or read `source_json`) and write train/test JSONL."""
    paths = {split: out_dir / f"{split}.jsonl" for split in EXPECTED_ROWS}
    if source_json is None and all(rows_complete(p, None) for p in paths.values()):
        print(f"gsm8k_zh: {out_dir} already complete, skipping")
        return
    if source_json is None:
        print(f"gsm8k_zh: downloading {GSM8K_ZH_FILE} from the Hub dataset {GSM8K_ZH_REPO}")
        source_json = Path(hf_hub_download(repo_id=GSM8K_ZH_REPO, filename=GSM8K_ZH_FILE, repo_type="dataset"))
    for split, rows in normalise_gsm8k_zh(read_json_rows(source_json)).items():
        if not rows:
            raise DownloadError(f"{source_json} has no {split} rows: the file format changed")
        if len(rows) != EXPECTED_ROWS[split]:  # not fatal: the translation may have dropped rows
            print(f"gsm8k_zh: note: {split} has {len(rows)} rows (English GSM8K has {EXPECTED_ROWS[split]})")
        lines = [json.dumps(row, ensure_ascii=False) for row in rows]
        for number, line in enumerate(lines, start=1):
            parse_line(line, where=f"{split}.jsonl:{number}")
        write_atomic(paths[split], "\n".join(lines) + "\n")


# ---------------------------------------------------------------- math benchmarks and MATH's training set
# (which Hub file each set is, and how its rows become ours: data/math_sets.py)


def read_source_rows(path: Path, name: str) -> list[dict]:
    """The rows of a downloaded file: parquet (with pyarrow), JSONL or a JSON list."""
    if path.suffix == ".jsonl":
        try:
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise DownloadError(f"{path}: not JSONL ({err.msg}); pass the file from the Hub as it is") from None
    if path.suffix != ".parquet":
        return read_json_rows(path)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DownloadError(f"{path.name} of {MATH_SETS[name].repo} is parquet, which needs pyarrow: pip install "
                            "pyarrow (the parquet extra: pip install -e '.[parquet]'), then re-run") from None
    return pq.read_table(path).to_pylist()


def download_math_set(name: str, out_dir: Path, source: Path | None = None) -> None:
    """Fetch the set's Hub file (or read `source`), rewrite its rows, check each loads, write atomically."""
    spec = MATH_SETS[name]
    path = out_dir / f"{spec.split}.jsonl"
    if source is not None and not source.is_file():
        raise DownloadError(f"--source {source} not found: pass the file you downloaded from {spec.repo}")
    if source is None and rows_complete(path, None):
        print(f"{name}: {path} already complete, skipping")
        return
    if source is None:
        print(f"{name}: downloading {spec.filename} from the Hub dataset {spec.repo}")
        source = Path(hf_hub_download(repo_id=spec.repo, filename=spec.filename, repo_type="dataset"))
    rows = []
    for index, record in enumerate(read_source_rows(source, name)):
        try:
            row = spec.convert(record) if isinstance(record, dict) else None
        except KeyError as err:
            raise DownloadError(f"{source.name} row {index}: no field {err} ({spec.repo}'s format changed?)") from None
        if row is not None:
            rows.append({k: v for k, v in row.items() if v is not None})
    if not rows:
        raise DownloadError(f"{source} holds no {name} rows: the file format changed, or it is the wrong file")
    if len(rows) != spec.rows:
        print(f"{name}: note: {len(rows)} rows ({spec.repo} had {spec.rows} when this was written)")
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    for number, line in enumerate(lines, start=1):
        parse_line(line, f"{path.name}:{number}", gsm8k=False)  # every row loads: question and answer non-empty
    write_atomic(path, "\n".join(lines) + "\n")
    print(f"{name}: {len(rows)} rows -> {path}")


# ---------------------------------------------------------------- command line


def manual_steps(step: str, model: str, target: Path) -> str:
    """How to place the files of `step` by hand when there is no network."""
    if step == "model":
        return (f"download {', '.join(MODEL_FILES)} from https://huggingface.co/{model} into {target}/ "
                "by hand, or re-run with --skip-model; to try the whole pipeline with no download and no GPU: "
                "python scripts/tiny_recipe.py")
    if step == "gsm8k":
        return (f"put train.jsonl and test.jsonl from https://github.com/openai/grade-school-math "
                f"(grade_school_math/data/) into {target}/ by hand")
    if step in MATH_SETS:
        spec = MATH_SETS[step]
        return (f"download {spec.filename} from https://huggingface.co/datasets/{spec.repo} by hand and run "
                f"python download.py --skip-model --dataset {step} --source PATH (writes {target}/)")
    return (f"download {GSM8K_ZH_FILE} from https://huggingface.co/datasets/{GSM8K_ZH_REPO} by hand "
            f"and run python download.py --skip-model --dataset gsm8k_zh --zh-json PATH (writes {target}/)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download Qwen2.5 or Qwen3 (dense) weights and GSM8K or math data.")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"Hub model id (default {DEFAULT_MODEL})")
    parser.add_argument("--dataset", default="gsm8k", choices=DATASETS,
                        help="which data set to fetch: GSM8K (English, Chinese), or a math set (see above)")
    parser.add_argument("--dest", type=Path, default=REPO_ROOT,
                        help="root folder for checkpoints/ and datasets/ (default: the repository root)")
    parser.add_argument("--skip-model", action="store_true", help="do not download the model")
    parser.add_argument("--skip-data", action="store_true", help="do not download the dataset")
    parser.add_argument("--zh-json", type=Path, help=f"use a local {GSM8K_ZH_FILE} instead of fetching it")
    parser.add_argument("--source", type=Path, help="a math set: use this local copy of its Hub file instead")
    parser.add_argument("--verbose", action="store_true", help="on a failed download, also print the library's message")
    args = parser.parse_args(argv)

    steps = []
    if not args.skip_model:
        steps.append(("model", default_model_dir(args.model, args.dest)))
    if not args.skip_data:
        steps.append((args.dataset, data_dir(args.dataset, args.dest)))
    failed = 0
    for step, target in steps:
        try:
            if step == "model":
                download_model(args.model, target)
            elif step == "gsm8k":
                download_gsm8k(target)
            elif step in MATH_SETS:
                download_math_set(step, target, args.source)
            else:
                download_gsm8k_zh(target, args.zh_json)
        except (DownloadError, ValueError) as err:  # got an answer, but not the expected content
            print(f"error: {step}: {err}", file=sys.stderr)
            return 1
        except OSError as err:  # no network, DNS, timeout, HTTP errors (huggingface_hub's are OSErrors too)
            # Go on with the next step, so one offline run lists every file to place by hand.
            detail = f" ({_one_line(err)})" if args.verbose else ""
            print(f"error: {step} download failed (no network?){detail}; {manual_steps(step, args.model, target)}",
                  file=sys.stderr)
            failed += 1
    if failed:
        return 1
    if not args.skip_model and args.model != DEFAULT_MODEL:
        model_dir = default_model_dir(args.model, args.dest).resolve()
        shown = model_dir.relative_to(Path.cwd()) if model_dir.is_relative_to(Path.cwd()) else model_dir
        print(f"done; train it with: python train.py --set model.path={shown}")
    else:
        print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
