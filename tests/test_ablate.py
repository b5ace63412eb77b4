"""scripts/ablate.py's statistics on fixed numbers: intervals over seeds, paired differences, seeds needed."""

import math

import pytest

from ablate import mean_ci, paired, seeds_needed, t95


def test_mean_and_95_interval_of_three_seeds_by_hand():
    # mean 2, sample std 1, n = 3: half-width t(2) x 1 / sqrt(3) = 4.303 / 1.732 = 2.484
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 / math.sqrt(3), rel=1e-6)
    assert mean_ci([0.5])[1] == math.inf  # one seed: no interval


def test_t_quantiles_and_their_large_sample_limit():
    assert t95(1) == 12.706 and t95(4) == 2.776 and t95(22) == 2.086 and t95(100) == 1.96


def test_paired_difference_marks_only_intervals_that_exclude_zero():
    base = [0.10, 0.20, 0.30]
    # Always +5 points above its own seed's baseline: std 0, so the interval is +5.0 ± 0.0 and excludes 0.
    assert paired([0.15, 0.25, 0.35], base) == "+5.0 ± 0.0 *"
    # Differences +10, -10, +3 points: mean +1.0, std 10.15 -> 4.303 x 10.15 / sqrt(3) = ± 25.2: includes 0.
    assert paired([0.20, 0.10, 0.33], base) == "+1.0 ± 25.2"


def test_seeds_needed_for_a_difference():
    # sd = difference: (t(n - 1) + 0.84) / sqrt(n) <= 1 first holds at n = 10 (t(9) = 2.262: 3.102 <= 3.162;
    # at n = 9, 2.306 + 0.84 = 3.146 > 3). Half the difference: n = 32 (t(31) ~ 1.96: 2.80 <= 2.83).
    assert seeds_needed(0.05, 0.05) == 10 and seeds_needed(0.05, 0.025) == 32
    assert seeds_needed(0.001, 0.10) == 2  # never fewer than two
