"""Tests for grpo.optim.adamw.OffloadAdamW: parity with torch.optim.AdamW, fp32 master
weights under bf16, exact resume, scheduler / clipping integration."""

import io
import warnings

import pytest
import torch

from grpo.plan.memory import optimizer_state_bytes
from grpo.optim.adamw import OffloadAdamW

SHAPES = [(7, 5), (13,), (3, 4, 5), (1,), (6, 6)]
HAS_FUSED = hasattr(torch, "_fused_adamw_")


def make_params(dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(s, generator=g).to(dtype=dtype, device=device))
        for s in SHAPES
    ]


def set_grads(params, gen):
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(dtype=p.dtype, device=p.device)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def roundtrip(state_dict):
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def run_torch(params, steps=20, **kw):
    opt = torch.optim.AdamW(params, **kw)
    gen = torch.Generator().manual_seed(123)
    for _ in range(steps):
        set_grads(params, gen)
        opt.step()
    return params


def run_ours(params, steps=20, save_at=None, **kw):
    """Run ``steps`` steps; if ``save_at``, save there and continue with a fresh
    optimizer (and a fresh copy of the parameters, as a model checkpoint would)."""
    opt = OffloadAdamW(params, **kw)
    gen = torch.Generator().manual_seed(123)
    for t in range(steps):
        if t == save_at:
            sd = roundtrip(opt.state_dict())
            params = [torch.nn.Parameter(p.detach().clone()) for p in params]
            opt = OffloadAdamW(params, **kw)
            opt.load_state_dict(sd)
        set_grads(params, gen)
        opt.step()
    return params, opt


@pytest.mark.parametrize("offload", [True, False])
@pytest.mark.parametrize("fused", [True, False] if HAS_FUSED else [False])
def test_fp32_matches_torch_adamw_with_resume(offload, fused):
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ref = run_torch(make_params(), **kw)
    straight, _ = run_ours(make_params(), offload=offload, fused=fused, bucket_numel=40, **kw)
    resumed, _ = run_ours(make_params(), save_at=10, offload=offload, fused=fused, bucket_numel=40, **kw)
    for a, r, b in zip(straight, ref, resumed):
        assert rel_err(a, r) <= 1e-5
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)
        assert torch.equal(a, b), "resume from step 10 must be bit-identical"


def test_foreach_path_is_bitwise_torch_adamw():
    kw = dict(lr=1e-2, weight_decay=0.1)
    ref = run_torch(make_params(), **kw)
    ours, _ = run_ours(make_params(), fused=False, **kw)
    for a, r in zip(ours, ref):
        assert torch.equal(a, r)


def bf16_spacing(x):
    """Gap between consecutive bf16 numbers in the binade of ``x`` (8 significant bits)."""
    return torch.exp2(torch.floor(torch.log2(x.abs().double())) - 7)


def test_bf16_master_weights_accumulate_tiny_updates():
    init = torch.tensor([1.0, 0.99, 1.01, 0.98, 1.02, -1.0, 1.0, 1.0]).bfloat16()
    grad = torch.tensor([1.0, 1.0, -1.0, 0.5, -2.0, 1.0, -1.0, 0.1]).bfloat16()
    kw = dict(lr=1e-5, weight_decay=0.0)

    def run(opt_cls, p, **extra):
        opt = opt_cls([p], **kw, **extra)
        for _ in range(1000):
            p.grad = grad.to(p.dtype).clone()
            opt.step()
        return opt

    ref = torch.nn.Parameter(init.float())  # the fp32 trajectory
    run(torch.optim.AdamW, ref)
    naive = torch.nn.Parameter(init.clone())  # bf16 weights updated in bf16
    run(torch.optim.AdamW, naive)
    ours = torch.nn.Parameter(init.clone())
    opt = run(OffloadAdamW, ours, offload=True)

    moved = (ref.detach().double() - init.double()).abs()
    assert torch.all(moved > 0.009) and torch.all(moved < 0.011)
    assert torch.all(moved > bf16_spacing(init)), "the test must need more than one bf16 step"
    assert torch.equal(naive.detach(), init), "torch AdamW on bf16 weights rounds every update away"
    assert ours.dtype == torch.bfloat16
    err = (ours.detach().double() - ref.detach().double()).abs()
    assert torch.all(err <= bf16_spacing(ref.detach())), (ours, ref)
    master = opt.state[ours]["master"]
    assert master.dtype == torch.float32
    assert rel_err(master, ref.detach()) <= 1e-5


