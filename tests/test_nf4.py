"""NF4 (qwen2/nf4.py): bit for bit torchao's NF4Tensor, a 4-bit base that loads from the bf16
safetensors, trains LoRA through train.py (rollouts, shared-prefix update with checkpointing, the KL
reference with adapters off, evaluation), resumes exactly, and saves an adapter PEFT loads on the
unquantised base; the compiled decode; the planner and the tracer count the 4-bit weights; one-line
refusals for what is not done (full-model saves, merging, torchrun, nf4 without LoRA)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import train
from conftest import ROOT
from grpo.config import ConfigError, load_config
from grpo.machinery.checkpoint import latest_checkpoint
from grpo.plan.memory import GB, plan_memory
from grpo.plan.trace import against_plan, trace_memory
from grpo.policy import refuse_sharded_nf4
from qwen2 import GREEDY, generate, load_model, save_model
from qwen2 import nf4
from qwen2.errors import InputError
from qwen2.lora import adapters_disabled, add_lora, load_adapted_model, merge_lora
from qwen2.nf4 import NF4Linear, quantize, dequantize
from tiny_run import build_tiny_model, metrics, without_times, write_config

IDS = torch.randint(0, 300, (3, 11), generator=torch.Generator().manual_seed(0))


def torchao_nf4(w):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4
    return to_nf4(w, block_size=64, scaler_block_size=256)


def normal_weight(shape, dtype, seed=0, std=0.02):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std).to(dtype)


# Real shapes: Qwen2.5-0.5B's k_proj (128 x 896) and gate_proj (4864 x 896), and a 2048-wide square.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(128, 896), (4864, 896), (2048, 2048)])
def test_codes_scales_and_values_equal_torchao(shape, dtype):
    w = normal_weight(shape, dtype, seed=shape[0])
    ours, ref = quantize(w), torchao_nf4(w)
    assert torch.equal(ours["codes"], ref.quantized_data)  # two 4-bit codes a byte, the same layout
    assert torch.equal(ours["scale_codes"], ref.quantized_scalers)  # int8 scales (double quantisation)
    assert torch.equal(ours["scale_factor"], ref.quantization_factor)
    assert torch.equal(ours["scale_mean"], ref.scaler_mean)
    back = dequantize(**ours, shape=shape)
    assert back.dtype == dtype and torch.equal(back, ref.get_original_weight())
    # Every code is used (NF4's values are normal quantiles: none is wasted on a normal weight).
    assert torch.cat([ours["codes"] >> 4, ours["codes"] & 15]).unique().numel() == 16


def test_quantisation_error_is_that_of_4_bits():
    """Within half a code-book step of each block's scale (+ the 8-bit scale error), and a relative
    RMS error near the ~10% of 4-bit NF4 on normal weights (docs/qlora.md reports it)."""
    w = normal_weight((4864, 896), torch.float32, seed=1)
    back = nf4.dequantize(**quantize(w), shape=w.shape)
    err = (back - w).view(-1, 64)
    absmax = w.view(-1, 64).abs().amax(1, keepdim=True)
    half_step = max(b - a for a, b in zip(nf4.CODE_BOOK, nf4.CODE_BOOK[1:])) / 2
    assert (err.abs() <= absmax * (half_step + 0.01)).all()
    rel = (err.norm() / w.norm()).item()
    assert 0.05 < rel < 0.15


def test_sizes_that_torchao_refuses_and_degenerate_blocks():
    """Scales not a multiple of 256 (the tiny models): the last scaler block is padded, and its
    scales come back as well as the others'; zero blocks stay exactly zero; a weight whose block
    maxima are all equal (every centred scale 0) comes back finite."""
    w = normal_weight((96, 48), torch.float32)  # 72 blocks: a third of one scaler block
    q = quantize(w)
    assert q["scale_factor"].numel() == 1 and q["scale_codes"].numel() == 72
    scales = nf4.dequantize_scales(q["scale_codes"], q["scale_factor"], q["scale_mean"])
    true = w.view(-1, 64).abs().amax(1)
    step = 2 * (true - true.mean()).abs().max() / 256  # the largest scale, at +128, is clamped to 127: one step off
    assert ((scales - true).abs() <= step * 1.001).all() and ((scales - true).abs() <= step / 2 * 1.001).float().mean() > 0.9
    w[:32] = 0  # 24 blocks of zeros
    back = nf4.dequantize(**quantize(w), shape=w.shape)
    assert torch.equal(back[:32], torch.zeros(32, 48)) and (back[32:] != 0).any()
    signs = torch.ones(64, 64)
    signs[:, ::2] = -1
    back = nf4.dequantize(**quantize(signs), shape=signs.shape)
    assert torch.equal(back, signs)
    with pytest.raises(ValueError, match="multiple of 64"):
        quantize(torch.ones(3, 7))


def test_the_layer_computes_the_dequantised_linear_and_keeps_no_full_weight_for_backward():
    linear = torch.nn.Linear(192, 320)
    layer = NF4Linear.from_linear(linear)
    w = layer.dequantize()
    x = torch.randn(5, 192, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = layer(x)
    y2 = F.linear(x2, w, linear.bias)
    assert torch.allclose(y, y2, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)
    assert max(saved, default=0) < w.numel()  # the dequantised weight is made again in backward
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, w, linear.bias))


@pytest.fixture(scope="module")
def quantized(tiny_model):
    return load_model(tiny_model), load_model(tiny_model, quantize="nf4")


def test_loading_quantises_every_block_projection_and_nothing_else(tiny_model, quantized):
    full, q = quantized
    kinds = {name: type(m).__name__ for name, m in q.named_modules()}
    projections = [n for n in kinds if n.rsplit(".", 1)[-1] in nf4.BLOCK_LINEARS]
    assert len(projections) == 7 * full.config.num_hidden_layers
    assert all(kinds[n] == "NF4Linear" for n in projections)
    assert kinds["lm_head"] == "Linear" and kinds["model.embed_tokens"] == "Embedding"
    for name in projections:  # each is the quantisation of its checkpoint weight
        want = nf4.dequantize(**quantize(full.get_submodule(name).weight), shape=full.get_submodule(name).weight.shape)
        assert torch.equal(q.get_submodule(name).dequantize(), want)
    own = dict(full.named_parameters())
    for name, p in q.named_parameters():  # norms, biases, embedding, head: as loaded
        assert torch.equal(p, own[name])
    # The logits are the base model's, to 4-bit precision.
    with torch.no_grad():
        a, b = full(IDS), q(IDS)
    assert 0 < (a - b).norm() / a.norm() < 0.5
    # In bf16 (model.dtype bfloat16): each weight is cast, then quantised in bf16 arithmetic.
    half = load_model(tiny_model, dtype=torch.bfloat16, quantize="nf4")
    for name in projections[:3]:
        want = quantize(full.get_submodule(name).weight.to(torch.bfloat16))
        got = half.get_submodule(name)
        assert torch.equal(got.weight_codes, want["codes"]) and torch.equal(got.weight_scale_factor, want["scale_factor"])
    with pytest.raises(ValueError, match="quantize must be none or nf4"):
        load_model(tiny_model, quantize="int4")


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_lora_on_the_4bit_base_equals_lora_on_its_dequantised_weights(tiny_model, tmp_path, kind):
    """Forward, the gradients of the adapters, and the adapters off (the KL reference); Qwen3's
    q/k norms stay as they are."""
    if kind == "qwen3":
        tiny_model = build_tiny_model(tmp_path / "qwen3", model_type="qwen3", attention_bias=False, head_dim=16)
    q = load_model(tiny_model, quantize="nf4")
    twin = load_model(tiny_model)
    with torch.no_grad():
        for name, m in q.named_modules():
            if isinstance(m, NF4Linear):
                twin.get_submodule(name).weight.copy_(m.dequantize())
    models = []
    for model in (q, twin):
        add_lora(model, 4, 8.0, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
        models.append(model)
    outs = []
    for model in models:
        loss = model(IDS).logsumexp(-1).mean()
        loss.backward()
        with torch.no_grad(), adapters_disabled(model):
            base = model(IDS)
        outs.append((loss, base, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (l1, b1, g1), (l2, b2, g2) = outs
    assert torch.allclose(l1, l2, atol=1e-5) and torch.allclose(b1, b2, atol=1e-5)
    assert g1.keys() == g2.keys() and all(torch.allclose(g1[n], g2[n], atol=1e-5) for n in g1)
    # A full save or a merge of the 4-bit model is refused, in one line.
    with pytest.raises(InputError, match="cannot be saved as a full model"):
        save_model(q, ROOT / "never-written")
    with pytest.raises(InputError, match="cannot merge LoRA into a 4-bit"):
        merge_lora(q)
    assert not (ROOT / "never-written").exists()


def test_compiled_decode_equals_eager_on_the_4bit_base(tiny_model):
    """One compile of the tiny model (~25 s on this CPU, seconds with inductor's cache warm): the
    dequantisation inside the compiled step."""
    model = load_model(tiny_model, quantize="nf4")
    add_lora(model, 4, 8.0, generator=torch.Generator().manual_seed(0))
    prompts = [[5, 9, 13], [7, 8], [11, 3, 4, 6]] * 2
    eager = generate(model, prompts, 10, GREEDY)
    compiled = generate(model, prompts, 10, GREEDY, compile=True)
    assert compiled.tokens == eager.tokens


def qlora_config(tmp_path, tiny_model, out, **train_section):
    return write_config(tmp_path, tiny_model, out=out, model={"quantize": "nf4", "lora": {"rank": 4, "alpha": 8.0}},
                        optim={"lr": 1e-2, "warmup_steps": 1},
                        train={"save_every": 100, "eval_every": 2, **train_section})


def test_train_py_trains_a_4bit_base_resumes_exactly_and_peft_loads_the_adapter(tmp_path, tiny_model):
    """mu = 2, beta > 0 (the reference: the 4-bit base with the adapters off), shared-prefix update
    with activation checkpointing, evaluation: 2 steps + resume + 1 step == 3 steps."""
    full, split = qlora_config(tmp_path, tiny_model, "full"), qlora_config(tmp_path, tiny_model, "split")
    assert train.main(["--config", str(full)]) == 0
    assert train.main(["--config", str(split), "--stop-after", "2"]) == 0
    assert train.main(["--resume", str(tmp_path / "split")]) == 0
    a, b = without_times(metrics(tmp_path / "full")), without_times(metrics(tmp_path / "split"))
    assert [r["step"] for r in b if "loss" in r] == [1, 2, 3] and a == b
    assert any(r.get("kl", 0) > 0 for r in a) and any(r.get("grad_norm", 0) > 0 for r in a)
    assert [r["step"] for r in a if "eval_accuracy" in r] == [0, 2]  # evaluation on the 4-bit model

    adapter = latest_checkpoint(tmp_path / "full") / "adapter"
    assert not (adapter.parent / "model").exists()
    from peft import PeftModel
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_model).float().eval()
    peft_model = PeftModel.from_pretrained(hf, adapter).eval()
    ours = load_adapted_model(adapter)  # the unquantised base + the adapter trained on its 4-bit copy
    ids = IDS % hf.config.vocab_size
    with torch.no_grad():
        want, got = ours(ids), peft_model(ids).logits
        base = load_model(tiny_model)(ids)
    assert (got - want).abs().max().item() <= 1e-4
    assert (want - base).abs().max().item() > 1e-4  # the adapter learned something


@pytest.mark.parametrize("overrides,message", [
    (["model.quantize=nf4"], "model.quantize=nf4 keeps the base frozen in 4 bits: it trains only LoRA adapters"),
    (["model.quantize=int8", "model.lora.rank=8"], "model.quantize must be one of none, nf4"),
])
def test_settings_that_cannot_work_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "config.yaml", overrides)


def test_torchrun_is_refused_in_one_line(tmp_path, tiny_model):
    """Under torchrun (2 gloo ranks): one line, said once, before any weight is read."""
    import subprocess

    from test_distributed import ENV, torchrun_cmd

    cfg = load_config(ROOT / "config.yaml", ["model.quantize=nf4", "model.lora.rank=8"])
    refuse_sharded_nf4(cfg, 1)
    message = "model.quantize=nf4 runs in one process: sharding 4-bit weights with FSDP2 is not supported"
    with pytest.raises(InputError, match=message):
        refuse_sharded_nf4(cfg, 2)
    path = write_config(tmp_path, tiny_model, model={"quantize": "nf4", "lora": {"rank": 4}},
                        reward={"weights": {"format": 0.1, "correctness": 1.0}})
    res = subprocess.run(torchrun_cmd("train.py", "--config", str(path)), cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=ENV)
    assert res.returncode != 0 and "<NO_OTHER_FAILURES>" in res.stderr  # torchrun's own report: one failure
    assert sum(line.startswith(f"error: {message}") for line in res.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_the_plan_counts_the_4bit_weights_the_model_holds(tmp_path, tiny_model, quantized):
    """Planned weight bytes = the loaded model's parameters and buffers; on Qwen2.5-0.5B's layout,
    the tracer, which runs the 4-bit model on the meta device, agrees with the plan within 10%."""
    cfg = load_config(qlora_config(tmp_path, tiny_model, "p"))
    _, q = quantized
    items = {i.name: i for i in plan_memory(cfg, device="cpu")}
    held = sum(t.numel() * t.element_size() for t in [*q.parameters(), *q.buffers()])
    assert items["weights (4-bit NF4 block projections)"].gpu == held
    unquantised = load_config(write_config(tmp_path, tiny_model, out="u", model={"lora": {"rank": 4}}))
    assert plan_memory(unquantised, device="cpu")[0].gpu > held  # (tiny: the embedding and the 14 byte tables weigh)

    from test_trace import BATCH, SMALL

    cfg = load_config(ROOT / "config.yaml", BATCH + ["model.lora.rank=16", "model.quantize=nf4"])
    full = load_config(ROOT / "config.yaml", BATCH + ["model.lora.rank=16"])
    weights = plan_memory(cfg, SMALL)[0].gpu
    assert weights < 0.5 * plan_memory(full, SMALL)[0].gpu  # 0.5B: 4.1 of 16 bits for 0.36B of 0.49B weights
    for trace, planned in against_plan(trace_memory(cfg, SMALL), plan_memory(cfg, SMALL)):
        assert 0.9 <= trace.peak / planned <= 1.1, (trace.phase, trace.peak / GB, planned / GB)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nearest_code_is_the_first_argmin_even_at_ties(dtype):
    """quantize finds each code from its two neighbours: the same as torchao's argmin over all 16
    distances, at the values themselves, at their midpoints (ties) and beyond [-1, 1]."""
    book = nf4.code_book(dtype)
    mids = (book[1:].float() + book[:-1].float()) / 2
    near = torch.cat([mids + d for d in (-1e-3, -1e-7, 0.0, 1e-7, 1e-3)])
    x = torch.cat([book.float(), near, torch.linspace(-1.2, 1.2, 5001)]).to(dtype)
    brute = (x[:, None] - book).abs().min(dim=-1).indices
    assert torch.equal(nf4.nearest_codes(x, book).long(), brute)


QLORA_14B = ["model.path=checkpoints/Qwen2.5-14B-Instruct", "model.lora.rank=16"]


def test_14b_with_a_4bit_base_plans_and_traces_under_24_gb(capsys):
    """The acceptance line of docs/qlora.md: Qwen2.5-14B (real shapes by name, no download), rank 16,
    4 x 8 rows, 4096-token micro-batches, compiled decode: plan + CUDA overhead within 24 GB, and the
    trace (eager decode) within 10% of its plan; the bf16 base does not fit, and --dry-run's advice
    then names the 4-bit base."""
    sets = QLORA_14B + ["model.quantize=nf4", "rollout.prompts_per_step=4", "grpo.micro_batch_tokens=4096"]
    assert train.main(["--dry-run", "--trace", "--card-gb", "24", "--ram-gb", "64",
                       *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert "GPU: fits a card of 24 GB" in out and "weights (4-bit NF4 block projections)" in out
    traced = [line.split() for line in out.splitlines() if line.strip().startswith(("rollout ", "update "))]
    assert len(traced) == 2 and all(0.9 <= float(t[3]) <= 1.1 and float(t[1]) < 24 for t in traced)
    assert train.main(["--dry-run", "--card-gb", "24", "--ram-gb", "64", *[a for s in QLORA_14B for a in ("--set", s)]]) == 1
    out = capsys.readouterr().out
    assert "does NOT fit a card of 24 GB" in out and "--set model.quantize=nf4" in out.split("Try, in order")[1]
