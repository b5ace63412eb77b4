"""The machine a memory plan (memory.py) is compared with: the card's and the RAM's sizes, and the
margins the plan leaves out (the CUDA context and fragmentation, NCCL's buffers, the process's own host
memory), which --dry-run adds for its verdict (`plan_fits`). The margins are fixed guesses, not
measured on this machine.
"""

from __future__ import annotations

import os

import torch

from .memory import GB, Item, host_bytes, on_cpu, peak_gpu


# Not in the plan's tensors: the CUDA context and allocator fragmentation on the GPU; Python,
# torch's (and CUDA's) libraries, the tokenizer and the dataset in host memory. With several ranks
# each GPU also holds NCCL's own buffers (allocated by NCCL, outside PyTorch's allocator): 0.5-1.6 GB
# per communicator has been reported (NVIDIA/nccl#864, #964); not measured here.
GPU_OVERHEAD_GB = 1.5
NCCL_OVERHEAD_GB = 1.0
HOST_OVERHEAD_GB = 3.0


def gpu_overhead_gb(ranks: int = 1) -> float:
    """What --dry-run adds to the plan on each GPU: the CUDA context and fragmentation, and NCCL's
    buffers when several ranks talk."""
    return GPU_OVERHEAD_GB + (NCCL_OVERHEAD_GB if ranks > 1 else 0.0)


def host_ram_gb() -> float:
    """Physical memory of this machine in GB."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB


def usable_gpu_bytes(device: torch.device | int | None = None) -> tuple[int, int]:
    """(bytes this process may use on the GPU, the card's total): the total less what a per-process
    memory fraction (torch.cuda.set_per_process_memory_fraction, bench_step.py's --cap-gb) keeps back."""
    index = torch.cuda.current_device() if device is None else device
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = 1.0
    get = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # newer torch only
    if get is not None:
        try:
            fraction = float(get(index))
        except (RuntimeError, TypeError):
            pass
    return int(total * min(1.0, fraction)), total


def machine_gb(card_gb: float | None = None, ram_gb: float | None = None) -> tuple[float, float]:
    """The card and RAM sizes to plan for: as given, else the visible GPU (24 GB without one) and
    this machine's RAM."""
    if card_gb is None:
        card_gb = usable_gpu_bytes()[0] / GB if torch.cuda.is_available() else 24.0
    return card_gb, host_ram_gb() if ram_gb is None else ram_gb


def plan_fits(items: list[Item], card_gb: float | None = None, ram_gb: float | None = None,
              ranks: int = 1) -> tuple[bool, bool]:
    """(fits the GPU, fits the RAM): the plan plus the overheads, against the card and the machine.
    A CPU run (model.device cpu) has no card: the first is then always true."""
    card_gb, ram_gb = machine_gb(card_gb, ram_gb)
    ram_fits = host_bytes(items, ranks) / GB + HOST_OVERHEAD_GB <= ram_gb
    if on_cpu(items):
        return True, ram_fits
    return peak_gpu(items) / GB + gpu_overhead_gb(ranks) <= card_gb, ram_fits
