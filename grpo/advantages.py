"""Group-relative advantages: the "GR" in GRPO.

GRPO has no value network. For each prompt we sample a *group* of G completions,
score them, and use the group itself as the baseline:

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)      (GRPO, DeepSeekMath: scale "group")
    A_i = (r_i - mean(r_group)) / (std(r_batch) + eps)      (scale "batch": one std for all groups)
    A_i =  r_i - mean(r_group)                              (Dr. GRPO: scale "none")

Every token of completion i gets the same advantage A_i.

Choices, matching Hugging Face TRL's GRPOTrainer (its ``scale_rewards``):
  * std is the *unbiased* sample std (``torch.std`` default, divides by G - 1, or by
    N*G - 1 for the batch);
  * eps = 1e-4 is added to the std (not under a square root).
Dividing by the group std up-weights groups whose rewards barely differ (a group that is
almost all right or all wrong gets advantages as large as an evenly split one); the batch std
keeps the scale of the rewards comparable across groups without that effect.

Zero-spread groups. If all G completions get the same reward (all right or all
wrong: common on GSM8K), every advantage in the group is exactly 0, so the group
contributes no policy gradient -- only noise in the loss normalisers and wasted
compute. We return a mask so the trainer can drop those episodes from the update
and log how many groups were dropped (a useful signal: too many means the task is
too easy or too hard for the current policy).

Simplification: rewards are scalars per completion (no per-token rewards).
"""

from __future__ import annotations

import torch
from torch import Tensor

SCALE_REWARDS = ("group", "batch", "none")


def group_advantages(
    rewards: Tensor,
    group_size: int,
    scale: str = "group",
    eps: float = 1e-4,
    batch_rewards: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-episode group-normalised advantages.

    Args:
        rewards: (num_groups * G,) rewards, laid out group by group
            (the G completions of prompt 0, then of prompt 1, ...).
        group_size: G, completions per prompt (>= 2: a group of one has no baseline).
        scale: what divides reward - group mean: "group" (the group's std, original GRPO),
            "batch" (the std of all rewards of the step) or "none" (Dr. GRPO).
        eps: added to the std so a tiny spread cannot explode the advantage.
        batch_rewards: every reward of the step, when `rewards` are only a part of it (one rank's
            share, grpo/machinery/distributed.py): the "batch" std is theirs. Default: `rewards`.

    Returns:
        advantages: (num_groups * G,) float tensor; exactly 0 in zero-spread groups.
        has_spread: (num_groups * G,) bool, per *episode*: False for every episode of a
            group whose rewards are all equal. Drop those episodes from the update;
            number of dropped groups = ``(~has_spread).sum() // group_size``.
    """
    if scale not in SCALE_REWARDS:
        raise ValueError(f"scale must be one of {', '.join(SCALE_REWARDS)}, got {scale!r}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a group baseline, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )

    grouped = rewards.float().view(-1, group_size)  # (num_groups, G)
    mean = grouped.mean(dim=1, keepdim=True)  # (num_groups, 1)
    std = grouped.std(dim=1, keepdim=True)  # (num_groups, 1), unbiased (/ (G-1))

    adv = grouped - mean  # (num_groups, G)
    if scale == "group":
        adv = adv / (std + eps)
    elif scale == "batch":
        adv = adv / ((rewards if batch_rewards is None else batch_rewards).float().std() + eps)

    # Compare the spread itself rather than std to a tolerance: (max - min) is exact
    # for equal rewards, while std of equal floats can come out as ~1e-8, not 0.
    spread = grouped.amax(dim=1) - grouped.amin(dim=1)  # (num_groups,)
    group_ok = spread > 0  # (num_groups,)
    adv = torch.where(group_ok[:, None], adv, torch.zeros_like(adv))

    has_spread = group_ok.repeat_interleave(group_size)  # (num_groups * G,)
    return adv.reshape(-1), has_spread
