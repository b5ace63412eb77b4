"""The CUDA path: logits and greedy sampling against transformers on the GPU, the pipelined offload
against the synchronous CPU path, train.py steps and an exact resume on the GPU.

Every test takes the `device` fixture: "cuda" when torch sees a GPU; "cpu" when GPU_CHECK_SMOKE=1
(set by `scripts/gpu_check.py --smoke`, so that this code runs, and cannot rot, on machines without
a GPU); otherwise the test is skipped ("needs CUDA"). `scripts/gpu_check.py --only cuda-tests`
runs this file and tests/test_optim.py (whose CUDA tests stay there).
"""

from __future__ import annotations

import os

# cuBLAS reads its workspace setting when it creates its handles, at the first matmul on the GPU: set
# here, at collection, before any test runs, so that the resume test's deterministic mode holds for
# cuBLAS (set inside that test, after earlier tests' matmuls, it would have no effect).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.distributed.checkpoint as dcp
import torch.utils.deterministic

import train
from conftest import UNTIED, hf_model, save_hf
from grpo.machinery.checkpoint import latest_checkpoint
from grpo.plan.memory import optimizer_state_bytes
from grpo.optim.adamw import OffloadAdamW
from qwen2 import GREEDY, Padded, generate, load_model
from test_model import hf_logits, ragged_batch
from test_optim import roundtrip, set_grads
from test_sampler import STOP, ragged_prompts
from tiny_run import metrics, without_times, write_config

SMOKE_ENV = "GPU_CHECK_SMOKE"


@pytest.fixture
def device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get(SMOKE_ENV) == "1":
        return "cpu"  # scripts/gpu_check.py --smoke: the same code on the CPU
    pytest.skip("needs CUDA")


# -- the model and the sampler against transformers, on the device -----------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_logits_match_transformers_in_fp32_and_bf16(device, tmp_path, tied):
    hf = hf_model(seed=11, **({} if tied else UNTIED))
    path = save_hf(hf, tmp_path / "ckpt")
    ids, mask = ragged_batch(hf.config.vocab_size, [17, 5, 11, 1], seed=1)
    ids, mask = ids.to(device), mask.to(device)
    real = mask.bool()

    hf = hf.to(device)
    ours = load_model(path, device=device)
    with torch.no_grad():
        ref, got = hf_logits(hf, ids, mask), ours(ids, Padded.of(mask))
    assert got.device.type == device and got.dtype == torch.float32
    d = (ref - got).abs()[real].max().item()
    assert d <= 1e-4, f"fp32 on {device}: max |logits difference| = {d}"

    # bf16 keeps ~3 significant digits: compare relative to the logit scale, and the argmax.
    import transformers

    hf16 = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device).eval()
    ours16 = load_model(path, device=device, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and p.device.type == device for p in ours16.parameters())
    with torch.no_grad():
        ref16, got16 = hf_logits(hf16, ids, mask).float(), ours16(ids, Padded.of(mask)).float()
    scale = ref.abs().max().item()
    assert (ref16 - got16).abs()[real].max().item() <= 0.05 * scale, "ours vs transformers, both bf16"
    assert (got16 - ref).abs()[real].max().item() <= 0.05 * scale, "ours bf16 vs the fp32 logits"
    assert (ref16.argmax(-1) == got16.argmax(-1))[real].float().mean() > 0.9


def hf_greedy(hf, prompts, max_new, stop, device):
    """transformers' greedy completions of left-padded prompts, cut after the stop token."""
    P = max(map(len, prompts))
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                      eos_token_id=stop, pad_token_id=0)[:, P:].tolist()
    return [row[: row.index(stop) + 1] if stop in row else row for row in out]


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_sampler_greedy_equals_transformers_on_a_ragged_batch(device, tmp_path, compile):
    """Eager, and the compiled static-shape decode (CUDA graphs on a GPU: what rollouts use there)."""
    if compile and device == "cpu":
        pytest.skip("the compiled decode on a CPU: tests/test_compile.py (a compile here would cost the smoke run ~30 s)")
    hf = hf_model(seed=7, **UNTIED)
    with torch.no_grad():
        hf.lm_head.weight[STOP] *= 3.0  # rows stop at different steps
    ours = load_model(save_hf(hf, tmp_path / "ckpt"), device=device)
    hf = hf.to(device)
    prompts = ragged_prompts(ours.config.vocab_size, [3, 11, 7, 1, 15, 9], seed=1)
    ref = hf_greedy(hf, prompts, 24, STOP, device)
    got = generate(ours, prompts, 24, GREEDY, stop_token_ids=[STOP], compact_every=2, compile=compile)
    assert got.tokens == ref
    assert got.finished == [STOP in r for r in ref]
    assert len({len(r) for r in ref}) > 1 and any(got.finished) and not all(got.finished)


