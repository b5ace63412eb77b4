"""Qwen3 (dense) on the one model: our logits equal transformers' Qwen3ForCausalLM (fp32, CPU) on
random-weight checkpoints written by its save_pretrained, in every layout the trainer uses (padded,
KV cache, compiled static decode, shared prefix), greedy decoding equals its generate, PEFT reads
our adapters, and the real shapes of the family are known by name."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import perturbed, save_hf
from qwen2 import GREEDY, Causal, Padded, Qwen2, Qwen2Config, SamplingParams, generate, load_model, save_model
from qwen2.errors import InputError
from qwen2.lora import TARGETS, add_lora, load_adapter, merge_lora, save_adapter
from qwen2.shared_prefix import shared_prefix_layout
from test_model import TOL, assert_parity, hf_logits, ragged_batch
from test_sampler import STOP, assert_greedy_equals_transformers, hf_greedy, ragged_prompts

# Qwen3-0.6B's widths (hidden 1024, 16 query heads of 128 = 2048 wide, 8 KV heads, MLP 3072, its
# rope_theta and context), with 2 layers and a small vocabulary.
REAL = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=16,
            num_key_value_heads=8, head_dim=128, vocab_size=384, tie_word_embeddings=True,
            max_position_embeddings=40960, rope_theta=1e6)
# An odd one: 6 heads x 16 = 96 wide on a hidden size of 48, 3 query heads per KV head, untied, and
# attention_bias on (transformers' Qwen3 then biases q/k/v and o_proj).
ODD = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
           num_key_value_heads=2, head_dim=16, vocab_size=256, tie_word_embeddings=False, attention_bias=True,
           max_position_embeddings=512, rope_theta=10000.0)
# The small model of the decoding tests: no bias (as every released Qwen3), 4 heads x 32 on 64.
SMALL = dict(ODD, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, head_dim=32,
             attention_bias=False)


def hf_qwen3(seed: int = 0, **shape):
    """A random transformers.Qwen3ForCausalLM in fp32 with non-trivial norms (q_norm and k_norm too) and biases."""
    import transformers

    cfg = transformers.Qwen3Config(**shape, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    return perturbed(transformers.Qwen3ForCausalLM(cfg).float().eval())


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(transformers' model, ours) of the SMALL shape, its stop token made likely (rows end at different steps)."""
    hf = hf_qwen3(seed=7, **SMALL)
    with torch.no_grad():
        hf.lm_head.weight[STOP] *= 2.0
    return hf, load_model(save_hf(hf, tmp_path_factory.mktemp("qwen3") / "small"))


@pytest.mark.parametrize("tied", [True, False])
def test_parity_qwen3_0_6b_widths(tmp_path, tied):
    hf = hf_qwen3(seed=1, **dict(REAL, tie_word_embeddings=tied))
    path = save_hf(hf, tmp_path / "m")
    assert json.loads((path / "config.json").read_text())["model_type"] == "qwen3"
    ours = load_model(path)
    c = ours.config
    assert (c.model_type, c.qk_norm, c.attention_bias, c.head_dim) == ("qwen3", True, False, 128)
    attn = ours.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (2048, 1024) and attn.o_proj.weight.shape == (1024, 2048)
    assert attn.q_proj.bias is None and attn.k_proj.bias is None and attn.o_proj.bias is None
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (128,)
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tied
    assert sum(p.numel() for p in ours.parameters()) == c.num_params == sum(p.numel() for p in hf.parameters())
    assert_parity(hf, ours, c.vocab_size)


def test_parity_heads_times_head_dim_not_hidden_with_bias(tmp_path, monkeypatch):
    hf = hf_qwen3(seed=2, **ODD)
    ours = load_model(save_hf(hf, tmp_path / "m"))
    attn = ours.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (96, 48) and attn.o_proj.bias is not None
    assert ours.lm_head.weight is not ours.model.embed_tokens.weight
    assert sum(p.numel() for p in ours.parameters()) == ours.config.num_params
    assert_parity(hf, ours, ODD["vocab_size"])
    import qwen2.attention  # and CUDA's masked path (key/value heads repeated), run on the CPU

    monkeypatch.setattr(qwen2.attention, "REPEAT_HEADS_ON", ("cpu",))
    assert_parity(hf, ours, ODD["vocab_size"])


