"""Benchmark our KV-cache sampler against `transformers.generate` on a GRPO-shaped batch.

What it measures, in one run on the same random weights (real Qwen2.5 shapes, no download):

1. Ragged batch, ours vs transformers. 8 prompts with lengths spread over 40-120 tokens, each
   sampled 8 times (64 rows). Every row stops at its own length drawn from 16-128 tokens: the
   weights are random, so the stop is forced, identically in both systems, by a logits rewrite
   (`force_stop_`): at its drawn step a row may only emit the stop token, before it never. Ours
   gets it through `generate(..., logits_hook=)`, transformers through a `LogitsProcessor`.
   Both sample at temperature 1.0 with no top-k/top-p; transformers gets left-padded prompts, an
   attention mask and `pad_token_id`, as in its docs. Reported: useful tokens/s = completion
   tokens up to each row's stop (the same total in both) / wall time, and ours / transformers.
2. Fixed length, ours only. 64 rows each generate exactly N tokens (no stop), and the decode
   part (first sampled token to the end) is reported as achieved FLOP/s = (2 x matmul params +
   attention) x tokens / time, as a fraction of this machine's GEMM throughput measured right
   before with torch.mm on the same shapes (a decode step's q/k/v/o, MLP and LM-head matmuls at
   that row count; "roofline") and on a large square matmul ("peak").

Simplifications: random weights (near-uniform next-token distributions: no token is ever likely,
which only matters for the cost of top-p, unused here); prompts are random token ids; the GRPO
structure (8 samples of each prompt) is what ours exploits with a shared prefill, transformers
gets the 64 rows as given, as its users do. fp32 on CPU by default (bf16 matmuls are emulated
and ~100x slower on most CPUs). Timings on a CPU shared with other jobs are noisy: the two
systems run back to back in alternating order and the ratio of each pair is reported, by wall
time and by this process's CPU time; with --threads 1 the CPU time is what the run would take on
an idle core (with more threads than free cores, OpenMP barriers make small ops crawl).
The default run takes ~7 minutes on 2 CPU cores (transformers alone ~4-5); --gen-len, --samples
and --fixed-tokens scale it. On a GPU, e.g. (256 rows, 1.5B shape, bf16; the random weights are
drawn on the GPU):
    python scripts/bench_sampler.py --device cuda --dtype bfloat16 --model Qwen2.5-1.5B --samples 32
On a GPU the wall-time ratio is the one that counts (the CPU time of the process is mostly kernel
launches and waiting). `--model tiny` runs everything in seconds on a CPU (a smoke test; its
numbers mean nothing). The last output line is `RESULT {json}` for scripts/gpu_check.py.

`--compile` adds our compiled static-shape decode (qwen2/static_decode.py) as a third system on the
same batch, after one untimed full run that compiles it (its time is reported); `--bound-rows 64,256`
times a fixed-length decode at those row counts against the memory-bandwidth bound of a step
(every weight and the cached keys/values read once, at the bandwidth of a large device copy).

Usage: python scripts/bench_sampler.py [--threads 1] [--repeats 3] [--fixed-tokens 24] [--no-hf] [--compile] [--cache-dir DIR] ...
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from _bench_common import BENCH_DIR, DTYPES, device_name, hardware, median, print_result, random_checkpoint, sync, timed
from qwen2 import Qwen2Config, SamplingParams, generate, load_model, pad_batch


# --- the batch and the forced stop -----------------------------------------------------------

def grpo_batch(num_prompts: int, samples: int, prompt_lens: tuple[int, int], gen_lens: tuple[int, int],
               vocab: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """Rows (each prompt repeated `samples` times) and each row's completion length (stop included)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = prompt_lens
    lengths = torch.linspace(lo, hi, num_prompts).round().long().tolist()
    prompts = [torch.randint(1000, vocab - 1000, (n,), generator=g).tolist() for n in lengths]
    rows = [p for p in prompts for _ in range(samples)]
    stop_len = torch.randint(gen_lens[0], gen_lens[1] + 1, (len(rows),), generator=g).tolist()
    return rows, stop_len


def force_stop_(logits: Tensor, stop_step: Tensor, step: int, stop_id: int) -> Tensor:
    """In place on logits (B, V): row b emits `stop_id` at step stop_step[b] and never before.

    One pass over the logits and one column write, no host sync; the same call in both systems.
    """
    hit = stop_step == step  # (B,)
    logits.masked_fill_(hit[:, None], float("-inf"))
    logits[:, stop_id] = torch.where(hit, 0.0, float("-inf")).to(logits.dtype)
    return logits


