"""AdamW with fp32 master weights, optionally kept in CPU memory ("offload").

Why master weights
------------------
A bf16 number has 8 significant bits. Around 1.0 the gap between neighbouring
bf16 values is 2**-8 ~ 0.0039 just below 1.0 and 2**-7 ~ 0.0078 just above it.
An AdamW update is about ``lr`` in size (Adam divides the gradient by its own
running RMS, so ``m / sqrt(v)`` is of order 1). With ``lr = 1e-5`` the update is
~400 times smaller than half a bf16 step, so ``p_bf16 += update`` rounds straight
back to the old value: the weight never moves, however many steps you take.
This hits every weight whose magnitude is large compared with ``lr * 2**8``,
including all RMSNorm weights (which sit near 1.0).

The fix is standard mixed precision training: the optimizer keeps an fp32 copy
of every parameter (the *master* weight) and applies the update there, where
1e-5 steps accumulate. After each step the master is rounded to the model dtype
and written into the model, which keeps computing in bf16. Once the fp32 value
has drifted by more than half a bf16 step, the bf16 weight moves.

Memory, per trainable parameter
-------------------------------
    master weight   4 B  (fp32; none when the parameter is itself fp32 and
                          lives where the state lives: then the parameter *is*
                          the master and is updated in place)
    exp_avg         4 B  (fp32 first moment)
    exp_avg_sq      4 B  (fp32 second moment)
    = 12 B/param, i.e. ~37 GB for Qwen2.5-3B (3.09e9 params). That cannot sit
    on a 24 GB card next to the model, so with ``offload=True`` all of it lives
    in CPU RAM and the card holds only the bf16 weights and gradients.
Plus a little working memory, sized by the largest *bucket* (parameters are
processed in buckets of about ``OffloadAdamW.BUCKET_NUMEL`` elements; a
parameter larger than that, such as the embedding, is a bucket of its own):
    fp32 gradient scratch   4 B x bucket   (gradients upcast from bf16)
    pinned staging (CUDA)   2 x itemsize x bucket  (double buffer, model dtype)
:func:`optimizer_state_bytes` computes all of this for a list of parameters.

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

With ``offload=False`` the same fp32 state lives on the parameters' device (for
cards with room); the numerics are identical. When the parameters are on the
CPU (CPU-only runs) both settings are the same thing.

The update itself is ``torch._fused_adamw_`` (one vectorised, multithreaded
kernel for a whole list of tensors, on CPU and CUDA) when available, otherwise
:func:`_adamw_foreach`, which spells out the same maths with ``torch._foreach_*``
ops exactly as ``torch.optim.AdamW(foreach=True)`` does.

Typical use::

    opt = OffloadAdamW(model.parameters(), lr=1e-5, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # on the model's grads
    opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
    torch.save(opt.state_dict(), path)  # includes the fp32 masters: exact resume
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["OffloadAdamW", "optimizer_state_bytes"]

# Devices on which ``torch._fused_adamw_`` has a kernel we rely on.
_FUSED_DEVICE_TYPES = ("cpu", "cuda")


# ----------------------------------------------------------------------------
# The AdamW maths, on lists of fp32 tensors that all live on one device.
# ----------------------------------------------------------------------------


def _adamw_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """One AdamW step, in place, with ``torch._foreach_*`` ops.

    Same order of operations as ``torch.optim.AdamW(foreach=True)``::

        step += 1
        p   *= 1 - lr * weight_decay                 # decoupled weight decay
        m    = beta1 * m + (1 - beta1) * g            # first moment (lerp)
        v    = beta2 * v + (1 - beta2) * g * g        # second moment
        p   -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)
    """
    torch._foreach_add_(steps, 1.0)
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    step_values = [s.item() for s in steps]
    step_sizes = [-lr / (1 - beta1**t) for t in step_values]
    bias_correction2_sqrt = [(1 - beta2**t) ** 0.5 for t in step_values]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)


def _adamw_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """The same step as :func:`_adamw_foreach`, as one fused kernel
    (what ``torch.optim.AdamW(fused=True)`` calls). The kernel reads the step
    counts but does not advance them, so we do that first, as torch does."""
    torch._foreach_add_(steps, 1.0)
    torch._fused_adamw_(
        params, grads, exp_avgs, exp_avg_sqs, [], steps,
        lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps,
        amsgrad=False, maximize=False,
    )


# ----------------------------------------------------------------------------
# Buckets: parameters processed together (same group, device and dtype).
# ----------------------------------------------------------------------------


@dataclass
class _Bucket:
    group: dict[str, Any]
    params: list[Tensor]
    masters: list[Tensor] = field(default_factory=list)
    exp_avgs: list[Tensor] = field(default_factory=list)
    exp_avg_sqs: list[Tensor] = field(default_factory=list)
    steps: list[Tensor] = field(default_factory=list)
    aliased: list[bool] = field(default_factory=list)  # master is the param itself

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.params)


def _split_into_buckets(
    groups: list[tuple[Any, list[Tensor]]], bucket_numel: int
) -> list[tuple[Any, list[Tensor]]]:
    """Split each group's parameters into runs of one device and dtype holding
    at most ``bucket_numel`` elements (a bigger parameter gets its own run).
    ``groups`` is a list of (key, params); returns a list of (key, params)."""
    out: list[tuple[Any, list[Tensor]]] = []
    for key, params in groups:
        open_runs: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[int]]] = {}
        for p in params:
            kind = (p.device, p.dtype)
            if kind in open_runs and open_runs[kind][1][0] + p.numel() > bucket_numel:
                out.append((key, open_runs.pop(kind)[0]))  # full: close it
            run, size = open_runs.setdefault(kind, ([], [0]))
            run.append(p)
            size[0] += p.numel()
        out.extend((key, run) for run, _ in open_runs.values())
    return out


def _carve(buffer: Tensor, like: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """Consecutive views of a flat ``buffer`` shaped like ``like`` (viewed as ``dtype``)."""
    flat = buffer
    if buffer.dtype != dtype:  # a byte buffer: cut to a whole number of elements first
        itemsize = torch.empty((), dtype=dtype).element_size()
        flat = buffer[: sum(t.numel() for t in like) * itemsize].view(dtype)
    views, offset = [], 0
    for t in like:
        n = t.numel()
        views.append(flat[offset : offset + n].view(t.shape))
        offset += n
    return views


def _state_device(p: Tensor, offload: bool) -> torch.device:
    return torch.device("cpu") if offload else p.device


def _can_alias(p: Tensor, state_device: torch.device) -> bool:
    """An fp32 contiguous parameter living where the state lives can be its own master."""
    return p.dtype == torch.float32 and p.device == state_device and p.is_contiguous()


class OffloadAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, like ``torch.optim.AdamW``) with fp32
    master weights and fp32 moments, kept in CPU memory when ``offload=True``.

    Args:
        params: parameters or parameter groups, as for any torch optimizer.
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (but
            ``weight_decay`` defaults to 0.0).
        offload: keep master weights and moments in CPU memory (True) or on the
            parameters' device (False).
        fused: use ``torch._fused_adamw_`` (True), the ``torch._foreach_*``
            version (False), or the fused kernel where available (None).

    The model keeps its dtype and device; ``step()`` reads ``p.grad`` (so grad
    clipping on the model's grads before ``step()`` just works), updates the fp32
    state and writes the rounded result back into ``p``. Parameters whose grad
    is None are skipped (their step count does not advance); parameters with
    ``requires_grad=False`` get no state at all. State is created at the first
    ``step()`` (or ``load_state_dict()``) from the parameters' values at that
    moment; if you change the model's weights yourself afterwards, call
    :meth:`refresh_master`.

    ``state_dict()`` holds, per parameter, ``step``, ``exp_avg``, ``exp_avg_sq``
    and ``master`` (fp32), so resuming is exact even for a bf16 model.
    ``load_state_dict()`` restores them into the existing buffers (keeping their
    device and pinning) and writes the masters back into the model.
    """

    #: Elements per bucket (see the module docstring): 32 Mi elements is
    #: 128 MiB of fp32 scratch, large enough that per-bucket overheads vanish.
    BUCKET_NUMEL = 1 << 25

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        offload: bool = True,
        *,
        fused: bool | None = None,
    ) -> None:
        if not 0.0 <= float(lr):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid beta parameters: {betas}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if fused and not hasattr(torch, "_fused_adamw_"):
            raise RuntimeError("this torch build has no torch._fused_adamw_")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.offload = offload
        self.fused = fused
        self._buckets: list[_Bucket] | None = None  # built lazily, see _prepare()
        self._scratch: dict[torch.device, Tensor] = {}  # fp32 grads, per state device
        self._slots: dict[torch.device, list[Tensor]] = {}  # staging, per CUDA device
        self._copy_streams: dict[torch.device, Any] = {}
        # Tests set this to run the pipelined (CUDA) code path on the CPU,
        # with synchronous copies in place of the stream and events.
        self._force_pipeline = False

    # -- bookkeeping ------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._buckets = None  # rebuilt (and new state created) at the next step
        self._slots = {}  # staging may need to grow

    def _prepare(self) -> list[_Bucket]:
        """Create missing state (master copy, zeroed moments, step 0) for every
        trainable parameter and group parameters into buckets."""
        if self._buckets is not None:
            return self._buckets
        keyed = [
            (i, [p for p in g["params"] if p.requires_grad])
            for i, g in enumerate(self.param_groups)
        ]
        buckets = []
        for gi, params in _split_into_buckets(keyed, self.BUCKET_NUMEL):
            b = _Bucket(group=self.param_groups[gi], params=params)
            for p in params:
                if p.is_complex() or p.is_sparse:
                    raise RuntimeError("OffloadAdamW supports dense real parameters only")
                st = self.state[p]
                if "master" not in st:
                    dev = _state_device(p, self.offload)
                    with torch.no_grad():
                        if _can_alias(p, dev):
                            master = p.detach()  # no copy: the parameter is the master
                        else:
                            master = torch.empty(p.shape, dtype=torch.float32, device=dev)
                            master.copy_(p.detach())
                    st["step"] = torch.zeros((), dtype=torch.float32, device=dev)
                    st["exp_avg"] = torch.zeros(p.shape, dtype=torch.float32, device=dev)
                    st["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32, device=dev)
                    st["master"] = master
                b.masters.append(st["master"])
                b.exp_avgs.append(st["exp_avg"])
                b.exp_avg_sqs.append(st["exp_avg_sq"])
                b.steps.append(st["step"])
                master = st["master"]
                b.aliased.append(master.device == p.device and master.data_ptr() == p.data_ptr())
            buckets.append(b)
        self._buckets = buckets
        return buckets

    def _fused_ok(self, device: torch.device) -> bool:
        if self.fused is not None:
            return self.fused
        return hasattr(torch, "_fused_adamw_") and device.type in _FUSED_DEVICE_TYPES

    def _update(self, b: _Bucket, idx: list[int], grads32: list[Tensor]) -> None:
        """Run AdamW on the fp32 state of parameters ``idx`` of bucket ``b``."""
        g = b.group
        masters = [b.masters[i] for i in idx]
        fn = _adamw_fused if self._fused_ok(masters[0].device) else _adamw_foreach
        fn(
            masters,
            grads32,
            [b.exp_avgs[i] for i in idx],
            [b.exp_avg_sqs[i] for i in idx],
            [b.steps[i] for i in idx],
            lr=float(g["lr"]),
            beta1=float(g["betas"][0]),
            beta2=float(g["betas"][1]),
            eps=float(g["eps"]),
            weight_decay=float(g["weight_decay"]),
        )

    def _scratch_for(self, device: torch.device, numel: int) -> Tensor:
        """A flat fp32 buffer on ``device`` of at least ``numel`` elements,
        reused across buckets and steps (it grows to the largest bucket)."""
        buf = self._scratch.get(device)
        if buf is None or buf.numel() < numel:
            self._scratch.pop(device, None)  # free the old one first
            buf = self._scratch[device] = torch.empty(numel, dtype=torch.float32, device=device)
        return buf

    # -- the step ---------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """Update the parameters from their ``.grad``; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pipelined: dict[torch.device, list[tuple[_Bucket, list[int]]]] = {}
        for b in self._prepare():
            idx = [i for i, p in enumerate(b.params) if p.grad is not None]
            if not idx:
                continue
            if any(b.params[i].grad.is_sparse for i in idx):
                raise RuntimeError("OffloadAdamW does not support sparse gradients")
            dev = b.params[0].device
            if self._force_pipeline or (dev.type == "cuda" and b.masters[0].device != dev):
                pipelined.setdefault(dev, []).append((b, idx))
            else:
                self._step_local(b, idx)
        for dev, work in pipelined.items():
            self._step_pipelined(dev, work)
        return loss

    def _step_local(self, b: _Bucket, idx: list[int]) -> None:
        """Synchronous version: CPU-only runs, ``offload=False``, and devices
        without CUDA streams. ``copy_`` does the dtype and device conversion."""
        state_dev = b.masters[0].device
        grads32, offset = [], 0
        scratch = None
        for i in idx:
            p = b.params[i]
            g = p.grad
            if g.dtype == torch.float32 and g.device == state_dev and g.is_contiguous():
                grads32.append(g)  # already what the kernel wants: no copy
                continue
            if scratch is None:
                scratch = self._scratch_for(state_dev, b.numel)
            view = scratch[offset : offset + p.numel()].view(p.shape)
            view.copy_(g)  # upcast (and move, when offloading)
            grads32.append(view)
            offset += p.numel()
        self._update(b, idx, grads32)
        for i in idx:
            if not b.aliased[i]:
                b.params[i].copy_(b.masters[i])  # round to the model dtype

    def _step_pipelined(self, device: torch.device, work: list[tuple[_Bucket, list[int]]]) -> None:
        """Offloaded step for parameters on a CUDA device: the transfers of
        neighbouring buckets overlap the CPU update (see module docstring)."""
        cuda = device.type == "cuda"
        if cuda:
            compute = torch.cuda.current_stream(device)
            copy_stream = self._copy_streams.get(device)
            if copy_stream is None:
                copy_stream = self._copy_streams[device] = torch.cuda.Stream(device)
            copy_stream.wait_stream(compute)  # the grads were written on `compute`
            on_copy_stream = lambda: torch.cuda.stream(copy_stream)  # noqa: E731
        else:
            on_copy_stream = contextlib.nullcontext
        slots = self._slots.get(device)
        if slots is None:  # sized once for the largest bucket on this device
            need = max(b.nbytes for b in self._prepare() if b.params[0].device == device)
            slots = self._slots[device] = [
                torch.empty(need, dtype=torch.uint8, pin_memory=cuda) for _ in range(2)
            ]

        def start_fetch(k: int) -> tuple[list[Tensor], Any]:
            """Queue the D2H copies of bucket k's grads into staging slot k % 2."""
            b, idx = work[k]
            params = [b.params[i] for i in idx]
            staging = _carve(slots[k % 2], params, b.params[0].dtype)
            with on_copy_stream():
                for st, p in zip(staging, params):
                    st.copy_(p.grad, non_blocking=cuda)
                done = None
                if cuda:
                    done = torch.cuda.Event()
                    done.record(copy_stream)
            return staging, done

        # Why two slots are safe without extra waits: copies on one stream run
        # in order, so the grads of bucket k+2 overwrite slot k % 2 only after
        # the weights of bucket k have left it; and the CPU writes into a slot
        # only after waiting for that slot's grads to arrive, which is after
        # every earlier copy from it.
        pending = start_fetch(0)
        for k, (b, idx) in enumerate(work):
            staging, done = pending
            if k + 1 < len(work):
                pending = start_fetch(k + 1)  # next bucket travels while we compute
            if done is not None:
                done.synchronize()  # bucket k's grads are in host memory
            if b.params[0].dtype == torch.float32:
                grads32 = staging  # already fp32: update straight from staging
            else:
                scratch = self._scratch_for(b.masters[0].device, b.numel)
                grads32 = _carve(scratch, staging, torch.float32)
                for g32, st in zip(grads32, staging):
                    g32.copy_(st)  # upcast
            self._update(b, idx, grads32)
            for st, i in zip(staging, idx):
                st.copy_(b.masters[i])  # downcast into the (now free) staging slot
            with on_copy_stream():
                for st, i in zip(staging, idx):
                    b.params[i].copy_(st, non_blocking=cuda)
        if cuda:
            compute.wait_stream(copy_stream)  # next forward sees the new weights

    # -- master weights and checkpoints -----------------------------------

    @torch.no_grad()
    def refresh_master(self) -> None:
        """Copy the model's current weights into the fp32 masters. Only needed
        if you change the weights yourself after the first step (e.g. load a
        model checkpoint without loading the optimizer's). Precision beyond the
        model dtype is lost for those weights, as it must be."""
        for b in self._buckets or []:
            for p, master, aliased in zip(b.params, b.masters, b.aliased):
                if not aliased:
                    master.copy_(p)

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (from an optimizer over parameters of
        the same shapes, in the same order). Tensors are copied into this
        optimizer's own buffers, so they keep their device, dtype (fp32) and
        pinning, unlike ``torch.optim.Optimizer.load_state_dict``, which would
        cast the master weights to the model dtype. Group settings (``lr``,
        ``initial_lr``, ...) are restored too. The masters are then written into
        the model so that model and optimizer agree."""
        state_dict = state_dict.copy()
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = hook(self, state_dict) or state_dict
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for group, saved in zip(self.param_groups, saved_groups):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError("loaded state dict has a group of a different size")
        buckets = self._prepare()
        for group, saved in zip(self.param_groups, saved_groups):
            for key, value in saved.items():
                if key != "params":
                    group[key] = value
            for p, pid in zip(group["params"], saved["params"]):
                if pid not in saved_state or p not in self.state:
                    continue
                src, dst = saved_state[pid], self.state[p]
                for key in ("exp_avg", "exp_avg_sq", "master"):
                    if src[key].shape != dst[key].shape:
                        raise ValueError(f"shape mismatch for {key}: {tuple(src[key].shape)} vs {tuple(dst[key].shape)}")
                    dst[key].copy_(src[key])
                dst["step"].copy_(torch.as_tensor(src["step"]))
        for b in buckets:
            for p, master, aliased in zip(b.params, b.masters, b.aliased):
                if not aliased:
                    p.copy_(master)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)


def optimizer_state_bytes(
    params: Iterable[Tensor],
    offload: bool = True,
    *,
    bucket_numel: int = OffloadAdamW.BUCKET_NUMEL,
    device: torch.device | str | None = None,
) -> dict[str, int]:
    """Bytes that :class:`OffloadAdamW` will allocate for ``params``, for a memory planner.

    ``device`` overrides where the parameters will live (so you can plan with
    ``meta`` tensors: ``device="cuda"``). Trainable parameters only. Returns
    ``master``, ``exp_avg``, ``exp_avg_sq`` (the state), ``scratch`` (fp32
    gradient buffer, one bucket), ``staging`` (pinned double buffer, offloaded
    CUDA only), and the totals ``cpu`` and ``device`` (everything not on the CPU).
    The state is 12 B/param (8 B/param where the parameter is its own master).
    """
    params = [p for p in params if p.requires_grad]
    dev_of = (lambda p: torch.device(device)) if device is not None else (lambda p: p.device)
    out = dict(master=0, exp_avg=0, exp_avg_sq=0, scratch=0, staging=0, cpu=0, device=0)
    for p in params:
        pdev = dev_of(p)
        sdev = torch.device("cpu") if offload else pdev
        n = p.numel()
        master = 0 if (p.dtype == torch.float32 and pdev == sdev) else 4 * n
        out["master"] += master
        out["exp_avg"] += 4 * n
        out["exp_avg_sq"] += 4 * n
        out["cpu" if sdev.type == "cpu" else "device"] += master + 8 * n
    # Working buffers, sized by the largest bucket that needs them.
    buckets = _split_into_buckets([(0, params)], bucket_numel)
    for _, run in buckets:
        pdev = dev_of(run[0])
        sdev = torch.device("cpu") if offload else pdev
        numel = sum(p.numel() for p in run)
        pipelined = offload and pdev.type == "cuda"
        if pipelined:
            out["staging"] = max(out["staging"], 2 * numel * run[0].element_size())
        if run[0].dtype != torch.float32 or (pdev != sdev and not pipelined):
            scratch = 4 * numel
            if scratch > out["scratch"]:
                out["scratch"] = scratch
                scratch_dev = sdev
    if out["scratch"]:
        out["cpu" if scratch_dev.type == "cpu" else "device"] += out["scratch"]
    out["cpu"] += out["staging"]
    return out
