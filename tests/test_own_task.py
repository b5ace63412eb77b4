"""Your own task through the real entry points: a JSONL with its own field names, reward functions from
a file outside the package that read the row's extra fields, your own prompt; resume, evaluation and
torchrun on such a run; and every way a user's reward or data can be wrong, through train.py (one
line, or the user's own traceback kept with where it struck)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import train
from tiny_run import metrics, without_times, write_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_task"

# A reward in the user's own file that reads the row's extra field `bonus`: its value is the reward,
# so samples.jsonl shows whether each row's field reached it.
REWARD_FILE = '''
def from_bonus(completion, answer, bonus):
    return float(bonus)


def echo_word(completion, answer, **fields):
    return float(answer.lower() in completion.lower())
'''
FAST = dict(rollout={"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
            grpo={"updates_per_batch": 1, "beta": 0.0}, train={"steps": 2, "eval_every": 1, "eval_size": 2,
                                                               "save_every": 1})


def own_task(tmp_path: Path, tiny_model: Path, out: str = "run", reward_file: str = REWARD_FILE, rows=None,
             **sections) -> Path:
    """A config for the word task: rows {prompt_text, target, bonus}, rewards from tmp_path/my_rewards.py."""
    # "step" also names samples.jsonl's own key, which resume trims by: the row's must not replace it.
    rows = rows or [{"prompt_text": f"Say the word number {i}.", "target": f"word{i}", "bonus": i % 3,
                     "step": "intro"} for i in range(8)]
    data = tmp_path / "words.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "my_rewards.py").write_text(reward_file)
    reward = {"functions": {"bonus": f"{tmp_path / 'my_rewards.py'}:from_bonus",
                            "echo": f"{tmp_path / 'my_rewards.py'}:echo_word"},
              "weights": {"format": 0.1, "bonus": 1.0, "echo": 1.0}, "correct": "echo"}
    base = {k: dict(v) for k, v in FAST.items()}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    base["reward"] = {**reward, **base.get("reward", {})}
    base["data"] = {"train_file": str(data), "test_file": str(data), "question_key": "prompt_text",
                    "answer_key": "target", "system_prompt": "Answer in one word inside <answer></answer>.",
                    **base.get("data", {})}
    return write_config(tmp_path, tiny_model, out=out, **base)


def run_train(capsys, *args: str) -> tuple[int, list[str]]:
    code = train.main(list(args))
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_own_fields_and_reward_file_train_log_and_resume_exactly(tmp_path, tiny_model, capsys):
    config = own_task(tmp_path, tiny_model)
    assert run_train(capsys, "--config", str(config))[0] == 0
    rows = metrics(tmp_path / "run")
    steps = [r for r in rows if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all("reward_bonus" in r and "reward_echo" in r and "reward_format" in r for r in steps)
    assert any("eval_accuracy" in r for r in rows)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    by_question = {f"Say the word number {i}.": i % 3 for i in range(8)}
    assert samples and all(s["bonus"] == by_question[s["question"]] for s in samples)  # the field travels
    # format, bonus, echo: with a random model format and echo are 0, so the reward is the row's bonus.
    assert all(s["reward"] >= s["bonus"] for s in samples)
    assert {s["answer"] for s in samples} <= {f"word{i}" for i in range(8)}  # the answer as written
    # Resume: 1 step, then --resume to 2, equals the uninterrupted run (the task rebuilt from config.json).
    split = own_task(tmp_path, tiny_model, out="split")
    code, err = run_train(capsys, "--config", str(split), "--stop-after", "1")
    assert code == 0
    again = next(line for line in err if "continue with:" in line).split("continue with:", 1)[1]
    assert train.main(shlex.split(again)[2:]) == 0  # the printed command, without "python train.py"
    assert without_times(metrics(tmp_path / "split")) == without_times(rows)


def test_the_example_trains_and_its_checkpoint_evaluates_with_the_runs_task(tmp_path, tiny_model, capsys,
                                                                            monkeypatch):
    monkeypatch.chdir(ROOT)  # the example names its files from the repository root
    out = tmp_path / "capitals"
    args = ["--config", str(EXAMPLE / "config.yaml"), "--set", f"model.path={tiny_model}", "--set", "model.dtype=float32",
            "--set", "model.device=cpu", "--set", f"train.out_dir={out}", "--set", "train.steps=2",
            "--set", "train.save_every=2", "--set", "train.eval_every=2", "--set", "train.eval_size=3",
            "--set", "rollout.prompts_per_step=2", "--set", "rollout.group_size=2", "--set", "rollout.max_new_tokens=4",
            "--set", "train.progress=false", "--set", "data.max_prompt_tokens=4000"]
    assert run_train(capsys, *args)[0] == 0
    rows = metrics(out)
    assert all("reward_capital" in r and "reward_brevity" in r for r in rows if "reward" in r)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all("country" in s and "aliases" in s for s in samples)
    # scripts/eval.py on the checkpoint: the run's own data, prompt and rewards, no flags.
    model = out / "checkpoints" / "step_000002" / "model"
    res = subprocess.run([sys.executable, "scripts/eval.py", "--model", str(model), "--max-new-tokens", "4",
                          "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    results = [json.loads(line) for line in (model.parent / "model_eval_test.jsonl").read_text().splitlines()]
    assert len(results) == 10 and all("capital" in r and "country" in r for r in results)


def test_torchrun_two_ranks_train_the_own_task(tmp_path, tiny_model):
    config = own_task(tmp_path, tiny_model, train={"eval_every": 0})
    from test_distributed import torchrun_cmd

    res = subprocess.run(torchrun_cmd("train.py", "--config", str(config)), cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    steps = [r for r in metrics(tmp_path / "run") if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2] and all("reward_bonus" in r for r in steps)


def one_line(capsys, config: Path, *sets: str) -> str:
    args = ["--config", str(config)] + [a for s in sets for a in ("--set", s)]
    code, err = run_train(capsys, *args)
    assert code == 2, err
    assert err[-1].startswith("error: ") and not any("Traceback" in line for line in err), err
    return err[-1]


@pytest.mark.parametrize("sets, says", [
    (["reward.functions.bonus=nowhere/none.py:f"], "file nowhere/none.py not found"),
    (["reward.functions.bonus=no_such_module_xyz:f"], "module 'no_such_module_xyz' not found"),
    (["reward.functions.bonus={file}:missing"], "has no function 'missing' (it has: echo_word, from_bonus)"),
    (["reward.functions.bonus={file}"], "reward.functions must be name: path/to/file.py:function"),
    (["reward.functions.format={file}:echo_word"], "'format' is a built-in reward's name"),
    (["reward.weights={unknown_fn: 1.0}"], "reward.weights names unknown_fn: valid are"),
    (["reward.correct=nope"], "reward.correct = 'nope'"),
    (["reward.functions.length={file}:echo_word", "reward.weights.length=1"], "'length' names something the logs"),
    (["data.question_key=target"], "data.question_key and data.answer_key are both 'target'"),
    (["data.answer_key=solution"], "missing or empty string field 'solution'"),
    (["reward.correct=correctness"], "is not a number, but reward 'correctness' decides accuracy"),
    (["reward.weights={correctness: 1.0}"], "is not a number, but reward 'correctness' is weighted"),
])
def test_each_configuration_mistake_is_one_line(tmp_path, tiny_model, capsys, sets, says):
    config = own_task(tmp_path, tiny_model)
    sets = [s.replace("{file}", str(tmp_path / "my_rewards.py")) for s in sets]
    if sets[0].startswith("reward.weights="):
        sets.append("reward.correct=auto")
    message = one_line(capsys, config, *sets)
    assert says in message, message


@pytest.mark.parametrize("body, says", [
    ("def from_bonus(completion, answer, difficulty):\n    return 1.0\n", "requires 'difficulty', which the rows"),
    ("def from_bonus(*, answer):\n    return 1.0\n", "cannot take the completion text as its first argument"),
    ("def from_bonus(completion, answer):\n    return 'high'\n", "returned 'high' (str) on row"),
    ("def from_bonus(completion, answer):\n    return None\n", "returned 'None' (NoneType) on row"),
    ("def from_bonus(completion, answer):\n    return float('nan')\n", "returned nan on row"),
])
def test_a_reward_function_that_cannot_serve_is_one_line_naming_it(tmp_path, tiny_model, capsys, body, says):
    config = own_task(tmp_path, tiny_model, reward_file=REWARD_FILE.replace(
        "def from_bonus(completion, answer, bonus):\n    return float(bonus)\n", body))
    message = one_line(capsys, config)
    assert "'bonus'" in message and says in message, message
    if "returned" in says:
        assert "words.jsonl:" in message  # the row


def test_an_exception_inside_the_users_function_keeps_its_traceback_and_says_where(tmp_path, tiny_model):
    body = "def from_bonus(completion, answer, bonus):\n    return 1.0 / (bonus - bonus)\n"
    config = own_task(tmp_path, tiny_model, reward_file=REWARD_FILE.replace(
        "def from_bonus(completion, answer, bonus):\n    return float(bonus)\n", body))
    res = subprocess.run([sys.executable, "train.py", "--config", str(config)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1
    assert "Traceback" in res.stderr and "ZeroDivisionError" in res.stderr
    assert "my_rewards.py" in res.stderr and "return 1.0 / (bonus - bonus)" in res.stderr  # the user's line
    assert "raised by reward function 'bonus' on row" in res.stderr and "words.jsonl:" in res.stderr


def test_the_prompt_of_your_own_reaches_the_model(tmp_path, tiny_model):
    from grpo.config import load_config
    from grpo.rollout import prompt_text
    from qwen2 import Tokenizer

    config = own_task(tmp_path, tiny_model, data={"user_prompt": "Question: {question} (one word)",
                                                  "tags": ["reason", "final"]})
    cfg = load_config(config)
    task = cfg.task()
    text = prompt_text(Tokenizer.from_pretrained(tiny_model), "Say {x}.", task.prompt)
    assert "Answer in one word inside <answer></answer>." in text
    assert "Question: Say {x}. (one word)" in text  # braces in a question stay as written
    assert task.prompt.tags == ("reason", "final")
    score = task.rewards.score("<reason>r</reason><final>w</final>", "w", task.prompt.tags, fields={"bonus": 2})
    assert score.parts == {"format": 0.1, "bonus": 2.0, "echo": 1.0} and score.correct


@pytest.mark.parametrize("field", ["completion", "question", "tags"])
def test_a_row_field_the_rewards_get_from_the_trainer_is_one_line(tmp_path, tiny_model, capsys, field):
    rows = [{"prompt_text": f"Say {i}.", "target": f"w{i}", "bonus": 1, field: "x"} for i in range(4)]
    message = one_line(capsys, own_task(tmp_path, tiny_model, rows=rows))
    assert f"the row has a field {field!r}" in message and "words.jsonl:1" in message, message


def test_a_zero_weight_switches_a_reward_off(tmp_path, tiny_model, capsys):
    # correctness at weight 0 on word answers: not called, not refused, and not the accuracy's judge.
    config = own_task(tmp_path, tiny_model, train={"steps": 1, "eval_every": 0})
    code, err = run_train(capsys, "--config", str(config), "--set", "reward.weights.correctness=0",
                          "--set", "reward.correct=auto")
    assert code == 0, err
    (step,) = [r for r in metrics(tmp_path / "run") if "reward" in r]
    assert step["reward_correctness"] == 0.0 and "reward_bonus" in step


def test_what_a_reward_function_may_be_and_return():
    from dataclasses import dataclass

    from data.rewards import Rewards, missing_arguments

    @dataclass
    class Scorer:  # a callable instance that cannot be hashed
        bonus: float

        def __call__(self, text, answer, **fields):  # its first parameter is not called "completion"
            return answer in text and self.bonus  # a bool or a float

    rewards = Rewards({"s": 1.0}, {"s": Scorer(0.5)}, correct="s")
    assert rewards.score("w", "w", fields={"text": "a row field named like its first parameter"}).total == 0.5
    assert rewards.score("v", "w").total == 0.0  # False counts as 0.0
    assert missing_arguments(max, {"answer"}) == []  # no signature to read: judged when called