@pytest.mark.parametrize("tied", [True, False])
def test_save_model_writes_a_qwen3_that_transformers_loads(tmp_path, tied):
    import transformers

    hf = hf_qwen3(seed=4, **dict(SMALL, tie_word_embeddings=tied))
    ours = load_model(save_hf(hf, tmp_path / "src"))
    save_model(ours, tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["model_type"] == "qwen3" and written["architectures"] == ["Qwen3ForCausalLM"]
    assert written["head_dim"] == 32 and written["attention_bias"] is False
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").float().eval()
    assert type(back).__name__ == "Qwen3ForCausalLM"
    ids, mask = ragged_batch(SMALL["vocab_size"], [8, 3], seed=3)
    ref = hf_logits(hf, ids, mask)
    assert (hf_logits(back, ids, mask) - ref).abs()[mask.bool()].max() <= TOL
    assert (load_model(tmp_path / "ours")(ids, Padded.of(mask)).detach() - ref).abs()[mask.bool()].max() <= TOL


def test_cached_decoding_equals_full_forward(small):
    _, model = small
    ids, mask = ragged_batch(model.config.vocab_size, [6, 10, 3], seed=4)
    B, P = ids.shape
    extra = torch.randint(3, model.config.vocab_size, (B, 5), generator=torch.Generator().manual_seed(0))
    full_mask = torch.cat([mask, torch.ones_like(extra)], 1)
    with torch.no_grad():
        full = model(torch.cat([ids, extra], 1), Padded.of(full_mask))
        cache = model.new_cache(B, P + 8)
        assert cache.k.shape[-1] == 32  # head_dim, not hidden_size / heads (16)
        steps = [model(ids, cache.append(mask))]
        for t in range(extra.shape[1]):
            steps.append(model(extra[:, t:t + 1], cache.append()))
    assert (torch.cat(steps, 1) - full).abs()[full_mask.bool()].max() <= TOL


def test_shared_prefix_rows_equal_separate_rows(small):
    # One packed row [prompt | c_1 | c_2 | c_3 | padding] computes what the rows [prompt | c_i] compute.
    _, model = small
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, 256, (7,), generator=g)
    completions = [torch.randint(3, 256, (n,), generator=g) for n in (4, 9, 2)]
    width = 7 + 15 + 3
    packed = torch.cat([prompt, *completions, torch.zeros(3, dtype=torch.long)])[None]
    layout = shared_prefix_layout([7], [[len(c) for c in completions]], width)
    with torch.no_grad():
        got = model(packed, layout)[0]
        start = 7
        for c in completions:
            want = model(torch.cat([prompt, c])[None], Causal.of(torch.cat([prompt, c])[None]))[0]
            assert (got[:7] - want[:7]).abs().max() <= TOL
            assert (got[start:start + len(c)] - want[7:]).abs().max() <= TOL
            start += len(c)


@pytest.mark.parametrize("cuda_path", [False, True])
def test_greedy_equals_transformers_on_a_ragged_batch(small, cuda_path, monkeypatch):
    assert_greedy_equals_transformers(*small, cuda_path, monkeypatch)  # the Qwen2 test, on a Qwen3


def test_compiled_decode_equals_eager_and_transformers(small):
    # One compile (slow on a CPU): greedy tokens against eager and transformers, seeded samples against eager.
    hf, ours = small
    prompts = ragged_prompts(ours.config.vocab_size, [3, 11, 7, 1, 9], seed=2)
    rows = [p for p in prompts for _ in range(2)]
    eager = generate(ours, rows, 20, GREEDY, stop_token_ids=[STOP], compact_every=2)
    compiled = generate(ours, rows, 20, GREEDY, stop_token_ids=[STOP], compact_every=2, compile=True)
    assert compiled.tokens == eager.tokens == hf_greedy(hf, rows, 20, STOP)
    kw = dict(stop_token_ids=[STOP], compact_every=3, return_logprobs=True)
    sampling = SamplingParams(temperature=0.9, top_p=0.95)
    a = generate(ours, rows, 16, sampling, generator=torch.Generator().manual_seed(11), **kw)
    b = generate(ours, rows, 16, sampling, generator=torch.Generator().manual_seed(11), compile=True, **kw)
    assert a.tokens == b.tokens
    assert max(abs(x - y) for la, lb in zip(a.logprobs, b.logprobs) for x, y in zip(la, lb)) < 1e-5


