"""Memory planner behind `python train.py --dry-run`: bytes on the GPU and in CPU memory.

Exact for the tensors whose size is known up front (weights, gradients, optimizer state, the
rollout KV cache, sampler logits); an estimate for activations, which depend on kernels.
Besides what a step always holds (weights, optimizer state on the GPU, the reference or the LoRA
adapters; with the compiled decode, its static KV cache, which the process keeps), the GPU peaks at
one of six moments that never overlap:
    prefill     the KV cache of all rows, the distinct prompts' own cache, one block's activations
    decode      the KV cache, a step's logits, their sampling copies and the entropies
    cache copy  the KV cache and its largest temporary copy: compaction's (eager or compiled: one
                layer's surviving rows, gathered before they move to the front of the same buffers)
                or, compiled, the copy inductor makes of the cache buffer it autotunes a kernel on
                (the first decode step)
    logprobs    the activations kept for backward, the attention masks, one chunk of full-vocabulary
                logits, and from the second micro-batch on the gradients accumulated so far
    backward    the same activations and masks, the gradients, one block recomputed (checkpointing)
    optimizer   the gradients and the optimizer's working buffers
(the eager KV cache is freed after the rollout, the gradients after the optimizer step). With a
4-bit base (model.quantize nf4) the weights are its codes and scales, and one projection at a time
is dequantised in every moment but the optimizer's (`nf4_items`). The peak is
the largest total. `train.py --dry-run --trace` checks these moments against the real code
(grpo/plan/trace.py). Not counted, but kept as margins (`GPU_OVERHEAD_GB`, `NCCL_OVERHEAD_GB`, in
machine.py): the CUDA context, allocator fragmentation, and NCCL's own buffers (several ranks).

This module holds the plan itself: its items and their bytes at each moment. What it is compared with
(the card, the RAM and those margins) is machine.py; what to change when it does not fit, advice.py;
the printed table and train.py's one-line messages, report.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from qwen2 import Qwen2, Qwen2Config
from qwen2 import nf4
from qwen2.lora import add_lora
from qwen2.shared_prefix import block_attention_bound

from ..config import Config
from ..policy import refuse_sharded_nf4
from ..optim.offload import DEFAULT_BUCKET_NUMEL, is_own_master, split_into_buckets, state_device, working_buffers
from ..tools import TOOL_TURN_TOKENS

GB = 1e9


# The moments of a step at which the GPU can peak, in order. They never overlap, so the GPU peak is
# the largest of their totals.
PHASES = ("prefill", "decode", "cache copy", "logprobs", "backward", "optimizer")
ROLLOUT, TRAINING = PHASES[:3], PHASES[3:]


@dataclass
class Item:
    name: str
    gpu: int  # bytes on the training device (a GPU; for a run with model.device cpu, the CPU's RAM)
    cpu: int  # bytes in host memory
    phases: tuple[str, ...] = PHASES  # the moments at which it is held (default: the whole step)
    device: str = "cuda"  # the training device the plan is for: "cpu" puts every byte in RAM


def model_config_for(cfg: Config) -> Qwen2Config:
    """The checkpoint's own config.json when downloaded, else the real shapes by name."""
    path = Path(cfg.model.path)
    if (path / "config.json").is_file():
        return Qwen2Config.from_json(path / "config.json")
    return Qwen2Config.from_name(path.name)


def kv_cache_bytes(mc: Qwen2Config, rows: int, length: int, dtype_bytes: int) -> int:
    """KVCache: k and v (layers, rows, kv_heads, length, head_dim) + key mask + per-row counters."""
    kv = 2 * mc.num_hidden_layers * rows * mc.num_key_value_heads * length * mc.head_dim * dtype_bytes
    return kv + rows * length + rows * 8