def test_bf16_resume_is_exact():
    kw = dict(lr=1e-3, weight_decay=0.1, offload=True)
    straight, opt_a = run_ours(make_params(torch.bfloat16), bucket_numel=50, **kw)
    resumed, opt_b = run_ours(make_params(torch.bfloat16), save_at=10, bucket_numel=50, **kw)
    for a, b in zip(straight, resumed):
        assert a.dtype == torch.bfloat16
        assert torch.equal(a, b)
        for key in ("master", "exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_a.state[a][key], opt_b.state[b][key])
    # The checkpoint carries fp32 masters, not values rounded to the model dtype.
    sd = roundtrip(opt_a.state_dict())
    assert all(s["master"].dtype == torch.float32 for s in sd["state"].values())


def test_lr_scheduler_and_grad_clipping_match_torch():
    kw = dict(lr=1e-2, weight_decay=0.01)
    ref, ours = make_params(), make_params()
    opts = [torch.optim.AdamW(ref, **kw), OffloadAdamW(ours, **kw)]
    lam = lambda s: 1.0 if s < 3 else 0.1  # noqa: E731
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lam) for o in opts]
    gen = torch.Generator().manual_seed(5)
    deltas = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for _ in range(6):
            g = [10 * torch.randn(p.shape, generator=gen) for p in ours]
            before = ours[0].detach().clone()
            for params, opt, sched in zip((ref, ours), opts, scheds):
                for p, gi in zip(params, g):
                    p.grad = gi.clone()
                torch.nn.utils.clip_grad_norm_(params, max_norm=0.5)
                opt.step()
                sched.step()
                opt.zero_grad()
            deltas.append((ours[0].detach() - before).abs().mean().item())
    assert opts[1].param_groups[0]["lr"] == pytest.approx(1e-3)
    assert opts[1].param_groups[0]["initial_lr"] == 1e-2
    assert deltas[4] < 0.3 * deltas[1], deltas  # the update shrank with the lr
    for a, r in zip(ours, ref):
        assert rel_err(a, r) <= 1e-5


def test_param_without_grad_is_skipped_and_zero_grad():
    params = make_params()
    frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    opt = OffloadAdamW(params + [frozen], lr=1e-2, weight_decay=0.1)
    before = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(0)
    set_grads(params[1:], gen)  # params[0].grad stays None
    opt.step()
    assert torch.equal(params[0], before[0])
    assert opt.state[params[0]]["step"].item() == 0
    assert all(not torch.equal(p, b) for p, b in zip(params[1:], before[1:]))
    assert all(opt.state[p]["step"].item() == 1 for p in params[1:])
    assert frozen not in opt.state
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    set_grads(params, gen)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)


def test_fp32_cpu_param_is_its_own_master():
    params = make_params()
    opt = OffloadAdamW(params, lr=1e-3)
    set_grads(params, torch.Generator().manual_seed(0))
    opt.step()
    for p in params:
        assert opt.state[p]["master"].data_ptr() == p.data_ptr()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, "mixed"])
def test_pipelined_path_matches_synchronous_path(dtype):
    """Run the CUDA code path (staging slots, buckets) on the CPU with
    synchronous copies; it must give bit-identical results."""
    results = []
    for pipeline in (False, True):
        if dtype == "mixed":  # bf16 and fp32 buckets share the byte staging slots
            params = [torch.nn.Parameter(p.detach().to(torch.bfloat16 if i % 2 else torch.float32))
                      for i, p in enumerate(make_params())]
            params.append(torch.nn.Parameter(torch.linspace(-1, 1, 125).bfloat16()))  # 250 B
        else:
            params = make_params(dtype)
        # bucket_numel=45: several buckets, so both staging slots get reused.
        opt = OffloadAdamW(params, lr=1e-2, weight_decay=0.1, bucket_numel=45, pipeline=pipeline)
        gen = torch.Generator().manual_seed(9)
        for t in range(5):
            set_grads(params, gen)
            if t == 2:
                params[2].grad = None
            opt.step()
        results.append((params, [opt.state[p]["master"] for p in params]))
    (pa, ma), (pb, mb) = results
    for a, b, x, y in zip(pa, pb, ma, mb):
        assert torch.equal(a, b) and torch.equal(x, y)


