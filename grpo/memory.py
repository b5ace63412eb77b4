"""Memory planner behind `python train.py --dry-run`: bytes on the GPU and in CPU memory.

Exact for the tensors whose size is known up front (weights, gradients, optimizer state, the
rollout KV cache, sampler logits); an estimate for activations, which depend on kernels.
Besides what a step always holds (weights, optimizer state on the GPU, the reference or the LoRA
adapters), the GPU peaks at one of five moments that never overlap:
    prefill    the KV cache of all rows, the distinct prompts' own cache, one block's activations
    decode     the KV cache, a step's logits, their sampling copies and the entropies
    logprobs   the activations kept for backward, the attention masks, one chunk of full-vocabulary logits
    backward   the same activations and masks, the gradients, one block recomputed (checkpointing)
    optimizer  the gradients and the optimizer's working buffers
(the KV cache is freed after the rollout, the gradients after the optimizer step; the log-prob
chunk's backward runs first, when the gradients are still few). The peak is the largest total.
`train.py --dry-run --trace` checks these moments against the real code (grpo/trace.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from qwen2 import Qwen2, Qwen2Config
from qwen2.errors import InputError
from qwen2.lora import add_lora
from qwen2.shared_prefix import block_attention_bound

from .config import Config
from .offload import DEFAULT_BUCKET_NUMEL, is_own_master, split_into_buckets, state_device, working_buffers
from .tools import TOOL_TURN_TOKENS

GB = 1e9


# The moments of a step at which the GPU can peak, in order. They never overlap, so the GPU peak is
# the largest of their totals.
PHASES = ("prefill", "decode", "logprobs", "backward", "optimizer")
ROLLOUT, TRAINING = PHASES[:2], PHASES[2:]


@dataclass
class Item:
    name: str
    gpu: int  # bytes on the training device
    cpu: int  # bytes in host memory
    phases: tuple[str, ...] = PHASES  # the moments at which it is held (default: the whole step)


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
    output, and the MLP's gate, up, silu and product (F wide each).
    """
    C, F, kv, b = mc.hidden_size, mc.intermediate_size, mc.num_key_value_heads * mc.head_dim, dtype_bytes
    norms = 2 * (4 * C + 4 * C + b * C)
    attn = b * (2 * (C + kv) + 2 * kv + 2 * C + 2 * C)
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
    Placement and working buffers come from the rules the optimizer itself follows (grpo.offload).
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