def block_activation_bytes(mc: Qwen2Config, tokens: int, dtype_bytes: int) -> int:
    """Estimate of what autograd keeps for backward in one block over `tokens` tokens.

    Per token: two RMSNorms (fp32 input and normalised copy + output), q/k/v before and after RoPE,
    k/v repeated to every query head (masked attention on CUDA, qwen2/attention.py), attention
    output, and the MLP's gate, up, silu and product (F wide each). The query side is heads x
    head_dim wide (Qwen2: = hidden; Qwen3 may differ). Qwen3's q/k norms keep about one more copy
    of q and k (their output is what RoPE keeps): b (Q + kv) bytes a token, 84 MB per block at
    Qwen3-4B's 8192-token micro-batch; measured within 6% at Qwen3-4B and -0.6B widths
    (tests/test_qwen3_plans.py) and on tiny shapes (tests/test_memory.py).
    """
    C, F, b = mc.hidden_size, mc.intermediate_size, dtype_bytes
    Q, kv = mc.num_attention_heads * mc.head_dim, mc.num_key_value_heads * mc.head_dim
    norms = 2 * (4 * C + 4 * C + b * C) + (b * (Q + kv) if mc.qk_norm else 0)
    attn = b * (2 * (Q + kv) + 2 * kv + 2 * Q + 2 * Q)
    mlp = 4 * b * F
    return tokens * (norms + attn + mlp)


def activation_bytes(mc: Qwen2Config, tokens: int, dtype_bytes: int, checkpointing: bool) -> int:
    """What autograd keeps for backward over `tokens` tokens at its peak: with checkpointing each
    block's input, plus one block's activations while it is recomputed in backward; without,
    every block's activations."""
    per_block = block_activation_bytes(mc, tokens, dtype_bytes)
    if checkpointing:
        return mc.num_hidden_layers * tokens * mc.hidden_size * dtype_bytes + per_block
    return mc.num_hidden_layers * per_block


def optimizer_state_bytes(
    params: Iterable[Tensor],
    offload: bool = True,
    *,
    bucket_numel: int = DEFAULT_BUCKET_NUMEL,
    pipeline: bool | None = None,
    device: torch.device | str | None = None,
) -> dict[str, int]:
    """Bytes that ``OffloadAdamW(params, offload=offload, bucket_numel=..., pipeline=...)`` allocates.

    ``device`` overrides where the parameters will live (so you can plan with ``meta`` tensors:
    ``device="cuda"``). Trainable parameters only, as one parameter group. Returns ``master``,
    ``exp_avg``, ``exp_avg_sq`` (the state: 12 B/param, 8 B/param where the parameter is its own
    master), ``scratch`` (fp32 gradient buffer, one bucket), ``staging`` (pinned double buffer,
    offloaded CUDA only), and the totals ``cpu`` and ``device`` (everything not on the CPU).
    Placement and working buffers come from the rules the optimizer itself follows (grpo.optim.offload).
    """
    params = [p for p in params if p.requires_grad]
    out = dict(master=0, exp_avg=0, exp_avg_sq=0, scratch=0, staging=0, cpu=0, device=0)
    where = lambda dev: "cpu" if dev.type == "cpu" else "device"  # noqa: E731
    for p in params:
        param_dev = torch.device(device) if device is not None else p.device
        state_dev = state_device(param_dev, offload)
        n = p.numel()
        master = 0 if is_own_master(p, state_dev, param_dev) else 4 * n
        out["master"] += master
        out["exp_avg"] += 4 * n
        out["exp_avg_sq"] += 4 * n
        out[where(state_dev)] += master + 8 * n
    buckets = [run for _, run in split_into_buckets([params], bucket_numel)]
    buffers = working_buffers(buckets, offload, pipeline=pipeline, device=device)
    for dev, numel in buffers.scratch_numel.items():
        out["scratch"] += 4 * numel
        out[where(dev)] += 4 * numel
    out["staging"] = 2 * sum(buffers.slot_bytes.values())  # two slots per device, in host memory
    out["cpu"] += out["staging"]
    return out


