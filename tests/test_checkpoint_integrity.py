"""A checkpoint damaged in any way is skipped on resume, in one line, for the newest intact one; a
save the disk refuses stops the run in one line and leaves no partial checkpoint (docs/checkpoints.md).

One small run per layout (a model in one file, a model in shards, a LoRA adapter) saves steps 1 and
2; its reference is the same run resumed from a copy that holds step 1 only. Each case damages one
file of step 2 in a copy of the run (missing, truncated, or changed at the same size) and resumes:
step 2 must be skipped, saying why, and the resumed run must equal the reference, weights and logs.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
import grpo.machinery.checkpoint as checkpoint
from grpo.machinery import manifest
from grpo.machinery.checkpoint import checkpoint_problem, latest_checkpoint, list_checkpoints
from qwen2 import save_model
from tiny_run import metrics, without_times, write_config

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(rollout={"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
            grpo={"updates_per_batch": 1, "beta": 0.0})
TRAIN = {"steps": 2, "eval_every": 0, "save_every": 1, "keep_checkpoints": 2}
LAYOUTS = {"file": {}, "shards": {}, "lora": {"model": {"lora": {"rank": 2}}}}
SHARD_BYTES = 150_000  # the tiny model's 247 KB in 2 shards
COMMON = ["optimizer/.metadata", "optimizer/__0_0.distcp", "rng.pt", "trainer_state.json", "manifest.json"]
TOKENIZER = ["tokenizer.json", "tokenizer_config.json"]
FILES = {  # every file a checkpoint of each layout holds
    "file": ["model/config.json", "model/model.safetensors", *(f"model/{t}" for t in TOKENIZER), *COMMON],
    "shards": ["model/config.json", "model/model-00001-of-00002.safetensors", "model/model-00002-of-00002.safetensors",
               "model/model.safetensors.index.json", *(f"model/{t}" for t in TOKENIZER), *COMMON],
    "lora": ["adapter/adapter_config.json", "adapter/adapter_model.safetensors", *(f"adapter/{t}" for t in TOKENIZER),
             *COMMON],
}
# Each file once; the files every layout shares are damaged in the one-file layout's checkpoint only.
CASES = [(layout, file) for layout, files in FILES.items() for file in files
         if layout == "file" or file not in FILES["file"]]


def missing(file: Path) -> None:
    file.unlink()


def truncated(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])


def changed(file: Path) -> None:
    """Same size, 8 bytes in the middle inverted: a flipped block on disk, a bad copy."""
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(255 - b for b in data[middle:middle + 8])
    file.write_bytes(bytes(data))


@contextlib.contextmanager
def layout(name: str):
    """The shards layout: models saved in 150 KB shards (the trainer's own limit is 5 GB)."""
    with pytest.MonkeyPatch.context() as mp:
        if name == "shards":
            mp.setattr(checkpoint, "save_model", functools.partial(save_model, max_shard_size=SHARD_BYTES))
        yield


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    folder = ckpt / ("adapter" if (ckpt / "adapter").is_dir() else "model")
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def checkpoint_files(ckpt: Path) -> list[str]:
    return sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file())


@dataclass
class Built:
    run: Path  # steps 1 and 2 saved
    weights: dict  # the run resumed from step 1 alone (its step 2 redone): step 2's weights...
    metrics: list  # ... and its metrics.jsonl


def resume(run: Path, name: str, *args: str) -> int:
    with layout(name):
        return train.main(["--resume", str(run), "--set", "train.steps=2", *args])


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    """layout name -> Built, each run once per module (on first use)."""
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            tmp = tmp_path_factory.mktemp(name)
            config = write_config(tmp, tiny_model, **FAST, train=TRAIN, **LAYOUTS[name])
            with layout(name):
                assert train.main(["--config", str(config)]) == 0
            reference = tmp / "reference"
            shutil.copytree(tmp / "run", reference)
            shutil.rmtree(reference / "checkpoints" / "step_000002")
            assert resume(reference, name) == 0
            newest = reference / "checkpoints" / "step_000002"
            cache[name] = Built(tmp / "run", weights(newest), without_times(metrics(reference)))
        return cache[name]

    return get


@pytest.mark.parametrize("name", FILES)
def test_the_cases_cover_every_file_a_checkpoint_holds(built, name):
    run = built(name).run
    for ckpt in list_checkpoints(run):
        assert checkpoint_files(ckpt) == sorted(FILES[name]), ckpt
        assert checkpoint_problem(ckpt) is None


