"""Optimizer step time (and, on a GPU, peak memory) of OffloadAdamW vs torch.optim.AdamW.

What it measures: the wall time of ``optimizer.step()`` alone, for parameters with
the exact shapes of a Qwen2.5 model (default Qwen2.5-0.5B: 494M parameters, tied
embeddings) and random gradients, after warm-up steps (the first step allocates
the optimizer state and is not counted). Median and minimum over ``--steps``
steps: on a shared machine other processes only ever add time, so the minimum
is the least disturbed figure; the median CPU time (user + system, both
threads) is printed too, as it does not count time the process spent waiting
for a core.

On the CPU (``--device cpu``, the default) it compares, in one run, in two
phases whose optimizers are stepped in alternation (so that load from other
processes hits them alike):
  1. torch.optim.AdamW(foreach=True) on fp32 parameters (the baseline) and
     OffloadAdamW(offload=True) on bf16 parameters: the real mixed-precision
     case, with the bf16 -> fp32 gradient upcast and the fp32 -> bf16
     write-back on top of the fp32 update (peak ~16.5 GB of RAM for 0.5B)
  2. torch.optim.AdamW(fused=True) on fp32 parameters (if this torch has it)
     and OffloadAdamW(offload=True) on the same fp32 parameters: there the
     parameter is its own master, so this is the update alone (~12 GB)
and prints each time and its ratio to the baseline. The target is ours (bf16)
<= 1.2x torch foreach (fp32).

With ``--device cuda`` (only when CUDA is available) the model lives on the GPU
in bf16 and it reports step time and peak GPU memory (parameters + gradients +
whatever the optimizer keeps there) of
  1. torch.optim.AdamW(fused=True) on the bf16 parameters (the fastest thing
     there is on the card, but its updates round away: no fp32 master weights)
  2. OffloadAdamW(offload=False): fp32 state on the card
  3. OffloadAdamW(offload=True): state in CPU RAM, the pipelined offload
     (pinned staging slots, copies on a side stream; grpo/optim/offload.py)
  4. OffloadAdamW(offload=True, pipeline=False): the same state in CPU RAM,
     moved synchronously (gradient to the host, update, weights back, one
     parameter after another)
and, to see how much of the copying the pipeline hides,
  5. OffloadAdamW on bf16 parameters that live in CPU memory: the CPU work of
     an offloaded step (upcast, fused AdamW, downcast) without any transfer
  6. the transfers alone: each bucket's bf16 gradients to a pinned host slot
     and bf16 weights back, one after the other, as the pipeline moves them.
The share of copy time hidden = 1 - (pipelined - CPU work) / transfers, clipped
to [0, 1]: 100% means the offloaded step costs no more than its CPU update.
``--as-gpu`` runs this comparison on ``--device cpu`` too (copies between host
tensors, no streams): a smoke test of the code, whose numbers mean nothing.

Simplifications: no model, no forward or backward: gradients are random tensors
set once, so the step runs on the same gradients each time (its cost does not
depend on their values); no overlap with compute is measured, the GPU step time
includes waiting for every copy. The parameter shapes come from
``qwen2.config.Qwen2Config.from_name`` (or ``tiny``, see scripts/_bench_common.py)
when importable, else from the hard-coded Qwen2.5-0.5B config below. The last
output line is ``RESULT {json}`` for scripts/gpu_check.py.

Usage: python scripts/bench_optim.py [--model Qwen2.5-0.5B-Instruct] [--steps 5]
       [--warmup 1] [--device cpu|cuda] [--skip-foreach] [--as-gpu]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import time

import torch

from _bench_common import cpu_name, model_config, sync
from grpo.plan.memory import optimizer_state_bytes
from grpo.optim.offload import DEFAULT_BUCKET_NUMEL, split_into_buckets
from grpo.optim.adamw import OffloadAdamW
from qwen2 import Qwen2


def param_shapes(name: str) -> list[torch.Size]:
    """Every parameter of the Qwen2 model `name` (a tied weight once), in state_dict order."""
    with torch.device("meta"):
        return [p.shape for p in Qwen2(model_config(name)).parameters()]


def make_params(shapes, dtype, device):
    gen = torch.Generator(device=device).manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.empty(s, dtype=dtype, device=device).normal_(0, 0.02, generator=gen))
        p.grad = torch.empty(s, dtype=dtype, device=device).normal_(0, 1e-3, generator=gen)
        params.append(p)
    return params


def time_steps(make_opt, shapes, dtype, device, steps, warmup):
    """GPU: seconds per optimizer.step() (median, min) and peak device memory in bytes."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    params = make_params(shapes, dtype, device)
    opt = make_opt(params)
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    del opt, params  # freed by the next run's gc.collect()
    return (statistics.median(times), min(times)), peak


