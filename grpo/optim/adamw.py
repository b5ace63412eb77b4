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
Plus a little working memory, sized by the largest *bucket* (``bucket_numel``
elements, or one bigger parameter): an fp32 gradient scratch and, for offloaded
CUDA parameters, pinned staging for a pipelined host round trip that overlaps
transfers with the CPU update. ``grpo/optim/offload.py`` holds that pipeline and the
placement rules, which ``grpo.plan.memory.optimizer_state_bytes`` plans with.

With ``offload=False`` the same fp32 state lives on the parameters' device (for
cards with room) and the step is synchronous; the numerics are identical. When
the parameters are on the CPU (CPU-only runs) both settings are the same thing.

The update itself is ``torch._fused_adamw_`` (one vectorised, multithreaded
kernel for a whole list of tensors, on CPU and CUDA) when available, otherwise
:func:`_adamw_foreach`, which spells out the same maths with ``torch._foreach_*``
ops exactly as ``torch.optim.AdamW(foreach=True)`` does.

Simplifications: dense real parameters only; no amsgrad, no maximize, no
capturable/CUDA-graph step; the step count is one fp32 tensor per parameter
(as in torch), kept where the state is.

Typical use::

    opt = OffloadAdamW(model.parameters(), lr=1e-5, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # on the model's grads
    opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
    torch.save(opt.state_dict(), path)  # includes the fp32 masters: exact resume
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from .offload import (DEFAULT_BUCKET_NUMEL, OffloadPipeline, is_own_master, split_into_buckets,
                      state_device, uses_staging, working_buffers)


def local(t: Tensor) -> Tensor:
    """The part of a tensor that lives in this process: an FSDP2-sharded parameter (or gradient) is a
    DTensor, and the optimizer works on its local shard (multi-process runs, grpo/machinery/distributed.py)."""
    return t.to_local() if isinstance(t, DTensor) else t


__all__ = ["AdamWHyper", "AdamWState", "OffloadAdamW", "local"]

# -- The AdamW maths, on lists of fp32 tensors that all live on one device. --


@dataclass(frozen=True)
class AdamWHyper:
    """AdamW hyper-parameters of one step. The field names are the keywords of
    ``torch._fused_adamw_``, so the fused call passes them as they are."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float

    @classmethod
    def from_group(cls, group: dict[str, Any]) -> AdamWHyper:
        beta1, beta2 = group["betas"]
        return cls(lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2),
                   eps=float(group["eps"]), weight_decay=float(group["weight_decay"]))


@dataclass
class AdamWState:
    """The fp32 state of a list of parameters, as parallel lists (what the
    foreach and fused kernels take): ``masters`` are the weights being updated."""

    masters: list[Tensor] = field(default_factory=list)
    exp_avgs: list[Tensor] = field(default_factory=list)
    exp_avg_sqs: list[Tensor] = field(default_factory=list)
    steps: list[Tensor] = field(default_factory=list)

    def select(self, idx: Sequence[int]) -> AdamWState:
        return AdamWState(*([lst[i] for i in idx] for lst in
                            (self.masters, self.exp_avgs, self.exp_avg_sqs, self.steps)))


def _adamw_foreach(state: AdamWState, grads: list[Tensor], hyper: AdamWHyper) -> None:
    """One AdamW step, in place, with ``torch._foreach_*`` ops.

    Same order of operations as ``torch.optim.AdamW(foreach=True)``::

        step += 1
        p   *= 1 - lr * weight_decay                 # decoupled weight decay
        m    = beta1 * m + (1 - beta1) * g            # first moment (lerp)
        v    = beta2 * v + (1 - beta2) * g * g        # second moment
        p   -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)
    """
    lr, beta1, beta2 = hyper.lr, hyper.beta1, hyper.beta2
    torch._foreach_add_(state.steps, 1.0)
    if hyper.weight_decay != 0:
        torch._foreach_mul_(state.masters, 1 - lr * hyper.weight_decay)
    torch._foreach_lerp_(state.exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(state.exp_avg_sqs, beta2)
    torch._foreach_addcmul_(state.exp_avg_sqs, grads, grads, 1 - beta2)
    step_values = [s.item() for s in state.steps]
    step_sizes = [-lr / (1 - beta1**t) for t in step_values]
    bias_correction2_sqrt = [(1 - beta2**t) ** 0.5 for t in step_values]
    denom = torch._foreach_sqrt(state.exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, hyper.eps)
    torch._foreach_addcdiv_(state.masters, state.exp_avgs, denom, step_sizes)


def _adamw_fused(state: AdamWState, grads: list[Tensor], hyper: AdamWHyper) -> None:
    """The same step as :func:`_adamw_foreach`, as one fused kernel
    (what ``torch.optim.AdamW(fused=True)`` calls). The kernel reads the step
    counts but does not advance them, so we do that first, as torch does."""
    torch._foreach_add_(state.steps, 1.0)
    torch._fused_adamw_(state.masters, grads, state.exp_avgs, state.exp_avg_sqs, [], state.steps,
                        **asdict(hyper), amsgrad=False, maximize=False)


# -- The optimizer. -----------------------------------------------------------


@dataclass
class _Bucket:
    group: dict[str, Any]
    params: list[Tensor]
    state: AdamWState = field(default_factory=AdamWState)
    aliased: list[bool] = field(default_factory=list)  # master is the param itself

    @property
    def state_device(self) -> torch.device:
        return self.state.masters[0].device


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
        bucket_numel: elements per bucket (sizes the working buffers).
        pipeline: send buckets through :class:`grpo.optim.offload.OffloadPipeline`
            (True; on the CPU with synchronous copies, as tests do), never (False),
            or when CUDA parameters have their state in CPU memory (None).

    The model keeps its dtype and device; ``step()`` reads ``p.grad`` (so grad
    clipping on the model's grads before ``step()`` just works), updates the fp32
    state and writes the rounded result back into ``p``. Parameters whose grad
    is None are skipped (their step count does not advance); parameters with
    ``requires_grad=False`` get no state at all. State and working buffers are
    created at the first ``step()`` (or ``load_state_dict()``) from the
    parameters' values at that moment; if you change the model's weights
    yourself afterwards, call :meth:`refresh_master`. ``state_dict()`` holds,
    per parameter, ``step``, ``exp_avg``, ``exp_avg_sq`` and the fp32 ``master``,
    so resuming is exact even for a bf16 model.
    """

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
        bucket_numel: int = DEFAULT_BUCKET_NUMEL,
        pipeline: bool | None = None,
    ) -> None:
        if not (0.0 <= float(lr) and 0.0 <= eps and 0.0 <= weight_decay and all(0.0 <= x < 1.0 for x in betas)):
            raise ValueError(f"Invalid AdamW setting in lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        if bucket_numel < 1:
            raise ValueError(f"Invalid bucket_numel: {bucket_numel}")
        if fused and not hasattr(torch, "_fused_adamw_"):
            raise RuntimeError("this torch build has no torch._fused_adamw_")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.offload = offload
        self.fused = fused
        self.bucket_numel = bucket_numel
        self.pipeline = pipeline
        self._buckets: list[_Bucket] | None = None  # built lazily, see _prepare()
        self._scratch: dict[torch.device, Tensor] = {}  # fp32 grads, per state device
        self._pipelines: dict[torch.device, OffloadPipeline] = {}  # per parameter device

    # -- bookkeeping ------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._buckets = None  # rebuilt (new state, resized buffers) at the next step

    def _prepare(self) -> list[_Bucket]:
        """Create missing state (master copy, zeroed moments, step 0) for every trainable parameter,
        group parameters into buckets, allocate the working buffers :func:`working_buffers` asks for."""
        if self._buckets is not None:
            return self._buckets
        trainable = [[p for p in g["params"] if p.requires_grad] for g in self.param_groups]
        buckets = []
        for gi, params in split_into_buckets(trainable, self.bucket_numel):
            b = _Bucket(group=self.param_groups[gi], params=params)
            for p in params:
                if p.is_complex() or p.is_sparse:
                    raise RuntimeError("OffloadAdamW supports dense real parameters only")
                if "master" not in self.state[p]:
                    self.state[p].update(self._new_state(p))
                master, weight = self.state[p]["master"], local(p)
                b.aliased.append(master.device == weight.device and master.data_ptr() == weight.data_ptr())
            states = [self.state[p] for p in params]
            b.state = AdamWState(*([st[key] for st in states] for key in ("master", "exp_avg", "exp_avg_sq", "step")))
            buckets.append(b)
        plan = working_buffers([[local(p) for p in b.params] for b in buckets], self.offload, pipeline=self.pipeline)
        self._scratch, self._pipelines = {}, {}  # free the old buffers before allocating new ones
        self._scratch = {dev: torch.empty(n, dtype=torch.float32, device=dev)
                         for dev, n in plan.scratch_numel.items()}
        self._pipelines = {dev: OffloadPipeline(dev, nbytes) for dev, nbytes in plan.slot_bytes.items()}
        self._buckets = buckets
        return buckets

    @torch.no_grad()
    def _new_state(self, p: Tensor) -> dict[str, Tensor]:
        p = local(p)
        dev = state_device(p.device, self.offload)
        own = is_own_master(p, dev)  # then no copy: the parameter is the master
        master = p.detach() if own else torch.empty(p.shape, dtype=torch.float32, device=dev).copy_(p)
        return dict(step=torch.zeros((), dtype=torch.float32, device=dev),
                    exp_avg=torch.zeros(p.shape, dtype=torch.float32, device=dev),
                    exp_avg_sq=torch.zeros(p.shape, dtype=torch.float32, device=dev),
                    master=master)

    def _fused_ok(self, device: torch.device) -> bool:
        if self.fused is not None:
            return self.fused
        # The devices on which torch._fused_adamw_ has a kernel we rely on.
        return hasattr(torch, "_fused_adamw_") and device.type in ("cpu", "cuda")

    def _fp32_grads(self, b: _Bucket, grads: list[Tensor]) -> list[Tensor]:
        """``grads`` as the kernel wants them: fp32, contiguous, on the state device.
        fp32 grads already there pass as they are; the others are upcast (and moved,
        when offloading) into the scratch, which ``working_buffers`` sized for them
        (torch makes a grad's dtype and device those of its parameter)."""
        state_dev = b.state_device
        scratch = self._scratch.get(state_dev)
        out, offset = [], 0
        for g in grads:
            n = g.numel()
            if g.dtype == torch.float32 and g.device == state_dev:
                out.append(g.contiguous())  # a copy only for a strided grad set by hand
            elif scratch is not None and offset + n <= scratch.numel():
                out.append(scratch[offset : offset + n].view(g.shape).copy_(g))
                offset += n
            else:  # unplanned: a grad whose dtype was decoupled from its parameter's (grad_dtype)
                out.append(g.to(state_dev, torch.float32).contiguous())
        return out

    def _update(self, b: _Bucket, idx: list[int], grads: list[Tensor]) -> None:
        """Run AdamW on the fp32 state of parameters ``idx`` of bucket ``b``."""
        kernel = _adamw_fused if self._fused_ok(b.state_device) else _adamw_foreach
        kernel(b.state.select(idx), self._fp32_grads(b, grads), AdamWHyper.from_group(b.group))

    # -- the step ---------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """Update the parameters from their ``.grad``; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        staged: dict[torch.device, list[tuple[_Bucket, list[int]]]] = {}
        for b in self._prepare():
            idx = [i for i, p in enumerate(b.params) if p.grad is not None]
            if not idx:
                continue
            if any(b.params[i].grad.is_sparse for i in idx):
                raise RuntimeError("OffloadAdamW does not support sparse gradients")
            dev = b.params[0].device
            if uses_staging(dev, b.state_device, self.pipeline):
                staged.setdefault(dev, []).append((b, idx))
            else:
                self._step_local(b, idx)
        for dev, work in staged.items():
            self._step_staged(self._pipelines[dev], work)
        return loss

    def _step_local(self, b: _Bucket, idx: list[int]) -> None:
        """Synchronous step: CPU-only runs, ``offload=False``, devices without CUDA streams."""
        self._update(b, idx, [local(b.params[i].grad) for i in idx])
        for i in idx:
            if not b.aliased[i]:
                local(b.params[i]).copy_(b.state.masters[i])  # round to the model dtype

    def _step_staged(self, pipeline: OffloadPipeline, work: list[tuple[_Bucket, list[int]]]) -> None:
        """Offloaded step through the staging slots (see ``grpo/optim/offload.py``)."""

        def update(k: int, host_grads: list[Tensor]) -> list[Tensor]:
            b, idx = work[k]
            self._update(b, idx, host_grads)  # fp32 grads straight from the slot, others via scratch
            return [b.state.masters[i] for i in idx]

        pipeline.step([([local(b.params[i]) for i in idx], [local(b.params[i].grad) for i in idx]) for b, idx in work],
                      update)

    # -- master weights and checkpoints -----------------------------------

    @torch.no_grad()
    def refresh_master(self) -> None:
        """Copy the model's current weights into the fp32 masters: after changing the weights
        yourself (e.g. loading a model without its optimizer). Precision beyond the model dtype is lost."""
        for b in self._buckets or []:
            for p, master, aliased in zip(b.params, b.state.masters, b.aliased):
                if not aliased:
                    master.copy_(local(p))

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (same parameter shapes and order), copied into this
        optimizer's own fp32 buffers (``torch.optim.Optimizer.load_state_dict`` would cast the
        masters to the model dtype); group settings too. The masters then go into the model."""
        state_dict = state_dict.copy()
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = hook(self, state_dict) or state_dict
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(self.param_groups, saved_groups)):
            raise ValueError("loaded state dict has a group of a different size")
        self._prepare()
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
        self.write_masters()
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def states(self) -> list[tuple[Tensor, dict[str, Tensor]]]:
        """(parameter, its state: master, exp_avg, exp_avg_sq, step) for every trainable parameter,
        the state created if it did not exist yet: what a sharded checkpoint saves and loads into
        (grpo/optim/sharded_state.py)."""
        self._prepare()
        return [(p, self.state[p]) for b in self._buckets for p in b.params]

    @torch.no_grad()
    def write_masters(self) -> None:
        """Round the fp32 masters into the model's weights, so that model and optimizer agree."""
        for b in self._prepare():
            for p, master, aliased in zip(b.params, b.state.masters, b.aliased):
                if not aliased:
                    local(p).copy_(master)
