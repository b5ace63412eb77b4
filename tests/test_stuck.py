"""A run that says when it is stuck (grpo/stuck.py): each warning on constructed step metrics, the
rate limit, silence on a healthy run, the groups without spread counted from real episodes, and
end to end through train.py (a completion budget of 4 tokens warns about truncation; a resumed run
warns exactly as the uninterrupted one)."""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from data.rewards import Score
from grpo.config import Config, ConfigError, StuckConfig, load_config
from grpo.metrics import rollout_metrics
from grpo.rollout import Episode
from grpo.stuck import StuckDetector, same_reward_groups
from tiny_run import metrics, without_times, write_config

MAX_NEW_TOKENS = 512


def healthy(step: int, rng: random.Random) -> dict:
    """A step of a run that learns: few truncated, most groups with spread, entropy well above 0.05,
    the reward rising with noise."""
    return {"reward": 0.3 + 0.01 * step + rng.uniform(-0.05, 0.05), "truncated": rng.uniform(0, 0.2),
            "length": 200.0, "entropy": rng.uniform(0.2, 0.4), "groups": 16,
            "zero_spread_right": rng.randint(0, 3), "zero_spread_wrong": rng.randint(0, 3), "zero_spread_mixed": 0}


def run(detector: StuckDetector, rows: list[dict], first: int = 1) -> dict[int, list[str]]:
    """Feed the rows as steps first, first + 1, ...; step -> its warning lines (steps with any)."""
    out = {}
    for step, row in enumerate(rows, first):
        row = {k: v for k, v in row.items() if not k.startswith("stuck_")}  # the step's fresh metrics
        lines = detector.check(step, row)
        assert all(line.startswith("warning: ") for line in lines)
        assert {k for k in row if k.startswith("stuck_")} == {f"stuck_{c}" for c in causes(lines)}, "marked in the row"
        if lines:
            out[step] = lines
    return out


def causes(lines: list[str]) -> set[str]:
    keys = {"rollout.max_new_tokens": "truncated", "got one reward": "no_spread", "entropy": "entropy",
            "mean reward stayed": "flat_reward"}
    return {cause for line in lines for text, cause in keys.items() if text in line}


def detector(**cfg) -> StuckDetector:
    return StuckDetector(StuckConfig(**cfg), MAX_NEW_TOKENS)


def test_a_healthy_run_gets_no_warning():
    rng = random.Random(0)
    rows = [healthy(step, rng) for step in range(1, 101)]
    assert run(detector(), rows) == {}


def test_mostly_truncated_warns_once_a_window_and_names_the_budget():
    rng = random.Random(1)
    rows = [healthy(s, rng) for s in range(1, 4)] + [{**healthy(s, rng), "truncated": 0.9} for s in range(4, 12)]
    warned = run(detector(window=5), rows)
    first = min(warned)  # the first step whose window's mean passes 0.5, not one before

    assert sum(rows[i]["truncated"] for i in range(first - 5, first)) / 5 > 0.5
    assert sum(rows[i]["truncated"] for i in range(first - 6, first - 1)) / 5 <= 0.5
    (line,) = warned[first]
    assert "rollout.max_new_tokens=512" in line and "--set rollout.max_new_tokens=1024" in line
    assert causes(warned[first]) == {"truncated"} and list(warned) == [first]  # then silent: every 25 steps


def test_each_cause_of_no_spread_gets_its_own_advice():
    advice = {"right": "too easy", "wrong": "too hard", "mixed": "does not tell right answers from wrong"}
    for kind, text in advice.items():
        rows = [{**healthy(s, random.Random(s)), "zero_spread_right": 0, "zero_spread_wrong": 0, "zero_spread_mixed": 0,
                 f"zero_spread_{kind}": 14} for s in range(1, 6)]
        (line,) = run(detector(), rows)[5]
        assert text in line and "70 of the 80 groups of steps 1-5" in line and f"70 all {kind}" in line.replace(
            "70 right and wrong", "70 all mixed"), line
    # 3 in 4 exactly is not "most groups": the threshold is strict
    rows = [{**healthy(s, random.Random(s)), "zero_spread_right": 12, "zero_spread_wrong": 0} for s in range(1, 6)]
    assert run(detector(), rows) == {}


def test_entropy_collapse_warns():
    rows = [{**healthy(s, random.Random(s)), "entropy": 0.02} for s in range(1, 6)]
    warned = run(detector(), rows)
    assert list(warned) == [5] and causes(warned[5]) == {"entropy"} and "0.020 nats" in warned[5][0]
    assert run(detector(entropy=0.0), rows) == {}  # 0 turns it off


