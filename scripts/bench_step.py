"""Peak memory and time of one full GRPO step (rollout + update + optimizer) on real Qwen2.5 shapes.

    python scripts/bench_step.py --model Qwen2.5-3B-Instruct --cap-gb 24 --offload     # must fit
    python scripts/bench_step.py --model Qwen2.5-3B-Instruct --cap-gb 24               # expected OOM
    python scripts/bench_step.py --model Qwen2.5-0.5B-Instruct --device cpu --dtype float32 --rows 4 --new 16

Random weights (no download), random prompt tokens. The step uses the trainer's own pieces:
`generate` for the rollout, `build_batch`/`micro_batches`, `token_logprobs`, `policy_loss`,
activation checkpointing, gradient clipping and `OffloadAdamW`. A smaller card is emulated with
`torch.cuda.set_per_process_memory_fraction`. Simplifications: rewards/advantages are random (the
cost of scoring is negligible) and every row generates the full budget (the memory worst case).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from data.rewards import Score  # noqa: E402
from grpo.logprobs import token_logprobs  # noqa: E402
from grpo.loss import policy_loss  # noqa: E402
from grpo.optim import OffloadAdamW  # noqa: E402
from grpo.rollout import Episode  # noqa: E402
from grpo.batch import build_batch, micro_batches  # noqa: E402
from grpo.runtime import enable_activation_checkpointing  # noqa: E402
from qwen2 import Qwen2, Qwen2Config, SamplingParams, generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="Qwen2.5-3B-Instruct")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--cap-gb", type=float, default=None, help="emulate a card of this size (CUDA only)")
    ap.add_argument("--offload", action="store_true", help="OffloadAdamW(offload=True)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--rows", type=int, default=8, help="samples per prompt (G)")
    ap.add_argument("--prompt-len", type=int, default=200)
    ap.add_argument("--new", type=int, default=512, help="generated tokens per row")
    ap.add_argument("--micro-batch", type=int, default=8)
    args = ap.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    if cuda and args.cap_gb:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(args.cap_gb * 1e9 / total, device)
    config = Qwen2Config.from_name(args.model)
    with torch.device("meta"):
        model = Qwen2(config)
    model = model.to_empty(device=device).to(dtype)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.init_weights(generator=torch.Generator(device).manual_seed(0))
    enable_activation_checkpointing(model)
    opt = OffloadAdamW(model.parameters(), lr=1e-6, offload=args.offload)
    print(f"{args.model} {args.dtype} on {device}, offload={args.offload}, cap={args.cap_gb} GB, "
          f"{args.prompts}x{args.rows} rows, prompt {args.prompt_len} + {args.new} new tokens", flush=True)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, config.vocab_size, (args.prompt_len,), generator=g).tolist() for _ in range(args.prompts)]
    rows = [p for p in prompts for _ in range(args.rows)]
    times = {}
    try:
        for step in range(2):  # the second step runs with optimizer state allocated: the steady state
            sync(); t0 = time.perf_counter()
            out = generate(model, rows, args.new, SamplingParams(temperature=1.0), stop_token_ids=[], generator=torch.Generator(device).manual_seed(step))
            sync(); times["generate"] = time.perf_counter() - t0
            episodes = [Episode(i // args.rows, r, toks, False, "", "0", Score({}, 0.0, False))
                        for i, (r, toks) in enumerate(zip(rows, out.tokens))]
            batch = build_batch(episodes, torch.randn(len(rows)), pad_id=0, device=device)
            n_tok = int(batch.loss_mask.sum())
            t0 = time.perf_counter()
            for micro in micro_batches(batch, args.micro_batch):
                logp = token_logprobs(model, micro.input_ids, micro.attention_mask, micro.targets_start, 1.0, 128)
                loss, _ = policy_loss(logp, logp.detach(), batch.advantages[micro.rows], micro.loss_mask,
                                      num_sequences=len(rows), num_tokens=n_tok, max_tokens=args.new)
                loss.backward()
            sync(); times["update"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(); times["optimizer"] = time.perf_counter() - t0
            print(f"step {step}: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()), flush=True)
    except torch.OutOfMemoryError:
        peak = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else float("nan")
        print(f"RESULT: out of memory (peak allocated before failing {peak:.1f} GB, cap {args.cap_gb} GB)")
        return
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else float("nan")
    tokens = len(rows) * args.new
    print(f"RESULT: fits; peak GPU memory {peak:.1f} GB (cap {args.cap_gb} GB); step "
          f"{sum(times.values()):.1f}s ({tokens / times['generate']:.0f} generated tokens/s)")


if __name__ == "__main__":
    main()
