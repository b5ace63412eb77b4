"""What a 4-bit (NF4) base costs in speed: a decode step and an update step with LoRA, NF4 vs the
plain weights, and the quantisation error.

    python scripts/bench_nf4.py                              # tiny and Qwen2.5-0.5B shapes, fp32 on the CPU
    python scripts/bench_nf4.py --models Qwen2.5-0.5B --device cuda --dtype bfloat16

For each shape (random weights, the real widths: scripts/_bench_common.py) it loads the checkpoint
twice, as it is and with `quantize="nf4"` (qwen2/nf4.py: every block projection quantised as it is
read; the load times are printed), adds the same rank-16 LoRA adapters to both (B random, so they
count), and times, alternating the two models so that load from other processes hits both alike:

  decode   one eager decode step (qwen2/sampler.py decode_one_token) of `--rows` rows after a
           `--prompt`-token prefill: each NF4 projection is dequantised once per step
  update   forward and backward of one row of `--update-tokens` tokens with activation checkpointing,
           as the trainer's update runs (the block forward twice, backward once): three
           dequantisations of each projection per step, against matmuls that grow with the tokens

and prints each time (median) and the ratio NF4 / plain, of the medians and of the minima (on a
machine shared with other jobs, the least disturbed figure). Then the
quantisation error: relative RMS error and largest error over the block's absmax for a
normal(0, 0.02) weight of Qwen2.5-0.5B's gate_proj shape (4864 x 896) in fp32 and bf16, and the
relative difference of the two models' logits. Ends with `RESULT {json}` for scripts/gpu_check.py.

Simplifications: the eager decode only (the compiled one fuses the dequantisation into the step; its
cost is the GPU check's); one row in the update (its cost per token is what matters); the LM head,
embedding and norms are not quantised, so they dilute the ratio exactly as they do in training.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _bench_common import BENCH_DIR, hardware, median, print_result, random_checkpoint, timed
from grpo.machinery.runtime import DTYPES, enable_activation_checkpointing
from qwen2 import load_model
from qwen2 import nf4
from qwen2.lora import add_lora
from qwen2.sampler import decode_one_token, prefill


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,Qwen2.5-0.5B", help="comma-separated shapes (default: tiny,Qwen2.5-0.5B)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on the CPU, bfloat16 on a GPU")
    ap.add_argument("--rows", type=int, default=16, help="decode rows (default 16: 2 prompts x 8 samples)")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens before the timed decode steps")
    ap.add_argument("--decode-steps", type=int, default=6, help="timed decode steps per repeat")
    ap.add_argument("--update-tokens", type=int, default=128, help="tokens of the timed update step")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: a shared machine)")
    ap.add_argument("--cache-dir", default=None, help="where the random checkpoints are built (default .bench/)")
    return ap.parse_args(argv)


def adapted(path, device, dtype, rank: int, quantize: str):
    """The checkpoint (4-bit or not) with rank-`rank` adapters whose B is random, and its load time."""
    t0 = time.perf_counter()
    model = load_model(path, device=device, dtype=dtype, quantize=quantize)
    load_s = time.perf_counter() - t0
    add_lora(model, rank, 2.0 * rank, generator=torch.Generator(device).manual_seed(0))
    g = torch.Generator(device).manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01, generator=g)
    enable_activation_checkpointing(model)
    return model, load_s


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def bench_shape(name: str, args, device, dtype) -> dict:
    path = random_checkpoint(name, "float32" if dtype == torch.float32 else "bfloat16",
                             cache_dir=Path(args.cache_dir) if args.cache_dir else BENCH_DIR, device=device)
    load_model(path, device=device, dtype=dtype)  # untimed: the files into the page cache for both loads
    models, load_s = {}, {}
    for kind in ("plain", "nf4"):
        models[kind], load_s[kind] = adapted(path, device, dtype, args.rank, "nf4" if kind == "nf4" else "none")
    vocab = models["plain"].config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (args.prompt,), generator=g).tolist() for _ in range(max(1, args.rows // 8))]
    rows = [p for p in prompts for _ in range(args.rows // len(prompts))]
    ids = torch.randint(3, vocab, (1, args.update_tokens), generator=g).to(device)

    decode, update = {k: [] for k in models}, {k: [] for k in models}
    for _ in range(args.repeats):
        for kind, model in models.items():
            with torch.no_grad():
                cache, logits = prefill(model, rows, args.decode_steps + 1, pad_token_id=0)
                tok = logits.argmax(-1)
                for _ in range(args.decode_steps):
                    wall, _, logits = timed(lambda: decode_one_token(model, cache, tok), device)
                    decode[kind].append(wall)
                    tok = logits.argmax(-1)

            def step():
                loss = model(ids).float().logsumexp(-1).mean()
                loss.backward()

            wall, _, _ = timed(step, device)
            update[kind].append(wall)
            model.zero_grad(set_to_none=True)
    with torch.no_grad():
        a, b = models["plain"](ids).float(), models["nf4"](ids).float()
    out = {"load_s": load_s, "weight_bytes": {k: weight_bytes(m) for k, m in models.items()},
           "decode_ms": {k: 1e3 * median(v) for k, v in decode.items()},
           "decode_min_ms": {k: 1e3 * min(v) for k, v in decode.items()},
           "update_ms": {k: 1e3 * median(v) for k, v in update.items()},
           "update_min_ms": {k: 1e3 * min(v) for k, v in update.items()},
           "logits_rel_diff": ((a - b).norm() / a.norm()).item()}
    out["decode_ratio"] = out["decode_ms"]["nf4"] / out["decode_ms"]["plain"]
    out["update_ratio"] = out["update_ms"]["nf4"] / out["update_ms"]["plain"]
    for what in ("decode", "update"):  # the least disturbed figures on a shared machine
        out[f"{what}_ratio_min"] = out[f"{what}_min_ms"]["nf4"] / out[f"{what}_min_ms"]["plain"]
    return out


def quantisation_error(shape=(4864, 896)) -> dict:
    """Errors of NF4 on a normal(0, 0.02) weight of `shape` (Qwen2.5-0.5B's gate_proj)."""
    out = {}
    w32 = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.02
    for dtype in (torch.float32, torch.bfloat16):
        w = w32.to(dtype)
        back = nf4.dequantize(**nf4.quantize(w), shape=shape).float()
        err = (back - w.float()).view(-1, nf4.BLOCK_SIZE)
        absmax = w.float().view(-1, nf4.BLOCK_SIZE).abs().amax(1, keepdim=True)
        out[str(dtype).removeprefix("torch.")] = {
            "rel_rms": (err.norm() / w.float().norm()).item(),
            "max_over_absmax": (err.abs() / absmax).max().item(),
            "mean_abs": err.abs().mean().item()}
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("float32" if device.type == "cpu" else "bfloat16")]
    print(f"NF4 vs plain weights, LoRA rank {args.rank}, {dtype}, {hardware(device)}")
    print(f"decode: {args.rows} rows after {args.prompt} prompt tokens; update: 1 x {args.update_tokens} tokens, "
          f"activation checkpointing; median of {args.repeats} repeats")
    result = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "hardware": hardware(device),
              "rows": args.rows, "update_tokens": args.update_tokens, "models": {}}
    print(f"{'shape':14s} {'weights MB plain/nf4':>21s} {'load s plain/nf4':>17s} {'decode ms plain/nf4':>20s} "
          f"{'ratio (min)':>12s} {'update ms plain/nf4':>20s} {'ratio (min)':>12s} {'logits rel diff':>15s}")
    for name in args.models.split(","):
        r = bench_shape(name, args, device, dtype)
        result["models"][name] = r
        wb, ls, d, u = r["weight_bytes"], r["load_s"], r["decode_ms"], r["update_ms"]
        print(f"{name:14s} {wb['plain'] / 1e6:10.1f}/{wb['nf4'] / 1e6:<10.1f} {ls['plain']:8.2f}/{ls['nf4']:<8.2f} "
              f"{d['plain']:10.1f}/{d['nf4']:<9.1f} {r['decode_ratio']:5.2f} ({r['decode_ratio_min']:4.2f}) "
              f"{u['plain']:10.1f}/{u['nf4']:<9.1f} {r['update_ratio']:5.2f} ({r['update_ratio_min']:4.2f}) "
              f"{r['logits_rel_diff']:15.3f}", flush=True)
    result["quantisation_error"] = err = quantisation_error()
    for dt, e in err.items():
        print(f"quantisation error, normal(0, 0.02) 4864 x 896 weight, {dt}: relative RMS {e['rel_rms']:.4f}, "
              f"largest |error| / block absmax {e['max_over_absmax']:.4f}, mean |error| {e['mean_abs']:.2e}")
    print_result(result)


if __name__ == "__main__":
    main()
