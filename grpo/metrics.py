"""The numbers of a step, one line of metrics.jsonl: what its rollout measured (averaged so that
several ranks log exactly what one process would: sums and counts over ranks first, then one
division), what its update measured, and the seconds of each phase."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor

from data.gsm8k import Problem
from qwen2.static_decode import STATS as COMPILE_STATS

from .rollout import Episode
from .stuck import same_reward_groups

SAME_REWARD = ("zero_spread_right", "zero_spread_wrong", "zero_spread_mixed")


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
            "zero_spread_groups": int((~has_spread).sum()) // group_size,
            # of the groups with one reward for all G samples: all right, all wrong, both (grpo/stuck.py)
            **dict(zip(SAME_REWARD, same_reward_groups(episodes, group_size)))}
    if tools:
        sums |= {"tool_calls": sum(e.tool_calls for e in episodes), "tool_errors": sum(e.tool_errors for e in episodes)}
    *totals, n = total([*sums.values(), len(episodes)])
    metrics = {k: v / n for k, v in zip(sums, totals)}
    metrics["entropy"] = metrics["entropy"] / max(metrics["length"], 1e-9)  # per token, not per episode
    for count in ("zero_spread_groups", *SAME_REWARD):  # counts over the step, not means
        metrics[count] = int(round(metrics[count] * n))
    metrics["groups"] = int(n) // group_size
    if tools:  # the share of calls that the tool answered with an error
        metrics["tool_errors"] = metrics["tool_errors"] / max(metrics["tool_calls"], 1e-9)
    return metrics


@dataclass
class UpdateStats:
    """What the update of one step measured; per-token numbers average over all its completion tokens."""

    loss: float = 0.0  # the full-batch loss: the sum of the micro-batch losses (mean over mu passes)
    kl: float = 0.0  # k3 KL to the reference model (beta > 0)
    clip_frac: float = 0.0  # share of tokens whose gradient the PPO clip zeroed
    grad_norm: float = 0.0  # gradient norm before clipping (mean over mu passes)


@dataclass
class UpdateResult:
    stats: UpdateStats = field(default_factory=UpdateStats)
    skipped: bool = False  # a non-finite loss or gradient norm: the optimizer step was not applied
    tis: dict[str, float] = field(default_factory=dict)  # sampler/trainer ratio (grpo.old_logprobs: sampler)


SAMPLE_KEYS = ("step", "question", "answer", "completion", "reward", "finished")  # a line of samples.jsonl: ours


@dataclass
class StepResult:
    metrics: dict[str, float]  # one line of metrics.jsonl (without the step number)
    episodes: list[Episode]  # all N x G scored completions
    problems: list[Problem]  # the N questions, indexed by Episode.group

    def samples(self) -> list[dict]:
        """Each episode as a line of samples.jsonl."""
        return [{**{k: v for k, v in self.problems[e.group].fields.items() if k not in SAMPLE_KEYS},  # the row's
                 "question": self.problems[e.group].question, "answer": e.answer, "completion": e.text,  # own, then
                 "reward": e.reward, "finished": e.finished} for e in self.episodes]  # ours (never the step's number)


def step_metrics(cfg: Any, total: Callable[[list[float]], list[float]], episodes: list[Episode],
                 problems: list[Problem], has_spread: Tensor, keep: list[int], rounds: int, trained: int,
                 nonfinite: int, update: UpdateResult, tokens: list[int], *, lr: float, compiled: bool,
                 seconds: dict[str, float]) -> dict[str, float]:
    """The step's line of metrics.jsonl (`total` sums over ranks): rollout means, the update's
    statistics, the batch's token counts, dynamic sampling's rounds, compile counts and timings."""
    metrics = rollout_metrics(episodes, has_spread, cfg.rollout.group_size, total, tools=bool(cfg.rollout.tools))
    metrics["lr"] = lr
    metrics.update(asdict(update.stats))
    metrics["trained_episodes"] = trained
    metrics["skipped_nonfinite"] = int(update.skipped or nonfinite > 0)
    if trained:
        # Tokens one forward pass over the batch pushes through the model, and what the padded
        # layout (one [left-padded prompt | completion] row per episode) would push.
        metrics["update_tokens"], metrics["padded_tokens"] = map(int, total(tokens))
        metrics.update(update.tis)
    if cfg.rollout.dynamic_sampling:
        sampled, kept = total([len(problems), len({episodes[i].group for i in keep})])
        metrics.update(questions_sampled=int(sampled), groups_kept=int(kept), sampling_rounds=rounds)
    if compiled:  # so far in this process: a count that keeps rising is a decode step that recompiles
        metrics.update(decode_compiles=COMPILE_STATS.compiles, decode_compile_seconds=COMPILE_STATS.seconds,
                       decode_cache_allocations=COMPILE_STATS.allocations, decode_graph_recordings=COMPILE_STATS.recordings)
    metrics.update({f"time_{phase}": s for phase, s in seconds.items()})
    return metrics
