"""Group advantages against hand-computed values."""

import math

import pytest
import torch

from grpo.advantages import group_advantages


def test_two_groups_of_two_with_std():
    # Group [1, 0]: mean 0.5, unbiased std = sqrt((0.25 + 0.25) / 1) = sqrt(0.5) = 0.70711
    # -> A = +-0.5 / (0.70711 + 1e-4) = +-0.70700
    adv, ok = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), group_size=2)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([a, -a, a, -a]))
    assert ok.tolist() == [True] * 4


def test_without_std_is_centred_reward():
    # Dr. GRPO: A = r - mean. [1, 0] -> [0.5, -0.5]; [1, 0, 0, 0] -> [0.75, -0.25 x 3]
    adv, _ = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 2, scale="none")
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.5, -0.5]))
    adv, _ = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, scale="none")
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_group_of_four_with_std():
    # [1, 0, 0, 0]: mean 0.25, deviations [0.75, -0.25, -0.25, -0.25]
    # unbiased var = (0.5625 + 3 * 0.0625) / 3 = 0.25 -> std 0.5
    # A = [0.75, -0.25, ...] / 0.5001 ~ [1.4997, -0.4999, ...]
    adv, ok = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25]) / 0.5001
    torch.testing.assert_close(adv, expected)
    assert ok.all()


def test_zero_spread_groups_are_zero_and_flagged():
    # groups: [1, 1] (all right), [0, 1] (mixed), [0, 0] (all wrong), [0.3, 0.3]
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.3, 0.3])
    for scale in (True, False):
        adv, ok = group_advantages(rewards, 2, scale="group" if scale else "none")
        assert ok.tolist() == [False, False, True, True, False, False, False, False]
        assert adv[~ok].eq(0).all()
        assert adv[2] < 0 < adv[3]
        assert int((~ok).sum()) // 2 == 3  # three groups dropped


def test_mean_zero_within_each_group():
    torch.manual_seed(0)
    adv, _ = group_advantages(torch.rand(5 * 8), 8)
    torch.testing.assert_close(adv.view(5, 8).mean(1), torch.zeros(5), atol=1e-6, rtol=0)


def test_bad_inputs():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), 2)


def test_batch_scale_divides_by_the_std_of_all_rewards():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])  # groups of 3: means 1/3 and 2/3
    adv, _ = group_advantages(rewards, 3, scale="batch")
    std = float(rewards.std())  # unbiased over all 6: sqrt(0.3) = 0.5477
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3]) / (std + 1e-4)
    torch.testing.assert_close(adv, expected)
    with pytest.raises(ValueError, match="scale must be one of group, batch, none"):
        group_advantages(rewards, 3, scale="std")
