"""Several processes (gloo on the CPU, started with torchrun): the 2-rank update equals the one-process
update of the same global batch, torchrun train.py writes one log and loadable checkpoints and
resumes exactly, and a rank that dies takes the run down promptly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grpo.machinery.checkpoint import latest_checkpoint
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


def run(cmd: list[str], timeout: int = 240, **env: str) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV | env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def one_process(*args: str) -> list[str]:
    return [sys.executable, "tests/dist_worker.py", *args]


def episodes(dump: Path) -> dict[tuple[int, int, int], list[int]]:
    """{(step, question of the step, sample): completion tokens} from every rank's EPISODES file."""
    out = {}
    for part in dump.parent.glob(dump.name + ".rank*"):
        for line in part.read_text().splitlines():
            step, q, j, tokens = json.loads(line)
            out[step, q, j] = tokens
    return out


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    folder = ckpt / ("adapter" if (ckpt / "adapter").is_dir() else "model")
    return load_file(next(folder.glob("*.safetensors")))


def assert_close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for name in a:
        assert (a[name] - b[name]).norm() <= 1e-5 * b[name].norm() + 1e-8, f"{what}: {name}"


# Every batch-wide feature at once: dynamic sampling (spread counted and groups chosen over both
# ranks), the batch reward std, the top-entropy quantile over the step's tokens; and 3 questions a
# step, so the ranks' shares differ (2 and 1).
FEATURES = dict(rollout={"dynamic_sampling": True, "max_extra_rounds": 2, "prompts_per_step": 3, "group_size": 3},
                grpo={"micro_batch_tokens": 24, "scale_rewards": "batch", "top_entropy_quantile": 0.5},
                optim={"eps": 1e-3})


def test_one_process_and_two_ranks_sample_the_same_episodes_train_alike_and_resume_on_either(tmp_path, tiny_model):
    """The same seed on 1 and on 2 ranks: the same episodes at every step, the same weights after 2
    steps (1e-5); and a run stopped at step 2 on 2 ranks resumed on 1, or stopped on 1 and resumed
    on 2, reaches the weights of 3 uninterrupted steps of one process."""
    train_section = {"steps": 3, "eval_every": 0, "save_every": 1, "keep_checkpoints": 3, "seed": 2}  # extra rounds at every step
    one = write_config(tmp_path, tiny_model, out="one", **FEATURES, train=train_section)
    two = write_config(tmp_path, tiny_model, out="two", **FEATURES, train=train_section)
    run(one_process("train", "--config", str(one)), EPISODES=str(tmp_path / "one.episodes"))
    run(torchrun_cmd("tests/dist_worker.py", "train", "--config", str(two), "--stop-after", "2"),
        EPISODES=str(tmp_path / "two.episodes"))
    a, b = episodes(tmp_path / "one.episodes"), episodes(tmp_path / "two.episodes")
    assert {k: v for k, v in a.items() if k[0] <= 2} == b and len(b) >= 2 * 3 * 3  # 2 steps x 3+ questions x 3
    rows = metrics(tmp_path / "one")
    assert sum(r.get("sampling_rounds", 1) > 1 for r in rows if r["step"] <= 2) == 2, "dynamic sampling took no second round"
    ckpts = tmp_path / "one" / "checkpoints"
    assert_close(weights(latest_checkpoint(tmp_path / "two")), weights(ckpts / "step_000002"), "2 ranks, step 2")
    # 2 -> 1: the 2-rank run continues as one process.
    run(one_process("train", "--resume", str(tmp_path / "two")))
    assert_close(weights(latest_checkpoint(tmp_path / "two")), weights(ckpts / "step_000003"), "2 -> 1, step 3")
    # 1 -> 2: the one-process run, stopped at step 2, continues on 2 ranks.
    shutil.copytree(tmp_path / "one", tmp_path / "one-then-two")
    shutil.rmtree(tmp_path / "one-then-two" / "checkpoints" / "step_000003")
    run(torchrun_cmd("tests/dist_worker.py", "train", "--resume", str(tmp_path / "one-then-two"),
                     "--set", f"train.out_dir={tmp_path / 'one-then-two'}"))
    assert_close(weights(latest_checkpoint(tmp_path / "one-then-two")), weights(ckpts / "step_000003"), "1 -> 2, step 3")


ALONE = {"dynamic_sampling": {"rollout": FEATURES["rollout"]},
         "batch_reward_std": {"grpo": {"scale_rewards": "batch"}},
         "top_entropy_tokens": {"grpo": {"top_entropy_quantile": 0.5}}}


