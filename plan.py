"""Will it fit? The memory plan of a training config, before any weight is read.

    python plan.py                                       # config.yaml: this machine's GPU (else a 24 GB card) and RAM
    python plan.py --set optim.offload=true --card-gb 24 --ram-gb 64
    python plan.py --trace                               # ... and the real step's peaks, traced on the meta device
    python plan.py --ranks 8                             # per GPU, for torchrun --nproc_per_node=8
    python plan.py --resume runs/gsm8k                   # the plan of a run to continue

`python train.py --dry-run ...` is the same command. Exit code 0: it fits, 1: it does not, 2: bad input.
The figures are plans (grpo/plan/memory.py; traced where --trace ran), not GPU measurements.
"""

from __future__ import annotations

import argparse
import os
import sys

from grpo.config import Config
from grpo.run_config import add_config_arguments, read_run_config
from qwen2.errors import InputError


def add_plan_arguments(ap: argparse.ArgumentParser, prefix: str = "") -> None:
    """The planner's own flags (`prefix`: how train.py's help says they go with --dry-run)."""
    ap.add_argument("--trace", action="store_true",
                    help=f"{prefix}also run the step's peak phases on the meta device and print their traced peaks "
                         "next to the plan (no weights are read; seconds for any model size)")
    ap.add_argument("--card-gb", type=float, default=None,
                    help=f"{prefix}GPU size in GB (default: the visible GPU, else 24)")
    ap.add_argument("--ram-gb", type=float, default=None, help=f"{prefix}CPU RAM in GB (default: this machine's)")
    ap.add_argument("--ranks", type=int, default=int(os.environ.get("WORLD_SIZE", 1)),
                    help=f"{prefix}plan per GPU for this many torchrun processes (default: WORLD_SIZE, else 1)")


def report(cfg: Config, args: argparse.Namespace) -> int:
    """Print the plan (and the trace); 0 when it fits, 1 when it does not, so scripts can tell."""
    from grpo.plan.machine import plan_fits
    from grpo.plan.memory import plan_memory
    from grpo.plan.report import format_plan

    if not 1 <= args.ranks <= cfg.rollout.prompts_per_step:
        raise InputError(f"--ranks {args.ranks} must be in [1, rollout.prompts_per_step={cfg.rollout.prompts_per_step}]: "
                         "every rank samples at least one question")
    if args.trace and args.ranks > 1:
        raise InputError("--trace follows one process (no FSDP on the meta device): drop --ranks, or plan "
                         "--ranks N without --trace")
    items = plan_memory(cfg, ranks=args.ranks)
    print(format_plan(items, cfg, card_gb=args.card_gb, ram_gb=args.ram_gb, ranks=args.ranks))
    if args.trace:
        from grpo.plan.trace import format_trace, trace_memory

        print(format_trace(trace_memory(cfg), items))
    return 0 if all(plan_fits(items, args.card_gb, args.ram_gb, args.ranks)) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(ap)
    add_plan_arguments(ap)
    args = ap.parse_args(argv)
    try:
        cfg, _ = read_run_config(args.config, args.overrides, args.resume)
        return report(cfg, args)
    except InputError as e:  # bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