def check(completions: list[list[int]], stop_len: list[int], stop_id: int, who: str) -> None:
    for i, (c, n) in enumerate(zip(completions, stop_len)):
        if len(c) != n or c[-1] != stop_id:
            raise AssertionError(f"{who}: row {i} has {len(c)} tokens ending in {c[-1:]} (expected {n} ending in {stop_id})")


# --- the two systems ----------------------------------------------------------------------------

@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # CPU seconds of this process (with --threads 1: the time on an idle core)
    prefill: float  # wall seconds until the first token's logits


def run_ours(model, rows, stop_len, stop_id, pad_id, seed, device, compact_every,
             compile: bool = False) -> tuple[Run, list[list[int]]]:
    """Timing and completions of one ragged run of our sampler."""
    stop_step = torch.tensor(stop_len, device=device) - 1
    first_step_at = []

    def hook(logits: Tensor, rows_idx: Tensor, step: int) -> Tensor:
        if step == 0:  # called right after the prefill
            sync(device)
            first_step_at.append(time.perf_counter())
        return force_stop_(logits, stop_step[rows_idx], step, stop_id)

    g = torch.Generator(device).manual_seed(seed)
    start = time.perf_counter()
    wall, cpu, out = timed(lambda: generate(model, rows, max(stop_len), SamplingParams(temperature=1.0), stop_token_ids=[stop_id],
                                            generator=g, pad_token_id=pad_id, compact_every=compact_every,
                                            logits_hook=hook, compile=compile), device)
    return Run(wall, cpu, first_step_at[0] - start), out.tokens


def run_hf(hf, rows, stop_len, stop_id, pad_id, seed, device) -> tuple[Run, list[list[int]]]:
    """Timing and completions of one ragged run of transformers.generate."""
    from transformers import LogitsProcessor, LogitsProcessorList

    ids, mask = pad_batch(rows, pad_id, device=device)
    P = ids.shape[1]
    stop_step = torch.tensor(stop_len, device=device) - 1
    first_step_at = []

    class ForceStop(LogitsProcessor):
        def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
            step = input_ids.shape[1] - P  # transformers keeps every row in the batch
            if step == 0:
                sync(device)
                first_step_at.append(time.perf_counter())
            return force_stop_(scores, stop_step, step, stop_id)

    torch.manual_seed(seed)
    start = time.perf_counter()
    wall, cpu, out = timed(lambda: hf.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=max(stop_len), do_sample=True, temperature=1.0,
        top_k=0, top_p=1.0, eos_token_id=stop_id, pad_token_id=pad_id,
        logits_processor=LogitsProcessorList([ForceStop()])), device)
    completions = []
    for row in out[:, P:].tolist():
        completions.append(row[: row.index(stop_id) + 1] if stop_id in row else row)
    return Run(wall, cpu, first_step_at[0] - start), completions


# --- FLOPs and the GEMM roofline ----------------------------------------------------------------

def decode_gemm_shapes(cfg: Qwen2Config, rows: int) -> list[tuple[int, int, int, int]]:
    """(M, K, N, count) of every matmul in one decode step of `rows` rows: x (M, K) @ W.T (K, N)."""
    C, F, L, D, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.head_dim, cfg.vocab_size
    q, kv = cfg.num_attention_heads * D, cfg.num_key_value_heads * D
    return [(rows, C, q, L), (rows, C, kv, 2 * L), (rows, q, C, L), (rows, C, F, 2 * L), (rows, F, C, L), (rows, C, V, 1)]


def decode_flops(cfg: Qwen2Config, rows: int, context: int) -> float:
    """FLOPs of one decode forward: 2 x matmul params per row, plus attention over `context` keys."""
    matmul = sum(2 * M * K * N * n for M, K, N, n in decode_gemm_shapes(cfg, rows))
    attention = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * context * rows  # q.k and p.v
    return matmul + attention


def best_seconds(fn, device, reps: int) -> float:
    fn()  # warm-up
    return min(timed(fn, device)[0] for _ in range(reps))  # wall: the least-disturbed run


