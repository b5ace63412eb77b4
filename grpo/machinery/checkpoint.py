"""Training checkpoints that are never half-written, and the last K of them kept.

A checkpoint is a directory `RUN/checkpoints/step_000025/` holding
    model/               HF-format model + tokenizer files (shareable, loadable by transformers), or
    adapter/             with LoRA: a PEFT adapter directory (+ tokenizer files) for the base model
    optimizer/           optimizer state (fp32 master weights, moments) as a torch.distributed.checkpoint
                         directory: written by every rank, loadable by any number (sharded_state.py)
    rng.pt               LR-scheduler state and torch's CPU RNG state
    trainer_state.json   step, data position, and the config it was made with (next to last)
    manifest.json        every other file's size and checksum (written last: manifest.py)
Checkpoints of earlier versions (no manifest; optimizer.pt, or optimizer_rank{r}.pt and
rng_rank{r}.pt per rank) still load, with the number of ranks that wrote them.
Everything is written into `step_000025.tmp-<pid>/` and renamed into place at the end, so a run
killed mid-save leaves only a `.tmp-` directory, which resume ignores; a save the disk refuses
stops the run with one line and leaves no such directory (save_errors.py). `--resume RUN` takes
the newest checkpoint whose files match its manifest, saying in one line why each newer one is
skipped. Tensors are read back with `torch.load(weights_only=True)`: no pickled code is ever
executed. docs/checkpoints.md says what is checked and what it costs.

An exact resume needs more than weights: `TrainingState` is the rest (step, data position, RNG
state); `save_checkpoint` writes it with the model and optimizer, `restore_checkpoint` puts all of
it back and drops the log lines of steps after the checkpoint (they will be redone). Sampling needs
no saved state: each episode's random stream is derived from (seed, step, question, sample).
Simplification: the CUDA RNG is not saved (nothing draws from it), nor each rank's own CPU RNG
(rank 0's is restored on every rank: only LoRA dropout draws from it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException

from qwen2 import Qwen2, Tokenizer, save_model
from qwen2.errors import InputError, MissingInput
from qwen2.weights import check_weight_files
from qwen2.lora import check_adapter_files, has_lora, save_adapter

from .distributed import Dist, full_state_dict, train_command
from .save_errors import SaveFailed, agree, attempt, first_line, save_failure
from .manifest import (MANIFEST, file_entries, files_under, manifest_problem,
                       optimizer_files_of, write_manifest)
from ..optim.sharded_state import load_optimizer, optimizer_problem, save_optimizer

STEP_DIR = re.compile(r"^step_(\d{6,})$")
LOG_FILES = ("metrics.jsonl", "samples.jsonl")


@dataclass
class TrainingState:
    """What an exact resume needs besides the model and the optimizer."""

    step: int  # completed training steps
    data: dict[str, int]  # DataOrder.state(): epoch and position in the shuffled problems
    rng: torch.Tensor  # torch's CPU RNG state

    @classmethod
    def capture(cls, step: int, data: dict[str, int]) -> TrainingState:
        return cls(step, dict(data), torch.get_rng_state())


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: str | Path, state: TrainingState, model: Qwen2, tokenizer: Tokenizer,
                    optimizer: torch.optim.Optimizer, scheduler: Any, config: dict[str, Any], dist: Dist,
                    keep: int = 2) -> Path:
    """Write the checkpoint of `state.step` atomically and delete all but the newest `keep`.

    Under torchrun every rank calls it: the model is gathered and written whole by rank 0, every
    rank writes its optimizer shards and hashes them, and rank 0 writes the manifest and renames the
    checkpoint into place once all have succeeded (with one plain process the collectives are
    no-ops). A write that fails on any rank (a full disk, a read-only or forbidden directory) is
    SaveFailed on every rank, agreed before anything is renamed: the .tmp- directory is removed and
    the checkpoints already saved stay as they were."""
    root = checkpoint_dir(run_dir)
    final = root / f"step_{state.step:06d}"
    tmp = root / f"{final.name}.tmp-{dist.token}"
    weights = full_state_dict(model) if dist.launched else None  # collective: every rank takes part
    entries: dict[str, Any] = {}

    def write_model() -> None:  # rank 0: the model (or adapter) with the tokenizer, and rng.pt
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        if has_lora(model):  # only the adapters changed: save them, for the base model.path
            save_adapter(model, tmp / "adapter", base_model=config["model"]["path"], state_dict=weights)
            tokenizer.save_pretrained(tmp / "adapter")
            check_adapter_files(tmp / "adapter")  # a writer that cut a file short without saying so
        else:
            save_model(model, tmp / "model", state_dict=weights)
            tokenizer.save_pretrained(tmp / "model")
            check_weight_files(tmp / "model")
        torch.save({"scheduler": scheduler.state_dict(), "torch": state.rng}, tmp / "rng.pt")
        entries.update(file_entries(tmp, files_under(tmp)))  # hashed now, while the pages are in memory

    def write_optimizer() -> None:  # every rank its shards (DCP shares a failure with every rank)
        save_optimizer(optimizer, model, tmp / "optimizer")
        entries.update(file_entries(tmp, optimizer_files_of(tmp / "optimizer", dist.rank)))

    def finish() -> None:  # rank 0, once every rank's files are written and hashed
        trainer_state = {"step": state.step, "data": state.data, "config": config, "ranks": dist.world,
                         "manifest": MANIFEST}
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
        entries.update(file_entries(tmp, [tmp / "trainer_state.json"]))
        write_manifest(tmp, state.step, entries)  # last: its presence means every file above is whole
        old = root / f"{final.name}.tmp-old-{dist.token}"  # re-saving the same step (Ctrl-C right after a save)
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            if old.exists():
                os.replace(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
        for ckpt in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(ckpt, ignore_errors=True)

    failure = agree(attempt(write_model) if dist.main else None, dist)
    if failure is None:  # (a full disk stops before the optimizer's far larger share is written)
        error = attempt(write_optimizer)
        parts = dist.gather_objects((entries, error))  # every rank's hashes and outcome, on every rank
        failure = next((e for _, e in parts if e), None)
        if failure is None:
            if dist.main:
                for part, _ in parts:
                    entries.update(part)
            failure = agree(attempt(finish) if dist.main else None, dist)
            if failure is None:
                return final
    if dist.main:
        shutil.rmtree(tmp, ignore_errors=True)  # never taken for a checkpoint, even where this fails (read-only)
    raise SaveFailed(save_failure(root, state.step, failure, list_checkpoints(run_dir), model, optimizer, dist))


def _per_rank(name: str, ranks: int, rank: int) -> str:
    """An earlier version's file: optimizer.pt for one process, optimizer_rank{r}.pt for each of several."""
    return f"{name}.pt" if ranks == 1 else f"{name}_rank{rank}.pt"


