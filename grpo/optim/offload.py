"""Where the optimizer's tensors live, and the pipelined host round trip for CUDA parameters.

Placement (one rule, shared by ``OffloadAdamW`` and the memory planner
``grpo.plan.memory.optimizer_state_bytes``, so the plan cannot drift from what is allocated):
    state (master, moments, step)   in CPU memory when offloading, else next to the parameter
    fp32 gradient scratch           4 B x bucket, on the state device, for the buckets whose
                                    grads do not reach the update as fp32 there already
    staging slots (CUDA)            2 x itemsize x bucket per card, pinned host memory (a
                                    double buffer in the model dtype), for offloaded CUDA buckets
Buckets are runs of parameters of one group, device and dtype, of at most ``bucket_numel``
elements (a bigger parameter, such as the embedding, is a bucket of its own).

One offloaded step on CUDA
--------------------------
    GPU grad (bf16) --D2H--> pinned staging (bf16) --upcast--> fp32 scratch
        --AdamW (fused CPU kernel)--> fp32 master --downcast--> pinned staging
        --H2D--> GPU param (bf16)
Copies run on a side CUDA stream with two staging slots, so while the CPU
updates bucket k, the gradients of bucket k+1 travel to the host and the new
weights of bucket k-1 travel back to the card. The compute stream waits for the
last copy before the next forward pass uses the weights. Gradients cross the bus
in the model dtype (half the bytes of fp32). Only the staging buffers are pinned:
they are the only host memory that the card reads or writes, and pinning the
12 B/param of state too would lock tens of GB of RAM for no speed-up.

:class:`OffloadPipeline` knows nothing about AdamW: it moves gradients to the
host and weights back, and calls the optimizer's ``update`` for each bucket in
between (``grpo/optim/adamw.py`` does the maths).

Simplifications: one copy stream per card and exactly two slots, each as large
as the largest bucket (a big bucket, such as the embedding, is not chunked);
the update of a bucket waits until all of its gradients are on the host. On a
non-CUDA device (tests on the CPU) the same code runs with synchronous copies
and unpinned slots.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["DEFAULT_BUCKET_NUMEL", "OffloadPipeline", "UpdateFn", "WorkingBuffers", "is_own_master",
           "split_into_buckets", "state_device", "uses_staging", "working_buffers"]


# -- Buckets and placement: the rules the optimizer and the planner share. ----

#: Elements per bucket: 32 Mi elements is 128 MiB of fp32 scratch, large
#: enough that per-bucket overheads vanish.
DEFAULT_BUCKET_NUMEL = 1 << 25


def split_into_buckets(groups: Sequence[Sequence[Tensor]], bucket_numel: int) -> list[tuple[int, list[Tensor]]]:
    """Split each group's parameters into runs of one device and dtype holding at
    most ``bucket_numel`` elements (a bigger parameter gets its own run).
    Returns (index of the group, run) pairs."""
    out: list[tuple[int, list[Tensor]]] = []
    for gi, params in enumerate(groups):
        open_runs: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[int]]] = {}
        for p in params:
            kind = (p.device, p.dtype)
            if kind in open_runs and open_runs[kind][1][0] + p.numel() > bucket_numel:
                out.append((gi, open_runs.pop(kind)[0]))  # full: close it
            run, size = open_runs.setdefault(kind, ([], [0]))
            run.append(p)
            size[0] += p.numel()
        out.extend((gi, run) for run, _ in open_runs.values())
    return out


def state_device(param_device: torch.device, offload: bool) -> torch.device:
    """Where a parameter's fp32 state lives."""
    return torch.device("cpu") if offload else param_device


def is_own_master(p: Tensor, state_dev: torch.device, param_device: torch.device | None = None) -> bool:
    """An fp32 contiguous parameter living where its state lives is its own master
    (no copy). ``param_device`` overrides ``p.device`` (planning with meta tensors)."""
    on = p.device if param_device is None else param_device
    return p.dtype == torch.float32 and on == state_dev and p.is_contiguous()


def uses_staging(param_device: torch.device, state_dev: torch.device, pipeline: bool | None) -> bool:
    """Does a bucket go through an :class:`OffloadPipeline`? ``pipeline`` forces
    it (True, False); None means when CUDA parameters have their state elsewhere."""
    if pipeline is None:
        return param_device.type == "cuda" and state_dev != param_device
    return pipeline


@dataclass(frozen=True)
class WorkingBuffers:
    """The optimizer's buffers besides its state, each sized for the largest bucket that needs it."""

    scratch_numel: dict[torch.device, int]  # fp32 gradient scratch, by the device it lives on
    slot_bytes: dict[torch.device, int]  # each of the two host staging slots, by parameter device