def plan_memory(cfg: Config, model_config: Qwen2Config | None = None, device: str | None = None,
                ranks: int = 1) -> list[Item]:
    """The plan for training on `device` ("cuda", or "cpu": tests compare it with real tensors;
    default: "cpu" for a config with model.device cpu, else "cuda"), per GPU when `ranks` processes
    share the work (torchrun: FSDP2 shards weights, gradients and optimizer state; each rank samples
    rows / ranks; a step gathers the full weights for sampling and one or two FSDP units at a time in
    training)."""
    mc = model_config or model_config_for(cfg)
    device = device or ("cpu" if cfg.model.device == "cpu" else "cuda")
    b = torch.finfo(getattr(torch, cfg.model.dtype)).bits // 8
    n = mc.num_params
    lora = cfg.model.lora
    trained, trained_root, opt = _trainable(mc, cfg, device)
    P, C, G = cfg.data.max_prompt_tokens, completion_tokens(cfg), cfg.rollout.group_size
    seq = P + C
    questions = -(-cfg.rollout.prompts_per_step // ranks)  # each rank samples its share (the busiest: rounded up)
    rows = questions * G
    compiled = compiled_decode(cfg, device, ranks)
    mb_tokens, mb_what = update_tokens(cfg)
    if cfg.grpo.shared_prefix:  # attention in blocks (qwen2/shared_prefix.py), at its worst: ragged lengths pad them
        mask_elements = block_attention_bound(mb_tokens, P, C)
    else:
        mask_elements = cfg.grpo.micro_batch_size * seq * seq
    chunk = min(cfg.grpo.logprob_chunk, mb_tokens) * mc.vocab_size * (b + 4 + 4)  # logits, fp32 copy, log-softmax

    def split(nbytes: int, where_cpu: bool) -> tuple[int, int]:
        return (-(-nbytes // ranks), 0) if not where_cpu else (0, -(-nbytes // ranks))  # this rank's shard

    shard = -(-n * b // ranks)
    items = [Item("weights" + (f" (1/{ranks} each)" if ranks > 1 else ""), shard, 0)]
    if cfg.model.quantize == "nf4":
        refuse_sharded_nf4(cfg, ranks)  # one process: `ranks` is 1 from here on
        items = nf4_items(mc, b)
    if ranks > 1:
        root = mc.vocab_size * mc.hidden_size * (1 if mc.tie_word_embeddings else 2) + mc.hidden_size
        unit = (n - root) // mc.num_hidden_layers
        items += [Item("weights gathered for sampling", n * b - shard, 0, ROLLOUT),
                  Item("FSDP units gathered in training", (root + unit) * b, 0, TRAINING)]
    if lora.rank:
        items.append(Item(f"LoRA adapters (rank {lora.rank}, {trained / 1e6:.1f}M params"
                          + (f", 1/{ranks} each)" if ranks > 1 else ")"), -(-trained * b // ranks), 0))
    elif cfg.grpo.beta > 0:  # with LoRA the reference is the base model itself (adapters off)
        items.append(Item("reference model (beta > 0)", shard, 0))
    # From the second micro-batch on, the gradients of the earlier ones are there while the next one's
    # forward pass (and its log-prob chunk) runs: a step of several micro-batches holds them from then on.
    several = update_micro_batches(cfg, ranks) > 1
    # No RoPE tables: cos/sin are computed for the positions a forward reads (qwen2/model.py, Rotary),
    # (tokens, head_dim) each, ~4 MB at 8192 tokens: within the activations' estimate.
    items += [
        Item("gradients" + (" (from micro-batch 2 on in logprobs)" if several else ""), -(-trained * b // ranks), 0,
             ("logprobs", "backward", "optimizer") if several else ("backward", "optimizer")),
        Item("fp32 master weights", *split(opt["master"], cfg.optim.offload)),
        Item("Adam moments (fp32 x2)", *split(opt["exp_avg"] + opt["exp_avg_sq"], cfg.optim.offload)),
    ]
    # fp32 gradient scratch and pinned staging: whatever of the optimizer's bytes is not the state.
    # (optimizer_state_bytes counts by where the bytes are; on a CPU run the state is all "cpu".)
    state = opt["master"] + opt["exp_avg"] + opt["exp_avg_sq"]
    state_on_device = 0 if cfg.optim.offload or device == "cpu" else state
    if opt["scratch"] or opt["staging"]:
        items.append(Item("optimizer working buffers", -(-(opt["device"] - state_on_device) // ranks),
                          -(-(opt["cpu"] - (state - state_on_device)) // ranks), ("optimizer",)))
    if ranks > 1:
        # FSDP2 reduce-scatters each unit's gradients in fp32 (reduce_dtype, grpo/machinery/distributed.py): the
        # unit's whole bf16 gradients and their fp32 copy, the largest unit's (the root's, when trained).
        per_unit = max((trained - trained_root) // mc.num_hidden_layers, trained_root)
        items.append(Item("FSDP gradient reduce-scatter (one unit, fp32 copy)", per_unit * (b + 4), 0, ("backward",)))
    items += rollout_items(mc, questions, G, P, C, b, compiled)
    per_block = block_activation_bytes(mc, mb_tokens, b)
    checkpointing = cfg.model.activation_checkpointing
    items += [
        Item(f"activations for backward ({mb_what}{', recompute' if checkpointing else ''})",
             mc.num_hidden_layers * (mb_tokens * mc.hidden_size * b if checkpointing else per_block), 0,
             # Checkpointed block inputs are small and freed block by block; without checkpointing
             # backward frees each block's activations as its gradients arrive, so they never all coexist.
             ("logprobs", "backward") if checkpointing else ("logprobs",)),
        # Boolean mask, and the additive bias SDPA builds from it, of the attention scores.
        Item("attention mask", mask_elements * (1 + b), 0, ("logprobs", "backward")),
        Item(f"log-prob chunk ({min(cfg.grpo.logprob_chunk, mb_tokens)} tokens)", chunk, 0, ("logprobs",)),
    ]
    if checkpointing:
        items.append(Item("one block recomputed in backward", per_block, 0, ("backward",)))
    for i in items:
        i.device = device
    return items


def nf4_items(mc: Qwen2Config, b: int) -> list[Item]:
    """A 4-bit base (qwen2/nf4.py): the block projections in NF4 (codes, int8 scales, factors and
    the 256-entry byte table), the rest (embedding, head, norms, biases) in the model's dtype; and
    the largest projection dequantised, with the int32 index its gather reads, while a forward or
    a backward pass runs through it (nothing of it is kept between layers)."""
    C, F, Q, kv = mc.hidden_size, mc.intermediate_size, mc.num_attention_heads * mc.head_dim, \
        mc.num_key_value_heads * mc.head_dim
    projections = (C * Q, C * kv, C * kv, Q * C, C * F, C * F, F * C)  # q, k, v, o, gate, up, down
    stored = sum(nf4.storage_bytes(k, b) + 512 * b for k in projections)
    kept = mc.num_params - mc.num_hidden_layers * sum(projections)
    return [Item("weights (4-bit NF4 block projections)", kept * b + mc.num_hidden_layers * stored, 0),
            Item("one projection dequantised (its weight + int32 gather index)", max(projections) * (b + 2), 0,
                 PHASES[:-1])]


def rollout_items(mc: Qwen2Config, questions: int, G: int, P: int, C: int, b: int, compiled: bool) -> list[Item]:
    """What a rollout of `questions` x `G` rows of up to P + C positions adds, eager or compiled
    (qwen2/sampler.py, kv_cache.py, static_decode.py)."""
    rows, seq, V = questions * G, P + C, mc.vocab_size
    # Each decode step: the logits (kept until the next step, through a compaction), their fp32 copy and
    # probabilities (sampling), and the log-softmax, its exp and their product (the entropies rollouts keep).
    items = [Item("sampler logits", rows * V * b, 0, ("decode", "cache copy")),
             Item("sampling copies and entropies", rows * V * 16, 0, ("decode",))]
    if not compiled:
        items += [
            Item(f"rollout KV cache ({rows} rows x {seq} tokens)", kv_cache_bytes(mc, rows, seq, b), 0, ROLLOUT),
            # Prefill: the distinct prompts' own cache until it is fanned out to the G rows, and one
            # block's activations over their tokens.
            Item(f"prefill ({questions} prompts' own cache, one block)",
                 kv_cache_bytes(mc, questions, seq, b) + block_activation_bytes(mc, questions * P, b), 0, ("prefill",)),
            # KVCache.select, when finished rows are dropped: in place, one layer at a time, each
            # layer's surviving rows gathered into a temporary copy (one layer's K or V) and written
            # to the front of the same buffers; at worst all rows but one survive, late in the rollout.
            Item(f"compaction's copy of the cache ({rows - 1} rows of one layer's K)",
                 (rows - 1) * mc.num_key_value_heads * seq * mc.head_dim * b, 0, ("cache copy",)),
        ]
        return items
    from qwen2 import static_decode

    static_rows, positions = static_decode.bucket(rows), static_positions(seq)
    layer_copy = static_rows * mc.num_key_value_heads * seq * mc.head_dim * b  # one layer's K (or V) rows, gathered
    static = kv_cache_bytes(mc, static_rows, positions, b) + 8  # + the write position
    items += [
        # Allocated by the first compiled rollout and kept by the process (CUDA graphs record its
        # addresses), through the update too; every later rollout reuses it.
        Item(f"static KV cache of the compiled decode ({static_rows} x {positions}, kept)", static, 0),
        # The distinct prompts' cache (prompt positions only) and one block's activations; the rows are
        # then copied into the static cache one layer at a time.
        Item(f"prefill ({questions} prompts' cache, one block, one layer's rows)",
             kv_cache_bytes(mc, questions, P, b) + block_activation_bytes(mc, questions * P, b) + layer_copy, 0,
             ("prefill",)),
        # The largest temporary copy: inductor benchmarks the configs of a kernel that writes the cache
        # on a clone of the buffer it mutates (the whole K or V buffer), when it compiles (first decode
        # step); compaction moves the surviving rows one layer at a time (a gathered copy of one layer).
        Item("autotuning copy of the static K buffer (first decode step)",
             max(static // 2, layer_copy), 0, ("cache copy",)),
        # The CUDA graph's private memory pool holds one decode step's intermediate tensors: bounded by
        # one block's activations over the rows.
        Item("CUDA-graph pool (one decode step's tensors)", block_activation_bytes(mc, static_rows, b), 0,
             ("decode", "cache copy")),
    ]
    return items


def static_positions(length: int) -> int:
    """Positions of the compiled decode's static cache for rollouts of `length` positions
    (static_decode.static_cache: whole WINDOW_STEPs, plus the spare positions past the last window)."""
    from qwen2 import static_decode

    step = static_decode.WINDOW_STEP
    return -(-length // step) * step + getattr(static_decode, "SPARE", 0)


def compiled_decode(cfg: Config, device: str, ranks: int = 1) -> bool:
    """Whether rollouts of this plan decode with the compiled step (rollout.compile: auto compiles for
    one process on a GPU; rollouts with tools decode eagerly)."""
    return cfg.rollout.compiled(torch.device(device), launched=ranks > 1) and not cfg.rollout.tools


_TRAINABLE: dict[tuple, tuple[int, int, dict[str, int]]] = {}


def _trainable(mc: Qwen2Config, cfg: Config, device: str) -> tuple[int, int, dict[str, int]]:
    """(trainable parameters, those of them in the FSDP root, the optimizer's bytes) for this model,
    dtype, LoRA and offload setting; cached, since --dry-run's advice re-plans the same model often."""
    lora = cfg.model.lora
    key = (repr(mc), cfg.model.dtype, lora.rank, lora.alpha, tuple(lora.targets), cfg.optim.offload, device)
    if key not in _TRAINABLE:
        with torch.device("meta"):
            model = Qwen2(mc).to(getattr(torch, cfg.model.dtype))
            if lora.rank:  # only the adapters train: they alone have gradients and optimizer state
                add_lora(model, lora.rank, lora.alpha, lora.targets)
        trainable = [p for p in model.parameters() if p.requires_grad]
        in_blocks = {id(p) for p in model.model.layers.parameters()}
        root = sum(p.numel() for p in trainable if id(p) not in in_blocks)
        opt = optimizer_state_bytes(trainable, offload=cfg.optim.offload, device=torch.device(device))
        _TRAINABLE[key] = (sum(p.numel() for p in trainable), root, opt)
    return _TRAINABLE[key]


def completion_tokens(cfg: Config) -> int:
    """The longest completion: the model's own max_new_tokens, plus, with rollout.tools, what the
    tools' answers may add (max_tool_calls turns of at most TOOL_TURN_TOKENS each)."""
    tools = cfg.rollout.max_tool_calls * TOOL_TURN_TOKENS if cfg.rollout.tools else 0
    return cfg.rollout.max_new_tokens + tools


def update_tokens(cfg: Config) -> tuple[int, str]:
    """Tokens one forward/backward of the update pushes through the model, and how they are counted:
    a shared-prefix micro-batch fills rows up to micro_batch_tokens (one episode longer than that
    still gets a row); a padded one is micro_batch_size rows of up to prompt + completion."""
    seq = cfg.data.max_prompt_tokens + completion_tokens(cfg)
    if cfg.grpo.shared_prefix:
        tokens = max(cfg.grpo.micro_batch_tokens, seq)
        return tokens, f"{tokens} tokens"
    return cfg.grpo.micro_batch_size * seq, f"{cfg.grpo.micro_batch_size} x {seq} tokens"


def update_micro_batches(cfg: Config, ranks: int = 1) -> int:
    """Micro-batches of one rank's update when every prompt and completion is as long as allowed
    (grpo/batch.py: a shared-prefix row holds one prompt and as many of its group's completions as
    the budget allows; a micro-batch, as many rows as the budget holds at the longest row's length)."""
    P, C, G = cfg.data.max_prompt_tokens, completion_tokens(cfg), cfg.rollout.group_size
    questions = -(-cfg.rollout.prompts_per_step // ranks)
    if not cfg.grpo.shared_prefix:
        return -(-questions * G // cfg.grpo.micro_batch_size)
    budget = cfg.grpo.micro_batch_tokens
    per_row = max(1, (budget - P) // C)  # completions after one copy of the prompt
    rows = questions * -(-G // per_row)
    return -(-rows // max(1, budget // (P + min(G, per_row) * C)))


def peak_gpu(items: list[Item]) -> int:
    """The GPU peak: the largest total over the moments of a step."""
    return max(phase_totals(items).values())


def peak_phase(items: list[Item]) -> str:
    """The moment of the GPU peak."""
    totals = phase_totals(items)
    return max(totals, key=totals.get)


def phase_totals(items: list[Item], ram: bool = False) -> dict[str, int]:
    """GPU bytes held at each moment of a step (`ram`: the bytes of both columns, a CPU run's RAM)."""
    return {phase: sum(i.gpu + (i.cpu if ram else 0) for i in items if phase in i.phases) for phase in PHASES}


def on_cpu(items: list[Item]) -> bool:
    """Whether the plan is for a run on the CPU (model.device cpu): every byte in RAM, no card."""
    return bool(items) and items[0].device == "cpu"


def host_bytes(items: list[Item], ranks: int = 1) -> int:
    """CPU RAM the plan needs on the machine (all ranks): the host items; on a CPU run, where the
    training device is the CPU too, the peak over the moments of both columns."""
    if on_cpu(items):
        return max(phase_totals(items, ram=True).values()) * ranks
    return sum(i.cpu for i in items) * ranks