def test_a_reward_that_never_moves_warns_after_flat_steps():
    rng = random.Random(3)
    rows = [{**healthy(s, rng), "reward": 0.1 + rng.uniform(0, 0.004)} for s in range(1, 31)]
    warned = run(detector(flat_steps=20, every=100), rows)
    assert list(warned) == [20] and causes(warned[20]) == {"flat_reward"} and "steps (1-20)" in warned[20][0]
    moving = [{**r, "reward": r["reward"] + 0.02 * (s == 10)} for s, r in enumerate(rows, 1)]  # one step apart
    assert list(run(detector(flat_steps=20, every=100), moving)) == [30]  # steps 11-30 are flat again


def test_a_lasting_cause_repeats_once_every_every_steps_and_causes_are_independent():
    rng = random.Random(4)
    rows = [{**healthy(s, rng), "truncated": 1.0, "entropy": 0.01 if s >= 8 else 0.3} for s in range(1, 41)]
    warned = run(detector(window=5, every=10), rows)
    truncated = [s for s, lines in warned.items() if "truncated" in causes(lines)]
    entropy = [s for s, lines in warned.items() if "entropy" in causes(lines)]
    assert truncated == [5, 15, 25, 35]
    assert entropy == [12, 22, 32]  # its own clock: first when steps 8-12 fill the window
    assert all(len(lines) == len(causes(lines)) for lines in warned.values())  # one line per cause


def test_turned_off_it_says_nothing():
    rows = [{**healthy(s, random.Random(s)), "truncated": 1.0, "entropy": 0.0} for s in range(1, 30)]
    assert run(detector(enabled=False), rows) == {}


def test_a_replayed_history_warns_as_the_uninterrupted_detector():
    rng = random.Random(5)
    rows = [{**healthy(s, rng), "truncated": 0.8 if s % 7 else 0.1, "entropy": 0.03 if s > 20 else 0.3}
            for s in range(1, 61)]
    whole = run(detector(window=3, every=4), rows)
    assert len(whole) > 5
    for cut in (2, 6, 13, 21, 40):
        logged = [{"step": s, **r} for s, r in enumerate(rows[:cut], 1)]
        for s, r in zip(range(1, cut + 1), logged):  # the rows as metrics.jsonl holds them, with the marks
            r.update({f"stuck_{c}": 1 for c in causes(whole.get(s, []))})
        logged.insert(1, {"step": 1, "eval_accuracy": 0.5})  # eval rows are skipped
        resumed = StuckDetector(StuckConfig(window=3, every=4), MAX_NEW_TOKENS, logged)
        rest = run(resumed, rows[cut:], first=cut + 1)
        assert rest == {s: lines for s, lines in whole.items() if s > cut}, cut


def test_stuck_config_keys_are_ranged_and_last_in_train():
    assert dataclasses.fields(Config().train)[-1].name == "stuck"
    cfg = load_config(None, ["train.stuck.window=3", "train.stuck.truncated=0.9", "train.stuck.enabled=false"])
    assert (cfg.train.stuck.window, cfg.train.stuck.truncated, cfg.train.stuck.enabled) == (3, 0.9, False)
    for bad in ("train.stuck.window=0", "train.stuck.truncated=1.5", "train.stuck.entropy=-1",
                "train.stuck.flat_steps=1", "train.stuck.every=0", "train.stuck.wrong=1"):
        with pytest.raises(ConfigError, match="train.stuck"):
            load_config(None, [bad])


def episode(group: int, reward: float, correct: bool) -> Episode:
    return Episode(group, [1], [2, 3], True, "text", "4", Score({"correctness": reward}, reward, correct), [0.5, 0.5])