def gemm_roofline(cfg: Qwen2Config, rows: int, device, dtype, reps: int = 3, square: int = 0) -> tuple[float, float]:
    """(FLOP/s of a decode step's matmuls done back to back, FLOP/s of a `square`^3 matmul), best of reps.
    square 0: 2048 on a CPU, 8192 on a GPU."""
    flops = seconds = 0.0
    for M, K, N, n in decode_gemm_shapes(cfg, rows):
        x, w = torch.randn(M, K, device=device, dtype=dtype), torch.randn(N, K, device=device, dtype=dtype)
        flops += 2 * M * K * N * n
        seconds += n * best_seconds(lambda: torch.mm(x, w.t()), device, reps)  # nn.Linear's layout
    S = square or (2048 if torch.device(device).type == "cpu" else 8192)
    a, b = torch.randn(S, S, device=device, dtype=dtype), torch.randn(S, S, device=device, dtype=dtype)
    square = 2 * S**3 / best_seconds(lambda: torch.mm(a, b), device, reps)
    return flops / seconds, square


def run_fixed(model, rows, new_tokens, pad_id, seed, device, compile: bool = False) -> tuple[float, float, float]:
    """(decode wall s, decode CPU s, decode FLOPs) of `rows` all generating exactly `new_tokens` tokens.

    "Decode" starts when the first token is sampled (after the prefill) and ends when generate
    returns: new_tokens samples and new_tokens - 1 forwards, whose FLOPs are counted.
    """
    first_step_at = []

    def mark(logits: Tensor, rows_idx: Tensor, step: int) -> Tensor:
        if step == 0:
            sync(device)
            first_step_at.append((time.perf_counter(), time.process_time()))
        return logits

    g = torch.Generator(device).manual_seed(seed)
    out = generate(model, rows, new_tokens, SamplingParams(temperature=1.0), generator=g, pad_token_id=pad_id, logits_hook=mark,
                   compile=compile)
    sync(device)
    wall, cpu = time.perf_counter() - first_step_at[0][0], time.process_time() - first_step_at[0][1]
    assert all(len(t) == new_tokens for t in out.tokens)
    P = max(map(len, rows))  # prompts are left-padded to P, so every row attends over P + t keys
    flops = sum(decode_flops(model.config, len(rows), P + t + 1) for t in range(new_tokens - 1))
    return wall, cpu, flops


def memory_bandwidth(device, reps: int = 3) -> float:
    """Bytes/s of a large device-to-device copy (read + write), best of reps: the HBM bound's rate."""
    x = torch.empty(2**28, dtype=torch.uint8, device=device)  # 256 MiB
    y = torch.empty_like(x)
    return 2 * x.numel() / best_seconds(lambda: y.copy_(x), device, reps)


def decode_bytes(model, rows: int, context: int) -> int:
    """Bytes a decode step must read: every weight once, and the keys/values of `context` positions per row."""
    cfg = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    per_position = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * model.lm_head.weight.element_size()
    return weights + rows * context * per_position


