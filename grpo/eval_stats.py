"""What an evaluation with k samples per question reports: mean@k, unbiased pass@k, a 95% interval
for each, and the same by subject or level.

    per_question = [[True, False, True, True], [False, False, False, False], ...]   # k = 4 samples each
    report(per_question)        -> {"mean@4": Estimate(0.375, 0.12, 0.63, 2), "pass@1": ..., "pass@4": ...}
    breakdown(per_question, fields, ("subject", "level"))  -> {"subject": {"Algebra": {...}, ...}, ...}

mean@k is the share of right answers among all k samples of all questions: the expected accuracy of
one sample of the sampling policy (what GRPO maximises). pass@k is the chance that at least one of k
samples is right. With n samples of a question of which c are right, Chen et al. (2021, "Evaluating
Large Language Models Trained on Code", eq. 1) estimate it without bias for any k <= n as

    pass@k = 1 - C(n - c, k) / C(n, k)        (the chance that k of the n, drawn without replacement,
                                               are all wrong, taken from 1)

computed as a product so no binomial overflows: C(n-c, k)/C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i).
pass@1 is then c/n, the mean. Reading only "any of the n right" (pass@n) is the special case k = n.

The interval: questions are the random unit (the benchmark is a sample of questions; the k samples
of one question are not independent of each other), so each statistic is the mean of one value per
question v_q, and its 95% interval is the normal one over questions,

    mean +- 1.96 * s / sqrt(Q),    s^2 = sum_q (v_q - mean)^2 / (Q - 1),

clipped to [0, 1]. Deterministic (no resampling seed) and what the central limit theorem gives for
the tens to thousands of questions of MATH-500, AMC23 (40) or AIME (30); with 30 questions it is
rough, and when every question scores the same it has zero width: read it as a scale of the
noise, not an exact coverage.

Simplifications: every question has the same number of samples; no majority voting (maj@k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

Z95 = 1.959964  # the standard normal's 97.5% quantile: two-sided 95%


@dataclass(frozen=True)
class Estimate:
    """A statistic over questions: its value, its 95% interval and how many questions it rests on."""

    value: float
    low: float
    high: float
    questions: int

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al.'s unbiased pass@k of one question with `c` right answers among `n` samples."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # fewer than k wrong samples: every draw of k holds a right one
    all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i  # C(n-c, k) / C(n, k) as a product of c factors
    return 1.0 - all_wrong


def mean_interval(values: Sequence[float], z: float = Z95) -> Estimate:
    """The mean of one value per question and its normal interval over questions (module docstring)."""
    q = len(values)
    if q == 0:
        raise ValueError("no questions to average")
    mean = sum(values) / q
    if q == 1:
        return Estimate(mean, 0.0, 1.0, 1)  # one question says nothing about the spread
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (q - 1))
    half = z * s / math.sqrt(q)
    return Estimate(mean, max(0.0, mean - half), min(1.0, mean + half), q)


def default_ks(samples: int) -> list[int]:
    """1, 2, 4, ... up to `samples`, and `samples` itself: the pass@k a report shows."""
    ks, k = [], 1
    while k < samples:
        ks.append(k)
        k *= 2
    return ks + [samples]


def report(per_question: Sequence[Sequence[bool]], ks: Sequence[int] | None = None) -> dict[str, Estimate]:
    """mean@n and pass@k for each k (default `default_ks`), with intervals; n samples per question."""
    if not per_question:
        raise ValueError("no questions to report on")
    n = len(per_question[0])
    if n < 1 or any(len(s) != n for s in per_question):
        raise ValueError(f"every question needs the same number (>= 1) of samples, got {sorted({len(s) for s in per_question})}")
    right = [sum(map(bool, s)) for s in per_question]
    out = {f"mean@{n}": mean_interval([c / n for c in right])}
    for k in default_ks(n) if ks is None else ks:
        out[f"pass@{k}"] = mean_interval([pass_at_k(n, c, k) for c in right])
    return out


def by_question(results: Sequence[dict[str, Any]], samples: int) -> list[list[dict[str, Any]]]:
    """Per-completion results (scripts/eval.py, grpo/evaluate.py: each question's `samples` in a row)
    grouped into one list per question."""
    if samples < 1 or len(results) % samples:
        raise ValueError(f"{len(results)} results are not whole groups of {samples} samples")
    groups = [list(results[i:i + samples]) for i in range(0, len(results), samples)]
    for g in groups:
        if any(r["question"] != g[0]["question"] for r in g):
            raise AssertionError("results of one question are not consecutive")  # our bug, not the user's
    return groups


def breakdown(per_question: Sequence[Sequence[bool]], fields: Sequence[dict[str, Any]],
              keys: Sequence[str] = ("subject", "level"), ks: Sequence[int] | None = None,
              ) -> dict[str, dict[str, dict[str, Estimate]]]:
    """`report` for each value of each field in `keys` that the rows have ({key: {value: report}}),
    values in sorted order; keys no row has are left out."""
    out: dict[str, dict[str, dict[str, Estimate]]] = {}
    for key in keys:
        groups: dict[str, list[Sequence[bool]]] = {}
        for samples, row in zip(per_question, fields):
            if key in row and row[key] is not None:
                groups.setdefault(str(row[key]), []).append(samples)
        if groups:
            out[key] = {value: report(groups[value], ks) for value in sorted(groups, key=_natural)}
    return out


def _natural(value: str) -> tuple:
    """Sort 'Level 2' before 'Level 10' and 2 before 10: numbers inside compare as numbers."""
    digits = "".join(c if c.isdigit() else " " for c in value).split()
    return (value.rstrip("0123456789 "), int(digits[-1]) if digits else -1, value)


def format_report(stats: dict[str, Estimate], label: str = "") -> str:
    """One line: 'mean@8 0.4123 [0.3800, 0.4446] | pass@2 ... | pass@8 ...' (pass@1 is mean@k: left out)."""
    return label + " | ".join(f"{name} {e}" for name, e in stats.items() if name != "pass@1")


def format_breakdown(tables: dict[str, dict[str, dict[str, Estimate]]], ks_shown: int = 1) -> list[str]:
    """Lines of the per-field tables: 'subject Algebra (124 questions): mean@8 ... | pass@8 ...'."""
    lines = []
    for key, values in tables.items():
        width = max(len(v) for v in values)
        for value, stats in values.items():
            keep = dict(list(stats.items())[:1] + list(stats.items())[-ks_shown:])  # mean@k and the largest k
            q = next(iter(stats.values())).questions
            lines.append(format_report(keep, f"{key} {value:<{width}} ({q:>4} questions): "))
    return lines