def test_groups_without_spread_are_counted_by_kind_from_the_rewards():
    G = 3
    groups = [[(1.0, True)] * 3,  # all right
              [(0.0, False)] * 3,  # all wrong
              [(0.0, False)] * 2 + [(1.0, True)],  # spread
              [(0.5, True), (0.5, False), (0.5, False)],  # one reward for right and wrong: the reward is blind
              [(0.0, False)] * 3]
    episodes = [episode(g, r, c) for g, members in enumerate(groups) for r, c in members]
    assert same_reward_groups(episodes, G) == (1, 2, 1)
    # In the step's metrics, also when dynamic sampling left a group with spread out (has_spread False):
    has_spread = torch.tensor([False] * 6 + [False] * 3 + [False] * 6)
    m = rollout_metrics(episodes, has_spread, G)
    assert (m["zero_spread_groups"], m["zero_spread_right"], m["zero_spread_wrong"], m["zero_spread_mixed"]) == (5, 1, 2, 1)
    # Split over two ranks (each adds the other's sums, then one division): the same counts.
    other = _raw(episodes[6:], has_spread[6:], G)
    two = rollout_metrics(episodes[:6], has_spread[:6], G, total=lambda xs: [a + b for a, b in zip(xs, other)])
    assert {k: two[k] for k in m if k.startswith("zero_spread")} == {k: m[k] for k in m if k.startswith("zero_spread")}


def _raw(episodes: list[Episode], has_spread: torch.Tensor, G: int) -> list[float]:
    """What rollout_metrics sums on one rank (in its order), for another rank's `total` to add."""
    seen: list[float] = []
    rollout_metrics(episodes, has_spread, G, total=lambda xs: seen.extend(xs) or xs)
    return seen


def test_train_py_warns_about_a_completion_budget_that_truncates(tmp_path, tiny_model, capsys):
    """4 new tokens: the tiny model almost never stops in them. The default window (5 steps) fills at step 5."""
    cfg = write_config(tmp_path, tiny_model, rollout={"max_new_tokens": 4},
                       grpo={"updates_per_batch": 1, "beta": 0.0}, train={"steps": 5, "eval_every": 0, "save_every": 5})
    assert train.main(["--config", str(cfg)]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    rows = metrics(tmp_path / "run")
    assert sum(r["truncated"] for r in rows) / 5 > 0.5
    (line,) = [line for line in err if "rollout.max_new_tokens" in line]
    assert "rollout.max_new_tokens=4 " in line and "--set rollout.max_new_tokens=8" in line
    assert [r["step"] for r in rows if r.get("stuck_truncated")] == [5]


def test_a_resumed_run_warns_as_the_uninterrupted_one(tmp_path, tiny_model, capsys):
    """Warned at step 2, stopped, resumed: a fresh detector would warn again at step 4 (its window of 2
    full); the replayed one waits for `every` = 3 steps after step 2, as the uninterrupted run."""
    sections = dict(rollout={"max_new_tokens": 4}, grpo={"updates_per_batch": 1, "beta": 0.0})
    train_ = {"steps": 8, "eval_every": 0, "save_every": 100, "stuck": {"window": 2, "every": 3}}
    full = write_config(tmp_path, tiny_model, out="full", train=train_, **sections)
    split = write_config(tmp_path, tiny_model, out="split", train=train_, **sections)
    assert train.main(["--config", str(full)]) == 0
    assert train.main(["--config", str(split), "--stop-after", "2"]) == 0
    capsys.readouterr()
    assert train.main(["--resume", str(tmp_path / "split")]) == 0
    resumed = [line for line in capsys.readouterr().err.splitlines() if "rollout.max_new_tokens" in line]
    a, b = without_times(metrics(tmp_path / "full")), without_times(metrics(tmp_path / "split"))
    assert a == b
    assert [r["step"] for r in a if r.get("stuck_truncated")] == [2, 5, 8]
    assert len(resumed) == 2 and "steps 4-5" in resumed[0] and "steps 7-8" in resumed[1]


def test_under_torchrun_only_rank_0_warns(tmp_path, tiny_model):
    """Two gloo ranks: the step's metrics are summed over both, the warning is said once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = write_config(tmp_path, tiny_model, rollout={"max_new_tokens": 4}, reward={"weights": {"correctness": 1.0}},
                       grpo={"updates_per_batch": 1, "beta": 0.0},  # (the test reward is not registered there)
                       train={"steps": 2, "eval_every": 0, "save_every": 100, "stuck": {"window": 2}})
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                          "train.py", "--config", str(cfg)], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if "rollout.max_new_tokens=4 " in line]
    assert len(lines) == 1 and lines[0].startswith("warning: "), res.stderr[-3000:]
    assert [r["step"] for r in metrics(tmp_path / "run") if r.get("stuck_truncated")] == [2]
    # 4 tokens answer nothing: every group all wrong, said once too, with its advice
    (line,) = [line for line in res.stderr.splitlines() if "got one reward" in line]
    assert "too hard" in line and "4 of the 4 groups" in line and "4 all wrong" in line