# -- OffloadAdamW: the pipelined offload against the synchronous CPU path ----------------------------

# Small tensors in several buckets (both staging slots reused), plus tensors large enough that the
# asynchronous copies take real time; one fp32 parameter (its own bucket, fp32 bytes in the slots).
SHAPES = [(7, 5), (13,), (3, 4, 5), (1,), (6, 6)] + [(512, 256)] * 4 + [(300,)]
# On a GPU, also parameters of a real model's size (4M elements, a 7B model's smaller matrices): each
# bucket's copies then take ~1 ms over PCIe and its CPU update several, long enough that a copy not
# ordered after the update it depends on (or a read of the weights not ordered after their copy back)
# reads stale bytes instead of, by luck, finished ones.
LARGE = [(2048, 2048)] * 4
FP32 = {2}
BUCKET = 150_000


def mixed_params(device: str, shapes: list[tuple[int, ...]] = SHAPES) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(torch.float32 if i in FP32 else torch.bfloat16).to(device))
            for i, s in enumerate(shapes)]


def run_offload(device: str, steps: int = 10, save_at: int | None = None, shapes: list[tuple[int, ...]] = SHAPES,
                **kw) -> tuple[list, OffloadAdamW]:
    """`steps` AdamW steps on the same gradients for every run; right after each step, the model's
    weights read on the default stream (as the next forward would) must be the rounded masters.
    With `save_at`, the optimizer is saved there and a fresh one (and copy of the weights) resumes."""
    kw = dict(lr=1e-3, weight_decay=0.1, offload=True, bucket_numel=BUCKET) | kw
    params = mixed_params(device, shapes)
    opt = OffloadAdamW(params, **kw)
    gen = torch.Generator().manual_seed(123)
    for t in range(steps):
        if t == save_at:
            state = roundtrip(opt.state_dict())
            params = [torch.nn.Parameter(p.detach().clone()) for p in params]
            opt = OffloadAdamW(params, **kw)
            opt.load_state_dict(state)
        set_grads(params, gen)
        opt.step()
        for p in params:  # .cpu() is ordered on the current stream: no explicit synchronize
            assert torch.equal(p.detach().cpu(), opt.state[p]["master"].cpu().to(p.dtype)), f"stale weights after step {t + 1}"
    return params, opt


