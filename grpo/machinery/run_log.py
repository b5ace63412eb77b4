"""What a run measures and writes as it goes: the seconds of each phase of a step, metrics.jsonl,
samples.jsonl, one console line per step, and TensorBoard / Weights & Biases when asked for
(`train.tensorboard`, `train.wandb`).

Simplification: appends line by line (no buffering); a resumed run first drops the lines of steps
after its checkpoint (grpo/machinery/checkpoint.py), so the files always match the checkpointed state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch



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
    """The run's logs in `out_dir`; `config` (a dict) goes to W&B, `steps` into the console line."""

    def __init__(self, out_dir: Path, config: dict[str, Any], steps: int, samples_per_step: int,
                 tensorboard: bool = False, wandb: bool = False):
        self.out_dir, self.config, self.steps, self.samples_per_step = out_dir, config, steps, samples_per_step
        self.tensorboard, self.wandb = tensorboard, wandb
        self.writers: list[Any] = []  # opened by open(), when the run starts

    def open(self) -> None:
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writers.append(SummaryWriter(str(self.out_dir / "tensorboard")))
            except ImportError:
                print("train.tensorboard=true but tensorboard is not installed (pip install tensorboard): skipping")
        if self.wandb:
            try:
                import wandb
                self.writers.append(wandb.init(project="qwen-grpo", config=self.config, dir=str(self.out_dir)))
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

    def step(self, step: int, metrics: dict[str, float], samples: Sequence[dict[str, Any]], seconds: float) -> None:
        """The step's metrics line, a few of its `samples` (this process's, spread over them), and the console line."""
        m, n_shown = metrics, self.samples_per_step
        self.append("metrics.jsonl", {"step": step, **m, "time_step": seconds})
        for sample in samples[::max(1, len(samples) // max(1, n_shown))][:n_shown]:
            self.append("samples.jsonl", {"step": step, **sample})
        parts = " ".join(f"{k.removeprefix('reward_')} {v:.2f}" for k, v in m.items() if k.startswith("reward_"))
        times = " ".join(f"{k.removeprefix('time_')} {v:.1f}s" for k, v in m.items() if k.startswith("time_"))
        tools = f" | tools {m['tool_calls']:.2f}/episode ({m['tool_errors']:.0%} errors)" if "tool_calls" in m else ""
        print(f"step {step}/{self.steps} | reward {m['reward']:.3f} ({parts}) | acc {m['accuracy']:.3f} "
              f"| len {m['length']:.0f} | trunc {m['truncated']:.2f} | zero-spread {m['zero_spread_groups']}/{m['groups']} "
              f"| loss {m['loss']:.4f} | kl {m['kl']:.4f} | ent {m['entropy']:.3f} | gnorm {m['grad_norm']:.3f} "
              f"| lr {m['lr']:.2e}{tools} | {seconds:.1f}s ({times})", flush=True)