@pytest.mark.parametrize("feature", list(ALONE))
def test_each_batch_wide_feature_alone_trains_on_two_ranks_what_one_process_trains(tmp_path, tiny_model, feature):
    """Each statistic over the whole step on its own: the same episodes and, after 2 steps, the same
    weights (1e-5) on 1 process and on 2 ranks (3 questions a step: shares of 2 and 1)."""
    sections = {"rollout": {"prompts_per_step": 3, "group_size": 3}, "optim": {"eps": 1e-3},
                "grpo": {"micro_batch_tokens": 24}, "train": {"steps": 2, "eval_every": 0, "save_every": 2, "seed": 2}}
    for section, values in ALONE[feature].items():
        sections[section] = sections[section] | values
    one = write_config(tmp_path, tiny_model, out="one", **sections)
    two = write_config(tmp_path, tiny_model, out="two", **sections)
    run(one_process("train", "--config", str(one)), EPISODES=str(tmp_path / "one.episodes"))
    run(torchrun_cmd("tests/dist_worker.py", "train", "--config", str(two)), EPISODES=str(tmp_path / "two.episodes"))
    assert episodes(tmp_path / "one.episodes") == episodes(tmp_path / "two.episodes")
    if feature == "dynamic_sampling":
        assert any(r.get("sampling_rounds", 1) > 1 for r in metrics(tmp_path / "two")), "no second round"
    assert all(r["trained_episodes"] > 0 for r in metrics(tmp_path / "two") if "reward" in r)
    assert_close(weights(latest_checkpoint(tmp_path / "two")), weights(latest_checkpoint(tmp_path / "one")), feature)


def test_lora_on_two_ranks_trains_the_adapters_one_process_does(tmp_path, tiny_model):
    lora = dict(model={"lora": {"rank": 4, "alpha": 8.0}}, optim={"lr": 1e-2, "eps": 1e-3},
                grpo={"micro_batch_tokens": 24}, train={"steps": 2, "eval_every": 0, "save_every": 2})
    one = write_config(tmp_path, tiny_model, out="one", **lora)
    two = write_config(tmp_path, tiny_model, out="two", **lora)
    run(one_process("train", "--config", str(one)), EPISODES=str(tmp_path / "one.episodes"))
    run(torchrun_cmd("tests/dist_worker.py", "train", "--config", str(two)), EPISODES=str(tmp_path / "two.episodes"))
    assert episodes(tmp_path / "one.episodes") == episodes(tmp_path / "two.episodes")
    a, b = latest_checkpoint(tmp_path / "one"), latest_checkpoint(tmp_path / "two")
    assert (b / "adapter" / "adapter_config.json").is_file() and not (b / "model").exists()  # written once, by rank 0
    assert_close(weights(b), weights(a), "LoRA adapters after 2 steps")
    assert any(t.abs().sum() > 0 for name, t in weights(b).items() if "lora_B" in name)  # B moved off zero


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
    assert ckpt.name == "step_000003"  # the optimizer as a distributed checkpoint: one file per rank
    assert {p.name for p in (ckpt / "optimizer").iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp"}
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
    # A checkpoint of an earlier version (per-rank optimizer files) still resumes on the same number of ranks.
    step3 = tmp_path / "split" / "checkpoints" / "step_000003"
    shutil.rmtree(tmp_path / "split" / "checkpoints" / "step_000005")
    run(torchrun_cmd("tests/dist_worker.py", "downgrade", str(step3)))
    assert {"optimizer_rank0.pt", "optimizer_rank1.pt", "rng_rank1.pt"} <= {p.name for p in step3.iterdir()}
    assert not (step3 / "optimizer").exists()
    run(torchrun_cmd("tests/dist_worker.py", "train", "--resume", str(tmp_path / "split")))
    assert without_times(metrics(tmp_path / "split")) == a


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
    """torchrun forwards SIGINT to every rank: they agree to finish or abandon the step together,
    save the last completed step (not only the last periodic one), rank 0 says once how to continue."""
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
    ckpt = latest_checkpoint(tmp_path / "run")
    load_model(ckpt / "model")
    logged = max(json.loads(line)["step"] for line in log.read_text().splitlines())
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == logged


def test_a_setup_error_is_one_line_and_torchrun_reports_one_failure(tmp_path, tiny_model):
    cfg = write_config(tmp_path, tiny_model, rollout={"prompts_per_step": 1},
                       reward={"weights": {"format": 0.1, "correctness": 1.0}})
    res = subprocess.run(torchrun_cmd("train.py", "--config", str(cfg)), cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=ENV)
    assert res.returncode != 0
    message = "error: rollout.prompts_per_step=1 is fewer than the 2 ranks"
    lines = res.stderr.splitlines()
    assert sum(line.startswith(message) for line in lines) == 1  # one rank says it, once
    # torchrun's report lists one failure (the others ended quietly) and repeats the cause last.
    assert "<NO_OTHER_FAILURES>" in res.stderr and message in [line for line in lines if line.strip()][-2]


def test_two_nodes_on_loopback_train_and_checkpoint(tmp_path, tiny_model):
    """Two torchrun launchers as two "nodes" of one process each, meeting at a c10d rendezvous on
    127.0.0.1: README's multi-node command, on one machine."""
    cfg = write_config(tmp_path, tiny_model, train={"steps": 2, "eval_every": 0, "save_every": 2},
                       grpo={"micro_batch_tokens": 24})
    endpoint = f"127.0.0.1:{free_port()}"
    launchers = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                                   "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}",
                                   "--rdzv_id=loopback", "tests/dist_worker.py", "train", "--config", str(cfg)],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
                 for rank in (0, 1)]
    outputs = [p.communicate(timeout=240) for p in launchers]
    for p, (_, err) in zip(launchers, outputs):
        assert p.returncode == 0, err[-3000:]
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows if "reward" in r] == [1, 2] and all(r["groups"] == 2 for r in rows if "reward" in r)
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt.name == "step_000002" and len(list((ckpt / "optimizer").glob("*.distcp"))) == 2
    load_model(ckpt / "model")