@pytest.mark.parametrize("damage", [missing, truncated, changed], ids=lambda d: d.__name__)
@pytest.mark.parametrize("name,file", CASES, ids=[f"{n}:{f}" for n, f in CASES])
def test_any_damaged_file_is_one_line_and_the_resume_equals_continuing_from_the_checkpoint_before(
        built, tmp_path, capsys, name, file, damage):
    ref = built(name)
    run = tmp_path / "run"
    shutil.copytree(ref.run, run)
    newest, before = run / "checkpoints" / "step_000002", run / "checkpoints" / "step_000001"
    damage(newest / file)
    capsys.readouterr()
    code = resume(run, name)
    out, err = (text.splitlines() for text in capsys.readouterr())
    assert code == 0, err[-3:]
    skipped = [line for line in err if line.startswith("skipping ")]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipping {newest}: ") and file in skipped[0], err
    assert f"resumed from {before} at step 1" in out, out
    assert not any(line.startswith("error") or "Traceback" in line for line in err), err
    assert same_weights(weights(newest), ref.weights)  # step 2 redone from step 1, not resumed from the damage
    assert without_times(metrics(run)) == ref.metrics


def test_a_changed_model_file_was_resumed_from_silently_before_the_manifest(built, tmp_path):
    """What the manifest adds: the headers of a model file changed inside are intact, so the checks of
    earlier versions (sizes and headers) take it; its checksum does not."""
    run = tmp_path / "run"
    shutil.copytree(built("file").run, run)
    newest = run / "checkpoints" / "step_000002"
    changed(newest / "model" / "model.safetensors")
    assert "model/model.safetensors is damaged" in checkpoint_problem(newest)
    (newest / "manifest.json").unlink()  # an earlier version's checkpoint: no manifest, and no mention of one
    state = json.loads((newest / "trainer_state.json").read_text())
    del state["manifest"]
    (newest / "trainer_state.json").write_text(json.dumps(state))
    assert checkpoint_problem(newest) is None and latest_checkpoint(run) == newest  # read as before


