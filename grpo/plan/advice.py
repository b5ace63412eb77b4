"""What to change when a memory plan does not fit: the knobs that lower a step's memory, in the order
they are preferred (`knobs`), each change re-planned (memory.py) and ranked by what it lowers
(`advise`), and how a change reads (`Advice`). Changes are halvings or switches, tried one at a time
and, when no one is enough, combined greedily: not a search for the best combination.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from qwen2 import Qwen2Config

from ..config import Config
from .machine import HOST_OVERHEAD_GB, gpu_overhead_gb
from .memory import (GB, PHASES, Item, compiled_decode, completion_tokens, host_bytes, model_config_for, peak_gpu,
                     phase_totals, plan_memory)


@dataclass
class Advice:
    """A change of the config (one or more --set), and the plan it gives."""

    sets: list[tuple[str, Any]]  # (config key, new value)
    why: str
    peak: int  # the re-planned GPU peak (bytes), or on a CPU run the RAM it needs
    at: str  # the moment of that peak
    before: dict[str, int]  # each moment's bytes, before and after the change
    after: dict[str, int]
    fits: bool | None  # the whole plan fits the card and the RAM (None: no machine to compare with)
    host: int = 0  # CPU RAM the changed plan needs
    notes: list[str] = field(default_factory=list)

    def command(self) -> str:
        return " ".join(f"--set {key}={value_text(value)}" for key, value in self.sets)

    def lowers(self) -> str:
        """Which moments the change lowers, the old peak's first: 'prefill 24.1 -> 13.3 GB, ...'."""
        old_at = max(self.before, key=self.before.get)
        drops = {p: self.before[p] - self.after[p] for p in PHASES if self.after[p] < 0.995 * self.before[p]} or \
            {p: self.before[p] - self.after[p] for p in PHASES if self.after[p] < self.before[p]}
        if not drops:
            return "lowers no moment"
        if len(drops) == len(PHASES) and max(drops.values()) - min(drops.values()) < 0.01 * max(drops.values()):
            return f"every moment -{min(drops.values()) / GB:.2f} GB"
        order = sorted(drops, key=lambda p: (p != old_at, PHASES.index(p)))
        return ", ".join(f"{p} {gb_text(self.before[p])} -> {gb_text(self.after[p])} GB" for p in order[:3])

    def short(self) -> str:
        """For one-line messages: the change and what it lowers."""
        return f"{self.command()} ({self.why}; {self.lowers()})"


def gb_text(nbytes: int) -> str:
    return f"{nbytes / GB:.1f}" if nbytes >= 10 * GB else f"{nbytes / GB:.2f}"


