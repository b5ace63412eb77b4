"""Train a Qwen2.5 model on GSM8K with GRPO.

    python train.py                                   # config.yaml
    python train.py --set optim.offload=true          # 24 GB cards: AdamW state in CPU memory
    python train.py --config configs/tiny.yaml        # the offline CPU recipe
    python train.py --resume runs/gsm8k               # continue from the last checkpoint
    python train.py --dry-run                         # memory plan only: does it fit the card?
    python train.py --dry-run --trace                 # ... and the real code's peaks, traced on the meta device
    torchrun --nproc_per_node=2 train.py              # one run on 2 GPUs (or 2 CPU processes): FSDP2

Logs one line per step, writes metrics.jsonl, samples.jsonl and checkpoints into train.out_dir.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch

from grpo.config import load_config
from qwen2.errors import InputError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config file (default: config.yaml; with --resume: the run's own config)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config value, e.g. --set rollout.group_size=16 (repeatable)")
    ap.add_argument("--resume", metavar="DIR", help="run directory (or one checkpoint directory) to continue from")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the memory plan for this config and exit (exit code 0: it fits, 1: it does not)")
    ap.add_argument("--trace", action="store_true",
                    help="with --dry-run: also run the step's peak phases on the meta device and print their traced "
                         "peaks next to the plan (no weights are read; seconds for any model size)")
    ap.add_argument("--card-gb", type=float, default=None, help="with --dry-run: GPU size in GB (default: the visible GPU, else 24)")
    ap.add_argument("--ram-gb", type=float, default=None, help="with --dry-run: CPU RAM in GB (default: this machine's)")
    ap.add_argument("--ranks", type=int, default=int(os.environ.get("WORLD_SIZE", 1)),
                    help="with --dry-run: plan per GPU for this many torchrun processes (default: WORLD_SIZE, else 1)")
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="torch CPU threads (default: 1 for a CPU run of a model under 100M parameters, else torch's)")
    ap.add_argument("--stop-after", type=int, default=None, metavar="N",
                    help="stop (with a checkpoint) after N steps of this run, e.g. to fit a job time limit")
    return ap.parse_args(argv)


def setup(args: argparse.Namespace):
    """Config and trainer from the command line (with --dry-run: the plan's exit code instead of a
    trainer, 0 = fits); every bad input raises a one-line error here."""
    config_path, base, point = args.config, None, None
    if args.resume:
        from grpo.checkpoint import resume_point

        point = resume_point(args.resume)  # the newest intact checkpoint (damaged ones are skipped, saying why)
        if config_path is None:  # resume with the configuration the run was started with (plus any --set)
            base = point.config
    elif config_path is None and Path("config.yaml").is_file():
        config_path = "config.yaml"
    cfg = load_config(config_path, args.overrides, base=base)
    if point is not None and point.run_dir is not None:
        resume_into(cfg, point.run_dir, args.overrides, config_path)
    if args.dry_run:
        from grpo.memory import format_plan, plan_fits, plan_memory

        if not 1 <= args.ranks <= cfg.rollout.prompts_per_step:
            raise InputError(f"--ranks {args.ranks} must be in [1, rollout.prompts_per_step={cfg.rollout.prompts_per_step}]: "
                             "every rank samples at least one question")
        items = plan_memory(cfg, ranks=args.ranks)
        print(format_plan(items, cfg, card_gb=args.card_gb, ram_gb=args.ram_gb, ranks=args.ranks))
        if args.trace:
            from grpo.trace import format_trace, trace_memory

            if args.ranks > 1:
                raise InputError("--trace follows one process (no FSDP on the meta device): drop --ranks, or use "
                                 "--dry-run --ranks N without --trace")
            print(format_trace(trace_memory(cfg), items))
        return cfg, 0 if all(plan_fits(items, args.card_gb, args.ram_gb, args.ranks)) else 1  # scripts can tell
    from grpo.distributed import init_from_env, launched_by_torchrun
    from grpo.runtime import choose_cpu_threads, model_size, resolve_device
    from grpo.trainer import Trainer

    choose_cpu_threads(resolve_device(cfg.model.device), model_size(cfg.model.path), args.threads)

    dist = init_from_env(cfg.model.device) if launched_by_torchrun() else None  # torchrun: one rank of several
    return cfg, Trainer(cfg, resume=point and point.checkpoint, dist=dist,
                        restart=point is not None and point.checkpoint is None)


def resume_into(cfg, run_dir: Path, overrides: list[str], config_path: str | None) -> None:
    """A resumed run writes into its own directory and nowhere else: train.out_dir becomes `run_dir`.
    A --config file naming another out_dir (the one the run was started with, or a recipe's) is
    overruled with a note; an explicit --set train.out_dir=OTHER contradicts --resume: refused."""
    named = Path(cfg.train.out_dir)
    if named.resolve() == run_dir.resolve():
        return
    if any(o.split("=", 1)[0].strip() == "train.out_dir" for o in overrides):
        raise InputError(f"--resume {run_dir} continues that run in its own directory, but --set train.out_dir={named} "
                         f"names another: drop the --set (to start a new run elsewhere, leave out --resume)")
    source = f"from {config_path}" if config_path else "of its saved config (the run was moved)"
    print(f"note: resuming writes into {run_dir}, the run being resumed; train.out_dir={named} {source} is not used",
          file=sys.stderr)
    cfg.train.out_dir = str(run_dir)


def main(argv: list[str] | None = None) -> int:
    from grpo.distributed import shutdown

    try:
        return run(parse_args(argv))
    finally:
        shutdown()  # leave the process group (torchrun), if any


def run(args: argparse.Namespace) -> int:
    try:
        cfg, trainer = setup(args)
    except InputError as e:
        # Bad input: one line with the cause and what to do, no traceback. Any other exception is a
        # bug and keeps its traceback. Under torchrun every rank usually finds the same: rank 0 says
        # it and fails (so torchrun's exit code says so too, and its summary names the cause); the
        # others end quietly, so torchrun's report lists one failure, not one per rank.
        from grpo.distributed import report_input_error

        if not report_input_error(str(e)):  # another process reports it
            return 0
        print(f"error: {e}", file=sys.stderr)
        if os.environ.get("TORCHELASTIC_ERROR_FILE"):  # torchrun's summary then repeats the cause, not "<N/A>"
            import json
            import time

            line = {"message": str(e), "extraInfo": {"py_callstack": f"error: {e}", "timestamp": str(int(time.time()))}}
            Path(os.environ["TORCHELASTIC_ERROR_FILE"]).write_text(json.dumps({"message": line}))
        return 2
    except KeyboardInterrupt:  # before training started: nothing to save
        print("interrupted", file=sys.stderr)
        return 130
    if isinstance(trainer, int):  # --dry-run: the plan is printed; 1 when it does not fit
        return trainer
    from grpo.divergence import Diverged

    try:
        trainer.run(stop_after=args.stop_after)
        if trainer.step < cfg.train.steps and trainer.dist.main:  # --stop-after: the rest is one command away
            print(f"stopped after step {trainer.step} (--stop-after {args.stop_after}); "
                  f"continue with: {continue_command(trainer)}", file=sys.stderr)
    except (Diverged, InputError) as e:  # the run diverged, or a file it reads mid-run is bad: one line
        if trainer.dist.main:
            print(f"error: {e}", file=sys.stderr)
        return 4 if isinstance(e, Diverged) else 2
    except torch.OutOfMemoryError:
        # The config asks for more than the card has: say what to change, not a CUDA traceback.
        from grpo.memory import out_of_memory_message

        print(f"error: {out_of_memory_message(cfg, trainer.step)}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        if trainer.dist.main:
            from grpo.checkpoint import list_checkpoints

            if list_checkpoints(trainer.out_dir):
                print(f"stopped after step {trainer.step}; continue with: {continue_command(trainer)}", file=sys.stderr)
            else:  # nothing saved yet: --resume starts the run again from step 0, with its config
                print(f"stopped before the first checkpoint; start it again with: {continue_command(trainer)}",
                      file=sys.stderr)
        return 130
    return 0


def continue_command(trainer) -> str:
    """The command that continues this run, to paste."""
    launcher = f"torchrun --nproc_per_node={trainer.dist.world}" if trainer.dist.launched else "python"
    return f"{launcher} train.py --resume {shlex.quote(str(trainer.out_dir))}"


if __name__ == "__main__":
    from grpo.distributed import exit_process

    exit_process(main())
