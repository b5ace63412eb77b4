"""Resuming writes only into the run being resumed, and every command the trainer prints for the
user to run next works when pasted (issue "Lost work and dead ends")."""

from __future__ import annotations

import hashlib
import shlex
import shutil
from pathlib import Path

import pytest

import train
from data import rewards
from data.synthetic import make_problems, write_jsonl
from grpo.machinery.checkpoint import latest_checkpoint, list_checkpoints
from grpo.trainer import Trainer
from tiny_run import metrics, without_times, write_config

ROOT = Path(__file__).resolve().parents[1]


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under `path` with the sha256 of its bytes: equal digests = a byte-identical tree."""
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def printed_command(err: str, lead: str) -> list[str]:
    """The train.py arguments of the command printed after `lead` (the line as a user would paste it)."""
    line = next(line for line in err.splitlines() if lead in line)
    words = shlex.split(line.split(lead, 1)[1])
    assert words[:2] == ["python", "train.py"], line
    return words[2:]


@pytest.fixture
def tiny_layout(tmp_path, tiny_model, monkeypatch):
    """configs/tiny.yaml's inputs (runs/tiny/sft, runs/tiny/data) in a fresh directory, made the cwd."""
    shutil.copytree(tiny_model, tmp_path / "runs/tiny/sft")
    write_jsonl(make_problems(40, seed=0), tmp_path / "runs/tiny/data/train.jsonl")
    write_jsonl(make_problems(4, seed=0, split="test"), tmp_path / "runs/tiny/data/test.jsonl")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_newcomers_resume_leaves_the_recipe_run_byte_identical(tiny_layout, capsys):
    """`python train.py --config configs/tiny.yaml --resume runs/ctrlc2 --stop-after 1` once resumed
    runs/ctrlc2 but wrote into runs/tiny/grpo (the config's out_dir): it cut that run's logs,
    overwrote its config.json and pruned the new checkpoint at once."""
    tiny = str(ROOT / "configs/tiny.yaml")
    small = ["--set", "rollout.prompts_per_step=2", "--set", "rollout.group_size=2", "--set", "rollout.max_new_tokens=6"]
    assert train.main(["--config", tiny, *small, "--set", "train.steps=3", "--set", "train.save_every=1"]) == 0
    recipe = tiny_layout / "runs/tiny/grpo"
    before = tree_digest(recipe)
    assert [c.name for c in list_checkpoints(recipe)] == ["step_000003"]  # keep_checkpoints: 1
    assert train.main(["--config", tiny, *small, "--set", "train.out_dir=runs/ctrlc2", "--stop-after", "1"]) == 0
    capsys.readouterr()

    assert train.main(["--config", tiny, "--resume", "runs/ctrlc2", "--stop-after", "1"]) == 0
    err = capsys.readouterr().err
    assert "resuming writes into runs/ctrlc2" in err and "train.out_dir=runs/tiny/grpo" in err
    assert tree_digest(recipe) == before
    assert latest_checkpoint(tiny_layout / "runs/ctrlc2").name == "step_000002"
    assert [r["step"] for r in metrics(tiny_layout / "runs/ctrlc2") if "reward" in r] == [1, 2]