def plan_memory(cfg: Config, model_config: Qwen2Config | None = None, device: str = "cuda", ranks: int = 1) -> list[Item]:
    """The plan for training on `device` ("cuda"; tests plan for "cpu" to compare with real tensors),
    per GPU when `ranks` processes share the work (torchrun: FSDP2 shards weights, gradients and
    optimizer state; each rank samples rows / ranks; a step gathers the full weights for sampling
    and one or two FSDP units at a time in training)."""
    mc = model_config or model_config_for(cfg)
    b = torch.finfo(getattr(torch, cfg.model.dtype)).bits // 8
    n = mc.num_params
    on_gpu = torch.device(device)
    lora = cfg.model.lora
    with torch.device("meta"):
        model = Qwen2(mc).to(getattr(torch, cfg.model.dtype))
        if lora.rank:  # only the adapters train: they alone have gradients and optimizer state
            add_lora(model, lora.rank, lora.alpha, lora.targets)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trained = sum(p.numel() for p in trainable)
    opt = optimizer_state_bytes(trainable, offload=cfg.optim.offload, device=on_gpu)
    P, C, G = cfg.data.max_prompt_tokens, completion_tokens(cfg), cfg.rollout.group_size
    seq = P + C
    questions = -(-cfg.rollout.prompts_per_step // ranks)  # each rank samples its share (the busiest: rounded up)
    rows = questions * G
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
    items += [
        Item("RoPE cos/sin tables", 2 * mc.max_position_embeddings * mc.head_dim * 4, 0),
        Item("gradients", -(-trained * b // ranks), 0, ("backward", "optimizer")),
        Item("fp32 master weights", *split(opt["master"], cfg.optim.offload)),
        Item("Adam moments (fp32 x2)", *split(opt["exp_avg"] + opt["exp_avg_sq"], cfg.optim.offload)),
    ]
    # fp32 gradient scratch and pinned staging: whatever of the optimizer's bytes is not the state.
    state_gpu = 0 if cfg.optim.offload else opt["master"] + opt["exp_avg"] + opt["exp_avg_sq"]
    state_cpu = opt["master"] + opt["exp_avg"] + opt["exp_avg_sq"] - state_gpu
    if opt["scratch"] or opt["staging"]:
        items.append(Item("optimizer working buffers", -(-(opt["device"] - state_gpu) // ranks),
                          -(-(opt["cpu"] - state_cpu) // ranks), ("optimizer",)))
    per_block = block_activation_bytes(mc, mb_tokens, b)
    checkpointing = cfg.model.activation_checkpointing
    items += [
        Item(f"rollout KV cache ({rows} rows x {seq} tokens)", kv_cache_bytes(mc, rows, seq, b), 0, ROLLOUT),
        # Prefill: the distinct prompts' own cache until it is fanned out to the G rows, and one
        # block's activations over their tokens.
        Item(f"prefill ({questions} prompts' own cache, one block)",
             kv_cache_bytes(mc, questions, seq, b) + block_activation_bytes(mc, questions * P, b), 0, ("prefill",)),
        # Each decode step: logits, their fp32 copy and probabilities (sampling), and the log-softmax,
        # its exp and their product (the entropies rollouts keep).
        Item("sampler logits and entropies", rows * mc.vocab_size * (b + 16), 0, ("decode",)),
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
    return items


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


def peak_gpu(items: list[Item]) -> int:
    """The GPU peak: the largest total over the moments of a step."""
    return max(phase_totals(items).values())


def phase_totals(items: list[Item]) -> dict[str, int]:
    """GPU bytes held at each moment of a step."""
    return {phase: sum(i.gpu for i in items if phase in i.phases) for phase in PHASES}


# Not in the plan's tensors: the CUDA context and allocator fragmentation on the GPU; Python,
# torch's (and CUDA's) libraries, the tokenizer and the dataset in host memory.
GPU_OVERHEAD_GB = 1.5
HOST_OVERHEAD_GB = 3.0


def host_ram_gb() -> float:
    """Physical memory of this machine in GB."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB


def check_fits(cfg: Config, mc: Qwen2Config, device: torch.device, ranks: int = 1) -> None:
    """Refuse, in one line and before anything is allocated, a run this machine cannot hold: prompts
    plus completions longer than the model's positions, or a memory plan larger than the GPU (or, on
    a CPU, the RAM). Only a certain failure is refused: the plan is compared with the whole memory,
    without the overheads --dry-run adds for its verdict."""
    longest = cfg.data.max_prompt_tokens + completion_tokens(cfg)
    if longest > mc.max_position_embeddings:
        tools = " + the tools' turns" if cfg.rollout.tools else ""
        raise InputError(f"data.max_prompt_tokens + rollout.max_new_tokens{tools} = {longest} exceeds the model's "
                         f"{mc.max_position_embeddings} positions (max_position_embeddings): lower rollout.max_new_tokens")
    on_gpu = device.type == "cuda"
    items = plan_memory(cfg, mc, device="cuda" if on_gpu else "cpu", ranks=ranks)
    host = sum(i.cpu for i in items) * ranks  # every rank's host memory shares the machine's RAM
    if on_gpu:
        checks = [(peak_gpu(items), torch.cuda.get_device_properties(device).total_memory, "GPU memory")]
    else:
        host += peak_gpu(items) * ranks
        checks = []
    checks.append((host, host_ram_gb() * GB, "RAM"))
    for need, have, what in checks:
        if need > have:
            big = max(items, key=lambda i: i.gpu if what == "GPU memory" else i.gpu + i.cpu)
            raise InputError(f"this run needs about {need / GB:.1f} GB of {what} at its peak (the largest part: {big.name}), "
                             f"more than the {have / GB:.1f} GB here: try " + "; or ".join(gpu_memory_advice(cfg))
                             + " (python train.py --dry-run shows the whole plan)")


def gpu_memory_advice(cfg: Config) -> list[str]:
    """What to change, in order, when a config needs more GPU memory than the card has."""
    advice = []
    if not cfg.optim.offload:
        advice.append("--set optim.offload=true (moves master weights and Adam moments to CPU memory)")
    if not cfg.model.activation_checkpointing:
        advice.append("--set model.activation_checkpointing=true")
    micro = "grpo.micro_batch_tokens" if cfg.grpo.shared_prefix else "grpo.micro_batch_size"  # the unit in use
    advice.append(f"a smaller {micro}, rollout.prompts_per_step or rollout.max_new_tokens")
    return advice


def out_of_memory_message(cfg: Config, step: int) -> str:
    """One line for a CUDA out-of-memory error during training: what ran out and what to try."""
    detail = ""
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory / GB
        detail = f" (peak {torch.cuda.max_memory_allocated() / GB:.1f} GB allocated of the card's {total:.1f} GB)"
    return (f"out of GPU memory in step {step + 1}{detail}: try " + "; or ".join(gpu_memory_advice(cfg))
            + f". python train.py --dry-run shows the plan; a run continues from its last checkpoint with "
            f"--resume {cfg.train.out_dir}")


def machine_gb(card_gb: float | None = None, ram_gb: float | None = None) -> tuple[float, float]:
    """The card and RAM sizes to plan for: as given, else the visible GPU (24 GB without one) and
    this machine's RAM."""
    if card_gb is None:
        card_gb = torch.cuda.get_device_properties(0).total_memory / GB if torch.cuda.is_available() else 24.0
    return card_gb, host_ram_gb() if ram_gb is None else ram_gb


def plan_fits(items: list[Item], card_gb: float | None = None, ram_gb: float | None = None,
              ranks: int = 1) -> tuple[bool, bool]:
    """(fits the GPU, fits the RAM): the plan plus the overheads, against the card and the machine."""
    card_gb, ram_gb = machine_gb(card_gb, ram_gb)
    host = sum(i.cpu for i in items) * ranks / GB  # all ranks share the machine's RAM
    return peak_gpu(items) / GB + GPU_OVERHEAD_GB <= card_gb, host + HOST_OVERHEAD_GB <= ram_gb


def format_plan(items: list[Item], cfg: Config, card_gb: float | None = None, ram_gb: float | None = None,
                ranks: int = 1) -> str:
    """The plan as a table, then whether it fits the card (`card_gb`, default: the visible GPU, else
    24) and this machine's RAM (`ram_gb`, default: its physical memory), and what to try if not."""
    gpu_here = torch.cuda.is_available()
    ram_source = "this machine; --ram-gb sets it" if ram_gb is None else "--ram-gb"
    card_gb, ram_gb = machine_gb(card_gb, ram_gb)
    mc = model_config_for(cfg)
    per = f", per rank of {ranks} (torchrun)" if ranks > 1 else ""
    lines = [f"memory plan: {Path(cfg.model.path).name} ({mc.num_params / 1e9:.2f}B params, {cfg.model.dtype}), "
             f"optim.offload={str(cfg.optim.offload).lower()}{per}", f"{'':60s} {'GPU GB':>8s} {'CPU GB':>8s}"]
    for i in items:
        when = "" if i.phases == PHASES else f"  [{', '.join(i.phases)}]"
        lines.append(f"  {i.name:58s} {i.gpu / GB:8.2f} {i.cpu / GB:8.2f}{when}")
    totals = phase_totals(items)
    peak, host = peak_gpu(items) / GB, sum(i.cpu for i in items) * ranks / GB  # all ranks share the machine's RAM
    at = max(totals, key=totals.get)
    lines.append(f"  {'GPU peak (at ' + at + ')':58s} {peak:8.2f} {host / ranks:8.2f}")
    lines.append("  GPU at each moment: " + ", ".join(f"{p} {v / GB:.2f}" for p, v in totals.items()))

    card = f"a card of {card_gb:.0f} GB" + ("" if gpu_here else " (no GPU here; --card-gb sets the size)")
    gpu_fits, ram_fits = plan_fits(items, card_gb, ram_gb, ranks)
    if gpu_fits:
        lines.append(f"GPU: fits {card}: {card_gb - GPU_OVERHEAD_GB - peak:.1f} GB to spare after "
                     f"~{GPU_OVERHEAD_GB} GB of CUDA overhead")
    else:
        lines.append(f"GPU: does NOT fit {card}: needs {peak:.1f} GB + ~{GPU_OVERHEAD_GB} GB of CUDA overhead")
    need = f"{host:.1f} GB + ~{HOST_OVERHEAD_GB:.0f} GB for the process"
    lines.append(f"CPU RAM: {'fits' if ram_fits else 'does NOT fit'} {ram_gb:.1f} GB ({ram_source}): needs {need}")
    if gpu_fits and ram_fits:
        return "\n".join(lines)
    lines.append("Try, in order:")
    if not gpu_fits:
        lines += [f"  {advice}" for advice in gpu_memory_advice(cfg)]
    if not ram_fits and cfg.optim.offload:
        lines.append(f"  a machine with at least {host + HOST_OVERHEAD_GB:.0f} GB of RAM, or a smaller model "
                     "(offloaded optimizer state needs 12 bytes per parameter of CPU RAM)")
    elif not ram_fits:
        lines.append(f"  a machine with at least {host + HOST_OVERHEAD_GB:.0f} GB of RAM")
    return "\n".join(lines)