def test_peft_reads_our_qwen3_adapter_and_merging_writes_a_qwen3(small, tmp_path):
    import transformers
    from peft import PeftModel

    hf, ours = small
    base = save_hf(hf, tmp_path / "base")
    model = load_model(base)
    add_lora(model, 4, 8.0, TARGETS, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=g)
    assert not any("norm" in n for n, p in model.named_parameters() if p.requires_grad)
    ids = torch.randint(0, SMALL["vocab_size"], (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids)
        assert not torch.allclose(want, ours(ids))  # the adapters matter
    save_adapter(model, tmp_path / "adapter", base_model=str(base))
    peft_model = PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "adapter").eval()  # PEFT edits the model it wraps
    with torch.no_grad():
        assert (peft_model(ids).logits - want).abs().max().item() <= 1e-4
    # scripts/merge_lora.py's steps: the merged model is written back as a Qwen3 transformers loads.
    merged = load_model(base)
    load_adapter(merged, tmp_path / "adapter")
    merge_lora(merged)
    save_model(merged, tmp_path / "merged")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").float().eval()
    assert type(back).__name__ == "Qwen3ForCausalLM"
    with torch.no_grad():
        assert (back(ids).logits - want).abs().max().item() <= 1e-4


# Qwen3-0.6B's config.json as published (transformers 4.51 form).
QWEN3_0_6B_JSON = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024, "initializer_range": 0.02,
    "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}


