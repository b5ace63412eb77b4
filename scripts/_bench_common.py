"""Helpers shared by the benchmark scripts: a cached random checkpoint, timing, hardware notes.

The benchmarks run on random weights with the real shapes of a Qwen2.5 checkpoint
(`Qwen2Config.from_name`), so they need no download. The checkpoint is written once to `.bench/`
(gitignored) and reused; both our loader and transformers read the same files, so both systems
run on exactly the same weights.
"""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from grpo.runtime import DTYPES  # noqa: E402
from qwen2 import Qwen2, Qwen2Config, save_model  # noqa: E402

BENCH_DIR = ROOT / ".bench"


def random_checkpoint(name: str, dtype: str = "float32", seed: int = 0, cache_dir: Path = BENCH_DIR) -> Path:
    """Path of a Hugging Face checkpoint with `name`'s shapes and random weights, built on first use."""
    path = cache_dir / f"{name}-random-{dtype}-seed{seed}"
    done = path / ".complete"  # written last: a half-written checkpoint is rebuilt, never reused
    if done.is_file():
        return path
    print(f"building random {name} {dtype} checkpoint in {path} (once) ...", flush=True)
    config = Qwen2Config.from_name(name)
    with torch.device("meta"):  # no memory, no default init: init_weights below fills everything
        model = Qwen2(config)
    model = model.to_empty(device="cpu").to(DTYPES[dtype])
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # to_empty unties shared parameters
    model.init_weights(std=0.02, generator=torch.Generator().manual_seed(seed))
    save_model(model, path)
    done.write_text("ok\n")
    return path


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result) of one call, with the device synchronised on both sides.

    On a CPU shared with other jobs, wall time includes the time this process waited for a core;
    with one thread (--threads 1) its CPU time is close to what the call takes on an idle machine.
    """
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def hardware(device: torch.device | str = "cpu") -> str:
    """One line naming the machine: CPU model and cores, or the GPU, and the torch version."""
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
