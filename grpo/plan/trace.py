"""The GPU memory of a training step, traced without a GPU: `python train.py --dry-run --trace`.

The planner (memory.py) adds up the tensors it knows a step holds. This module checks it against
the real code instead: it runs the step's peak phases on PyTorch's meta device (tensors with shapes
and no storage, so a 14B model costs no memory and seconds of time) under an allocation tracker at the
dispatcher (`DeviceMemory`: what PyTorch's MemTracker counts, without the per-module bookkeeping
that allows one call per module), and reports each phase's peak:

  rollout     the sampler's prefill of the step's prompts, its last decode steps (attention over
              the whole cache) and a compaction that drops one finished row, with the real KV cache
              (prompts_per_step x group_size rows, max_prompt_tokens + max_new_tokens) and the
              per-token entropies rollouts keep
  update      one micro-step at the real token budget: forward with activation checkpointing,
              chunked log-probs, the loss and backward (a micro-batch filled to
              grpo.micro_batch_tokens, or micro_batch_size padded rows); when the step has several
              micro-batches, the second one, with the first one's gradients already there
  optimizer   gradient clipping and the AdamW step, optimizer state on the device (offload off;
              with offload on the state lives in CPU RAM, outside the trace: the phase is the
              weights and gradients the step starts from)

The meta device stands for the GPU: the code takes its CUDA branches (qwen2/attention.py repeats
the key/value heads for masked attention, as on CUDA). The optimizer state exists before the
rollout is traced (from the second step on it does), and the reference model when beta > 0. With
model.quantize nf4 the meta model's block projections are NF4Linear layers (qwen2/nf4.py), whose
dequantisation runs in every traced pass.

Simplifications: one process (no FSDP); the rollout traces two decode steps, as the last two of a
rollout (the cache is allocated whole up front; a late step's attention reads all of it); the
eager decode only: the compiled decode (rollout.compile, a GPU's default) cannot run on the meta
device, so its static KV cache, kept through the update, and inductor's autotuning copy are planned
only, and a config that compiles is compared here with the plan of its eager decode; no allocator
fragmentation or CUDA context (the planner's GPU_OVERHEAD_GB covers those); completions in the
update are all of one length, chosen so the micro-batch reaches its token budget.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

import qwen2.attention
from data.rewards import Score
from qwen2 import Qwen2, Qwen2Config
from qwen2.lora import add_lora
from qwen2.nf4 import quantize_model
from qwen2.sampler import choose_next, decode_one_token, prefill

from ..batch import build_batch, micro_batches
from ..config import Config
from ..logprobs import micro_batch_logprobs
from ..loss import policy_loss
from .advice import with_sets
from .memory import compiled_decode, model_config_for, phase_totals, plan_memory, update_micro_batches
from ..optim.adamw import OffloadAdamW
from ..rollout import Episode
from ..machinery.runtime import enable_activation_checkpointing

META = torch.device("meta")


@dataclass
class PhaseTrace:
    phase: str  # rollout, update or optimizer
    peak: int  # bytes at the phase's peak
    what: str  # what ran
    planned: int | None = None  # the plan it is to be compared with, when not the one printed (eager decode)


def cuda_sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False,
              enable_gqa: bool = False) -> Tensor:
    """scaled_dot_product_attention as CUDA runs it, on meta tensors: masked attention over many
    queries (heads already repeated, qwen2/attention.py) goes to the memory-efficient kernel, with
    the mask turned into an additive bias in the queries' dtype, so no (T, S) scores are kept; the
    rest (decoding: one query per row) takes the default path, whose scores are small."""
    if attn_mask is not None and q.shape[2] > 1 and q.shape[1] == k.shape[1]:
        bias = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~attn_mask, float("-inf"))
        shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias.expand(shape), q.requires_grad)[0]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                                            enable_gqa=enable_gqa)


@contextlib.contextmanager
def meta_as_gpu() -> Iterator[None]:
    """The CUDA branches and kernels taken on the meta device too."""
    saved = qwen2.attention.REPEAT_HEADS_ON, qwen2.attention.sdpa
    qwen2.attention.REPEAT_HEADS_ON = (*saved[0], "meta")
    qwen2.attention.sdpa = cuda_sdpa
    try:
        yield
    finally:
        qwen2.attention.REPEAT_HEADS_ON, qwen2.attention.sdpa = saved


class DeviceMemory(TorchDispatchMode):
    """Bytes of the live storages on one device and their peak, counted at the dispatcher: every
    tensor an operation returns (forward, backward, optimizer) and the tensors registered with
    `add`. A storage is freed when its last tensor dies (torch keeps a storage's Python object alive
    as long as the storage lives, so a weak reference to it dies with it). This is what PyTorch's
    MemTracker counts, without its per-module bookkeeping, which allows one call per module only."""

    def __init__(self, device: torch.device = META):
        super().__init__()
        self.device, self.current, self.peak = device, 0, 0
        self.sizes: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def add(self, *tensors: torch.Tensor | None) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.device == self.device:
                storage = t.untyped_storage()
                if storage not in self.sizes:
                    size = storage.nbytes()
                    self.sizes[storage] = size
                    self.current += size
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.add(*(t for t in tree_leaves(out) if isinstance(t, torch.Tensor)))
        return out


def live_tensors(*objects) -> list[torch.Tensor]:
    """The parameters, gradients and buffers of modules and the state of optimizers."""
    out = []
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            out += [*obj.parameters(), *(p.grad for p in obj.parameters() if p.grad is not None), *obj.buffers()]
        elif isinstance(obj, torch.optim.Optimizer):
            out += [t for state in obj.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    return out


def peak_of(fn, *tracked) -> int:
    """Peak bytes on the meta device while fn() runs, the tracked modules' and optimizers' tensors
    counted from the start."""
    memory = DeviceMemory()
    memory.add(*live_tensors(*tracked))
    with memory:
        fn()
    return memory.peak


def trace_memory(cfg: Config, model_config: Qwen2Config | None = None) -> list[PhaseTrace]:
    """Traced peak bytes of the rollout, update and optimizer phases of one step of `cfg`."""
    mc = model_config or model_config_for(cfg)
    dtype = getattr(torch, cfg.model.dtype)
    with torch.device("meta"):
        model = Qwen2(mc).to(dtype)
        ref = Qwen2(mc).to(dtype).requires_grad_(False) if cfg.grpo.beta > 0 and not cfg.model.lora.rank else None
    lora = cfg.model.lora
    if cfg.model.quantize == "nf4":  # the block projections as NF4Linear: codes and scales, dequantised per call
        quantize_model(model)
    if lora.rank:
        add_lora(model, lora.rank, lora.alpha, lora.targets)
    if cfg.model.activation_checkpointing:
        enable_activation_checkpointing(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = OffloadAdamW(trainable, lr=cfg.optim.lr, offload=cfg.optim.offload, fused=True)
    tracked = [m for m in (model, ref, optimizer) if m is not None]
    batch = update_batch(cfg, mc.vocab_size)
    micro = micro_batches(batch, shared_prefix=cfg.grpo.shared_prefix, micro_batch_size=cfg.grpo.micro_batch_size,
                          micro_batch_tokens=cfg.grpo.micro_batch_tokens, pad_id=0, device=META)[0]
    settings = cfg.policy_loss()
    counts = (batch.completion_tokens, batch.sequences)

    def micro_step() -> None:
        logp, _ = micro_batch_logprobs(model, micro, cfg.rollout.temperature, cfg.grpo.logprob_chunk)
        ref_logp = None
        if cfg.grpo.beta > 0:
            with torch.no_grad():
                ref_logp, _ = micro_batch_logprobs(ref or model, micro, cfg.rollout.temperature, cfg.grpo.logprob_chunk)
        loss, _ = policy_loss(logp, logp.detach(), batch.advantages[micro.episodes], micro.loss_mask, settings,
                              ref_logp=ref_logp, num_tokens=counts[0], num_sequences=counts[1])
        loss.backward()

    def optimizer_step() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        if not cfg.optim.offload:  # offloaded state lives in CPU RAM: not on the traced device
            optimizer.step()

    rows = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    # Distinct prompts (the sampler prefills each distinct one once: the plan counts prompts_per_step).
    prompts = [[1 + i % (mc.vocab_size - 1)] * cfg.data.max_prompt_tokens for i in range(cfg.rollout.prompts_per_step)]

    @torch.no_grad()
    def rollout() -> None:
        cache, logits = prefill(model, [p for p in prompts for _ in range(cfg.rollout.group_size)],
                                cfg.rollout.max_new_tokens, pad_token_id=0)
        cache.length = cache.max_len - 2  # the last decode steps: attention over the whole cache
        for _ in range(2):
            tok, _, _ = choose_next(logits, cfg.rollout.sampling, scored=True)  # rollouts keep the entropies
            logits = decode_one_token(model, cache, tok)
        # A compaction late in the rollout, where it moves the most: one row finished, the others'
        # K and V moved to the front of the cache while the step's logits are still held (sampler.generate).
        if rows > 1:
            cache.select(torch.arange(rows - 1, device=META))

    with meta_as_gpu():
        micro_step()  # a step before: the optimizer state exists from the second step on
        optimizer_step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        rollout_peak = peak_of(rollout, *tracked)
        model.train()
        several = update_micro_batches(cfg) > 1
        if several:  # the second micro-batch: the first one's gradients are there through its forward
            micro_step()
        update_peak = peak_of(micro_step, *tracked)
        optimizer_peak = peak_of(optimizer_step, *tracked)
        optimizer.zero_grad(set_to_none=True)
    where = "micro_batch_tokens" if cfg.grpo.shared_prefix else "micro_batch_size"
    traces = [PhaseTrace("rollout", rollout_peak, f"prefill + 2 decode steps + a compaction, {rows} rows"),
              PhaseTrace("update", update_peak, f"{'a second' if several else 'one'} micro-step of {micro.num_tokens} "
                         f"tokens ({where})"),
              PhaseTrace("optimizer", optimizer_peak,
                         "clip + AdamW" + (" (state on the host)" if cfg.optim.offload else ""))]
    if compiled_decode(cfg, "cuda"):  # the trace ran the eager decode: compare it with that plan
        totals = phase_totals(plan_memory(with_sets(cfg, [("rollout.compile", False)]), mc, device="cuda"))
        for t in traces:
            t.planned = max(totals[m] for m in PLANNED_AS[t.phase])
            t.what += "; eager decode, vs its plan"
    return traces


def update_batch(cfg: Config, vocab: int):
    """Episodes whose first micro-batch is as large as the config allows: prompts of
    max_prompt_tokens, groups of group_size completions of one length, chosen so that the
    shared-prefix rows fill grpo.micro_batch_tokens (or padded rows of max_new_tokens)."""
    P, G, C = cfg.data.max_prompt_tokens, cfg.rollout.group_size, cfg.rollout.max_new_tokens
    if cfg.grpo.shared_prefix:
        budget = cfg.grpo.micro_batch_tokens
        rows = max(1, -(-budget // (P + G * C)))  # rows per micro-batch when every completion is C long
        length = max(1, min(C, (budget // rows - P) // G))  # the longest completions that still fit `rows` rows
    else:
        rows, length = cfg.grpo.micro_batch_size, C
    groups = rows if cfg.grpo.shared_prefix else -(-rows // G)  # one row per group, or rows / G groups
    episodes = [Episode(g, [1 + g % 7] * P, [2] * length, False, "", "0", Score({}, 0.0, False), [0.0] * length)
                for g in range(groups) for _ in range(G)]
    advantages = torch.linspace(-1, 1, len(episodes))
    return build_batch(episodes, advantages, META)


# Which of the plan's moments (grpo/plan/memory.py) each traced phase is.
PLANNED_AS = {"rollout": ("prefill", "decode", "cache copy"), "update": ("logprobs", "backward"),
              "optimizer": ("optimizer",)}


def against_plan(traces: list[PhaseTrace], plan: list) -> list[tuple[PhaseTrace, int]]:
    """Each traced phase with the plan's peak over the same moments (the eager decode's plan where
    the trace says so)."""
    totals = phase_totals(plan)
    return [(t, t.planned if t.planned is not None else max(totals[m] for m in PLANNED_AS[t.phase])) for t in traces]


def format_trace(traces: list[PhaseTrace], plan: list, GB: float = 1e9) -> str:
    """The traced peaks next to the plan's."""
    lines = ["traced on the meta device (the real code's allocations, counted at the dispatcher; not a GPU "
             "measurement) vs the plan:",
             f"  {'phase':10s} {'traced GB':>10s} {'planned GB':>11s} {'trace/plan':>10s}  what ran"]
    for t, planned in against_plan(traces, plan):
        lines.append(f"  {t.phase:10s} {t.peak / GB:10.2f} {planned / GB:11.2f} {t.peak / max(planned, 1):10.2f}  {t.what}")
    return "\n".join(lines)
