"""What the memory planner tells a person: the plan as a table with its verdict against the card and
the RAM and the changes to try (`format_plan`, for --dry-run), and train.py's one-line messages: the
refusal before anything is allocated (`check_fits`) and the advice after a CUDA out-of-memory error
(`out_of_memory_message`). The bytes come from memory.py, the margins from machine.py, the changes
from advice.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qwen2 import Qwen2Config
from qwen2.errors import InputError

from ..config import Config
from .advice import advise, gpu_memory_advice
from .machine import (GPU_OVERHEAD_GB, HOST_OVERHEAD_GB, NCCL_OVERHEAD_GB, gpu_overhead_gb, host_ram_gb, machine_gb,
                      plan_fits, usable_gpu_bytes)
from .memory import (GB, PHASES, Item, completion_tokens, host_bytes, model_config_for, on_cpu, peak_gpu, peak_phase,
                     phase_totals, plan_memory)


PLAN_NOTE = ("These figures are a plan (tensor sizes counted from the config and the model's shapes), not a "
             "measurement{}: --trace runs the step's peak phases on the meta device to check them{}.")


def format_plan(items: list[Item], cfg: Config, card_gb: float | None = None, ram_gb: float | None = None,
                ranks: int = 1) -> str:
    """The plan as a table, then whether it fits the card (`card_gb`, default: the visible GPU, else
    24) and this machine's RAM (`ram_gb`, default: its physical memory), and what to try if not: the
    changes that lower the peak moment, each re-planned. A CPU run (model.device cpu) is planned in
    RAM alone, with no card."""
    gpu_here = torch.cuda.is_available()
    ram_source = "this machine; --ram-gb sets it" if ram_gb is None else "--ram-gb"
    card_gb, ram_gb = machine_gb(card_gb, ram_gb)
    mc = model_config_for(cfg)
    cpu_run = on_cpu(items)
    per = f", per rank of {ranks} (torchrun)" if ranks > 1 else ""
    where = ", on the CPU (model.device cpu): every tensor in RAM" if cpu_run else ""
    lines = [f"memory plan: {Path(cfg.model.path).name} ({mc.num_params / 1e9:.2f}B params, {cfg.model.dtype}), "
             f"optim.offload={str(cfg.optim.offload).lower()}{per}{where}"]
    totals = phase_totals(items)
    peak, at = peak_gpu(items) / GB, peak_phase(items)
    host = sum(i.cpu for i in items) * ranks / GB  # all ranks share the machine's RAM
    if cpu_run:
        lines.append(f"{'':64s} {'RAM GB':>8s}")
        for i in items:
            when = "" if i.phases == PHASES else f"  [{', '.join(i.phases)}]"
            lines.append(f"  {i.name:62s} {(i.gpu + i.cpu) / GB:8.2f}{when}")
        ram_totals = phase_totals(items, ram=True)
        ram_at = max(ram_totals, key=ram_totals.get)
        lines.append(f"  {'peak (at ' + ram_at + ')':62s} {ram_totals[ram_at] / GB:8.2f}")
        lines.append("  at each moment: " + ", ".join(f"{p} {v / GB:.2f}" for p, v in ram_totals.items()))
    else:
        lines.append(f"{'':64s} {'GPU GB':>8s} {'CPU GB':>8s}")
        for i in items:
            when = "" if i.phases == PHASES else f"  [{', '.join(i.phases)}]"
            lines.append(f"  {i.name:62s} {i.gpu / GB:8.2f} {i.cpu / GB:8.2f}{when}")
        lines.append(f"  {'GPU peak (at ' + at + ')':62s} {peak:8.2f} {'':>8s}")
        lines.append(f"  {'CPU RAM' + (' (this rank)' if ranks > 1 else ''):62s} {'':>8s} {host / ranks:8.2f}")
        lines.append("  GPU at each moment: " + ", ".join(f"{p} {v / GB:.2f}" for p, v in totals.items()))

    gpu_fits, ram_fits = plan_fits(items, card_gb, ram_gb, ranks)
    overhead = gpu_overhead_gb(ranks)
    what = f"~{GPU_OVERHEAD_GB} GB of CUDA overhead" + (f" + ~{NCCL_OVERHEAD_GB} GB of NCCL buffers" if ranks > 1 else "")
    if not cpu_run:
        card = f"a card of {card_gb:.0f} GB" + ("" if gpu_here else " (no GPU here; --card-gb sets the size)")
        if gpu_fits:
            lines.append(f"GPU: fits {card}: {card_gb - overhead - peak:.1f} GB to spare after {what}")
        else:
            lines.append(f"GPU: does NOT fit {card}: needs {peak:.1f} GB (at {at}) + {what}")
    need = host_bytes(items, ranks) / GB
    lines.append(f"CPU RAM: {'fits' if ram_fits else 'does NOT fit'} {ram_gb:.1f} GB ({ram_source}): needs {need:.1f} GB "
                 f"+ ~{HOST_OVERHEAD_GB:.0f} GB for the process")
    if not (gpu_fits and ram_fits):
        lines.append("Try, in order (each change re-planned):")
        # RAM that is short already is its own line below (no knob of the card's plan lowers it): the
        # card's advice is then judged on the card alone, and not called unfit for the RAM.
        advice = advise(cfg, mc, card_gb=card_gb, ram_gb=ram_gb if ram_fits or cpu_run else None, ranks=ranks,
                        device=items[0].device) if not gpu_fits or cpu_run else []
        for n, a in enumerate(advice):
            if n == 1 and advice[0].why == "together":
                lines.append("  one change alone does not fit:")
            elif a.why == "together" and n:
                lines.append("  combined:")
            verdict = {True: "fits", False: "does NOT fit", None: ""}[a.fits]
            peak_text = (f"needs {a.peak / GB:.1f} GB of RAM (at {a.at})" if cpu_run
                         else f"peak {a.peak / GB:.1f} GB at {a.at}")
            note = f" ({'; '.join(a.notes)})" if a.notes else ""
            label = "together" if a.why == "together" else a.why
            lines.append(f"  {a.command()} ({label}): {a.lowers()}; {peak_text}{note}: {verdict}")
        if not ram_fits and cfg.optim.offload and not cpu_run:
            lines.append(f"  a machine with at least {need + HOST_OVERHEAD_GB:.0f} GB of RAM, or a smaller model "
                         "(offloaded optimizer state needs 12 bytes per parameter of CPU RAM)")
        elif not ram_fits:
            lines.append(f"  a machine with at least {need + HOST_OVERHEAD_GB:.0f} GB of RAM")
        if not gpu_fits and not any(a.fits for a in advice):
            lines.append(f"  no change above fits {card_gb:.0f} GB: a larger card, or several GPUs (torchrun; "
                         "--dry-run --ranks N plans per GPU)")
    lines.append(PLAN_NOTE.format("" if cpu_run else " on a GPU",
                                  "" if cpu_run else ", and scripts/gpu_check.py measures on a GPU"))
    return "\n".join(lines)


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
    where = "cuda" if on_gpu else "cpu"
    items = plan_memory(cfg, mc, device=where, ranks=ranks)
    checks = []
    if on_gpu:  # the card's whole memory, a per-process cap aside (bench_step.py's --cap-gb then runs into
        # the out-of-memory error it checks, rather than this refusal)
        checks.append((peak_gpu(items), torch.cuda.get_device_properties(device).total_memory, "GPU memory"))
    ram = host_ram_gb() * GB
    checks.append((host_bytes(items, ranks), ram, "RAM"))
    for need, have, what in checks:
        if need > have:
            big = max(items, key=lambda i: i.gpu if what == "GPU memory" else i.gpu + i.cpu)
            card = have / GB if what == "GPU memory" else None
            advice = advise(cfg, mc, card_gb=card, ram_gb=ram / GB, ranks=ranks, device=where, margins=False)
            raise InputError(f"this run needs about {need / GB:.1f} GB of {what} at its peak ({peak_phase(items)}; the "
                             f"largest part: {big.name}), more than the {have / GB:.1f} GB here: try "
                             + "; or ".join(a.short() for a in advice[:3])
                             + " (python train.py --dry-run shows the whole plan)")


def out_of_memory_message(cfg: Config, step: int) -> str:
    """One line for a CUDA out-of-memory error during training: what ran out (of the memory this
    process may use: a per-process cap, if any, not the card's whole memory) and what to try, the
    changes that lower the plan's peak most first."""
    detail, card = "", None
    if torch.cuda.is_available():
        usable, total = usable_gpu_bytes()
        card = usable / GB
        cap = "" if usable >= total else f", a cap on the card's {total / GB:.1f} GB"
        detail = (f" (peak {torch.cuda.max_memory_allocated() / GB:.1f} GB allocated of the {card:.1f} GB this "
                  f"process may use{cap})")
    try:
        ranks = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        # Ranked on the GPU's plan, whatever model.device says: only a GPU runs out of memory this way.
        # The four largest drops, and offloading the optimizer whenever it is off: the plan fell short of
        # what ran, and offload lowers every moment, the unplanned one too.
        ranked = advise(cfg, card_gb=card, ranks=ranks, device="cuda", order="drop")
        chosen = ranked[:4] + [a for a in ranked[4:] if a.sets[-1][0] == "optim.offload"]
        advice = [a.short() for a in chosen]
    except Exception:  # no plan (a model without config.json): the changes unranked
        advice = gpu_memory_advice(cfg)
    return (f"out of GPU memory in step {step + 1}{detail}: try " + "; or ".join(advice or gpu_memory_advice(cfg))
            + f". python train.py --dry-run shows the plan; a run continues from its last checkpoint with "
            f"--resume {cfg.train.out_dir}")