def test_sizes_mode_checks_sizes_headers_and_small_files_only(built, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(built("file").run, run)
    newest = run / "checkpoints" / "step_000002"
    monkeypatch.setattr(manifest, "CHUNK", 100_000)  # the model (247 KB) and optimizer (900 KB) count as large
    monkeypatch.setenv("GRPO_CHECKPOINT_VERIFY", "sizes")
    for name in ("model/model.safetensors", "optimizer/__0_0.distcp"):
        assert len(manifest.file_entries(newest, [newest / name], True)[name]["crc32"]) > 1  # several pieces
    manifest.write_manifest(newest, 2, manifest.file_entries(newest, [p for p in manifest.files_under(newest)
                                                                      if p.name != "manifest.json"], True))
    changed(newest / "model" / "model.safetensors")
    assert checkpoint_problem(newest) is None  # the trade: a same-size change inside a large file passes
    monkeypatch.setenv("GRPO_CHECKPOINT_VERIFY", "full")
    assert checkpoint_problem(newest) == ("model/model.safetensors is damaged: its bytes (from byte 100000) "
                                          "differ from the checksum in manifest.json")
    monkeypatch.setenv("GRPO_CHECKPOINT_VERIFY", "sizes")
    changed(newest / "rng.pt")  # small files are always hashed
    assert "rng.pt is damaged" in checkpoint_problem(newest)
    truncated(newest / "optimizer" / "__0_0.distcp")
    assert "truncated" in checkpoint_problem(newest)


# -- a save the disk refuses ----------------------------------------------------------------------

def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def torch_zip_writer_full(*args, **kwargs):  # what torch.save raises on a full disk (measured on a full tmpfs)
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


def dcp_stream_full(real):
    """DCP's writer threads on a full disk (DCP hands the error to every rank); reading still works."""
    def create_stream(self, path, mode):
        if "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(self, path, mode)
    return create_stream


def _patch(mp: pytest.MonkeyPatch, where: str) -> str:
    """Make one stage of the save fail; the reason its line gives."""
    import torch.distributed.checkpoint.filesystem as dcp_fs

    if where == "model ENOSPC":
        mp.setattr(checkpoint, "save_model", no_space)
        return "No space left on device (ENOSPC)"
    if where == "rng.pt torch.save":
        mp.setattr(checkpoint.torch, "save", torch_zip_writer_full)
        return "RuntimeError: [enforce fail"
    if where == "optimizer ENOSPC":
        mp.setattr(dcp_fs.FileSystem, "create_stream", dcp_stream_full(dcp_fs.FileSystem.create_stream))
        return "No space left on device (ENOSPC)"
    if where == "read-only rename":
        real = os.replace
        mp.setattr(checkpoint.os, "replace", lambda a, b: no_erofs(a, b, real))
        return "Read-only file system (EROFS)"
    real_mkdir = Path.mkdir  # a directory the run may not write: chmod does not stop root, this does
    mp.setattr(Path, "mkdir", lambda self, *a, **k: forbidden(self, real_mkdir, *a, **k))
    return "Permission denied (EACCES)"


def no_erofs(a, b, real):
    if "checkpoints" in str(b):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    return real(a, b)


def forbidden(path: Path, real, *args, **kwargs):
    if ".tmp-" in str(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return real(path, *args, **kwargs)


@pytest.mark.parametrize("where", ["model ENOSPC", "rng.pt torch.save", "optimizer ENOSPC", "read-only rename",
                                   "forbidden directory"])
def test_a_failed_save_stops_in_one_line_and_keeps_the_checkpoints_before(built, tmp_path, capsys, where):
    run = tmp_path / "run"
    shutil.copytree(built("file").run, run)
    root = run / "checkpoints"
    before = {c.name: checkpoint_files(c) for c in list_checkpoints(run)}
    size = manifest.checkpoint_bytes(root / "step_000002")
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        reason = _patch(mp, where)
        code = train.main(["--resume", str(run), "--set", "train.steps=3"])
    err = capsys.readouterr().err.splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and errors[0] == err[-1], err
    line = errors[0]
    assert line.startswith(f"error: cannot save the checkpoint of step 3 in {root}: {reason}"), line
    assert f"needs about {size / 1e6:.1f} MB (the size of step_000002)" in line and "is free there" in line, line
    assert f"continue with python train.py --resume {run}" in line, line
    assert sorted(p.name for p in root.iterdir()) == ["step_000001", "step_000002"]  # no .tmp-, no step_000003
    assert {c.name: checkpoint_files(c) for c in list_checkpoints(run)} == before
    assert all(checkpoint_problem(c) is None for c in list_checkpoints(run))
    assert train.main(["--resume", str(run), "--set", "train.steps=3"]) == 0  # with room again: on it goes
    assert latest_checkpoint(run).name == "step_000003"


def test_a_first_save_that_fails_estimates_from_the_model_and_optimizer(built, tmp_path, tiny_model, capsys,
                                                                       monkeypatch):
    config = write_config(tmp_path, tiny_model, **FAST, train={**TRAIN, "steps": 1})
    monkeypatch.setattr(checkpoint, "save_model", no_space)
    assert train.main(["--config", str(config)]) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    estimate = re.search(r"needs about ([\d.]+) MB \(model \+ optimizer state\)", line)
    real = manifest.checkpoint_bytes(latest_checkpoint(built("file").run)) / 1e6  # the files of such a checkpoint
    assert estimate and 0.8 * real <= float(estimate.group(1)) <= 1.2 * real, (line, real)
    assert "no checkpoint of this run exists yet" in line, line
    assert not list((tmp_path / "run" / "checkpoints").iterdir())


WORKER = """
import errno, os, sys
sys.path[:0] = [{root!r}, {tests!r}]
import train
from data import rewards
from tiny_run import odd_length
import grpo.machinery.checkpoint as checkpoint
from grpo.machinery.distributed import exit_process

rewards.REWARD_FUNCTIONS["odd_length"] = odd_length
rank, fail_rank, stage = int(os.environ["RANK"]), int(os.environ["FAIL_RANK"]), os.environ["FAIL_AT"]
calls = []

def failing(real, error):  # the second save fails on one rank only, at one stage
    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 and rank == fail_rank:
            raise OSError(error, os.strerror(error))
        return real(*args, **kwargs)
    return wrapper

if stage == "model":  # rank 0 writing the model, before any collective of DCP's
    checkpoint.save_model = failing(checkpoint.save_model, errno.ENOSPC)
else:  # a rank hashing its optimizer files, after DCP: only our agreement tells the others
    checkpoint.optimizer_files_of = failing(checkpoint.optimizer_files_of, errno.EIO)
exit_process(train.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fail_rank,stage,reason", [(1, "hash", "Input/output error (EIO)"),
                                                    (0, "model", "No space left on device (ENOSPC)")])
def test_under_torchrun_a_save_failing_on_one_rank_stops_every_rank(tmp_path, tiny_model, fail_rank, stage, reason):
    from test_distributed import torchrun_cmd

    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(root=str(ROOT), tests=str(ROOT / "tests")))
    config = write_config(tmp_path, tiny_model, **FAST, train=TRAIN)
    res = subprocess.run(torchrun_cmd(str(worker), "--config", str(config)), cwd=ROOT, capture_output=True, text=True,
                         timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1", "FAIL_RANK": str(fail_rank),
                                           "FAIL_AT": stage})
    assert res.returncode != 0  # every rank ended (no rank waits at a barrier: the timeout would say so)
    lines = [line for line in res.stderr.splitlines() if line.startswith("error: cannot save")]
    root = tmp_path / "run" / "checkpoints"
    assert lines and lines[0].startswith(f"error: cannot save the checkpoint of step 2 in {root}: {reason}"), res.stderr[-2000:]
    assert "torchrun --nproc_per_node=2 train.py --resume" in lines[0]
    assert sorted(p.name for p in root.iterdir()) == ["step_000001"]
    assert checkpoint_problem(root / "step_000001") is None
