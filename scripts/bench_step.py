"""Peak memory and time of full GRPO training steps (rollout + update + optimizer) on real Qwen2.5 shapes.

    python scripts/bench_step.py --model Qwen2.5-3B-Instruct --cap-gb 24 --set optim.offload=true   # must fit
    python scripts/bench_step.py --model Qwen2.5-3B-Instruct --cap-gb 24                            # expected OOM
    python scripts/bench_step.py --model tiny --device cpu --dtype float32 \\
        --set rollout.prompts_per_step=2 --set rollout.group_size=4 --set rollout.max_new_tokens=8  # smoke

It measures the real training step: `grpo.trainer.Trainer(cfg).train_step()`, with `cfg` read from
config.yaml (the default recipe: 16 questions x 8 samples, 512 new tokens, activation
checkpointing) plus `--set` overrides, on a random checkpoint built in a temporary directory:
  - weights: random, with the shapes of `--model` (`_bench_common.model_config`), in `--dtype`;
  - tokenizer: a 300-token byte-level BPE trained on the questions (`qwen2.bpe_trainer`), so chat
    prompts are ~270-300 tokens, as GSM8K's are with Qwen's tokenizer; the model's larger
    vocabulary is fine (decoding skips ids the tokenizer does not know);
  - data: synthetic GSM8K-format word problems (`data.synthetic`);
  - reward: format + correctness (always 0 for a random model) + `bench_spread`, a hash of the
    completion text mod 2, so groups have reward spread and every step trains (zero-spread groups
    get no update, which would make the step cheaper than a real one).
Random weights almost never emit <|im_end|>, so nearly every row generates the full
`rollout.max_new_tokens`: the worst case for time and memory, which is what a fit check wants.

`--steps` steps run (default 2: the first allocates the optimizer state, the second is the steady
state). Reported per step: the trainer's phase times (generate, reward, update, optimizer; each
phase ends with a device sync) and the peak GPU memory (`torch.cuda.max_memory_allocated`);
overall: the peak against the `train.py --dry-run` plan of the same config (`grpo.plan.memory`), and the
process's peak RSS against the plan's CPU RAM. `--cap-gb` emulates a smaller card with
`torch.cuda.set_per_process_memory_fraction`, set before anything is allocated. A CUDA
out-of-memory error prints train.py's one-line message (`grpo.plan.report.out_of_memory_message`) and
exits with 3, as train.py does. `--fake-oom` raises that error at the first optimizer step, so the
path can be smoke-tested on a CPU.

Under `torchrun --nproc_per_node=N` (with `--cache-dir`, where rank 0 builds the checkpoint the
others then read) it runs the same steps with N ranks (grpo/machinery/distributed.py), plans per-GPU memory
for N ranks and reports rank 0's numbers; scripts/gpu_check.py's torchrun step uses this.

The last line of the output is `RESULT {json}` (status ok / oom, the figures above) for
scripts/gpu_check.py. Simplifications: the questions are easy synthetic ones (prompt lengths are
what matters for memory); nothing is saved (no checkpoint, no metrics.jsonl).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

from _bench_common import device_name, model_config, print_result, random_checkpoint, sync
from data import rewards
from data.synthetic import make_problems, write_jsonl
from grpo.config import load_config
from grpo.machinery.distributed import Dist
from grpo.plan.memory import GB, peak_gpu, plan_memory
from grpo.plan.report import format_plan, out_of_memory_message
from qwen2.bpe_trainer import train_bpe_tokenizer

ROOT = Path(__file__).resolve().parents[1]

TOKENIZER_VOCAB = 300  # near byte level: chat prompts of ~270-300 tokens, like GSM8K's with Qwen's tokenizer
TRAIN_PROBLEMS = 256


def bench_spread(completion: str, answer: str, tags=None) -> float:
    """Bench-only reward with spread inside groups: a stable hash of the completion text, mod 2."""
    return float(zlib.crc32(completion.encode("utf-8")) % 2)


def generated_tokens(episodes: list, dist: Dist | None) -> int:
    """Completion tokens of the step (all ranks')."""
    n = sum(len(e.completion_ids) for e in episodes)
    return int(dist.sum([n])[0]) if dist else n


def prepare(args: argparse.Namespace, work: Path, device: torch.device) -> tuple[Path, Path, Path]:
    """Random checkpoint (+ tokenizer) and synthetic train/test files; returns their paths."""
    ckpt = random_checkpoint(args.model, args.dtype, cache_dir=work, device=device)
    problems = make_problems(TRAIN_PROBLEMS, seed=0)
    if not (ckpt / "tokenizer.json").is_file():
        from data.prompts import TEMPLATES

        texts = [p.question for p in problems] + [t.system for t in TEMPLATES.values()]
        train_bpe_tokenizer(texts, ckpt, vocab_size=TOKENIZER_VOCAB)
    train = write_jsonl(problems, work / "data" / "train.jsonl")
    test = write_jsonl(make_problems(8, seed=0, split="test"), work / "data" / "test.jsonl")
    return ckpt, train, test


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="Qwen2.5-3B-Instruct", help="Qwen2.5 shape, or tiny (smoke runs)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])  # what model.dtype accepts
    ap.add_argument("--cap-gb", type=float, default=None, help="emulate a card of this many GB (1e9 bytes; CUDA only)")
    ap.add_argument("--offload", action="store_true", help="the same as --set optim.offload=true")
    ap.add_argument("--steps", type=int, default=2, help="training steps to run (2: the second is the steady state)")
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override, as for train.py (repeatable)")
    ap.add_argument("--cache-dir", default=None,
                    help="keep the random checkpoint here and reuse it (default: a temporary directory, removed)")
    ap.add_argument("--fake-oom", action="store_true",
                    help="raise torch.OutOfMemoryError at the first optimizer step (tests the OOM path on a CPU)")
    args = ap.parse_args()

    from grpo.machinery.distributed import init_from_env, launched_by_torchrun, shutdown

    dist = init_from_env(args.device) if launched_by_torchrun() else None
    if dist and not args.cache_dir:
        print("error: under torchrun pass --cache-dir DIR: the ranks share the random checkpoint", file=sys.stderr)
        return 2
    if dist and not dist.main:
        sys.stdout = open(os.devnull, "w")  # rank 0 reports
    device = dist.device if dist else torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("error: --device cuda asked for, but torch sees no CUDA GPU (use --device cpu)", file=sys.stderr)
        return 2
    if cuda:
        if device.index is None:  # set_per_process_memory_fraction wants an index
            device = torch.device("cuda", torch.cuda.current_device())
        total = torch.cuda.get_device_properties(device).total_memory
        if args.cap_gb:  # before anything is allocated on the card
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gb * GB / total), device)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_step-") as tmp:
            work = Path(args.cache_dir) if args.cache_dir else Path(tmp)
            return run(args, device, work, Path(tmp), dist)
    finally:
        shutdown()