def value_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def knobs(cfg: Config, ranks: int = 1, device: str = "cuda") -> list[tuple[str, Any, str]]:
    """The changes that can lower a step's memory, (config key, new value, what it does), in the order
    they are preferred: first those that leave the training math alone, then a smaller batch, then,
    with LoRA, a 4-bit base (the adapters then train on a quantised copy of it), then shorter
    completions (which change the task)."""
    out: list[tuple[str, Any, str]] = []
    if device != "cpu" and not cfg.optim.offload:
        out.append(("optim.offload", True, "moves master weights and Adam moments to CPU memory"))
    if not cfg.model.activation_checkpointing:
        out.append(("model.activation_checkpointing", True, "recomputes each block in backward"))
    if device != "cpu" and compiled_decode(cfg, device, ranks):
        out.append(("rollout.compile", False, "eager decode: no static KV cache kept through the update"))
    seq = cfg.data.max_prompt_tokens + completion_tokens(cfg)
    if cfg.grpo.shared_prefix and cfg.grpo.micro_batch_tokens // 2 >= seq:
        out.append(("grpo.micro_batch_tokens", cfg.grpo.micro_batch_tokens // 2,
                    "smaller update micro-batches, same gradient"))
    elif not cfg.grpo.shared_prefix and cfg.grpo.micro_batch_size > 1:
        out.append(("grpo.micro_batch_size", cfg.grpo.micro_batch_size // 2, "smaller update micro-batches, same gradient"))
    if cfg.grpo.logprob_chunk >= 128:
        out.append(("grpo.logprob_chunk", cfg.grpo.logprob_chunk // 2, "fewer tokens' logits at once, same result"))
    if cfg.rollout.prompts_per_step // 2 >= ranks:
        out.append(("rollout.prompts_per_step", cfg.rollout.prompts_per_step // 2,
                    "fewer rows per rollout: a smaller batch"))
    if cfg.model.lora.rank and cfg.model.quantize == "none" and ranks == 1 and device != "cpu":
        out.append(("model.quantize", "nf4", "the frozen base in 4 bits (QLoRA): the adapters train on its "
                    "4-bit copy; slower decode"))
    if cfg.rollout.max_new_tokens >= 2:
        out.append(("rollout.max_new_tokens", cfg.rollout.max_new_tokens // 2, "shorter completions: changes the task"))
    return out


def with_sets(cfg: Config, sets: list[tuple[str, Any]]) -> Config:
    """A copy of `cfg` with these values set (keys as for --set)."""
    out = copy.deepcopy(cfg)
    for key, value in sets:
        section, _, name = key.rpartition(".")
        target = out
        for part in section.split("."):
            target = getattr(target, part)
        setattr(target, name, value)
    return out


def advise(cfg: Config, mc: Qwen2Config | None = None, card_gb: float | None = None, ram_gb: float | None = None,
           ranks: int = 1, device: str | None = None, order: str = "fits", margins: bool = True) -> list[Advice]:
    """What to change when the plan does not fit, each change re-planned: only changes that lower the
    plan's peak moment, those after which the plan fits first (in the order `knobs` prefers them),
    then the others, the largest drop of the peak first (`order="drop"`: all of them so). When no one
    change is enough, the last entry combines them (each time the one that lowers the peak most) until
    the plan fits or they run out. `margins`: compare plan + overheads with the card and RAM (as
    --dry-run does), or the bare plan (as the refusal before training does)."""
    mc = mc or model_config_for(cfg)
    device = device or ("cpu" if cfg.model.device == "cpu" else "cuda")
    base = plan_memory(cfg, mc, device=device, ranks=ranks)
    cpu_run = device == "cpu"
    before = phase_totals(base, ram=cpu_run)  # a CPU run's moments: all of its bytes, in RAM

    def need(items: list[Item]) -> int:  # what has to fit: the card's peak, or on a CPU run the RAM
        return host_bytes(items, ranks) if cpu_run else peak_gpu(items)

    def fits(items: list[Item]) -> bool | None:
        if cpu_run:
            if ram_gb is None:
                return None
            return host_bytes(items, ranks) / GB + (HOST_OVERHEAD_GB if margins else 0) <= ram_gb
        if card_gb is None:
            return None
        gpu_ok = peak_gpu(items) / GB + (gpu_overhead_gb(ranks) if margins else 0) <= card_gb
        ram_ok = ram_gb is None or host_bytes(items, ranks) / GB + (HOST_OVERHEAD_GB if margins else 0) <= ram_gb
        return gpu_ok and ram_ok

    def candidates(current: Config, already: list[tuple[str, Any]], now: int) -> list[Advice]:
        out = []
        for key, value, why in knobs(current, ranks, device):
            sets = [s for s in already if s[0] != key] + [(key, value)]  # halving a knob again replaces it
            items = plan_memory(with_sets(cfg, sets), mc, device=device, ranks=ranks)
            # Only what lowers what has to fit: by 0.5% at least, or at all when ranking by the drop
            # (after an out-of-memory error, where the plan was evidently short).
            if need(items) > (now if order == "drop" else 0.995 * now) or need(items) == now:
                continue
            after = phase_totals(items, ram=cpu_run)
            a = Advice(sets, why, need(items), max(after, key=after.get), before, after, fits(items),
                       host_bytes(items, ranks))
            if key == "optim.offload" and ram_gb is not None and a.host / GB + HOST_OVERHEAD_GB > ram_gb:
                a.notes.append(f"CPU RAM then {a.host / GB:.1f} GB + ~{HOST_OVERHEAD_GB:.0f}: more than {ram_gb:.0f}")
            out.append(a)
        return out

    def ranked(options: list[Advice]) -> list[Advice]:
        if order == "drop":
            return sorted(options, key=lambda a: a.peak)
        # Those that fit, in the order knobs prefers them; then the others, the largest drop first
        # (shorter completions last: they change the task).
        return [a for a in options if a.fits] + sorted(
            (a for a in options if not a.fits), key=lambda a: (a.sets[-1][0] == "rollout.max_new_tokens", a.peak))

    single = ranked(candidates(cfg, [], need(base)))
    if any(a.fits for a in single) or fits(base) is None or not single:
        return single
    # No one change is enough: combine them, each time the first one ranked, until the plan fits or
    # they run out; the combination comes first, since it is what to do.
    chosen, now = single[0], single[0].peak
    while not chosen.fits:
        options = ranked(candidates(with_sets(cfg, chosen.sets), chosen.sets, now))
        if not options:
            break
        chosen, now = options[0], options[0].peak
    if len(chosen.sets) < 2:
        return single
    chosen.why = "together"
    return [chosen] + single if chosen.fits else single + [chosen]  # a combination that fits is the answer


def gpu_memory_advice(cfg: Config) -> list[str]:
    """What to change, in order, when a config needs more GPU memory than the card has, without a plan
    to rank the changes by (the model's shapes unknown): every change that can lower it."""
    return [f"--set {key}={value_text(value)} ({why})" for key, value, why in knobs(cfg)]