def test_resume_with_an_explicit_other_out_dir_is_refused(tmp_path, tiny_model, capsys):
    cfg = write_config(tmp_path, tiny_model, train={"steps": 2, "eval_every": 0})
    assert train.main(["--config", str(cfg), "--stop-after", "1"]) == 0
    capsys.readouterr()
    other = tmp_path / "other"
    assert train.main(["--resume", str(tmp_path / "run"), "--set", f"train.out_dir={other}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "drop the --set" in err
    assert not other.exists()


def test_the_trainer_itself_never_resumes_into_another_runs_directory(tmp_path, tiny_model):
    """Below train.py too: a checkpoint of run A with train.out_dir = run B (which holds a run) is refused."""
    from grpo.config import load_config
    from qwen2.errors import InputError

    cfg_a = write_config(tmp_path, tiny_model, out="a", train={"steps": 1, "eval_every": 0})
    cfg_b = write_config(tmp_path, tiny_model, out="b", train={"steps": 1, "eval_every": 0})
    assert train.main(["--config", str(cfg_a)]) == 0 and train.main(["--config", str(cfg_b)]) == 0
    before = tree_digest(tmp_path / "b")
    with pytest.raises(InputError, match="already holds a run"):
        Trainer(load_config(cfg_b), resume=tmp_path / "a")
    assert tree_digest(tmp_path / "b") == before


def test_stop_after_prints_a_continue_line_that_works(tmp_path, tiny_model, capsys):
    full = write_config(tmp_path, tiny_model, out="full", train={"eval_every": 0, "save_every": 100})
    split = write_config(tmp_path, tiny_model, out="split", train={"eval_every": 0, "save_every": 100})
    assert train.main(["--config", str(full)]) == 0
    capsys.readouterr()
    assert train.main(["--config", str(split), "--stop-after", "1"]) == 0
    args = printed_command(capsys.readouterr().err, "continue with: ")
    assert train.main(args) == 0
    assert without_times(metrics(tmp_path / "split")) == without_times(metrics(tmp_path / "full"))
    capsys.readouterr()
    assert train.main(args) == 0  # finished: nothing more to do, and no continue line
    assert "continue with" not in capsys.readouterr().err


def test_ctrl_c_before_the_first_step_prints_a_command_that_starts_it_again(tmp_path, tiny_model, capsys,
                                                                             monkeypatch):
    """Interrupted before its first checkpoint (here: during step 1, after the step-0 evaluation was
    logged), a run has nothing saved; the printed --resume starts it again from step 0 with its own
    config, and it ends equal to a run that was never interrupted."""
    full = write_config(tmp_path, tiny_model, out="full")
    cut = write_config(tmp_path, tiny_model, out="cut")
    assert train.main(["--config", str(full)]) == 0

    def interrupted(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", interrupted)
        capsys.readouterr()
        assert train.main(["--config", str(cut)]) == 130
    err = capsys.readouterr().err
    assert not list_checkpoints(tmp_path / "cut") and (tmp_path / "cut" / "metrics.jsonl").is_file()
    args = printed_command(err, "start it again with: ")
    # A fresh start into that directory points at the same command rather than a dead end.
    assert train.main(["--config", str(cut)]) == 2
    assert f"--resume {tmp_path / 'cut'}" in capsys.readouterr().err
    assert train.main(args) == 0
    assert "starting it again from step 0" in capsys.readouterr().out
    assert without_times(metrics(tmp_path / "cut")) == without_times(metrics(tmp_path / "full"))


def test_resume_of_the_directory_above_a_run_names_the_run(tmp_path, tiny_model, capsys):
    (tmp_path / "recipe").mkdir()
    cfg = write_config(tmp_path, tiny_model, out="recipe/grpo", train={"steps": 1, "eval_every": 0})
    assert train.main(["--config", str(cfg)]) == 0
    (tmp_path / "recipe" / "sft").mkdir()  # a sibling that holds no run
    capsys.readouterr()
    assert train.main(["--resume", str(tmp_path / "recipe")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"--resume {tmp_path / 'recipe' / 'grpo'}" in err and "sft" not in err


def test_a_wrong_data_file_is_the_first_error_even_when_out_dir_holds_a_run(tmp_path, tiny_model, capsys):
    cfg = write_config(tmp_path, tiny_model, train={"steps": 1, "eval_every": 0})
    assert train.main(["--config", str(cfg)]) == 0
    capsys.readouterr()
    assert train.main(["--config", str(cfg), "--set", f"data.train_file={tmp_path / 'nope.jsonl'}"]) == 2
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "already holds a run" not in err


def test_a_reward_with_the_documented_signature_works(monkeypatch):
    """data/rewards.py documents `(completion, answer) -> float`; it was called with tags= and died."""
    def shorter_is_better(completion, answer):
        return 1.0 / (1 + len(completion))

    def with_tags(completion, answer, tags):
        return float(f"<{tags[1]}>" in completion)

    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "short", shorter_is_better)
    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "tagged", with_tags)
    text = "<reasoning>x</reasoning> <answer>4</answer>"
    score = rewards.combined_reward(text, "4",
                                    {"short": 1.0, "tagged": 2.0, "correctness": 1.0}, tags=("reasoning", "answer"))
    assert score.parts == {"short": pytest.approx(1 / (1 + len(text))), "tagged": 2.0, "correctness": 1.0} and score.correct
