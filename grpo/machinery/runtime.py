"""Where and how a model runs: the device (checked), dtype names, activation checkpointing.

Shared by train.py, scripts/sft.py and scripts/eval.py, so a bad `--device` or `model.device`
gets the same one-line error everywhere.
Simplification: one device per process (no model parallelism).
"""

from __future__ import annotations

import os

import torch
from torch.utils.checkpoint import checkpoint

from qwen2 import Qwen2, Qwen2Config
from qwen2.errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """'auto' = cuda when a GPU is visible, else cpu; an explicit device must exist (one-line ValueError)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise InputError(f"device {name!r} asked for, but torch ({torch.__version__}, {build}) sees no CUDA GPU: "
                             "use device cpu (or auto), or install a CUDA build of torch on a machine with a GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device {name!r} asked for, but this torch has no MPS backend: use cpu")
    elif device.type != "cpu":
        raise InputError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


SMALL_MODEL_PARAMS = 100e6  # below this, one CPU thread is as fast as several (docs/benchmarks.md)


def choose_cpu_threads(device: torch.device, num_params: int | None, requested: int | None = None) -> int:
    """Set and return torch's CPU thread count for a run on `device`.

    `requested` (a --threads switch) wins, then OMP_NUM_THREADS; otherwise a CPU run of a small
    model gets one thread. Such models run a stream of small ops, which gain nothing from a second
    thread, and lose badly when another process is busy on a core: every op then waits at a
    barrier for a thread the OS has descheduled (measured on 2 cores with the other one busy: the
    tiny GRPO stage ~1 s per step with 2 threads, 0.26 s with 1; docs/benchmarks.md, "CPU threads and
    a busy core"). GPU runs keep torch's default.
    """
    if requested is not None:
        if requested < 1:
            raise InputError(f"--threads must be >= 1, got {requested}")
        torch.set_num_threads(requested)
    elif "OMP_NUM_THREADS" not in os.environ and device.type == "cpu" and num_params is not None \
            and num_params < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def model_size(path: str | os.PathLike) -> int | None:
    """Parameters of the checkpoint at `path` from its config.json (None when there is none yet)."""
    try:
        return Qwen2Config.from_json(path).num_params
    except (InputError, OSError):
        return None  # a missing or bad model directory gets its own one-line error when it is loaded


def cpu_warning(device: torch.device, dtype: torch.dtype, num_params: int) -> str | None:
    """A loud warning when a GPU-sized run lands on the CPU (e.g. `device: auto` and no GPU), else None."""
    if device.type != "cpu":
        return None
    reasons = []
    if dtype != torch.float32:
        reasons.append(f"{str(dtype).removeprefix('torch.')} matmuls are ~100x slower than float32 on most CPUs")
    if num_params > 100e6:
        reasons.append(f"a {num_params / 1e9:.2f}B-parameter model takes minutes to hours per step on a CPU")
    if not reasons:
        return None
    return ("WARNING: training on the CPU (no GPU found or device: cpu), and " + "; ".join(reasons) + ". "
            "This config is meant for a GPU. To try the pipeline on a CPU: python scripts/tiny_recipe.py")


def enable_activation_checkpointing(model: Qwen2) -> None:
    """Recompute each block's activations in backward instead of storing them.

    Done from the outside by wrapping each block's forward, so the model code and the parameter
    names stay untouched. Without autograd (sampling, evaluation) the block runs as it is.
    """
    for block in model.model.layers:
        def forward(*args, _forward=block.forward):
            if torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False)
            return _forward(*args)
        block.forward = forward
