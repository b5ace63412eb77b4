"""Helpers shared by the benchmark scripts: model shapes, a cached random checkpoint, timing,
hardware notes, and the machine-readable result line.

The benchmarks run on random weights with the real shapes of a Qwen2.5 checkpoint
(`Qwen2Config.from_name`), so they need no download. The checkpoint is written once to `.bench/`
(gitignored; `cache_dir` picks another place) and reused; both our loader and transformers read
the same files, so both systems run on exactly the same weights.

Besides the real shapes, `model_config` knows `tiny` (a ~0.3M-parameter model for smoke runs of
every benchmark on a CPU: `scripts/gpu_check.py --smoke`) and `Qwen2.5-14B` (for memory plans).
Every benchmark ends its output with one line `RESULT {json}` (`print_result`), which
`scripts/gpu_check.py` reads; the lines above it are for people.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

from grpo.machinery.runtime import DTYPES
from qwen2 import Qwen2, Qwen2Config, save_model

ROOT = Path(__file__).resolve().parents[1]

BENCH_DIR = ROOT / ".bench"


# Shapes that `Qwen2Config.from_name` does not know. `tiny`: smoke runs on a CPU (its vocabulary is
# large enough for bench_sampler's random prompts, ids 1000..vocab-1000; eos 2 lies inside it).
EXTRA_SHAPES: dict[str, dict] = {
    "tiny": dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=4096, rope_theta=10000.0,
                 bos_token_id=1, eos_token_id=2, torch_dtype="float32"),
    # From Qwen/Qwen2.5-14B's config.json: 14.8B parameters, untied.
    "Qwen2.5-14B": dict(vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                        num_attention_heads=40, num_key_value_heads=8, tie_word_embeddings=False),
}


def model_config(name: str) -> Qwen2Config:
    """The shapes of `name`: a Qwen2.5 checkpoint name (optionally -Instruct) or an EXTRA_SHAPES key."""
    key = name.split("/")[-1].removesuffix("-Instruct")
    if key in EXTRA_SHAPES:
        return Qwen2Config(**EXTRA_SHAPES[key])
    return Qwen2Config.from_name(name)


def random_checkpoint(name: str, dtype: str = "float32", seed: int = 0, cache_dir: Path = BENCH_DIR,
                      device: str | torch.device = "cpu") -> Path:
    """Path of a Hugging Face checkpoint with `name`'s shapes and random weights, built on first use.

    `device` is where the random numbers are drawn (a GPU draws billions of them in a blink, a CPU
    takes ~10 s per billion); the weights differ between devices, so the directory name says which.
    """
    device = torch.device(device)
    where = "" if device.type == "cpu" else f"-{device.type}"
    path = Path(cache_dir) / f"{name}-random-{dtype}-seed{seed}{where}"
    done = path / ".complete"  # written last: a half-written checkpoint is rebuilt, never reused
    if done.is_file():
        return path
    print(f"building random {name} {dtype} checkpoint in {path} (once) ...", flush=True)
    config = model_config(name)
    with torch.device("meta"):  # no memory, no default init: init_weights below fills everything
        model = Qwen2(config).to(DTYPES[dtype])
    model = model.to_empty(device=device)  # allocated in the final dtype: no fp32 copy first
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # to_empty unties shared parameters
    model.init_weights(std=0.02, generator=torch.Generator(device).manual_seed(seed))
    model = model.cpu()  # safetensors writes host memory (older versions refuse device tensors)
    save_model(model, path)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
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


def cpu_name() -> str:
    """The CPU's model name (lscpu), else what platform knows."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware(device: torch.device | str = "cpu") -> str:
    """One line naming the machine: CPU model and cores, or the GPU, and the torch version."""
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def print_result(result: dict) -> None:
    """The last line of a benchmark's output: `RESULT {json}`, for scripts/gpu_check.py."""
    print("RESULT " + json.dumps(result, sort_keys=True, default=str), flush=True)


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or "cpu"."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
