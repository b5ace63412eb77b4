"""grpo/eval_stats.py: pass@k against counting subsets, the interval's formula and coverage, the
per-field breakdown against the report of each subset."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from grpo.eval_stats import (Estimate, breakdown, by_question, default_ks, format_breakdown, format_report,
                             mean_interval, pass_at_k, report)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_pass_at_k_is_the_share_of_k_subsets_holding_a_right_answer(n):
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            counted = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(counted, abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_large_n_does_not_overflow_and_bad_counts_are_refused():
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert 0 < pass_at_k(1000, 3, 500) < 1
    for bad in [(4, 5, 1), (4, 2, 0), (4, 2, 5), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_the_interval_is_the_normal_one_over_questions():
    values = [0.0, 0.25, 1.0, 0.5, 0.75, 0.5, 0.0, 1.0]
    e = mean_interval(values)
    half = 1.959964 * statistics.stdev(values) / math.sqrt(len(values))
    assert e.value == pytest.approx(statistics.mean(values))
    assert (e.low, e.high) == pytest.approx((e.value - half, e.value + half))
    assert e.questions == 8
    clipped = mean_interval([1.0] * 9 + [0.0])
    assert clipped.high == 1.0 and clipped.low > 0.5
    assert mean_interval([0.5, 0.5]).low == mean_interval([0.5, 0.5]).high == 0.5  # no spread: zero width


def test_the_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    rng = random.Random(0)
    trials, covered = 400, 0
    for _ in range(trials):
        difficulty = [rng.random() for _ in range(200)]  # each question's own chance of a right sample
        per_question = [[rng.random() < p for _ in range(4)] for p in difficulty]
        e = report(per_question)["mean@4"]
        covered += e.low <= 0.5 <= e.high  # the questions' chances are uniform: the truth is 0.5
    assert 0.92 <= covered / trials <= 0.98


def test_report_mean_and_pass_at_k():
    per_question = [[True, False, False, False], [False] * 4, [True] * 4, [False, True, True, False]]
    stats = report(per_question)
    assert list(stats) == ["mean@4", "pass@1", "pass@2", "pass@4"]
    assert stats["mean@4"].value == pytest.approx(7 / 16) == stats["pass@1"].value
    assert stats["pass@4"].value == pytest.approx(3 / 4)
    assert stats["pass@2"].value == pytest.approx((0.5 + 0 + 1 + 5 / 6) / 4)
    assert default_ks(8) == [1, 2, 4, 8] and default_ks(6) == [1, 2, 4, 6] and default_ks(1) == [1]
    with pytest.raises(ValueError, match="same number"):
        report([[True], [True, False]])


def test_results_group_by_question_and_break_down_by_field():
    rows = [("a", "Algebra", 1, [1, 1]), ("b", "Algebra", 2, [0, 1]), ("c", "Geometry", 10, [0, 0]),
            ("d", "Geometry", 2, [1, 0])]
    results = [dict(question=q, subject=s, level=lv, correct=bool(c)) for q, s, lv, cs in rows for c in cs]
    groups = by_question(results, 2)
    per_question = [[r["correct"] for r in g] for g in groups]
    fields = [g[0] for g in groups]
    tables = breakdown(per_question, fields)
    assert list(tables) == ["subject", "level"] and list(tables["level"]) == ["1", "2", "10"]  # numbers in order
    assert tables["subject"]["Algebra"] == report(per_question[:2])
    assert tables["level"]["2"]["mean@2"].value == pytest.approx(0.5) and tables["level"]["2"]["mean@2"].questions == 2
    assert breakdown(per_question, [{}] * 4) == {}  # a set without subject/level: no breakdown
    lines = format_breakdown(tables)
    assert len(lines) == 5 and lines[0].startswith("subject Algebra  (   2 questions): mean@2 0.7500")
    assert "pass@2" in format_report(report(per_question)) and "pass@1 " not in format_report(report(per_question))
    with pytest.raises(ValueError, match="whole groups"):
        by_question(results[:-1], 2)


def test_estimate_prints_value_and_interval():
    assert str(Estimate(0.5, 0.25, 0.75, 4)) == "0.5000 [0.2500, 0.7500]"
