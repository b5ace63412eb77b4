"""The walkthrough's figures picture what the code computes (scripts/figures.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from figures import clipped_surrogate, kv_cache_slots, shared_prefix_mask
from grpo.loss import PolicyLoss, policy_loss
from qwen2.shared_prefix import shared_prefix_layout


def test_the_shared_prefix_figure_is_the_attention_of_a_packed_row():
    prompt, completions = 4, [3, 2, 3]
    T = prompt + sum(completions)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, T, 8, generator=g) for _ in range(3))
    packed = shared_prefix_layout([prompt], [completions], width=T).attend(0, q, k, v)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.from_numpy(shared_prefix_mask(prompt, completions)))
    torch.testing.assert_close(packed, dense, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_the_clipped_objective_figure_is_the_loss_the_trainer_minimises(advantage):
    ratios = np.array([0.5, 0.8, 0.95, 1.0, 1.2, 1.28, 1.5])
    for r in ratios:
        logp = torch.tensor([[math.log(r)]], requires_grad=True)
        loss, _ = policy_loss(logp, torch.zeros(1, 1), torch.tensor([advantage]), torch.ones(1, 1), PolicyLoss())
        assert -loss.item() == pytest.approx(float(clipped_surrogate(np.array(r), advantage, 0.2, 0.28)), abs=1e-6)


def test_the_kv_cache_figure_pads_left_and_writes_one_column_per_step():
    grid = kv_cache_slots([3, 6, 4], steps=5, finished_at={2: 3})
    assert (grid[:, :6] > 0).all() and list((grid[:, :6] == 1).sum(1)) == [3, 0, 2]  # prompts end together
    assert list(grid[2, 6:]) == [3, 4, 5, 1, 1] and list(grid[0, 6:]) == [3, 4, 5, 6, 7]