def restore_checkpoint(ckpt: Path, run_dir: str | Path, optimizer: torch.optim.Optimizer, scheduler: Any,
                       model: torch.nn.Module, dist: Dist, settings: Any = None) -> TrainingState:
    """Put optimizer, LR schedule and RNG back as they were at `ckpt` (written by any number of
    ranks), and drop the lines of `run_dir`'s logs that belong to later steps. The model itself is
    loaded from ckpt/'model' (or ckpt/'adapter') before; its weights then become the masters'.
    `settings` (the config's optim section) then overrides the optimizer's saved hyperparameters:
    they are the run's own unless `--set` changed one on resuming, which must take effect."""
    saved = read_trainer_state(ckpt)
    ranks = saved.get("ranks", 1)  # checkpoints from before multi-process runs: one
    if (ckpt / "optimizer").is_dir():
        try:
            load_optimizer(optimizer, model, ckpt / "optimizer")
        except (RuntimeError, ValueError, KeyError, CheckpointException) as e:
            # A key or shape the checkpoint does not have, or a damaged file (DCP reports both as a
            # CheckpointException, a BaseException, collected from every rank).
            if saved.get("manifest") and manifest_problem(ckpt) is None:  # its files are as saved
                damaged = ""
            else:  # an earlier version's checkpoint, without checksums: it may be damaged inside
                earlier = ([c for c in list_checkpoints(ckpt.parent.parent)
                            if _step(c) < _step(ckpt) and not checkpoint_problem(c)]
                           if STEP_DIR.match(ckpt.name) else [])  # a checkpoint named directly may sit anywhere
                damaged = (f"; if it is damaged, resume from "
                           f"{f'the one before (--resume {earlier[-1]})' if earlier else 'an earlier one'}")
            raise InputError(f"{ckpt / 'optimizer'} cannot be loaded into this run ({first_line(e)}): if it was "
                             f"trained with other settings (model.lora ...), resume with those{damaged}"
                             "; or start a new run from its model/ folder") from None
        extra = _load(ckpt / "rng.pt")
        scheduler_state, rng = extra["scheduler"], extra["torch"]
    else:  # an earlier version's per-rank files: only the same number of ranks can read them
        if ranks != dist.world:
            launcher = train_command(ranks, launched=ranks > 1)
            raise InputError(f"{ckpt} was written by {ranks} process(es) in an earlier format; resume it with the same "
                             f"number ({launcher} --resume ...), or start a new run from its model/ folder")
        opt_state = _load(ckpt / _per_rank("optimizer", ranks, dist.rank))
        optimizer.load_state_dict(opt_state["optimizer"])
        scheduler_state, rng = opt_state["scheduler"], _load(ckpt / _per_rank("rng", ranks, dist.rank))["torch"]
    try:
        scheduler.load_state_dict(scheduler_state)
        torch.set_rng_state(rng)
        if settings is not None:
            scheduler.base_lrs = [settings.lr] * len(optimizer.param_groups)
            factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
            for group in optimizer.param_groups:
                group.update(initial_lr=settings.lr, lr=settings.lr * factor, betas=(settings.beta1, settings.beta2),
                             eps=settings.eps, weight_decay=settings.weight_decay)
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise InputError(f"{ckpt} does not match this run's model and optimizer ({e}): resume it with the settings "
                         "it was trained with, or start a new run from its model/ folder") from None
    if dist.main:
        trim_logs(run_dir, saved["step"])
    return TrainingState(saved["step"], saved["data"], rng)