def test_state_bytes_formula_matches_allocation():
    params = make_params(torch.bfloat16)
    n = sum(p.numel() for p in params)
    est = optimizer_state_bytes(params, offload=True, bucket_numel=1 << 20)
    assert est["master"] == est["exp_avg"] == est["exp_avg_sq"] == 4 * n
    assert est["scratch"] == 4 * n and est["staging"] == 0 and est["device"] == 0
    opt = OffloadAdamW(params, lr=1e-3)
    set_grads(params, torch.Generator().manual_seed(0))
    opt.step()
    state = sum(t.numel() * t.element_size() for s in opt.state.values()
                for k, t in s.items() if k != "step")
    scratch = sum(b.numel() * b.element_size() for b in opt._scratch.values())
    assert state + scratch == est["cpu"]
    # fp32 on the CPU: parameters are their own masters, no scratch.
    est32 = optimizer_state_bytes(make_params(), offload=True)
    assert est32["master"] == 0 and est32["scratch"] == 0 and est32["cpu"] == 8 * n
    # Planning for a CUDA bf16 model from meta tensors: 12 B/param on the host.
    meta = [torch.nn.Parameter(torch.empty(s, dtype=torch.bfloat16, device="meta")) for s in SHAPES]
    plan = optimizer_state_bytes(meta, offload=True, device="cuda")
    assert plan["device"] == 0 and plan["staging"] == 2 * 2 * n
    assert plan["cpu"] == 12 * n + 4 * n + 4 * n
    plan = optimizer_state_bytes(meta, offload=False, device="cuda")
    assert plan["cpu"] == 0 and plan["device"] == 12 * n + 4 * n


@pytest.mark.parametrize("pipeline", [None, True])
def test_working_buffers_are_what_the_plan_says(pipeline):
    """The planner and the optimizer size scratch and staging with the same rule."""
    params = [torch.nn.Parameter(p.detach().to(torch.bfloat16 if i % 2 else torch.float32))
              for i, p in enumerate(make_params())]
    est = optimizer_state_bytes(params, offload=True, bucket_numel=45, pipeline=pipeline)
    opt = OffloadAdamW(params, lr=1e-3, bucket_numel=45, pipeline=pipeline)
    set_grads(params, torch.Generator().manual_seed(0))
    opt.step()
    assert est["scratch"] == sum(b.numel() * b.element_size() for b in opt._scratch.values()) > 0
    staging = sum(s.numel() for pipe in opt._pipelines.values() for s in pipe.slots)
    assert est["staging"] == staging and (staging > 0) == bool(pipeline)


def test_load_rejects_mismatched_shapes():
    opt = OffloadAdamW(make_params(), lr=1e-3)
    set_grads(opt.param_groups[0]["params"], torch.Generator().manual_seed(0))
    opt.step()
    sd = opt.state_dict()
    other = OffloadAdamW([torch.nn.Parameter(torch.zeros(2, 2)) for _ in SHAPES], lr=1e-3)
    with pytest.raises(ValueError):
        other.load_state_dict(sd)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("offload", [True, False])
def test_cuda_bf16_matches_fp32_reference(offload):
    kw = dict(lr=1e-2, weight_decay=0.1)
    ref = run_torch(make_params(), **kw)  # fp32 on the CPU
    ours, opt = run_ours(make_params(torch.bfloat16, "cuda"), save_at=10, offload=offload,
                         bucket_numel=40, **kw)
    torch.cuda.synchronize()
    for p, r in zip(ours, ref):
        assert p.device.type == "cuda" and p.dtype == torch.bfloat16
        master = opt.state[p]["master"]
        assert master.device.type == ("cpu" if offload else "cuda")
        # bf16 grads differ from the fp32 reference's, so compare loosely ...
        assert rel_err(master.cpu(), r) < 2e-2
        # ... and the model weights are exactly the rounded masters.
        assert torch.equal(p.cpu(), master.cpu().bfloat16())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("offload", [True, False])
def test_cuda_fp32_matches_torch_adamw(offload):
    kw = dict(lr=1e-2, weight_decay=0.1)
    ref = run_torch(make_params(device="cuda"), **kw)
    ours, _ = run_ours(make_params(device="cuda"), save_at=10, offload=offload, bucket_numel=40, **kw)
    for a, r in zip(ours, ref):
        assert rel_err(a.cpu(), r.cpu()) <= 1e-5


def test_refresh_master_and_closure():
    params = make_params(torch.bfloat16)
    opt = OffloadAdamW(params, lr=1e-3)
    set_grads(params, torch.Generator().manual_seed(0))
    assert opt.step(lambda: torch.tensor(3.0)).item() == 3.0  # closure's loss is returned
    with torch.no_grad():
        params[0].fill_(0.5)  # the model changed behind the optimizer's back
    opt.refresh_master()
    assert torch.equal(opt.state[params[0]]["master"], params[0].float())
