"""scripts/ablate.py's statistics on fixed numbers: intervals over seeds, paired differences, seeds needed."""

import math

import pytest

from ablate import mean_ci, paired, seeds_advice, seeds_needed, t95, table


def test_mean_and_95_interval_of_three_seeds_by_hand():
    # mean 2, sample std 1, n = 3: half-width t(2) x 1 / sqrt(3) = 4.303 / 1.732 = 2.484
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 / math.sqrt(3), rel=1e-6)
    assert mean_ci([0.5])[1] == math.inf  # one seed: no interval


def test_t_quantiles_between_table_rows_and_their_large_sample_limit():
    assert t95(1) == 12.706 and t95(4) == 2.776 and t95(22) == 2.074
    # Beyond 30, linear in 1/df between rows: t(31) = 2.0395, t(100) = 1.984, t(1000) = 1.9623 (exact values).
    assert t95(31) == pytest.approx(2.0395, abs=5e-4) and t95(100) == pytest.approx(1.984, abs=5e-4)
    assert t95(1000) == pytest.approx(1.9623, abs=5e-4) and t95(10**9) == pytest.approx(1.96, abs=1e-6)


def test_paired_difference_marks_only_intervals_that_exclude_zero():
    base = [0.10, 0.20, 0.30]
    # Always +5 points above its own seed's baseline: std 0, so the interval is +5.0 ± 0.0 and excludes 0.
    assert paired([0.15, 0.25, 0.35], base) == "+5.0 ± 0.0 *"
    # Differences +10, -10, +3 points: mean +1.0, std 10.15 -> 4.303 x 10.15 / sqrt(3) = ± 25.2: includes 0.
    assert paired([0.20, 0.10, 0.33], base) == "+1.0 ± 25.2"


def test_seeds_needed_for_a_difference():
    # sd = difference: (t(n - 1) + 0.84) / sqrt(n) <= 1 first holds at n = 10 (t(9) = 2.262: 3.102 <= 3.162;
    # at n = 9, 2.306 + 0.84 = 3.146 > 3). Half the difference: n = 34 (t(33) = 2.035: 2.875 <= 2.915;
    # at n = 33, t(32) = 2.037: 2.877 > 2.872).
    assert seeds_needed(0.05, 0.05) == 10 and seeds_needed(0.05, 0.025) == 34
    assert seeds_needed(0.001, 0.10) == 2  # never fewer than two


def test_each_variant_is_read_against_its_reference_and_chance_stars_are_counted():
    def runs(changes):  # per seed: SFT start 0.2, after = start + change (sampled and greedy alike)
        return [{"before": {"accuracy": 0.2, "sampled": {"accuracy": 0.2}},
                 "after": {"accuracy": 0.2 + c, "sampled": {"accuracy": 0.2 + c}}, "seconds": {"grpo": 1.0}}
                for c in changes]
    table_runs = {"baseline": runs([0.10, 0.12, 0.14]), "mu2": runs([0.15, 0.17, 0.19]),
                  "gspo": runs([0.15, 0.17, 0.19]), "overlong": runs([0.10, 0.12, 0.14])}
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table(table_runs).splitlines()[2:]}
    assert rows["mu2"][3] == "+5.0 ± 0.0 *" and rows["mu2"][6] == "baseline"
    assert rows["gspo"][3] == "+0.0 ± 0.0" and rows["gspo"][6] == "mu2"  # the same as mu2: no difference
    assert rows["overlong"][3] == "+0.0 ± 0.0" and rows["baseline"][3] == ""
    assert "6 paired intervals, about 26% odds" in seeds_advice(table_runs)  # 1 - 0.95^6