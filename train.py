"""Train a Qwen2.5 model on GSM8K with GRPO.

    python train.py                                   # config.yaml
    python train.py --set optim.offload=true          # 24 GB cards: AdamW state in CPU memory
    python train.py --config configs/tiny.yaml        # the offline CPU recipe
    python train.py --resume runs/gsm8k               # continue from the last checkpoint
    python train.py --dry-run                         # memory plan only: does it fit the card?

Logs one line per step, writes metrics.jsonl, samples.jsonl and checkpoints into train.out_dir.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from grpo.config import ConfigError, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config file (default: config.yaml; with --resume: the run's own config)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config value, e.g. --set rollout.group_size=16 (repeatable)")
    ap.add_argument("--resume", metavar="DIR", help="run directory (or one checkpoint directory) to continue from")
    ap.add_argument("--dry-run", action="store_true", help="print the memory plan for this config and exit")
    ap.add_argument("--card-gb", type=float, default=None, help="with --dry-run: GPU size in GB (default: the visible GPU, else 24)")
    ap.add_argument("--ram-gb", type=float, default=None, help="with --dry-run: CPU RAM in GB (default: this machine's)")
    ap.add_argument("--stop-after", type=int, default=None, metavar="N",
                    help="stop (with a checkpoint) after N steps of this run, e.g. to fit a job time limit")
    return ap.parse_args(argv)


def setup(args: argparse.Namespace):
    """Config and trainer from the command line; every bad input raises a one-line error here."""
    config_path, base = args.config, None
    if config_path is None and args.resume:
        from grpo.checkpoint import saved_config

        base = saved_config(args.resume)  # resume with the configuration the run was started with (plus any --set)
    elif config_path is None and Path("config.yaml").is_file():
        config_path = "config.yaml"
    cfg = load_config(config_path, args.overrides, base=base)
    if args.dry_run:
        from grpo.memory import format_plan, plan_memory

        print(format_plan(plan_memory(cfg), cfg, card_gb=args.card_gb, ram_gb=args.ram_gb))
        return cfg, None
    from grpo.trainer import Trainer

    return cfg, Trainer(cfg, resume=args.resume)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg, trainer = setup(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        # Bad input: one line with the cause and what to do, no traceback. Errors once training
        # runs are bugs, and keep their traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started: nothing to save
        print("interrupted", file=sys.stderr)
        return 130
    if trainer is None:  # --dry-run: the plan is printed
        return 0
    try:
        trainer.run(stop_after=args.stop_after)
    except torch.OutOfMemoryError:
        # The config asks for more than the card has: say what to change, not a CUDA traceback.
        from grpo.memory import out_of_memory_message

        print(f"error: {out_of_memory_message(cfg, trainer.step)}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"stopped after step {trainer.step}; continue with: python train.py --resume {trainer.out_dir}",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
