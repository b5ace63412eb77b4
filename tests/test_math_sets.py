"""The math sets end to end on the tiny model: each set's fixture through download.py, then
scripts/eval.py (sampled, mean@k / pass@k, the breakdown); every gold answer, boxed, scores right
through the math reward; configs/math.yaml trains two GRPO steps on MATH-style rows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import download
import train
from data.gsm8k import load_problems
from data.prompts import get_template
from data.rewards import Rewards
from data.task import Task
from tiny_run import metrics

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "math_sets"
# Which breakdown each set's rows allow (subject / level where the set has them).
BREAKDOWN = {"math500": ("subject", "level"), "amc23": (), "aime24": (), "olympiadbench": ("subject",),
             "math_train": ("subject", "level")}


def eval_script():
    spec = importlib.util.spec_from_file_location("eval_script", ROOT / "scripts" / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fetched(name: str, root: Path) -> Path:
    args = ["--dest", str(root), "--skip-model", "--dataset", name, "--source", str(FIXTURES / f"{name}.jsonl")]
    assert download.main(args) == 0
    return download.data_dir(name, root) / f"{download.MATH_SETS[name].split}.jsonl"


@pytest.mark.parametrize("name", sorted(download.MATH_SETS))
def test_each_set_downloads_and_evaluates_with_the_tiny_model(name, tmp_path, tiny_model, capsys):
    data = fetched(name, tmp_path)
    out = tmp_path / "results.jsonl"
    code = eval_script().run(["--model", str(tiny_model), "--data", str(data), "--out", str(out), "--samples", "2",
                              "--temperature", "1.0", "--max-new-tokens", "4", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0
    problems = load_problems(data)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 * len(problems) and {"math", "format", "correct"} <= rows[0].keys()
    assert [r["answer"] for r in rows[::2]] == [p.answer for p in problems]  # gold answers as written
    assert all(r.get(k) == p.fields.get(k) for r, p in zip(rows[::2], problems) for k in ("subject", "level", "id"))
    assert "reward math (format 0.1 + math 1), template math" in printed
    assert "mean@2 " in printed and "pass@2 " in printed and "95% intervals: normal over" in printed
    for key in ("subject", "level"):
        assert (f"\n{key} " in printed) == (key in BREAKDOWN[name]), printed


@pytest.mark.parametrize("name", sorted(download.MATH_SETS))
def test_every_gold_answer_boxed_scores_right(name, tmp_path):
    task = Task(get_template("math"), Rewards({"format": 0.1, "math": 1.0}))
    for problem in task.load(fetched(name, tmp_path)):
        right = f"<think>\nsteps\n</think>\n<answer>\n\\boxed{{{problem.answer}}}\n</answer>"
        score = task.score(right, problem)
        assert score.correct and score.total == pytest.approx(1.1), problem
        assert not task.score(right.replace(problem.answer, problem.answer + "+1"), problem).correct


def test_math500_answers_in_other_spellings_score_right(tmp_path):
    task = Task(get_template("math"), Rewards({"format": 0.1, "math": 1.0}))
    problems = task.load(fetched("math500", tmp_path))
    other = ["(3, \\pi/2)", "5/6", "3, 2", "x \\in [1, \\infty)", "Sunday", "9 \\pi"]
    for problem, answer in zip(problems, other, strict=True):
        assert task.score(f"So the answer is $\\boxed{{{answer}}}$.", problem).correct, (answer, problem.answer)


def test_the_math_config_trains_on_math_rows(tmp_path, tiny_model, capsys):
    train_file, test_file = fetched("math_train", tmp_path), fetched("math500", tmp_path)
    sets = {"model.path": tiny_model, "model.dtype": "float32", "model.device": "cpu",
            "model.activation_checkpointing": "false", "data.train_file": train_file, "data.test_file": test_file,
            "data.max_prompt_tokens": 4000, "rollout.prompts_per_step": 2, "rollout.group_size": 2,
            "rollout.max_new_tokens": 8, "train.steps": 2, "train.out_dir": tmp_path / "run", "train.eval_every": 2,
            "train.eval_size": 3, "train.save_every": 2, "train.progress": "false", "train.eval_at_start": "false"}
    args = ["--config", str(ROOT / "configs" / "math.yaml")] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    assert train.main(args) == 0, capsys.readouterr().err[-2000:]
    rows = metrics(tmp_path / "run")
    steps = [r for r in rows if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2] and all("reward_math" in r and "reward_format" in r for r in steps)
    assert any("eval_accuracy" in r for r in rows)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and all("subject" in s and "level" in s for s in samples)  # the rows' fields travel along
