"""Our Qwen2 equals transformers' Qwen2ForCausalLM (fp32, CPU) on random-weight checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import UNTIED, hf_model, save_hf
from qwen2 import Padded, Qwen2, Qwen2Config, load_model, save_model

TOL = 1e-4


def ragged_batch(vocab: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids (pad id 0) and mask for prompts of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n:] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, T - n:] = 1
    return ids, mask


def hf_logits(hf, ids, mask=None):
    """transformers logits with positions from the mask, as its generate() does for left padding."""
    with torch.no_grad():
        if mask is None:
            return hf(ids).logits
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return hf(ids, attention_mask=mask, position_ids=pos).logits


def assert_parity(hf, ours, vocab):
    ids, _ = ragged_batch(vocab, [17, 17, 17])
    with torch.no_grad():
        d = (hf_logits(hf, ids) - ours(ids)).abs().max().item()
    assert d <= TOL, f"unpadded batch: max |Δlogits| = {d}"
    ids, mask = ragged_batch(vocab, [5, 17, 11, 1], seed=1)
    with torch.no_grad():
        ref, got = hf_logits(hf, ids, mask), ours(ids, Padded.of(mask))
    real = mask.bool()
    d = (ref - got).abs()[real].max().item()
    assert d <= TOL, f"left-padded batch: max |Δlogits| on real positions = {d}"
    assert torch.isfinite(got).all(), "pad positions must not produce NaN/inf"


def test_parity_tied_14_heads_2_kv(tied_ckpt):
    hf, path = tied_ckpt
    ours = load_model(path)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    assert ours.config.num_attention_heads == 14 and ours.config.num_key_value_heads == 2
    assert_parity(hf, ours, ours.config.vocab_size)


def test_repeated_heads_path_equals_grouped_heads(tied_ckpt, monkeypatch):
    # On CUDA a masked attention repeats the key/value heads (qwen2/attention.py); run that path here.
    hf, path = tied_ckpt
    import qwen2.attention

    monkeypatch.setattr(qwen2.attention, "REPEAT_HEADS_ON", ("cpu",))
    ours = load_model(path)
    assert_parity(hf, ours, ours.config.vocab_size)


def test_parity_untied_other_gqa_ratio(untied_ckpt):
    hf, path = untied_ckpt
    ours = load_model(path)
    assert ours.lm_head.weight is not ours.model.embed_tokens.weight
    assert not torch.equal(ours.lm_head.weight, ours.model.embed_tokens.weight)
    assert_parity(hf, ours, UNTIED["vocab_size"])


@pytest.mark.parametrize("tied", [True, False])
def test_parity_sharded_checkpoint(tmp_path, tied):
    hf = hf_model(seed=3, **({} if tied else UNTIED))
    path = save_hf(hf, tmp_path / "sharded", max_shard_size="60KB")
    shards = sorted(p.name for p in path.glob("model-*.safetensors"))
    assert len(shards) > 2 and (path / "model.safetensors.index.json").is_file()
    assert_parity(hf, load_model(path), hf.config.vocab_size)


def test_bf16_load_path(tied_ckpt):
    hf, path = tied_ckpt
    ours = load_model(path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    ids, mask = ragged_batch(ours.config.vocab_size, [9, 4], seed=2)
    with torch.no_grad():
        ref, got = hf_logits(hf, ids, mask), ours(ids, Padded.of(mask)).float()
    real = mask.bool()
    # bf16 keeps ~3 significant digits: compare relative to the logit scale.
    err = (ref - got).abs()[real].max().item()
    assert err <= 0.05 * ref.abs().max().item(), err
    assert (ref.argmax(-1) == got.argmax(-1))[real].float().mean() > 0.9


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("shard", [None, "50KB"])
def test_round_trip_save_model_to_transformers(tmp_path, tied, shard):
    import transformers

    hf = hf_model(seed=4, **({} if tied else UNTIED))
    ours = load_model(save_hf(hf, tmp_path / "src"))
    out = tmp_path / "ours"
    save_model(ours, out, **({"max_shard_size": shard} if shard else {}))
    assert (out / "model.safetensors.index.json").is_file() == (shard is not None)
    back = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    ids, mask = ragged_batch(ours.config.vocab_size, [8, 3], seed=3)
    ref = hf_logits(hf, ids, mask)
    assert (hf_logits(back, ids, mask) - ref).abs()[mask.bool()].max() <= TOL
    # and our own loader reads what we wrote
    assert (load_model(out)(ids, Padded.of(mask)).detach() - ref).abs()[mask.bool()].max() <= TOL


def test_cached_decoding_equals_full_forward(untied_ckpt):
    _, path = untied_ckpt
    model = load_model(path)
    ids, mask = ragged_batch(model.config.vocab_size, [6, 10, 3], seed=4)
    B, P = ids.shape
    extra = torch.randint(3, model.config.vocab_size, (B, 5), generator=torch.Generator().manual_seed(0))
    full_ids = torch.cat([ids, extra], 1)
    full_mask = torch.cat([mask, torch.ones_like(extra)], 1)
    with torch.no_grad():
        full = model(full_ids, Padded.of(full_mask))
        cache = model.new_cache(B, P + 8)
        steps = [model(ids, cache.append(mask))]
        for t in range(extra.shape[1]):
            steps.append(model(extra[:, t:t + 1], cache.append()))
    cached = torch.cat(steps, 1)
    real = full_mask.bool()
    assert (cached - full).abs()[real].max() <= TOL
    # dropping a row and duplicating another (what the sampler does) keeps rows exact
    with torch.no_grad():
        cache = model.new_cache(B, P + 8)
        model(ids, cache.append(mask))
        cache.select(torch.tensor([2, 2, 0]))
        nxt = model(extra[[2, 2, 0], :1], cache.append())
    assert (nxt[:, 0] - full[[2, 2, 0], P]).abs().max() <= TOL


def test_config_classic_and_transformers5_forms(tmp_path):
    classic = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "rope_theta": 5000.0,
               "torch_dtype": "bfloat16", "tie_word_embeddings": False, "some_future_key": 1}
    v5 = {k: v for k, v in classic.items() if k not in ("rope_theta", "torch_dtype")}
    v5.update(rope_parameters={"rope_theta": 5000.0, "rope_type": "default"}, dtype="bfloat16")
    for raw in (classic, v5):
        (tmp_path / "config.json").write_text(json.dumps(raw))
        cfg = Qwen2Config.from_json(tmp_path)
        assert (cfg.rope_theta, cfg.torch_dtype, cfg.head_dim, cfg.tie_word_embeddings) == (5000.0, "bfloat16", 16, False)


@pytest.mark.parametrize("name,billions", [("Qwen2.5-0.5B-Instruct", 0.49), ("Qwen/Qwen2.5-1.5B-Instruct", 1.54),
                                           ("Qwen2.5-3B-Instruct", 3.09), ("Qwen2.5-7B-Instruct", 7.62)])
def test_from_name_real_shapes(name, billions):
    cfg = Qwen2Config.from_name(name)
    with torch.device("meta"):
        model = Qwen2(cfg)
    n = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    assert n == cfg.num_params
    assert round(n / 1e9, 2) == billions  # the sizes on the model cards
    with pytest.raises(ValueError, match="known: "):
        Qwen2Config.from_name("Qwen2.5-2B")
