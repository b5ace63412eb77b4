"""Hostile input through the real entry point: every config key set to values a careless user or a
broken disk produces, and damaged files. The promise: the run trains, or it stops with one line
that says why (exit 2, or 4 for a diverged run); never a traceback, a hang or a NaN checkpoint."""

from __future__ import annotations

import dataclasses
import json
import shutil
import typing

import pytest
import torch

import train
from grpo.machinery.checkpoint import latest_checkpoint
from grpo.config import Config
from qwen2 import load_model
from tiny_run import write_config

# The fastest run that still samples, scores, trains and saves: 1 step, 2 questions x 2 samples.
FAST = dict(rollout={"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
            grpo={"updates_per_batch": 1, "beta": 0.0}, train={"steps": 1, "eval_every": 0, "save_every": 1})

HOSTILE = {  # by annotated type: YAML text as a user types it after --set key=
    int: ["0", "-1", "1000000000000", "1.5", "x", "true"],
    float: ["0", "-1", "1e12", ".nan", ".inf", "-.inf", "nan", "inf", "-inf", "x"],
    bool: ["2", "x"],
    str: ['""', "x", "5"],
    list: ["[]", "[x]", "5"],
    dict: ["{}", "{x: 1}", "{format: .nan}", "5"],
}


def leaf_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted key, base type) of every leaf of the config."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += leaf_keys(tp, f"{prefix}{f.name}.")
            continue
        origin = typing.get_origin(tp)
        if origin in (typing.Union, __import__("types").UnionType):
            tp = next(t for t in typing.get_args(tp) if t is not type(None))
            origin = typing.get_origin(tp)
        out.append((prefix + f.name, origin or tp))
    return out


CASES = [(key, value) for key, tp in leaf_keys() for value in HOSTILE[tp]]


def outcome(capsys, args: list[str]) -> tuple[int, list[str]]:
    code = train.main(args)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def assert_trains_or_one_line(code: int, err: list[str], what: str) -> None:
    errors = [line for line in err if line.startswith("error: ")]
    if code == 0:
        assert not errors, what
    else:
        assert code in (2, 4), f"{what}: exit {code}: {err[-3:]}"
        assert len(errors) == 1 and errors[-1] == err[-1], f"{what}: {err}"  # the error is the last line
    assert not any("Traceback" in line for line in err), what