def test_config_reads_a_published_qwen3_config_and_refuses_what_it_cannot_run():
    assert Qwen2Config.from_dict(QWEN3_0_6B_JSON) == Qwen2Config.from_name("Qwen/Qwen3-0.6B")
    for bad, message in [
        (dict(QWEN3_0_6B_JSON, model_type="qwen3_moe"), "model_type='qwen3_moe', not 'qwen2' or 'qwen3'"),
        (dict(QWEN3_0_6B_JSON, use_sliding_window=True), "sliding-window attention"),
        (dict(QWEN3_0_6B_JSON, layer_types=["full_attention", "sliding_attention"]), "sliding-window attention"),
        (dict(QWEN3_0_6B_JSON, rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope scaling"),
    ]:
        with pytest.raises(InputError, match=message):
            Qwen2Config.from_dict(bad)
    # A Qwen2 config: q/k/v biases whatever it says, and its config.json gains no Qwen3 key.
    qwen2 = Qwen2Config.from_dict({"model_type": "qwen2", "attention_bias": False, "hidden_size": 64,
                                   "num_attention_heads": 4, "num_key_value_heads": 2})
    assert qwen2.attention_bias and not qwen2.qk_norm and "attention_bias" not in qwen2.to_dict()


@pytest.mark.parametrize("name,billions,non_embedding", [
    # The model cards' "Number of Parameters" and "(Non-Embedding)".
    ("Qwen3-0.6B", 0.6, 0.44), ("Qwen/Qwen3-1.7B", 1.7, 1.4), ("Qwen3-4B", 4.0, 3.6), ("Qwen3-8B", 8.2, 6.95),
    ("Qwen3-14B", 14.8, 13.2), ("Qwen3-4B-Instruct-2507", 4.0, 3.6), ("Qwen3-8B-Base", 8.2, 6.95)])
def test_from_name_qwen3_shapes(name, billions, non_embedding):
    cfg = Qwen2Config.from_name(name)
    with torch.device("meta"):
        model = Qwen2(cfg)
    n = sum(p.numel() for p in model.parameters())
    embeddings = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    assert n == cfg.num_params and cfg.model_type == "qwen3" and cfg.head_dim == 128
    digits = len(str(non_embedding).split(".")[1])  # to the card's precision
    assert round(n / 1e9, 1) == billions and round((n - embeddings) / 1e9, digits) == non_embedding
    if name == "Qwen3-0.6B":
        assert n == 596_049_920
    assert cfg.max_position_embeddings == (32768 if name.endswith("-Base") else 262144 if "2507" in name else 40960)


def test_a_qwen3_shaped_tiny_model_trains_grpo_steps_through_train_py(tmp_path):
    """q/k norms, no q/k/v bias and a head_dim that is not hidden / heads, through the whole trainer:
    rollouts, the shared-prefix update, checkpoints (a Qwen3 config.json) and an exact resume."""
    import json

    import train
    from grpo.machinery.checkpoint import latest_checkpoint
    from tiny_run import build_tiny_model, metrics, without_times, write_config

    model_dir = build_tiny_model(tmp_path / "qwen3", model_type="qwen3", attention_bias=False, head_dim=16)
    full = write_config(tmp_path, model_dir, out="full", train={"save_every": 100, "eval_every": 0})
    split = write_config(tmp_path, model_dir, out="split", train={"save_every": 100, "eval_every": 0})
    assert train.main(["--config", str(full)]) == 0
    assert train.main(["--config", str(split), "--stop-after", "2"]) == 0
    assert train.main(["--resume", str(tmp_path / "split")]) == 0
    rows = without_times(metrics(tmp_path / "full"))
    assert rows == without_times(metrics(tmp_path / "split")) and any(r["trained_episodes"] for r in rows)
    saved = json.loads((latest_checkpoint(tmp_path / "full") / "model" / "config.json").read_text())
    assert saved["model_type"] == "qwen3" and saved["head_dim"] == 16
    trained = load_model(latest_checkpoint(tmp_path / "full") / "model")
    assert not torch.equal(trained.model.layers[0].self_attn.q_norm.weight,
                           load_model(model_dir).model.layers[0].self_attn.q_norm.weight), "q_norm never trained"


def test_a_tiny_qwen3_base_model_starts_through_sft(tmp_path):
    """A base Qwen3 (q/k norms, no q/k/v bias, head_dim 16 != 48 / 4; eos <|endoftext|> as Qwen3-*-Base)
    goes through scripts/sft.py as Qwen2.5 base models do: the loss falls, the result is a Qwen3
    checkpoint whose tokenizer ends turns with <|im_end|>, and train.py's loader reads it."""
    import subprocess
    import sys
    from pathlib import Path

    from data.synthetic import make_problems, write_jsonl
    from qwen2 import Tokenizer
    from tiny_run import build_tiny_model

    base = build_tiny_model(tmp_path / "base", model_type="qwen3", attention_bias=False, head_dim=16)
    tok_cfg = json.loads((base / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "eos_token": "<|endoftext|>"}))
    cfg = json.loads((base / "config.json").read_text())
    cfg["eos_token_id"] = Tokenizer.from_pretrained(base).token_to_id("<|endoftext|>")
    (base / "config.json").write_text(json.dumps(cfg))
    assert Tokenizer.from_pretrained(base).eos_token_id == cfg["eos_token_id"]

    data = write_jsonl(make_problems(8, seed=3), tmp_path / "train.jsonl")
    out = tmp_path / "sft"
    res = subprocess.run([sys.executable, "scripts/sft.py", "--model", str(base), "--data", str(data), "--out", str(out),
                          "--steps", "8", "--batch-size", "8", "--lr", "3e-3", "--device", "cpu", "--dtype", "float32",
                          "--log-every", "1"], cwd=Path(__file__).parent.parent, capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr
    assert "setting eos_token to <|im_end|>" in res.stdout
    losses = [float(line.split("| loss ")[1].split()[0]) for line in res.stdout.splitlines() if "| loss " in line]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "qwen3" and saved["head_dim"] == 16 and not saved["attention_bias"]
    tuned = load_model(out)
    assert tuned.config.qk_norm and not torch.equal(tuned.model.layers[0].self_attn.q_norm.weight,
                                                    load_model(base).model.layers[0].self_attn.q_norm.weight)
    tokenizer = Tokenizer.from_pretrained(out)
    assert tokenizer.eos_token_id == tokenizer.token_to_id("<|im_end|>") in tokenizer.stop_token_ids