def trim_logs(run_dir: str | Path, step: int) -> None:
    """Keep only the log lines of steps <= `step`."""
    for name in LOG_FILES:
        path = Path(run_dir) / name
        if path.is_file():
            lines = [line for line in path.read_text(errors="replace").splitlines() if _step_of(line) <= step]
            path.write_text("".join(line + "\n" for line in lines))


def _step_of(line: str) -> float:
    """The step of a log line; a damaged line (a run killed mid-write) counts as later, so it is dropped."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def saved_config(path: str | Path) -> dict[str, Any]:
    """The config (as a dict) that the run at `path` (run or checkpoint directory) was started with."""
    return read_trainer_state(latest_checkpoint(path))["config"]


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    """trainer_state.json of a checkpoint, or a one-line error naming it."""
    file = ckpt / "trainer_state.json"
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
        if not (isinstance(state, dict) and _count(state.get("step")) and isinstance(state.get("config"), dict)
                and isinstance(state.get("data"), dict) and all(map(_count, state["data"].values()))
                and _count(state.get("ranks", 1))):
            raise ValueError("it needs step (a count), data (counts), config (a mapping)")
        return state
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(f"{file} is damaged ({e}): resume from an earlier checkpoint (--resume {ckpt.parent}/step_...)"
                         ) from None


def _step(ckpt: Path) -> int:
    return int(STEP_DIR.match(ckpt.name).group(1))


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _load(file: Path) -> Any:
    """torch.load of a checkpoint file (tensors and plain containers only), or a one-line error naming it."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{file} is missing: the checkpoint is incomplete; resume from an earlier one "
                         f"(--resume {file.parent.parent}/step_...)") from None
    except Exception as e:  # zip, unpickling and EOF errors of a damaged file: torch raises many kinds
        raise InputError(f"{file} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:160]}): resume from an "
                         f"earlier checkpoint (--resume {file.parent.parent}/step_...)") from None


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be resumed (a missing, truncated or changed file, a damaged
    trainer_state.json or manifest), or None when every file is there whole. A checkpoint with a
    manifest (this version's: trainer_state.json says so) is checked against it first (sizes and
    checksums: manifest.py); then, as for earlier versions', the headers and zip directories."""
    try:
        state = read_trainer_state(ckpt)
    except InputError:
        state = None
    if (ckpt / MANIFEST).is_file() or (state and state.get("manifest")):
        problem = manifest_problem(ckpt)
        if problem:
            return problem
    if state is None:
        return f"trainer_state.json is {'damaged' if (ckpt / 'trainer_state.json').is_file() else 'missing'}"
    try:
        check_adapter_files(ckpt / "adapter") if (ckpt / "adapter").is_dir() else check_weight_files(ckpt / "model")
    except InputError as e:
        return str(e)
    ranks = state.get("ranks", 1)
    if (ckpt / "optimizer").is_dir():
        names = ["rng.pt"]
        problem = optimizer_problem(ckpt / "optimizer")
        if problem:
            return problem
    else:  # an earlier version's files
        names = [_per_rank(n, ranks, r) for n in ("optimizer", "rng") for r in range(ranks)]
    for name in names:
        file = ckpt / name
        if not file.is_file():
            older = any(ckpt.glob("optimizer*.pt"))  # an earlier version's checkpoint, or today's without optimizer/
            return f"{name} is missing" if name == "rng.pt" or older else "optimizer/ is missing"
        try:  # torch.save writes a zip archive; a truncated one has no central directory
            with zipfile.ZipFile(file) as archive:
                end = max((i.header_offset + i.compress_size for i in archive.infolist()), default=0)
            if end > file.stat().st_size:
                return f"{name} is truncated"
        except (zipfile.BadZipFile, OSError) as e:
            return f"{name} is truncated or damaged ({e})"
    return None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first (whole or damaged since: `checkpoint_problem` tells). `.tmp-`
    leftovers and directories with neither trainer_state.json nor a manifest (never finished) are skipped."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted((d for d in root.iterdir() if STEP_DIR.match(d.name) and _finished(d)), key=_step)