def test_pipelined_offload_equals_the_synchronous_cpu_path_and_resumes_exactly(device):
    # On a CPU (smoke mode) pipeline=True runs the pipeline's code with synchronous copies.
    pipeline = None if device == "cuda" else True
    shapes = SHAPES + (LARGE if device == "cuda" else [])
    ref, ref_opt = run_offload("cpu", pipeline=False, shapes=shapes)  # the synchronous CPU path
    got, opt = run_offload(device, pipeline=pipeline, shapes=shapes)
    assert len(got) == len(ref) == len(shapes)
    if device == "cuda":
        assert list(opt._pipelines) == [torch.device("cuda", torch.cuda.current_device())]
        pipe = next(iter(opt._pipelines.values()))
        assert pipe.copy_stream is not None and all(s.is_pinned() for s in pipe.slots)
    assert opt._pipelines, "the offloaded step must go through the staging pipeline"
    for p, r in zip(got, ref):
        assert p.device.type == device and p.dtype == r.dtype
        master, ref_master = opt.state[p]["master"], ref_opt.state[r]["master"]
        assert master.device.type == "cpu" and master.dtype == torch.float32
        assert (master - ref_master).abs().max().item() <= 1e-6
        assert torch.equal(p.detach().cpu(), master.to(p.dtype))
        assert opt.state[p]["step"].item() == 10

    # The planner's bytes are what was allocated (staging slots in pinned memory on a GPU).
    plan = optimizer_state_bytes(got, offload=True, bucket_numel=BUCKET, pipeline=pipeline)
    assert plan["staging"] == sum(s.numel() for pipe in opt._pipelines.values() for s in pipe.slots)
    assert plan["scratch"] == sum(b.numel() * b.element_size() for b in opt._scratch.values())

    resumed, resumed_opt = run_offload(device, save_at=5, pipeline=pipeline, shapes=shapes)
    for p, q in zip(got, resumed):
        assert torch.equal(p.detach().cpu(), q.detach().cpu())
        for key in ("master", "exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], resumed_opt.state[q][key]), key


# -- train.py on the device ----------------------------------------------------------------------------


@pytest.mark.parametrize("offload", [True, False])
def test_one_train_step(device, tmp_path, tiny_model, offload):
    dtype = "bfloat16" if device == "cuda" else "float32"
    cfg = write_config(tmp_path, tiny_model, model={"device": device, "dtype": dtype}, optim={"offload": offload},
                       train={"steps": 1, "eval_every": 1, "eval_size": 3, "save_every": 1})
    assert train.main(["--config", str(cfg)]) == 0
    rows = metrics(tmp_path / "run")
    steps = [r for r in rows if "reward" in r]
    assert [r["step"] for r in steps] == [1]
    assert steps[0]["trained_episodes"] > 0 and steps[0]["grad_norm"] > 0 and steps[0]["kl"] >= 0
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [0, 1]
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt.name == "step_000001"
    model = load_model(ckpt / "model")
    assert next(model.parameters()).dtype == getattr(torch, dtype)
    before = load_model(tiny_model, dtype=getattr(torch, dtype))
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, before.model.layers[0].mlp.up_proj.weight)
    # The optimizer is a torch.distributed.checkpoint directory; its metadata holds every tensor's dtype.
    saved = dcp.FileSystemReader(str(ckpt / "optimizer")).read_metadata().state_dict_metadata
    masters = [m for key, m in saved.items() if key.endswith(".master")]
    assert masters and all(m.properties.dtype == torch.float32 for m in masters)


def test_resume_equals_an_uninterrupted_run(device, tmp_path, tiny_model):
    """2 steps + resume 1 == 3 steps, with the offloaded optimizer. Sampling is seeded per device and
    deterministic, but some CUDA backward kernels (atomics in the memory-efficient attention and
    embedding backward) are not bit-reproducible by default: on a GPU the run uses
    torch.use_deterministic_algorithms where torch has them, and compares metrics to 1e-5 relative
    (the sampled tokens, rewards and counts then match exactly; a flipped token would not pass)."""
    fill = torch.utils.deterministic.fill_uninitialized_memory
    if device == "cuda":  # (CUBLAS_WORKSPACE_CONFIG: set at the top of this file, before cuBLAS starts)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False  # a resume test, not an uninitialised-memory one
    try:
        common = dict(model={"device": device}, optim={"offload": True}, train={"save_every": 100, "eval_every": 0})
        full = write_config(tmp_path, tiny_model, out="full", **common)
        split = write_config(tmp_path, tiny_model, out="split", **common)
        assert train.main(["--config", str(full)]) == 0
        assert train.main(["--config", str(split), "--stop-after", "2"]) == 0
        assert latest_checkpoint(tmp_path / "split").name == "step_000002"
        assert train.main(["--resume", str(tmp_path / "split")]) == 0
    finally:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = fill
    a, b = without_times(metrics(tmp_path / "full")), without_times(metrics(tmp_path / "split"))
    assert [r["step"] for r in b] == [1, 2, 3]
    assert any(r["trained_episodes"] for r in a)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        assert rb == pytest.approx(ra, rel=1e-5, abs=1e-7)
    if device == "cpu":
        assert a == b
