"""float16 training is refused in one line: the trainer has no loss scaling, without which small fp16
gradients underflow to 0 unnoticed. bfloat16 and float32 still train; float16 stays an inference
dtype (scripts/eval.py --dtype)."""

from __future__ import annotations

import pytest

import train
from tiny_run import write_config

FAST = dict(rollout={"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
            grpo={"updates_per_batch": 1, "beta": 0.0}, train={"steps": 1, "eval_every": 0, "save_every": 1})


def errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("how", ["--set", "yaml"])
def test_float16_training_is_refused_in_one_line_that_says_use_bfloat16(tmp_path, tiny_model, capsys, how):
    if how == "--set":
        args = ["--config", str(write_config(tmp_path, tiny_model, **FAST)), "--set", "model.dtype=float16"]
    else:
        args = ["--config", str(write_config(tmp_path, tiny_model, **(FAST | {"model": {"dtype": "float16"}})))]
    assert train.main(args) == 2
    err = errors(capsys)
    assert len(err) == 1 and err[0].startswith("error: model.dtype must be bfloat16 or float32 (float16 trains only "
                                               "with loss scaling"), err
    assert "use bfloat16" in err[0] and err[0].endswith("got 'float16'")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_bfloat16_still_trains(tmp_path, tiny_model, capsys):
    config = write_config(tmp_path, tiny_model, **(FAST | {"model": {"dtype": "bfloat16"}}))
    assert train.main(["--config", str(config)]) == 0, errors(capsys)[-3:]
    assert (tmp_path / "run" / "checkpoints").is_dir()