def run(args: argparse.Namespace, device: torch.device, work: Path, tmp: Path, dist: Dist | None = None) -> int:
    cuda = device.type == "cuda"
    t_setup = time.perf_counter()
    if dist and not dist.main:
        dist.barrier()  # rank 0 builds the shared checkpoint and data first
    ckpt, train_file, test_file = prepare(args, work, device)
    if dist and dist.main:
        dist.barrier()
    ranks = dist.world if dist else 1
    rewards.REWARD_FUNCTIONS["bench_spread"] = bench_spread
    overrides = [f"model.path={ckpt}", f"model.dtype={args.dtype}", f"model.device={device}",
                 f"data.train_file={train_file}", f"data.test_file={test_file}",
                 "reward.weights={format: 0.1, correctness: 1.0, bench_spread: 1.0}",
                 "train.eval_every=0", "train.progress=false", f"train.out_dir={tmp / 'run'}"]
    if args.offload:
        overrides.append("optim.offload=true")
    cfg = load_config(args.config, overrides + args.overrides)
    items = plan_memory(cfg, ranks=ranks)
    plan_gb, plan_cpu_gb = peak_gpu(items) / GB, sum(i.cpu for i in items) / GB
    card_gb = args.cap_gb or (torch.cuda.get_device_properties(device).total_memory / GB if cuda else None)
    print(format_plan(items, cfg, card_gb=card_gb, ranks=ranks), flush=True)
    rows = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    mc = model_config(args.model)
    result = dict(script="bench_step", model=args.model, params_b=round(mc.num_params / 1e9, 3), device=str(device),
                  device_name=device_name(device), dtype=args.dtype, offload=cfg.optim.offload, cap_gb=args.cap_gb,
                  ranks=ranks, rows=rows, new_tokens=cfg.rollout.max_new_tokens, plan_gb=round(plan_gb, 3),
                  plan_cpu_gb=round(plan_cpu_gb, 3), torch=torch.__version__)
    if ranks == 1:  # the same step traced on the meta device (grpo/plan/trace.py): plan, trace and measured side by side
        from grpo.plan.trace import trace_memory

        result["trace_gb"] = round(max(t.peak for t in trace_memory(cfg, mc)) / GB, 3)
        print(f"traced peak {result['trace_gb']:.2f} GB (plan {plan_gb:.2f} GB)", flush=True)
    print(f"{args.model} ({mc.num_params / 1e9:.2f}B) {args.dtype} on {result['device_name']}, "
          f"offload={str(cfg.optim.offload).lower()}, cap={args.cap_gb} GB, {ranks} rank(s), {cfg.rollout.prompts_per_step}x"
          f"{cfg.rollout.group_size} rows, {cfg.rollout.max_new_tokens} new tokens", flush=True)

    from grpo.trainer import Trainer

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)  # from here on: what training holds
    step, steps, trainer = 0, [], None
    try:
        trainer = Trainer(cfg, dist=dist)
        if args.fake_oom:
            def fake_oom_step(*_, **__):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 37.00 GiB (simulated by --fake-oom)")
            trainer.optimizer.step = fake_oom_step
        result["setup_s"] = round(time.perf_counter() - t_setup, 1)
        for step in range(args.steps):
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t0 = time.perf_counter()
            out = trainer.train_step()
            sync(device)
            seconds = time.perf_counter() - t0
            m = out.metrics
            record = {k: round(v, 3) for k, v in m.items() if k.startswith("time_")}
            record.update(time_step=round(seconds, 3), trained_episodes=m["trained_episodes"],
                          generated_tokens=generated_tokens(out.episodes, dist),
                          prompt_tokens_max=max(len(e.prompt_ids) for e in out.episodes),
                          truncated=round(m["truncated"], 3))
            if cuda:
                record["peak_gb"] = round(torch.cuda.max_memory_allocated(device) / GB, 3)
                record["reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / GB, 3)
            steps.append(record)
            phases = " ".join(f"{k.removeprefix('time_')} {v:.1f}s" for k, v in record.items()
                              if k.startswith("time_") and k != "time_step")
            peak = f", peak {record['peak_gb']:.2f} GB" if cuda else ""
            print(f"step {step + 1}/{args.steps}: {seconds:.1f}s ({phases}){peak}, "
                  f"{record['generated_tokens']} tokens generated, {m['trained_episodes']}/{rows} episodes trained, "
                  f"grad norm {m['grad_norm']:.3f}", flush=True)
    except torch.OutOfMemoryError:
        # What train.py prints: one line, no CUDA traceback, exit code 3.
        message = out_of_memory_message(cfg, step)
        print(f"error: {message}", file=sys.stderr, flush=True)
        peak = torch.cuda.max_memory_allocated(device) / GB if cuda else None
        print_result(result | dict(status="oom", step=step + 1, message=message, steps=steps,
                                   peak_before_failing_gb=None if peak is None else round(peak, 3),
                                   fake=args.fake_oom))
        return 3
    finally:
        rewards.REWARD_FUNCTIONS.pop("bench_spread", None)

    del trainer
    gc.collect()
    ram_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # Linux: kB
    result.update(status="ok", steps=steps, ram_peak_gb=round(ram_gb, 2))
    if cuda:
        peak_gb = max(s["peak_gb"] for s in steps)
        result.update(peak_gb=peak_gb, reserved_gb=max(s["reserved_gb"] for s in steps),
                      plan_ratio=round(peak_gb / plan_gb, 3))
        print(f"peak GPU memory {peak_gb:.2f} GB allocated ({result['reserved_gb']:.2f} GB reserved) vs plan "
              f"{plan_gb:.2f} GB: {peak_gb / plan_gb:.2f}x (traced {result.get('trace_gb', float('nan')):.2f} GB); "
              f"peak RSS {ram_gb:.1f} GB vs plan {plan_cpu_gb:.1f} GB of CPU RAM")
    else:
        print(f"peak RSS {ram_gb:.1f} GB (plan {plan_cpu_gb:.1f} GB of CPU RAM)")
    print_result(result)
    return 0


if __name__ == "__main__":
    from grpo.machinery.distributed import exit_process

    exit_process(main())  # under torchrun: without the interpreter's teardown (see exit_process)