def time_copies(shapes, device, steps, warmup, bucket_numel=DEFAULT_BUCKET_NUMEL):
    """Median seconds to move every bucket's bf16 gradients to a host slot and bf16 weights back,
    one bucket after the other (pinned slots on a GPU): the transfers an offloaded step makes."""
    gc.collect()
    cuda = device.type == "cuda"
    params = make_params(shapes, torch.bfloat16, device)
    buckets = [run for _, run in split_into_buckets([params], bucket_numel)]
    slot_bytes = max(sum(p.numel() for p in run) * 2 for run in buckets)
    slot = torch.empty(slot_bytes, dtype=torch.uint8, pin_memory=cuda)
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        for run in buckets:
            views, offset = [], 0
            for p in run:
                views.append(slot[offset:offset + 2 * p.numel()].view(torch.bfloat16).view(p.shape))
                offset += 2 * p.numel()
            for v, p in zip(views, run):
                v.copy_(p.grad, non_blocking=cuda)
            sync(device)
            for v, p in zip(views, run):
                p.data.copy_(v, non_blocking=cuda)
            sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    del params, slot
    return statistics.median(times)


def time_interleaved(runs, shapes, steps, warmup):
    """CPU: build every optimizer of ``runs`` ((name, dtype, make_opt); runs of
    one dtype share one set of parameters), then time them in rounds of one
    step each, alternating the order. Returns {name: (median s, min s)}."""
    gc.collect()
    cpu = torch.device("cpu")
    param_sets: dict[torch.dtype, list] = {}
    opts = {}
    for name, dtype, make in runs:
        if dtype not in param_sets:
            param_sets[dtype] = make_params(shapes, dtype, cpu)
        opts[name] = make(param_sets[dtype])
    wall: dict[str, list[float]] = {name: [] for name in opts}
    cpu_time: dict[str, list[float]] = {name: [] for name in opts}
    order = list(opts)
    for i in range(warmup + steps):
        for name in order if i % 2 == 0 else reversed(order):
            t0, c0 = time.perf_counter(), time.process_time()
            opts[name].step()
            if i >= warmup:
                wall[name].append(time.perf_counter() - t0)
                cpu_time[name].append(time.process_time() - c0)
    del opts, param_sets
    gc.collect()
    return {name: (statistics.median(wall[name]), min(wall[name]), statistics.median(cpu_time[name]))
            for name in wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="Qwen2.5-0.5B-Instruct")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per optimizer")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocate state)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--skip-foreach", action="store_true", help="skip the slow torch foreach baseline")
    ap.add_argument("--as-gpu", action="store_true",
                    help="run the GPU comparison on --device cpu (a smoke test of its code; numbers mean nothing)")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    shapes = param_shapes(args.model)
    n = sum(torch.Size(s).numel() for s in shapes)
    lr, wd = 1e-5, 0.1
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {datetime.date.today()}  torch {torch.__version__}  {cpu_name()}  "
          f"{torch.get_num_threads()} CPU threads" + (f"  {gpu_name}" if device.type == "cuda" else ""))
    print(f"# {args.model}: {len(shapes)} tensors, {n / 1e6:.1f}M parameters; "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    result = dict(script="bench_optim", model=args.model, params_m=round(n / 1e6, 1), device=str(device),
                  device_name=gpu_name, cpu=cpu_name(), threads=torch.get_num_threads(), torch=torch.__version__)

    if device.type == "cpu" and not args.as_gpu:
        foreach = lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd, foreach=True)  # noqa: E731
        fused = lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd, fused=True)  # noqa: E731
        ours = lambda ps: OffloadAdamW(ps, lr=lr, weight_decay=wd, offload=True)  # noqa: E731
        # Two phases, each interleaving its optimizers step by step, so that a
        # change in the machine's load hits all of them alike. Phase 1 is the
        # headline pair (peak ~16.5 GB of RAM), phase 2 the fused-kernel pair,
        # sharing one set of fp32 parameters (~12 GB).
        phases = []
        if not args.skip_foreach:
            phases.append([("torch AdamW foreach, fp32", torch.float32, foreach),
                           ("OffloadAdamW, bf16 params", torch.bfloat16, ours)])
        else:
            phases.append([("OffloadAdamW, bf16 params", torch.bfloat16, ours)])
        phase2 = [("OffloadAdamW, fp32 params", torch.float32, ours)]
        if hasattr(torch, "_fused_adamw_"):
            phase2.insert(0, ("torch AdamW fused, fp32", torch.float32, fused))
        phases.append(phase2)
        results = {}
        print(f"{'ms per step':<28} {'median':>9} {'min':>9} {'CPU time':>9}")
        for phase in phases:
            for name, r in time_interleaved(phase, shapes, args.steps, args.warmup).items():
                results[name] = r
                print(f"{name:<28} {r[0] * 1e3:9.1f} {r[1] * 1e3:9.1f} {r[2] * 1e3:9.1f}", flush=True)
        base = results.get("torch AdamW foreach, fp32")
        if base:
            print(f"{'ratio to torch foreach':<28} {'median':>9} {'min':>9} {'CPU time':>9}")
            for name, r in results.items():
                print(f"{name:<28} " + " ".join(f"{x / y:8.2f}x" for x, y in zip(r, base)))
            ok = results["OffloadAdamW, bf16 params"][0] <= 1.2 * base[0]
            print(f"target ours (bf16, with dtype round trip) <= 1.2x torch foreach (medians): "
                  f"{'met' if ok else 'NOT met'}")
        result["ms"] = {name: dict(median=round(r[0] * 1e3, 2), min=round(r[1] * 1e3, 2), cpu=round(r[2] * 1e3, 2))
                        for name, r in results.items()}
        print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
        return

    # GPU: the model in bf16 on the card (with --as-gpu on a CPU: the same code, host to host).
    def offload_adamw(**kw):
        return lambda ps: OffloadAdamW(ps, lr=lr, weight_decay=wd, **kw)

    runs = [
        ("torch_fused", "torch AdamW fused, bf16 (no master)", device,
         lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd, fused=True)),
        ("offload_false", "OffloadAdamW offload=False", device, offload_adamw(offload=False)),
        ("pipelined", "OffloadAdamW offload=True, pipelined", device, offload_adamw(offload=True, pipeline=True)),
        ("synchronous", "OffloadAdamW offload=True, synchronous", device, offload_adamw(offload=True, pipeline=False)),
        ("cpu_update", "CPU work alone (bf16 params in RAM)", torch.device("cpu"),
         offload_adamw(offload=True, pipeline=False)),
    ]
    model_bytes = 2 * 2 * n  # bf16 weights + bf16 grads
    print(f"# bf16 weights + grads on the {device.type.upper()}: {model_bytes / 2**30:.2f} GiB")
    ms, peaks = {}, {}
    for key, name, where, make in runs:
        (med, best), peak = time_steps(make, shapes, torch.bfloat16, where, args.steps, args.warmup)
        ms[key], peaks[key] = med * 1e3, peak / 2**30
        print(f"{name:<40} median {med * 1e3:8.1f} ms/step (min {best * 1e3:.1f})   "
              f"peak GPU memory {peak / 2**30:6.2f} GiB", flush=True)
    ms["copies"] = time_copies(shapes, device, args.steps, args.warmup) * 1e3
    print(f"{'transfers alone (bf16 grads out, weights in)':<40} median {ms['copies']:8.1f} ms/step", flush=True)
    exposed = ms["pipelined"] - ms["cpu_update"]
    hidden = min(1.0, max(0.0, 1 - exposed / ms["copies"])) if ms["copies"] > 0 else 0.0
    print(f"pipelined offload: {ms['pipelined']:.1f} ms vs synchronous {ms['synchronous']:.1f} ms "
          f"({ms['synchronous'] / ms['pipelined']:.2f}x faster) and torch AdamW on the card {ms['torch_fused']:.1f} ms; "
          f"it hides {hidden:.0%} of the {ms['copies']:.1f} ms of transfers (CPU work {ms['cpu_update']:.1f} ms)")
    for offload in (True, False):
        meta = [torch.nn.Parameter(torch.empty(s, dtype=torch.bfloat16, device="meta")) for s in shapes]
        est = optimizer_state_bytes(meta, offload=offload, device=device if device.type == "cuda" else "cuda")
        print(f"# planned OffloadAdamW(offload={offload}): host {est['cpu'] / 2**30:.2f} GiB, "
              f"device {est['device'] / 2**30:.2f} GiB")
    result.update(ms={k: round(v, 2) for k, v in ms.items()}, peak_gib={k: round(v, 3) for k, v in peaks.items()},
                  hidden_share=round(hidden, 3), speedup_vs_sync=round(ms["synchronous"] / ms["pipelined"], 3))
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
