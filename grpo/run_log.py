"""What a run measures and writes as it goes: the seconds of each phase of a step, metrics.jsonl,
samples.jsonl, one console line per step, and TensorBoard / Weights & Biases when asked for
(`train.tensorboard`, `train.wandb`).

Simplification: appends line by line (no buffering); a resumed run first drops the lines of steps
after its checkpoint (grpo/checkpoint.py), so the files always match the checkpointed state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from data.gsm8k import Problem

from .config import Config
from .rollout import Episode


class PhaseTimer:
    """Seconds per phase of one step (generate, reward, logprobs, update, optimizer): the one place
    they are measured. `with timer("update"): ...` adds the block's seconds to that phase.

    On a GPU the work of a phase is queued, not done, when its Python code returns, so each block
    ends with a device sync: one per phase, never one per micro-batch."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type not in ("cpu", "meta"):
                torch.accelerator.synchronize(self.device)
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0


class RunLog:
    def __init__(self, out_dir: Path, cfg: Config):
        self.out_dir, self.cfg = out_dir, cfg
        self.writers: list[Any] = []  # opened by open(), when the run starts

    def open(self) -> None:
        if self.cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writers.append(SummaryWriter(str(self.out_dir / "tensorboard")))
            except ImportError:
                print("train.tensorboard=true but tensorboard is not installed (pip install tensorboard): skipping")
        if self.cfg.train.wandb:
            try:
                import wandb
                self.writers.append(wandb.init(project="qwen-grpo", config=self.cfg.to_dict(), dir=str(self.out_dir)))
            except ImportError:
                print("train.wandb=true but wandb is not installed (pip install wandb): skipping")

    def close(self) -> None:
        for writer in self.writers:
            writer.close() if hasattr(writer, "close") else writer.finish()
        self.writers = []

    def append(self, name: str, record: dict[str, Any]) -> None:
        """One JSON line in out_dir/name; the numbers of metrics.jsonl also go to the external loggers."""
        with open(self.out_dir / name, "a") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if name != "metrics.jsonl":
            return
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        for writer in self.writers:
            if hasattr(writer, "add_scalar"):
                for key, value in scalars.items():
                    writer.add_scalar(key, value, record["step"])
            else:
                writer.log(scalars, step=record["step"])

    def step(self, step: int, metrics: dict[str, float], episodes: list[Episode], problems: list[Problem],
             seconds: float) -> None:
        """The step's metrics line, a few of its completions (this process's), and the console line."""
        m, n_shown = metrics, self.cfg.train.samples_per_step
        self.append("metrics.jsonl", {"step": step, **m, "time_step": seconds})
        for e in episodes[::max(1, len(episodes) // max(1, n_shown))][:n_shown]:
            self.append("samples.jsonl", {"step": step, "question": problems[e.group].question, "answer": e.answer,
                                          "completion": e.text, "reward": e.reward, "finished": e.finished})
        parts = " ".join(f"{k.removeprefix('reward_')} {v:.2f}" for k, v in m.items() if k.startswith("reward_"))
        times = " ".join(f"{k.removeprefix('time_')} {v:.1f}s" for k, v in m.items() if k.startswith("time_"))
        tools = f" | tools {m['tool_calls']:.2f}/episode ({m['tool_errors']:.0%} errors)" if "tool_calls" in m else ""
        print(f"step {step}/{self.cfg.train.steps} | reward {m['reward']:.3f} ({parts}) | acc {m['accuracy']:.3f} "
              f"| len {m['length']:.0f} | trunc {m['truncated']:.2f} | zero-spread {m['zero_spread_groups']}/{m['groups']} "
              f"| loss {m['loss']:.4f} | kl {m['kl']:.4f} | ent {m['entropy']:.3f} | gnorm {m['grad_norm']:.3f} "
              f"| lr {m['lr']:.2e}{tools} | {seconds:.1f}s ({times})", flush=True)


def rollout_metrics(episodes: list[Episode], has_spread: Tensor, group_size: int,
                    total: Callable[[list[float]], list[float]] = list, tools: bool = False) -> dict[str, float]:
    """Means over the step's episodes: sums and counts first (`total` adds them up over ranks),
    then one division, so several ranks log the numbers one process would. `length` counts the
    model's own tokens; with `tools`, also the tool calls per episode and the share that errored."""
    parts = list(episodes[0].score.parts)  # the weighted reward functions, and overlong when on
    sums = {"reward": sum(e.reward for e in episodes),
            **{f"reward_{p}": sum(e.score.parts[p] for e in episodes) for p in parts},
            "accuracy": sum(e.score.correct for e in episodes),
            "length": sum(sum(e.actions) for e in episodes),
            "truncated": sum(not e.finished for e in episodes),
            "entropy": sum(sum(e.entropies) for e in episodes),
            "zero_spread_groups": int((~has_spread).sum()) // group_size}
    if tools:
        sums |= {"tool_calls": sum(e.tool_calls for e in episodes), "tool_errors": sum(e.tool_errors for e in episodes)}
    *totals, n = total([*sums.values(), len(episodes)])
    metrics = {k: v / n for k, v in zip(sums, totals)}
    metrics["entropy"] = metrics["entropy"] / max(metrics["length"], 1e-9)  # per token, not per episode
    metrics["zero_spread_groups"] = int(round(metrics["zero_spread_groups"] * n))
    metrics["groups"] = int(n) // group_size
    if tools:  # the share of calls that the tool answered with an error
        metrics["tool_errors"] = metrics["tool_errors"] / max(metrics["tool_calls"], 1e-9)
    return metrics