# --- main -----------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="Qwen2.5-0.5B", help="Qwen2.5 shape (Qwen2Config.from_name)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8, help="rows per prompt (GRPO group size)")
    ap.add_argument("--prompt-len", type=int, nargs=2, default=(40, 120), metavar=("MIN", "MAX"))
    ap.add_argument("--gen-len", type=int, nargs=2, default=(16, 128), metavar=("MIN", "MAX"),
                    help="each row's completion length is drawn uniformly from this range")
    ap.add_argument("--repeats", type=int, default=1, help="ragged runs of each system (alternating order)")
    ap.add_argument("--fixed-tokens", type=int, default=24, help="tokens per row in the fixed-length run (0: skip)")
    ap.add_argument("--fixed-repeats", type=int, default=2)
    ap.add_argument("--compact-every", type=int, default=8, help="our generate's compact_every")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers (ours only)")
    ap.add_argument("--compile", action="store_true",
                    help="also time our compiled static-shape decode (rollout.compile), after its one compile")
    ap.add_argument("--bound-rows", default="", help="comma-separated row counts (e.g. 64,256): a fixed-length decode "
                    "at each, its step time against the memory-bandwidth bound (weights + KV read per step)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--square-size", type=int, default=0, help="side of the square matmul (0: 2048 on a CPU, 8192 on a GPU)")
    ap.add_argument("--cache-dir", default=str(BENCH_DIR), help="where the random checkpoint is built and reused")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]

    ckpt = random_checkpoint(args.model, args.dtype, cache_dir=Path(args.cache_dir), device=device)
    model = load_model(ckpt, device=device).eval()
    cfg = model.config
    stop_id = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else cfg.eos_token_id
    pad_id = 0
    rows, stop_len = grpo_batch(args.prompts, args.samples, tuple(args.prompt_len), tuple(args.gen_len),
                                cfg.vocab_size, args.seed)
    print(f"{args.model} random weights, {args.dtype} on {hardware(device)}")
    print(f"ragged batch: {args.prompts} prompts ({args.prompt_len[0]}-{args.prompt_len[1]} tokens) x {args.samples} samples"
          f" = {len(rows)} rows, completion lengths {min(stop_len)}-{max(stop_len)}, {sum(stop_len)} useful tokens")

    hf = None
    if not args.no_hf:
        import transformers
        transformers.logging.set_verbosity_error()
        hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype).to(device).eval()

    # Warm-up: first calls pay one-time allocation and dispatch costs (and the one compile).
    warm_rows, warm_len = rows[:2], [3, 4]
    run_ours(model, warm_rows, warm_len, stop_id, pad_id, 0, device, args.compact_every)
    compile_s = None
    if args.compile:
        from qwen2.static_decode import STATS

        t0 = time.perf_counter()
        run_ours(model, rows, stop_len, stop_id, pad_id, 0, device, args.compact_every, compile=True)  # every bucket
        compile_s = time.perf_counter() - t0
        print(f"compiled decode: first full run {compile_s:.1f} s ({STATS.compiles} compile(s), {STATS.seconds:.1f} s of them)")
    if hf is not None:
        run_hf(hf, warm_rows, warm_len, stop_id, pad_id, 0, device)
    systems = ["ours", "hf"] + (["compiled"] if args.compile else [])

    tokens = sum(stop_len)
    results: list[dict[str, Run]] = []
    for r in range(args.repeats):
        res = {}
        for who in systems[r % len(systems):] + systems[:r % len(systems)]:  # rotate the order
            if who in ("ours", "compiled"):
                res[who], toks = run_ours(model, rows, stop_len, stop_id, pad_id, args.seed + r, device, args.compact_every,
                                          compile=who == "compiled")
            elif hf is not None:
                res[who], toks = run_hf(hf, rows, stop_len, stop_id, pad_id, args.seed + r, device)
            else:
                continue
            check(toks, stop_len, stop_id, who)
            x = res[who]
            print(f"  repeat {r}: {who:8s} wall {x.wall:6.1f} s (prefill {x.prefill:5.1f} s), CPU {x.cpu:6.1f} s: "
                  f"{tokens / x.wall:6.1f} tok/s by wall, {tokens / x.cpu:6.1f} by CPU", flush=True)
        results.append(res)

    result = dict(script="bench_sampler", model=args.model, device=str(device), device_name=device_name(device),
                  dtype=args.dtype, rows=len(rows), useful_tokens=tokens, repeats=args.repeats, torch=torch.__version__)
    print("\n| ragged batch | wall (s) | prefill (s) | CPU (s) | useful tok/s (wall) | useful tok/s (CPU) |")
    print("|---|---|---|---|---|---|")
    for who, name in [("ours", "ours (eager)"), ("compiled", "ours (compiled)"), ("hf", "transformers")]:
        if all(who in r for r in results):
            wall, cpu = median([r[who].wall for r in results]), median([r[who].cpu for r in results])
            pre = median([r[who].prefill for r in results])
            print(f"| {name} | {wall:.1f} | {pre:.1f} | {cpu:.1f} | {tokens / wall:.1f} | {tokens / cpu:.1f} |")
            result.update({f"{who}_wall_s": round(wall, 4), f"{who}_cpu_s": round(cpu, 4), f"{who}_prefill_s": round(pre, 4),
                           f"{who}_tok_s": round(tokens / wall, 1)})
    if hf is not None:
        by_wall = [r["hf"].wall / r["ours"].wall for r in results]
        by_cpu = [r["hf"].cpu / r["ours"].cpu for r in results]
        print(f"speed-up ours / transformers: {median(by_wall):.2f}x by wall time ({', '.join(f'{x:.2f}' for x in by_wall)}), "
              f"{median(by_cpu):.2f}x by CPU time ({', '.join(f'{x:.2f}' for x in by_cpu)})")
        result.update(speedup_wall=round(median(by_wall), 3), speedup_cpu=round(median(by_cpu), 3),
                      speedups_wall=[round(x, 3) for x in by_wall])
    if args.compile:
        over_eager = [r["ours"].wall / r["compiled"].wall for r in results]
        from torch._dynamo.utils import counters

        from qwen2.static_decode import STATS
        # Compiles after the timed runs (a new rollout must not recompile), and CUDA-graph fallbacks
        # (inductor's skips: the step then runs compiled but without graphs, silently slower).
        result.update(compile_s=round(compile_s, 1), compiled_over_eager=round(median(over_eager), 3),
                      compiles=STATS.compiles, cudagraph_skips=int(counters["inductor"]["cudagraph_skips"]))
        line = f"compiled / eager: {median(over_eager):.2f}x by wall time ({', '.join(f'{x:.2f}' for x in over_eager)})"
        if hf is not None:
            over_hf = [r["hf"].wall / r["compiled"].wall for r in results]
            result.update(speedup_compiled_wall=round(median(over_hf), 3))
            line += f"; compiled / transformers: {median(over_hf):.2f}x"
        print(line)

    if args.fixed_tokens:
        print(f"\nfixed length: {len(rows)} rows x {args.fixed_tokens} tokens; decode FLOP/s vs torch.mm on the same shapes")
        print("| repeat | decode wall (s) | decode CPU (s) | GFLOP/s (wall) | GFLOP/s (CPU) | roofline GFLOP/s | square-mm GFLOP/s "
              "| of roofline (wall / CPU) | of square (wall / CPU) |")
        print("|---|---|---|---|---|---|---|---|---|")
        fractions = []
        for r in range(args.fixed_repeats):
            roof, square = gemm_roofline(cfg, len(rows), device, dtype, square=args.square_size)
            wall, cpu, flops = run_fixed(model, rows, args.fixed_tokens, pad_id, args.seed + r, device)
            fractions.append((flops / wall / roof, flops / cpu / roof))
            print(f"| {r} | {wall:.1f} | {cpu:.1f} | {flops / wall / 1e9:.1f} | {flops / cpu / 1e9:.1f} | {roof / 1e9:.1f} | "
                  f"{square / 1e9:.1f} | {flops / wall / roof:.0%} / {flops / cpu / roof:.0%} | "
                  f"{flops / wall / square:.0%} / {flops / cpu / square:.0%} |", flush=True)
        print(f"median: {median([f[0] for f in fractions]):.0%} (wall) / {median([f[1] for f in fractions]):.0%} (CPU) "
              f"of the decode-shape GEMM roofline")
        result.update(roofline_wall=round(median([f[0] for f in fractions]), 3),
                      roofline_cpu=round(median([f[1] for f in fractions]), 3))
    if args.bound_rows:
        bandwidth = memory_bandwidth(device)
        print(f"\ndecode step vs its memory-bandwidth bound ({bandwidth / 1e9:.0f} GB/s measured by a device copy), "
              f"{args.fixed_tokens} tokens per row, {'compiled' if args.compile else 'eager'}")
        print("| rows | ms per decode step | bound (ms) | step / bound |")
        print("|---|---|---|---|")
        bounds = {}
        for n in (int(x) for x in args.bound_rows.split(",")):
            batch = (rows * -(-n // len(rows)))[:n]
            P = max(map(len, batch))  # every row attends over the left-padded prompt width
            # Untimed first: a new row count is a new shape, whose compile (if any) should not be timed.
            run_fixed(model, batch, min(args.fixed_tokens, 4), pad_id, args.seed, device, compile=args.compile)
            wall, _, _ = run_fixed(model, batch, args.fixed_tokens, pad_id, args.seed, device, compile=args.compile)
            step = wall / args.fixed_tokens  # each of the fixed_tokens - 1 decode forwards, plus sampling
            bound = sum(decode_bytes(model, n, P + t + 1) for t in range(args.fixed_tokens - 1)) / (args.fixed_tokens - 1) / bandwidth
            bounds[n] = round(step / bound, 3)
            print(f"| {n} | {1000 * step:.2f} | {1000 * bound:.2f} | {step / bound:.2f}x |", flush=True)
        result.update(bandwidth_gbs=round(bandwidth / 1e9, 1), step_over_bound=bounds)
    print_result(result)


if __name__ == "__main__":
    main()
