"""What the end-to-end tests share: a tiny random Qwen2 checkpoint with a tiny tokenizer, a config
for a few fast training steps on it, and a test-only reward that a random model's completions
actually vary on (the fixtures `tiny_model` and the reward's registration are in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from data.synthetic import make_problems, write_jsonl
from helpers_tokenizer import build_tiny_tokenizer
from qwen2 import Qwen2, Qwen2Config, save_model


def odd_length(completion: str, answer: str, tags=None) -> float:
    """A test-only reward that a random model's completions actually vary on, so updates happen."""
    return float(len(completion) % 2)


def build_tiny_model(path: Path, **shape) -> Path:
    """The tiny random model (`shape` overrides its config: e.g. a Qwen3 with model_type="qwen3")."""
    tok = build_tiny_tokenizer(path, vocab_size=400)
    cfg = Qwen2Config(**{**dict(vocab_size=tok.vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, torch_dtype="float32"), **shape})
    model = Qwen2(cfg)
    model.init_weights(std=0.1, generator=torch.Generator().manual_seed(0))
    save_model(model, path)
    return path


def write_config(tmp_path: Path, model_dir: Path, out: str = "run", **sections) -> Path:
    # Short synthetic word problems in GSM8K's format keep the tiny runs fast.
    train_file = write_jsonl(make_problems(40, seed=0), tmp_path / "train.jsonl")
    test_file = write_jsonl(make_problems(5, seed=0, split="test"), tmp_path / "test.jsonl")
    cfg = {
        "model": {"path": str(model_dir), "dtype": "float32", "device": "cpu"},
        "data": {"train_file": str(train_file), "test_file": str(test_file), "max_prompt_tokens": 4000},
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 12},
        "reward": {"weights": {"format": 0.1, "correctness": 1.0, "odd_length": 1.0}},
        "grpo": {"micro_batch_size": 3, "updates_per_batch": 2, "beta": 0.05},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"steps": 3, "out_dir": str(tmp_path / out), "eval_every": 2, "eval_size": 3, "save_every": 2,
                  "progress": False},
    }
    for section, values in sections.items():
        cfg[section].update(values)
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]
