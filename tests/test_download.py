"""download.py without the network: offline errors, zh normalisation, re-runs, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

import download
from data.gsm8k import load_gsm8k, split_solution

FIXTURES = Path(__file__).parent / "fixtures" / "gsm8k"


def no_network(*args, **kwargs):
    raise AssertionError("the network was used")


@pytest.fixture
def offline(monkeypatch):
    """Every network entry point of download.py raises like a machine without internet."""

    def fail_url(url, timeout=60.0):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    def fail_hub(*args, **kwargs):
        raise OSError("An error happened while trying to locate the files on the Hub.\nCheck your connection.")

    monkeypatch.setattr(download, "fetch_url", fail_url)
    monkeypatch.setattr(download, "snapshot_download", fail_hub)
    monkeypatch.setattr(download, "hf_hub_download", fail_hub)


def fake_split(split: str, rows: int | None = None) -> bytes:
    """A GSM8K-format file with the expected number of (tiny, valid) rows."""
    rows = download.EXPECTED_ROWS[split] if rows is None else rows
    line = json.dumps({"question": f"{split} q?", "answer": "1 + 1 = 2\n#### 2"})
    return ("\n".join([line] * rows) + "\n").encode()


def place_complete_files(root: Path) -> None:
    for split in download.EXPECTED_ROWS:
        path = download.data_dir("gsm8k", root) / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fake_split(split))
    model_dir = download.default_model_dir(download.DEFAULT_MODEL, root)
    model_dir.mkdir(parents=True)
    for name in ["config.json", "tokenizer.json", "model.safetensors"]:
        (model_dir / name).write_text("{}")


# ---------------------------------------------------------------- offline


def test_offline_run_names_every_place_to_fill_in_one_line_each(tmp_path, offline, capsys):
    assert download.main(["--dest", str(tmp_path)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in "".join(lines)
    model, data = lines
    assert "model download failed (no network?)" in model
    assert str(download.default_model_dir(download.DEFAULT_MODEL, tmp_path)) in model
    assert "config.json" in model and "--skip-model" in model
    assert "gsm8k download failed" in data and str(tmp_path / "datasets" / "gsm8k") in data
    assert "Check your connection" not in model  # the library's message only with --verbose


def test_verbose_adds_the_library_message(tmp_path, offline, capsys):
    assert download.main(["--dest", str(tmp_path), "--skip-data", "--verbose"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "OSError: An error happened" in err and "Check your connection" in err


def test_another_model_names_the_train_flag(tmp_path, monkeypatch, capsys):
    place_complete_files(tmp_path)
    monkeypatch.setattr(download, "download_model", lambda model, target: None)
    assert download.main(["--dest", str(tmp_path), "--model", "Qwen/Qwen2.5-0.5B-Instruct"]) == 0
    model_dir = download.default_model_dir("Qwen/Qwen2.5-0.5B-Instruct", tmp_path)
    assert f"train it with: python train.py --set model.path={model_dir}" in capsys.readouterr().out


def test_offline_gsm8k_step_says_which_files_go_where(tmp_path, offline, capsys):
    assert download.main(["--dest", str(tmp_path), "--skip-model"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "gsm8k download failed" in err
    assert "train.jsonl and test.jsonl" in err and str(tmp_path / "datasets" / "gsm8k") in err
    assert not (tmp_path / "datasets" / "gsm8k" / "train.jsonl").exists()


def test_offline_gsm8k_zh_step_points_to_the_local_file_option(tmp_path, offline, capsys):
    assert download.main(["--dest", str(tmp_path), "--skip-model", "--dataset", "gsm8k_zh"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--zh-json" in err and download.GSM8K_ZH_REPO in err


def test_offline_real_process_exits_1_without_traceback(tmp_path):
    # An unreachable proxy makes urllib fail at once, as without internet.
    proxy = "http://127.0.0.1:9"
    env = {**os.environ, "https_proxy": proxy, "HTTPS_PROXY": proxy, "no_proxy": "", "NO_PROXY": ""}
    script = Path(download.__file__)
    result = subprocess.run(
        [sys.executable, str(script), "--skip-model", "--dest", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=60, cwd=script.parent,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "train.jsonl" in result.stderr


# ---------------------------------------------------------------- re-runs and integrity


def test_rerun_with_complete_files_makes_no_network_call(tmp_path, monkeypatch, capsys):
    place_complete_files(tmp_path)
    for name in ["fetch_url", "snapshot_download", "hf_hub_download"]:
        monkeypatch.setattr(download, name, no_network)
    assert download.main(["--dest", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("already complete") == 3  # model, train, test


def test_truncated_file_is_downloaded_again(tmp_path, monkeypatch):
    place_complete_files(tmp_path)
    train = download.data_dir("gsm8k", tmp_path) / "train.jsonl"
    train.write_bytes(fake_split("train", rows=100))
    fetched = []

    def fake_fetch(url, timeout=60.0):
        fetched.append(url)
        return fake_split("train")

    monkeypatch.setattr(download, "fetch_url", fake_fetch)
    assert download.main(["--dest", str(tmp_path), "--skip-model"]) == 0
    assert fetched == [download.GSM8K_URL.format(split="train")]
    assert len(load_gsm8k(train)) == download.EXPECTED_ROWS["train"]


def test_download_writes_checked_files_and_no_temp_files(tmp_path, monkeypatch):
    fake_fetch = lambda url, timeout=60.0: fake_split("train" if "train" in url else "test")  # noqa: E731
    monkeypatch.setattr(download, "fetch_url", fake_fetch)
    assert download.main(["--dest", str(tmp_path), "--skip-model"]) == 0
    out = download.data_dir("gsm8k", tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "train.jsonl"]
    for split, rows in download.EXPECTED_ROWS.items():
        assert len(load_gsm8k(out / f"{split}.jsonl")) == rows


def test_short_download_is_rejected_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download, "fetch_url", lambda url, timeout=60.0: fake_split("train", rows=5000))
    assert download.main(["--dest", str(tmp_path), "--skip-model"]) == 1
    err = capsys.readouterr().err
    assert f"expected {download.EXPECTED_ROWS['train']}" in err and "5000" in err
    assert not (download.data_dir("gsm8k", tmp_path) / "train.jsonl").exists()


def test_corrupt_row_in_download_names_the_line(tmp_path, monkeypatch, capsys):
    lines = fake_split("train").decode().splitlines()
    lines[41] = '{"question": "q", "answer": "no separator"}'
    monkeypatch.setattr(download, "fetch_url", lambda url, timeout=60.0: "\n".join(lines).encode())
    assert download.main(["--dest", str(tmp_path), "--skip-model"]) == 1
    assert "train.jsonl:42: answer has no '####'" in capsys.readouterr().err


def test_model_download_asks_only_for_config_tokenizer_and_safetensors(tmp_path, monkeypatch):
    calls = []

    def fake_snapshot(repo_id, local_dir, allow_patterns):
        calls.append((repo_id, allow_patterns))
        shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        for name in ["config.json", "tokenizer.json", *shards]:
            (Path(local_dir) / name).write_text("{}")
        index = {"weight_map": {"a": shards[0], "b": shards[1]}}
        (Path(local_dir) / "model.safetensors.index.json").write_text(json.dumps(index))

    monkeypatch.setattr(download, "snapshot_download", fake_snapshot)
    assert download.main(["--dest", str(tmp_path), "--skip-data", "--model", "Qwen/Qwen2.5-0.5B-Instruct"]) == 0
    (repo_id, patterns), = calls
    assert repo_id == "Qwen/Qwen2.5-0.5B-Instruct"
    assert {"config.json", "tokenizer.json", "*.safetensors", "model.safetensors.index.json"} <= set(patterns)
    assert not any(p.endswith((".bin", ".pt", ".onnx")) or p == "*" for p in patterns)
    model_dir = tmp_path / "checkpoints" / "Qwen2.5-0.5B-Instruct"
    assert download.model_complete(model_dir)
    (model_dir / "model-00002-of-00002.safetensors").unlink()  # a missing shard means incomplete
    assert not download.model_complete(model_dir)


def test_default_locations_are_outside_the_data_package():
    model_dir = download.default_model_dir()
    assert model_dir == download.REPO_ROOT / "checkpoints" / download.DEFAULT_MODEL.split("/")[-1]
    assert download.DEFAULT_DATA_DIR == download.REPO_ROOT / "datasets" / "gsm8k"
    assert download.data_dir("gsm8k_zh") == download.REPO_ROOT / "datasets" / "gsm8k_zh"
    package = download.REPO_ROOT / "data"
    assert package not in model_dir.parents and package not in download.DEFAULT_DATA_DIR.parents


# ---------------------------------------------------------------- Chinese GSM8K


def zh_sample() -> list[dict]:
    lines = (FIXTURES / "train_sample.jsonl").read_text(encoding="utf-8").splitlines()
    english = [json.loads(line) for line in lines[:3]]
    return [
        {  # the translated number after #### is garbled: the English gold must win
            **english[0], "split": "train",
            "question_zh": "娜塔莉亚四月卖了48个夹子，五月卖了一半。她一共卖了多少个？",
            "answer_zh": "五月卖了 48/2 = 24 个。\n一共 48+24 = 72 个。\n#### 七十二",
        },
        {**english[1], "split": "train", "question_zh": "翁照看孩子每小时12美元……", "answer_zh": ""},  # no zh answer
        {**english[2], "split": "test", "question_zh": "贝蒂在存钱买一个100美元的钱包……"},  # test: question only
    ]


def test_zh_rows_become_gsm8k_rows_with_the_english_gold():
    records = zh_sample()
    out = download.normalise_gsm8k_zh(records)
    assert [len(out["train"]), len(out["test"])] == [2, 1]
    for record, row in zip(records, out["train"] + out["test"]):
        assert row["question"] == record["question_zh"]
        solution, gold = split_solution(row["answer"])
        assert gold == split_solution(record["answer"])[1]
        zh_solution = record.get("answer_zh", "").rpartition("####")[0].strip()
        expected_solution = zh_solution or split_solution(record["answer"])[0]
        assert solution == expected_solution


def test_zh_from_a_local_json_writes_loadable_files_without_network(tmp_path, monkeypatch):
    for name in ["fetch_url", "snapshot_download", "hf_hub_download"]:
        monkeypatch.setattr(download, name, no_network)
    source = tmp_path / "GSM8K_zh.json"
    source.write_text(json.dumps(zh_sample(), ensure_ascii=False), encoding="utf-8")
    args = ["--dest", str(tmp_path), "--skip-model", "--dataset", "gsm8k_zh", "--zh-json", str(source)]
    assert download.main(args) == 0
    train = load_gsm8k(tmp_path / "datasets" / "gsm8k_zh" / "train.jsonl")
    assert [p.answer for p in train] == [split_solution(r["answer"])[1] for r in zh_sample()[:2]]
    assert "娜塔莉亚" in train[0].question
    # Complete now: a plain re-run (no --zh-json) skips without the network.
    assert download.main(args[:-2]) == 0


def test_zh_row_with_unknown_split_is_a_clear_error():
    with pytest.raises(download.DownloadError, match="row 0: expected an object with split"):
        download.normalise_gsm8k_zh([{"question": "q", "answer": "#### 1", "split": "dev"}])


# ---------------------------------------------------------------- math sets

MATH_FIXTURES = Path(__file__).parent / "fixtures" / "math_sets"


def fetch_math_set(tmp_path, monkeypatch, name: str) -> list:
    """`download.py --dataset NAME --source <fixture>` without the network, then the rows as loaded."""
    from data.gsm8k import load_problems
    for fn in ["fetch_url", "snapshot_download", "hf_hub_download"]:
        monkeypatch.setattr(download, fn, no_network)
    args = ["--dest", str(tmp_path), "--skip-model", "--dataset", name]
    assert download.main([*args, "--source", str(MATH_FIXTURES / f"{name}.jsonl")]) == 0
    out = download.data_dir(name, tmp_path) / f"{download.MATH_SETS[name].split}.jsonl"
    assert download.main(args) == 0  # complete now: a plain re-run skips, still without the network
    return load_problems(out)


def test_math500_rows_keep_answer_subject_level_and_id(tmp_path, monkeypatch):
    source = [json.loads(line) for line in (MATH_FIXTURES / "math500.jsonl").read_text().splitlines()]
    problems = fetch_math_set(tmp_path, monkeypatch, "math500")
    assert [p.answer for p in problems] == [r["answer"] for r in source]  # the final answer as written
    assert [p.question for p in problems] == [r["problem"] for r in source]
    assert problems[0].fields == {"id": source[0]["unique_id"], "subject": "Precalculus", "level": 2}


def test_amc23_keeps_the_2023_rows_and_writes_integer_answers(tmp_path, monkeypatch):
    problems = fetch_math_set(tmp_path, monkeypatch, "amc23")
    assert [p.answer for p in problems] == ["55", "9", "2"]  # 55.0 -> 55; the 2022 row is left out
    assert all("2023_AMC" in p.fields["url"] for p in problems)


def test_aime24_answers_stay_as_written(tmp_path, monkeypatch):
    problems = fetch_math_set(tmp_path, monkeypatch, "aime24")
    assert [p.answer for p in problems] == ["142", "024", "120"] and problems[0].fields["id"] == "aime24/60"


def test_olympiadbench_joins_answer_lists_and_prefixes_the_context(tmp_path, monkeypatch):
    problems = fetch_math_set(tmp_path, monkeypatch, "olympiadbench")
    assert [p.answer for p in problems] == ["9", "-2, 2", "6", "2"]  # "$...$" stripped, lists joined
    assert problems[2].question.startswith("Let $T = 5$.\n\n") and problems[1].fields["subject"] == "Algebra"


def test_math_train_answers_are_the_solutions_last_box(tmp_path, monkeypatch):
    problems = fetch_math_set(tmp_path, monkeypatch, "math_train")
    assert [p.answer for p in problems] == ["12", "\\frac{3}{4}", "\\frac72", "5\\sqrt{2}", "6"]  # no box: left out
    assert problems[0].fields == {"subject": "Prealgebra", "level": 1}


def test_a_math_set_is_fetched_from_its_hub_file(tmp_path, monkeypatch):
    calls = []

    def fake_hub(repo_id, filename, repo_type):
        calls.append((repo_id, filename, repo_type))
        return str(MATH_FIXTURES / "math500.jsonl")

    monkeypatch.setattr(download, "hf_hub_download", fake_hub)
    assert download.main(["--dest", str(tmp_path), "--skip-model", "--dataset", "math500"]) == 0
    assert calls == [("HuggingFaceH4/MATH-500", "test.jsonl", "dataset")]


def test_a_parquet_copy_without_pyarrow_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "train-00000-of-00001.parquet"
    fake.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError, installed or not
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setattr(download, "hf_hub_download", lambda **kw: str(fake))
    assert download.main(["--dest", str(tmp_path), "--skip-model", "--dataset", "aime24"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs pyarrow: pip install pyarrow" in err and "HuggingFaceH4/aime_2024" in err
    assert not (tmp_path / "datasets" / "aime24" / "test.jsonl").exists()


def test_a_math_set_offline_says_where_to_get_the_file(tmp_path, offline, capsys):
    assert download.main(["--dest", str(tmp_path), "--skip-model", "--dataset", "olympiadbench"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Hothan/OlympiadBench" in err and "--source PATH" in err


def test_a_math_set_with_rows_of_another_format_is_one_line(tmp_path, capsys):
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"question": "q", "answer": "1 #### 1"}) + "\n")
    args = ["--dest", str(tmp_path), "--skip-model", "--dataset", "math500", "--source", str(wrong)]
    assert download.main(args) == 1
    assert "row 0: no field 'problem'" in capsys.readouterr().err
    assert download.main([*args[:-1], str(tmp_path / "missing.jsonl")]) == 1
    assert "--source" in capsys.readouterr().err
