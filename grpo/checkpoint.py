"""Training checkpoints that are never half-written, and the last K of them kept.

A checkpoint is a directory `RUN/checkpoints/step_000025/` holding
    model/               HF-format model + tokenizer files (shareable, loadable by transformers)
    optimizer.pt         optimizer state (fp32 master weights, moments) and LR-scheduler state
    rng.pt               RNG states (sampling generator, torch CPU)
    trainer_state.json   step, data position, and the config it was made with (written last)
Everything is written into `step_000025.tmp-<pid>/` and renamed into place at the end, so a run
killed mid-save leaves only a `.tmp-` directory, which resume ignores. Tensors are read back with
`torch.load(weights_only=True)`: no pickled code is ever executed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from qwen2 import Qwen2, Tokenizer, save_model

STEP_DIR = re.compile(r"^step_(\d{6,})$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: str | Path, step: int, model: Qwen2, tokenizer: Tokenizer, optimizer_state: dict[str, Any],
                    rng_state: dict[str, torch.Tensor], trainer_state: dict[str, Any], keep: int = 2) -> Path:
    """Write the checkpoint of `step` atomically and delete all but the newest `keep`."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(rng_state, tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
    if final.exists():  # re-saving the same step (e.g. Ctrl-C right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first; `.tmp-` leftovers and dirs without trainer_state.json are skipped."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if STEP_DIR.match(d.name) and (d / "trainer_state.json").is_file()]
    return sorted(found, key=lambda d: int(STEP_DIR.match(d.name).group(1)))


def latest_checkpoint(path: str | Path) -> Path:
    """`path` may be a run directory or one checkpoint directory; returns the checkpoint to resume."""
    path = Path(path)
    if (path / "trainer_state.json").is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(f"no complete checkpoint under {path}: pass a run directory (train.out_dir) that has checkpoints/step_*/")
    return found[-1]


def load_checkpoint_state(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """(trainer_state, optimizer_state, rng_state) of a checkpoint directory; the model is ckpt/'model'."""
    trainer_state = json.loads((ckpt / "trainer_state.json").read_text())
    optimizer_state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    rng_state = torch.load(ckpt / "rng.pt", map_location="cpu", weights_only=True)
    return trainer_state, optimizer_state, rng_state
