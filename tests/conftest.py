"""Shared test fixtures: tiny random Qwen2 checkpoints written by transformers (the reference), and
our own tiny model with a tokenizer for end-to-end runs (tests/tiny_run.py)."""

from __future__ import annotations

import os

# The test models are tiny: one thread is faster than two, and far faster when the CPU is shared
# (OpenMP threads spin-wait on a busy core). Set before torch is imported; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Small widths with Qwen2.5-0.5B's head ratios (14 query heads, 2 KV heads).
TIED = dict(hidden_size=112, intermediate_size=224, num_hidden_layers=2, num_attention_heads=14,
            num_key_value_heads=2, vocab_size=300, tie_word_embeddings=True)
# Untied, another GQA ratio (8 query heads per KV head... here 8/2 = 4).
UNTIED = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=8,
              num_key_value_heads=2, vocab_size=256, tie_word_embeddings=False)


def hf_model(seed: int = 0, **overrides):
    """A random transformers.Qwen2ForCausalLM in fp32 with non-trivial norms and biases."""
    import transformers

    kw = dict(TIED, max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kw.update(overrides)
    cfg = transformers.Qwen2Config(**kw)
    torch.manual_seed(seed)
    return perturbed(transformers.Qwen2ForCausalLM(cfg).float().eval())


@torch.no_grad()
def perturbed(model):
    """`model` with random weights whose norms and biases are not 1 and 0 (HF's init), so they are tested."""
    for name, p in model.named_parameters():
        if "norm" in name or name.endswith("bias"):
            p.add_(torch.randn_like(p) * 0.1)
        else:
            p.normal_(0, 0.05)
    return model


def save_hf(model, path: Path, **kw) -> Path:
    model.save_pretrained(path, safe_serialization=True, **kw)
    return path


@pytest.fixture
def tied_ckpt(tmp_path):
    model = hf_model(seed=1)
    return model, save_hf(model, tmp_path / "tied")


@pytest.fixture
def untied_ckpt(tmp_path):
    model = hf_model(seed=2, **UNTIED)
    return model, save_hf(model, tmp_path / "untied")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Our tiny random Qwen2 with a tiny tokenizer: what the end-to-end training tests run."""
    from tiny_run import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(autouse=True)
def _test_reward():
    """The test-only reward `odd_length` (tests/tiny_run.py), registered for every test."""
    from data import rewards
    from tiny_run import odd_length

    rewards.REWARD_FUNCTIONS["odd_length"] = odd_length
    yield
    rewards.REWARD_FUNCTIONS.pop("odd_length", None)
