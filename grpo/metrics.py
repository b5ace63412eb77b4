"""The numbers of a step: what its rollout measured, averaged so that several ranks log exactly
what one process would (sums and counts over ranks first, then one division)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .rollout import Episode


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
