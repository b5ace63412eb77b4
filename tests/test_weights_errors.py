"""Every way a checkpoint directory can be broken gives a one-line cause and what to do."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import hf_model, save_hf
from qwen2 import CheckpointError, load_model


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="run python download.py"):
        load_model(tmp_path / "nope")


def test_missing_config(tied_ckpt):
    _, path = tied_ckpt
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config.json not found: run python download.py"):
        load_model(path)


def test_not_qwen2(tied_ckpt):
    _, path = tied_ckpt
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "llama"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type='llama', not 'qwen2'"):
        load_model(path)


def test_no_weights(tied_ckpt):
    _, path = tied_ckpt
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors or model.safetensors.index.json"):
        load_model(path)


def test_shard_listed_but_absent(tmp_path):
    path = save_hf(hf_model(seed=5), tmp_path / "sharded", max_shard_size="60KB")
    victim = sorted(path.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"shard {victim.name} is listed in model.safetensors.index.json but missing"):
        load_model(path)


def test_truncated_file(tied_ckpt):
    _, path = tied_ckpt
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated"):
        load_model(path)


def test_corrupt_header(tied_ckpt):
    _, path = tied_ckpt
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"\x00garbage!!\xff\xfe"
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is not a valid safetensors file"):
        load_model(path)


def _rewrite(path, edit):
    f = path / "model.safetensors"
    tensors = load_file(f)
    edit(tensors)
    save_file(tensors, f, metadata={"format": "pt"})


def test_missing_tensor(tied_ckpt):
    _, path = tied_ckpt
    _rewrite(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match="lacks tensor model.layers.1.mlp.up_proj.weight"):
        load_model(path)


def test_unexpected_tensor(tied_ckpt):
    _, path = tied_ckpt
    _rewrite(path, lambda t: t.update({"model.layers.9.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="unexpected tensor model.layers.9.extra.weight"):
        load_model(path)


def test_shape_mismatch_names_tensor_and_both_shapes(tied_ckpt):
    _, path = tied_ckpt
    _rewrite(path, lambda t: t.update({"model.layers.0.self_attn.k_proj.bias": torch.zeros(7)}))
    with pytest.raises(CheckpointError, match=r"model.layers.0.self_attn.k_proj.bias has shape \(7,\) in the checkpoint but the config needs \(16,\)"):
        load_model(path)


def test_tied_checkpoint_with_redundant_head_loads(tied_ckpt):
    hf, path = tied_ckpt
    _rewrite(path, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].clone()}))
    model = load_model(path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
