"""Train a Qwen2.5 model on GSM8K with GRPO.

    python train.py                                   # config.yaml
    python train.py --set optim.offload=true          # 24 GB cards: AdamW state in CPU memory
    python train.py --config configs/tiny.yaml        # the offline CPU recipe
    python train.py --resume runs/gsm8k               # continue from the last checkpoint
    python train.py --dry-run                         # memory plan only: does it fit the card? (= python plan.py)
    torchrun --nproc_per_node=2 train.py              # one run on 2 GPUs (or 2 CPU processes): FSDP2

Logs one line per step, writes metrics.jsonl, samples.jsonl and checkpoints into train.out_dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from grpo.config import Config
from grpo.run_config import add_config_arguments, read_run_config
from grpo.machinery.run_lock import refuse_if_in_use
from plan import add_plan_arguments, report
from qwen2.errors import InputError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(ap)
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="torch CPU threads (default: 1 for a CPU run of a model under 100M parameters, else torch's)")
    ap.add_argument("--stop-after", type=int, default=None, metavar="N",
                    help="stop (with a checkpoint) after N steps of this run, e.g. to fit a job time limit")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the memory plan for this config and exit, as plan.py does (exit code 0: it fits, 1: it does not)")
    add_plan_arguments(ap, prefix="with --dry-run: ")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """parse -> (plan) -> train."""
    from grpo.machinery.distributed import shutdown

    args = parse_args(argv)
    try:
        try:
            cfg, point = read_run_config(args.config, args.overrides, args.resume)
            if args.dry_run:
                return report(cfg, args)  # plan.py: does it fit? (nothing is trained)
            refuse_if_in_use(cfg.train.out_dir)  # before reading a run another process may still be changing
            trainer = start(cfg, point, args.threads)
        except InputError as e:
            return input_error(e)
        except KeyboardInterrupt:  # before training started: nothing to save
            print("interrupted", file=sys.stderr)
            return 130
        return train(trainer, args.stop_after)
    finally:
        shutdown()  # leave the process group (torchrun), if any


def start(cfg: Config, point, threads: int | None):
    """The trainer of this config (resuming `point`, if any): the memory plan checked against the
    machine before any weight is read, CPU threads chosen, the torchrun rank joined."""
    from grpo.machinery.distributed import Dist, init_from_env, launched_by_torchrun
    from grpo.machinery.runtime import choose_cpu_threads, model_size, resolve_device
    from grpo.plan.report import check_fits
    from grpo.policy import policy_dir
    from grpo.trainer import Trainer
    from qwen2 import Qwen2Config

    device = resolve_device(cfg.model.device)
    choose_cpu_threads(device, model_size(cfg.model.path), threads)
    dist = init_from_env(cfg.model.device) if launched_by_torchrun() else Dist.single(device)  # torchrun: one rank of several
    ckpt = point and point.checkpoint
    # A run that cannot fit is one line now, not an out-of-memory error minutes later.
    check_fits(cfg, Qwen2Config.from_json(policy_dir(cfg, ckpt)), dist.device, dist.world)
    return Trainer(cfg, resume=ckpt, dist=dist, restart=point is not None and point.checkpoint is None)


def train(trainer, stop_after: int | None) -> int:
    """Run the trainer; the exit code and, where it stops early, the line that continues it."""
    from grpo.machinery.checkpoint import list_checkpoints
    from grpo.machinery.divergence import Diverged
    from grpo.machinery.interrupt import EX_PREEMPTED, clear_preempted, mark_preempted

    try:
        if trainer.dist.main:
            clear_preempted(trainer.out_dir)  # this run is under way again
        trainer.run(stop_after=stop_after)
        if trainer.step < trainer.cfg.train.steps and trainer.dist.main:  # --stop-after: the rest is one command away
            print(f"stopped after step {trainer.step} (--stop-after {stop_after}); "
                  f"continue with: {continue_command(trainer)}", file=sys.stderr)
    except (Diverged, InputError) as e:  # the run diverged, or a file it reads mid-run is bad: one line
        if trainer.dist.main:
            print(f"error: {e}", file=sys.stderr)
        return 4 if isinstance(e, Diverged) else 2
    except torch.OutOfMemoryError:
        # The config asks for more than the card has: say what to change, not a CUDA traceback.
        from grpo.plan.report import out_of_memory_message

        print(f"error: {out_of_memory_message(trainer.cfg, trainer.step)}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as e:  # Ctrl-C (130), or a stop signal or a dead launcher (75): grpo/machinery/interrupt.py
        code = getattr(e, "code", 130)
        if trainer.dist.main:
            if list_checkpoints(trainer.out_dir):
                print(f"stopped after step {trainer.step}; continue with: {continue_command(trainer)}", file=sys.stderr)
            else:  # nothing saved yet: --resume starts the run again from step 0, with its config
                print(f"stopped before the first checkpoint; start it again with: {continue_command(trainer)}",
                      file=sys.stderr)
            if code == EX_PREEMPTED:  # what a job script tests under torchrun, whose own exit code is 1
                mark_preempted(trainer.out_dir, trainer.step, str(e), continue_command(trainer))
        return code
    return 0


def input_error(e: InputError) -> int:
    """Bad input: one line with the cause and what to do, no traceback (any other exception is a bug
    and keeps its traceback). Under torchrun every rank usually finds the same: rank 0 says it and
    fails (so torchrun's exit code says so too, and its summary names the cause); the others end
    quietly, so torchrun's report lists one failure, not one per rank."""
    from grpo.machinery.distributed import report_input_error

    if not report_input_error(str(e)):  # another process reports it
        return 0
    print(f"error: {e}", file=sys.stderr)
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):  # torchrun's summary then repeats the cause, not "<N/A>"
        line = {"message": str(e), "extraInfo": {"py_callstack": f"error: {e}", "timestamp": str(int(time.time()))}}
        Path(os.environ["TORCHELASTIC_ERROR_FILE"]).write_text(json.dumps({"message": line}))
    return 2


def continue_command(trainer) -> str:
    """The command that continues this run, to paste."""
    return f"{trainer.dist.train_command} --resume {shlex.quote(str(trainer.out_dir))}"


if __name__ == "__main__":
    from grpo.machinery.distributed import exit_process

    exit_process(main())