def test_every_key_and_hostile_value_trains_or_fails_in_one_line(tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a hostile train.out_dir ("x", "5") lands here
    trained = refused = 0
    for i, (key, value) in enumerate(CASES):
        out = tmp_path / f"run{i}"
        config = write_config(tmp_path, tiny_model, out=f"run{i}", **FAST)
        args = ["--config", str(config), "--set", f"{key}={value}"]
        if key != "train.out_dir":
            args += ["--set", f"train.out_dir={out}"]
        code, err = outcome(capsys, args)
        assert_trains_or_one_line(code, err, f"--set {key}={value}")
        if code == 0:
            trained += 1
            ckpt = latest_checkpoint(tmp_path / (value.strip('"') if key == "train.out_dir" else out))
            model = load_model(ckpt / "model") if (ckpt / "model").is_dir() else None
            assert model is None or all(torch.isfinite(p).all() for p in model.parameters()), key
        else:
            refused += 1
        shutil.rmtree(out, ignore_errors=True)
    assert trained > 20 and refused > 150, (trained, refused)  # both sides of the promise are exercised


def test_a_diverging_run_stops_after_k_skipped_steps_and_keeps_a_finite_checkpoint(tmp_path, tiny_model, capsys):
    config = write_config(tmp_path, tiny_model, train={"steps": 1, "eval_every": 0, "save_every": 1})
    assert train.main(["--config", str(config)]) == 0
    code, err = outcome(capsys, ["--resume", str(tmp_path / "run"), "--set", "optim.lr=1e30",
                                 "--set", "train.steps=20"])
    assert code == 4 and err[-1].startswith("error: 3 steps in a row") and "Lower optim.lr" in err[-1], err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_nonfinite"] for r in rows][-3:] == [1, 1, 1] and len(rows) < 20
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt.name == "step_000001"  # nothing was saved from the diverged steps
    assert all(torch.isfinite(p).all() for p in load_model(ckpt / "model").parameters())


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.fixture
def two_checkpoints(tmp_path, tiny_model):
    config = write_config(tmp_path, tiny_model, train={"steps": 2, "eval_every": 0, "save_every": 1,
                                                       "keep_checkpoints": 2})
    assert train.main(["--config", str(config)]) == 0
    return tmp_path / "run"


@pytest.mark.parametrize("damage", ["truncated optimizer/__0_0.distcp", "missing optimizer/.metadata",
                                    "missing optimizer", "garbage trainer_state.json", "mistyped trainer_state.json",
                                    "truncated model/model.safetensors", "truncated rng.pt"])
def test_resume_skips_a_damaged_checkpoint_for_the_newest_intact_one(two_checkpoints, capsys, damage):
    newest = two_checkpoints / "checkpoints" / "step_000002"
    what, name = damage.split(" ", 1)
    file = newest / name
    if what == "truncated":
        truncate(file)
    elif what == "missing":
        shutil.rmtree(file) if file.is_dir() else file.unlink()
    elif what == "mistyped":  # valid JSON, wrong types
        file.write_text(json.dumps(json.loads(file.read_text()) | {"data": 1}))
    else:
        file.write_text("{ not json")
    code, err = outcome(capsys, ["--resume", str(two_checkpoints), "--set", "train.steps=3"])
    assert code == 0, err
    assert any(line.startswith(f"skipping {newest}:") for line in err), err
    # Resumed from step 1, so step 2 is redone and the run reaches step 3.
    assert latest_checkpoint(two_checkpoints).name == "step_000003"


def test_an_optimizer_shard_damaged_inside_is_skipped_for_the_checkpoint_before(two_checkpoints, capsys):
    """Same size, other bytes: the manifest's checksum finds it; one line, and the run resumes from
    the checkpoint before (tests/test_checkpoint_integrity.py covers every file)."""
    shard = two_checkpoints / "checkpoints" / "step_000002" / "optimizer" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3:len(data) // 3 + 1000] = bytes(range(256)) * 3 + bytes(232)
    shard.write_bytes(bytes(data))
    code, err = outcome(capsys, ["--resume", str(two_checkpoints), "--set", "train.steps=3"])
    skipped = [line for line in err if line.startswith("skipping ")]
    assert code == 0 and len(skipped) == 1 and "optimizer/__0_0.distcp is damaged" in skipped[0], err
    assert "step_000002" in skipped[0] and not any(line.startswith("error: ") for line in err), err


def test_a_damaged_lora_adapter_config_is_skipped_on_resume(tmp_path, tiny_model, capsys):
    config = write_config(tmp_path, tiny_model, model={"lora": {"rank": 2}},
                          train={"steps": 2, "eval_every": 0, "save_every": 1, "keep_checkpoints": 2})
    assert train.main(["--config", str(config)]) == 0
    newest = tmp_path / "run" / "checkpoints" / "step_000002"
    (newest / "adapter" / "adapter_config.json").write_bytes(b"{\"peft_type\": \"LO\xe4RA\"}")
    code, err = outcome(capsys, ["--resume", str(tmp_path / "run"), "--set", "train.steps=3"])
    assert code == 0 and any(line.startswith(f"skipping {newest}:") and "adapter_config.json" in line for line in err), err


def test_a_damaged_checkpoint_named_directly_is_one_line(two_checkpoints, capsys):
    newest = two_checkpoints / "checkpoints" / "step_000002"
    truncate(newest / "optimizer" / "__0_0.distcp")
    code, err = outcome(capsys, ["--resume", str(newest)])
    assert code == 2 and len(err) == 1 and "optimizer/__0_0.distcp is truncated" in err[0], err


@pytest.mark.parametrize("damage", ["truncated tokenizer.json", "garbage config.json", "truncated model.safetensors",
                                    "non-UTF-8 train file", "missing test file"])
def test_damaged_input_files_are_one_line_naming_the_file(tmp_path, tiny_model, capsys, damage):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    config = write_config(tmp_path, model, **FAST)
    if damage == "truncated tokenizer.json":
        truncate(model / "tokenizer.json", 0.3)
        named = "tokenizer.json"
    elif damage == "garbage config.json":
        (model / "config.json").write_text("{ broken")
        named = "config.json"
    elif damage == "truncated model.safetensors":
        truncate(model / "model.safetensors")
        named = "model.safetensors"
    elif damage == "non-UTF-8 train file":
        train_file = tmp_path / "train.jsonl"
        train_file.write_bytes(train_file.read_bytes().replace(b"has", b"h\xe4s", 1))
        named = "train.jsonl:"
    else:
        (tmp_path / "test.jsonl").unlink()
        config = write_config(tmp_path, model, **(FAST | {"train": {"steps": 1, "eval_every": 1}}))
        (tmp_path / "test.jsonl").unlink()
        named = "test.jsonl"
    code, err = outcome(capsys, ["--config", str(config)])
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and named in err[0], err


def test_resume_of_a_directory_that_does_not_exist_says_so(tmp_path, capsys):
    code, err = outcome(capsys, ["--resume", str(tmp_path / "nope")])
    assert code == 2 and err == [f"error: {tmp_path / 'nope'} does not exist: pass the run directory (train.out_dir) "
                                 "of the run to continue"]


def test_sizes_the_machine_cannot_hold_are_refused_before_allocating(tmp_path, tiny_model, capsys):
    config = write_config(tmp_path, tiny_model, **FAST)
    code, err = outcome(capsys, ["--config", str(config), "--set", "rollout.prompts_per_step=1000000",
                                 "--set", "rollout.group_size=1000"])
    assert code == 2 and "GB of RAM at its peak" in err[0] and "cache" in err[0], err  # the KV cache (or compaction's copy of it) is the largest part
    code, err = outcome(capsys, ["--config", str(config), "--set", "rollout.max_new_tokens=1000000"])
    assert code == 2 and "max_position_embeddings" in err[0], err
