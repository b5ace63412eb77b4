"""One training process per run directory (grpo/machinery/run_lock.py): a second one, fresh or
--resume, one process or torchrun, stops with one line naming the first; a lock left by a killed
process never blocks; a refused start leaves the directory as it was; one process never blocks itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train
from grpo.machinery.checkpoint import latest_checkpoint, list_checkpoints
from grpo.machinery.run_lock import LOCK_NAME, RunLock, holder, refuse_if_in_use
from qwen2.errors import InputError
from test_distributed import ENV, torchrun_cmd
from tiny_run import write_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no fcntl: no lock")

HOLD = ("import sys, time; from grpo.machinery.run_lock import RunLock; lock = RunLock(sys.argv[1]); "
        "print('held', flush=True); time.sleep(600)")


def holding(run: Path) -> subprocess.Popen:
    """Another process that holds `run`'s lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


def killed(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_lock_held_by_another_process_refuses_naming_it_and_dies_with_it(tmp_path):
    run = tmp_path / "run"
    proc = holding(run)
    try:
        with pytest.raises(InputError) as e:
            RunLock(run)
        line = str(e.value)
        assert "\n" not in line and f"in use by another training process (pid {proc.pid} since " in line
        assert f"kill {proc.pid}" in line and f"--resume {run}" in line and "train.out_dir=<new dir>" in line
        before = (run / LOCK_NAME).read_bytes()
        with pytest.raises(InputError, match=f"pid {proc.pid} since"):
            refuse_if_in_use(run)  # looks without taking it, writing nothing
        assert (run / LOCK_NAME).read_bytes() == before
    finally:
        killed(proc)
    assert holder(run)["pid"] == proc.pid  # kill -9 left its lock file behind ...
    refuse_if_in_use(run)
    lock = RunLock(run)  # ... which does not block
    assert lock.held and holder(run)["pid"] == os.getpid()
    refuse_if_in_use(run)  # this process's own lock
    lock.release()
    assert not (run / LOCK_NAME).exists() and run.is_dir()


@pytest.mark.parametrize("contents", ["", "not json", json.dumps({"pid": 1, "host": "elsewhere", "since": "then"})])
def test_a_stale_lock_file_never_blocks(tmp_path, contents):
    (tmp_path / LOCK_NAME).write_text(contents)  # pid 1 lives, but holds no flock on it
    lock = RunLock(tmp_path)
    assert holder(tmp_path)["pid"] == os.getpid()
    lock.release()
    lock.release()  # once only
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_refused_start_leaves_the_directory_as_it_found_it(tmp_path):
    def refuse(run_dir: Path) -> None:
        raise InputError("not here")

    with pytest.raises(InputError, match="not here"):
        RunLock(tmp_path / "new" / "run", check=refuse)
    assert not (tmp_path / "new").exists()  # the directories made for the lock are gone again
    refuse_if_in_use(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(InputError, match="not here"):
        RunLock(tmp_path / "old", check=refuse)
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["metrics.jsonl"]


def test_one_process_never_blocks_itself_and_the_last_holder_unlocks(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)  # e.g. a test's trainers, one after another
    first.release()
    assert (tmp_path / LOCK_NAME).exists() and second.held
    proc = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(600)", "lock.release()"), str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 1 and f"pid {os.getpid()}" in proc.stderr  # still held by this process
    second.release()
    assert not (tmp_path / LOCK_NAME).exists()
    killed(holding(tmp_path))  # free for another process now


def test_a_second_train_py_on_a_training_run_is_refused_and_a_killed_one_can_be_resumed(tmp_path, tiny_model, capsys):
    """The real thing: `python train.py` trains; a fresh start and a --resume into its directory
    (one process, and torchrun) stop with one line naming it; after `kill -9` the run resumes."""
    cfg = write_config(tmp_path, tiny_model, reward={"weights": {"format": 0.1, "correctness": 1.0}},
                       train={"steps": 1000, "eval_every": 0, "save_every": 1, "keep_checkpoints": 1000})
    # (keep_checkpoints: train.py reads the run's newest checkpoint before the trainer looks at the lock;
    # were the first run pruning it meanwhile, that read could fail first.)
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "train.py", "--config", str(cfg)], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not list_checkpoints(run):
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read()
        capsys.readouterr()
        for args in (["--resume", str(run)], ["--config", str(cfg)]):
            assert train.main(args) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"error: {run} is in use by another training process "
                                                       f"(pid {first.pid} since "), err
        res = subprocess.run(torchrun_cmd("train.py", "--resume", str(run)), cwd=ROOT, capture_output=True, text=True,
                             timeout=180, env=ENV)
        assert res.returncode != 0
        assert sum(line.startswith(f"error: {run} is in use by another training process (pid {first.pid}")
                   for line in res.stderr.splitlines()) == 1, res.stderr[-3000:]  # rank 0 says it, once
        assert first.poll() is None  # the first run never noticed
    finally:
        killed(first)
    assert holder(run)["pid"] == first.pid
    step = json.loads((latest_checkpoint(run) / "trainer_state.json").read_text())["step"]
    assert train.main(["--resume", str(run), "--stop-after", "1"]) == 0, capsys.readouterr().err[-2000:]
    assert json.loads((latest_checkpoint(run) / "trainer_state.json").read_text())["step"] == step + 1
    assert not (run / LOCK_NAME).exists()  # released when the run ended

