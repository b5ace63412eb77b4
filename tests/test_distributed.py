"""Several processes (gloo on the CPU, started with torchrun): the 2-rank update equals the one-process
update of the same global batch, torchrun train.py writes one log and loadable checkpoints and
resumes exactly, and a rank that dies takes the run down promptly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from grpo.checkpoint import latest_checkpoint
from qwen2 import load_model
from tiny_run import metrics, without_times, write_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def torchrun_cmd(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
            *args]


def run(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_two_rank_update_equals_the_one_process_update(tmp_path, tiny_model):
    """mu = 2 and beta > 0 (write_config's defaults): both optimizer steps, the clipped gradient norm
    over all shards, the reference's log-probs; ranks run different numbers of micro-batches."""
    # A large Adam eps makes the update follow the gradient: with the default, Adam's first steps move
    # every weight by ~lr * sign(gradient), and rounding noise in a zero gradient (k_proj.bias: softmax
    # ignores a shift of all keys) would move a weight by lr either way.
    cfg = write_config(tmp_path, tiny_model, grpo={"micro_batch_tokens": 24}, optim={"eps": 1e-3})
    aggregations = "token_mean,seq_mean_token_mean"
    run([sys.executable, "tests/dist_worker.py", "update", str(cfg), str(tmp_path / "one.pt"), aggregations])
    run(torchrun_cmd("tests/dist_worker.py", "update", str(cfg), str(tmp_path / "two.pt"), aggregations))
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    before = load_model(tiny_model).state_dict()
    for aggregation in aggregations.split(","):
        assert one[aggregation].keys() == two[aggregation].keys()
        moved = False
        for name, want in one[aggregation].items():
            got = two[aggregation][name]
            assert (got - want).norm() <= 1e-5 * want.norm() + 1e-8, f"{aggregation}: {name}"
            moved |= not torch.equal(want, before[name])
        assert moved, "the update changed nothing"


def test_torchrun_trains_logs_once_and_resumes_exactly(tmp_path, tiny_model):
    common = dict(grpo={"micro_batch_tokens": 24},
                  train={"steps": 5, "eval_every": 2, "eval_size": 4, "save_every": 3, "keep_checkpoints": 3})
    # The real entry point: one metrics.jsonl, checkpoints that our loader and transformers read.
    plain = write_config(tmp_path, tiny_model, out="plain", reward={"weights": {"format": 0.1, "correctness": 1.0}},
                         **(common | {"train": common["train"] | {"steps": 3}}))
    run(torchrun_cmd("train.py", "--config", str(plain)))
    rows = metrics(tmp_path / "plain")
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3] and [r["step"] for r in rows if "eval_accuracy" in r] == [0, 2]
    # Summed over the ranks: the step's 2 groups (one per rank) and all 4 eval questions (two per rank).
    assert all(r["groups"] == 2 for r in rows if "reward" in r)
    assert all(r["eval_questions"] == 4 and r["eval_n"] == 4 for r in rows if "eval_accuracy" in r)
    ckpt = latest_checkpoint(tmp_path / "plain")
    assert ckpt.name == "step_000003" and {"optimizer_rank0.pt", "optimizer_rank1.pt"} <= {p.name for p in ckpt.iterdir()}
    import transformers

    ours, hf = load_model(ckpt / "model"), transformers.AutoModelForCausalLM.from_pretrained(ckpt / "model")
    ids = torch.randint(0, 300, (2, 7))
    with torch.no_grad():
        assert torch.allclose(ours(ids), hf(ids).logits, atol=1e-4)
    # With updates (a reward a random model varies on): 3 steps + resume to 5 == 5 steps.
    full, split = (write_config(tmp_path, tiny_model, out=out, **common) for out in ("full", "split"))
    run(torchrun_cmd("tests/dist_worker.py", "train", "--config", str(full)))
    run(torchrun_cmd("tests/dist_worker.py", "train", "--config", str(split), "--stop-after", "3"))
    run(torchrun_cmd("tests/dist_worker.py", "train", "--resume", str(tmp_path / "split")))
    a, b = without_times(metrics(tmp_path / "full")), without_times(metrics(tmp_path / "split"))
    assert [r["step"] for r in b if "reward" in r] == [1, 2, 3, 4, 5] and any(r.get("trained_episodes") for r in a)
    assert a == b
    # Another number of ranks is refused in one line.
    res = subprocess.run(torchrun_cmd("tests/dist_worker.py", "train", "--resume", str(tmp_path / "split"),
                                      "--set", "train.steps=6", nproc=1), cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=ENV)
    assert res.returncode != 0 and "was written by 2 process(es); resume it with the same number" in res.stderr


def test_a_rank_that_dies_stops_the_run(tmp_path, tiny_model):
    cfg = write_config(tmp_path, tiny_model, train={"steps": 1000, "eval_every": 0, "save_every": 2})
    pids = tmp_path / "run.pids"
    proc = subprocess.Popen(torchrun_cmd("tests/dist_worker.py", "train", str(pids), "--config", str(cfg)), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 3):
        time.sleep(0.1)
    assert (pids / "rank1").is_file(), "the run did not start"
    os.kill(int((pids / "rank1").read_text()), signal.SIGKILL)
    t0 = time.time()
    proc.communicate(timeout=90)
    assert proc.returncode != 0 and time.time() - t0 < 60
    ckpt = latest_checkpoint(tmp_path / "run")  # complete checkpoints only; a half-written one is skipped
    load_model(ckpt / "model")
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] >= 2


def test_ctrl_c_stops_every_rank_and_names_the_resume_command(tmp_path, tiny_model):
    """torchrun forwards SIGINT to every rank: they stop at once (no rank can finish a step alone),
    rank 0 says once how to continue, and the last periodic checkpoint loads."""
    cfg = write_config(tmp_path, tiny_model, train={"steps": 1000, "eval_every": 0, "save_every": 2})
    proc = subprocess.Popen(torchrun_cmd("tests/dist_worker.py", "train", "--config", str(cfg)), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    t0 = time.time()
    _, err = proc.communicate(timeout=90)
    assert proc.returncode != 0 and time.time() - t0 < 30
    assert err.count(f"continue with: torchrun --nproc_per_node=2 train.py --resume {tmp_path / 'run'}") == 1
    load_model(latest_checkpoint(tmp_path / "run") / "model")


def test_questions_that_do_not_split_evenly_are_one_line(tmp_path, tiny_model):
    cfg = write_config(tmp_path, tiny_model, rollout={"prompts_per_step": 3},
                       reward={"weights": {"format": 0.1, "correctness": 1.0}})
    res = subprocess.run(torchrun_cmd("train.py", "--config", str(cfg)), cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=ENV)
    assert res.returncode != 0
    message = "error: rollout.prompts_per_step=3 must be divisible by the 2 ranks"
    lines = res.stderr.splitlines()
    assert sum(line.startswith(message) for line in lines) == 1  # one rank says it, once
    # torchrun's report lists one failure (the others ended quietly) and repeats the cause last.
    assert "<NO_OTHER_FAILURES>" in res.stderr and message in [line for line in lines if line.strip()][-2]