def _finished(ckpt: Path) -> bool:
    """Written to the end: trainer_state.json and the manifest (this version) or trainer_state.json
    (earlier ones) are its last files, and the directory gets its name only after they are written.
    Either one present counts, so that a checkpoint which lost the other is reported, not ignored."""
    return (ckpt / "trainer_state.json").is_file() or (ckpt / MANIFEST).is_file()


def run_of(ckpt: Path) -> Path | None:
    """The run directory a checkpoint belongs to (RUN/checkpoints/step_N/), or None for a checkpoint
    directory standing on its own (copied elsewhere): resuming that one starts a new run from it."""
    return ckpt.parent.parent if STEP_DIR.match(ckpt.name) and ckpt.parent.name == "checkpoints" else None


def started_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run in `run_dir` was started with (its config.json, written when training
    begins), or None when `run_dir` holds no run of ours (a model directory's config.json is not one)."""
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(config, dict) and all(isinstance(config.get(k), dict) for k in ("model", "train")):
        return config
    return None


@dataclass
class ResumePoint:
    """Where `--resume PATH` continues from."""

    checkpoint: Path | None  # None: the run saved no checkpoint yet, so it starts again from step 0
    run_dir: Path | None  # the run being continued (its out_dir); None: a checkpoint standing on its own
    config: dict[str, Any]  # the config the run was started (or last saved) with


def resume_point(path: str | Path) -> ResumePoint:
    """The newest intact checkpoint under `path` (run or checkpoint directory), or, for a run that
    stopped before its first checkpoint, a fresh start of that run with the config it was started
    with: nothing of it was saved, so starting again from step 0 is exactly continuing it."""
    path = Path(path)
    if path.is_dir() and not _finished(path) and not list_checkpoints(path):
        config = started_config(path)
        if config is not None:
            return ResumePoint(None, path, config)
    ckpt = latest_checkpoint(path)
    return ResumePoint(ckpt, run_of(ckpt), read_trainer_state(ckpt)["config"])


def latest_checkpoint(path: str | Path) -> Path:
    """`path` may be a run directory or one checkpoint directory; returns the checkpoint to resume:
    the newest whose files are all there and whole. Damaged newer ones are skipped, one line each
    saying why (a checkpoint named directly is not: that is an error)."""
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"{path} does not exist: pass the run directory (train.out_dir) of the run to continue")
    if _finished(path):
        problem = checkpoint_problem(path)
        if problem:
            raise InputError(f"checkpoint {path} cannot be resumed: {problem}; pass its run directory to resume from "
                             "the newest intact checkpoint")
        return path
    found = list_checkpoints(path)
    if not found:
        # A directory one level up from the run (runs/tiny-quick holds runs/tiny-quick/grpo): name the runs in it.
        runs = sorted(d for d in path.iterdir() if d.is_dir() and (list_checkpoints(d) or started_config(d)))
        if runs:
            raise MissingInput(f"{path} holds no checkpoint itself; the run{'s' if len(runs) > 1 else ''} in it: "
                               + ", ".join(f"--resume {shlex.quote(str(d))}" for d in runs))
        raise MissingInput(f"no complete checkpoint under {path}: pass a run directory (train.out_dir) that has checkpoints/step_*/")
    for ckpt in reversed(found):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        if int(os.environ.get("RANK", 0)) == 0:  # torchrun: every rank finds the same; one says so
            print(f"skipping {ckpt}: {problem}", file=sys.stderr, flush=True)
    raise InputError(f"no checkpoint under {path} can be resumed (each is damaged, see above): start a new run")


def refuse_to_overwrite(run_dir: Path) -> None:
    """A new run must not write into another run's directory: its checkpoints would be pruned
    (train.keep_checkpoints) and its logs mixed with ours."""
    ckpts = list_checkpoints(run_dir)
    if ckpts:
        raise InputError(f"{run_dir} already holds a run (latest checkpoint {ckpts[-1].name}): "
                         f"continue it with --resume {shlex.quote(str(run_dir))}, or start a new one with --set train.out_dir=<new dir>")
    if (run_dir / "metrics.jsonl").is_file():
        again = (f"start it again from step 0 with --resume {shlex.quote(str(run_dir))}" if started_config(run_dir)
                 else "delete the directory")
        raise InputError(f"{run_dir} holds the logs of an earlier run that saved no checkpoint: {again}, "
                         f"or pick another one with --set train.out_dir=<new dir>")