def working_buffers(
    buckets: Iterable[Sequence[Tensor]],
    offload: bool,
    *,
    pipeline: bool | None = None,
    device: torch.device | str | None = None,
) -> WorkingBuffers:
    """The one rule for the fp32 gradient scratch and the staging slots, given the
    buckets (runs of one device and dtype: :func:`split_into_buckets`).
    ``device`` overrides where the parameters live (planning with meta tensors).

    A staged bucket needs slots of its size in the model dtype. Its gradients then
    reach the update in host memory, those of other buckets on the parameters'
    device; unless they are fp32 and on the state device already, they are upcast
    (and moved) into the scratch.
    """
    scratch: dict[torch.device, int] = {}
    slots: dict[torch.device, int] = {}
    for params in buckets:
        param_dev = torch.device(device) if device is not None else params[0].device
        state_dev = state_device(param_dev, offload)
        numel = sum(p.numel() for p in params)
        staged = uses_staging(param_dev, state_dev, pipeline)
        if staged:
            slots[param_dev] = max(slots.get(param_dev, 0), numel * params[0].element_size())
        arrives_on = torch.device("cpu") if staged else param_dev
        if params[0].dtype != torch.float32 or arrives_on != state_dev:
            scratch[state_dev] = max(scratch.get(state_dev, 0), numel)
    return WorkingBuffers(scratch, slots)


# -- The pipeline. -------------------------------------------------------------


def _carve(buffer: Tensor, like: Sequence[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """Consecutive views of the byte ``buffer``, as ``dtype``, shaped like ``like``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    flat = buffer[: sum(t.numel() for t in like) * itemsize].view(dtype)  # whole elements only
    views, offset = [], 0
    for t in like:
        n = t.numel()
        views.append(flat[offset : offset + n].view(t.shape))
        offset += n
    return views


#: ``update(k, grads)``: given bucket k's gradients in host memory (model dtype), update its
#: state and return the new fp32 weights, one tensor per parameter, in the same order.
UpdateFn = Callable[[int, list[Tensor]], list[Tensor]]


class OffloadPipeline:
    """Two host staging slots and a side copy stream serving the parameters of one device.

    Args:
        device: the device the parameters live on (``cuda:i``; any other device
            runs the same steps with synchronous copies).
        slot_bytes: size of each slot: the largest staged bucket on ``device``,
            in bytes of its dtype (:func:`working_buffers`).
    """

    def __init__(self, device: torch.device, slot_bytes: int) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        # Bytes, so that buckets of different dtypes can share the slots.
        self.slots = [torch.empty(slot_bytes, dtype=torch.uint8, pin_memory=self.cuda) for _ in range(2)]
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None

    def _on_copy_stream(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self.copy_stream) if self.cuda else contextlib.nullcontext()

    def _fetch(self, k: int, grads: list[Tensor]) -> tuple[list[Tensor], Any]:
        """Queue the D2H copies of ``grads`` into slot k % 2; returns the
        staged views and an event that fires when they have arrived (None on CPU)."""
        staging = _carve(self.slots[k % 2], grads, grads[0].dtype)
        with self._on_copy_stream():
            for st, g in zip(staging, grads):
                st.copy_(g, non_blocking=self.cuda)
            done = None
            if self.cuda:
                done = torch.cuda.Event()
                done.record(self.copy_stream)
        return staging, done

    def step(self, buckets: Sequence[tuple[list[Tensor], list[Tensor]]], update: UpdateFn) -> None:
        """For each bucket, (weights, their grads) of one dtype, at most ``slot_bytes``
        together: grads to the host, ``update(k, grads)``, new weights back into the
        weights. The transfers of neighbouring buckets overlap the update."""
        if not buckets:
            return
        if self.cuda:
            compute = torch.cuda.current_stream(self.device)
            self.copy_stream.wait_stream(compute)  # the grads were written on `compute`
        # Why two slots are safe without extra waits: copies on one stream run
        # in order, so the grads of bucket k+2 overwrite slot k % 2 only after
        # the weights of bucket k have left it; and the CPU writes into a slot
        # only after waiting for that slot's grads to arrive, which is after
        # every earlier copy from it.
        pending = self._fetch(0, buckets[0][1])
        for k, (weights, _) in enumerate(buckets):
            staging, done = pending
            if k + 1 < len(buckets):
                pending = self._fetch(k + 1, buckets[k + 1][1])  # next bucket travels while we compute
            if done is not None:
                done.synchronize()  # bucket k's grads are in host memory
            new_weights = update(k, staging)
            for st, w in zip(staging, new_weights):
                st.copy_(w)  # downcast into the (now free) staging slot
            with self._on_copy_stream():
                for st, w in zip(staging, weights):
                    w.copy_(st, non_blocking=self.cuda)
        if self.cuda:
            compute.wait_stream(self.copy_stream)  # next forward sees the new weights
