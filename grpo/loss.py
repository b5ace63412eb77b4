"""The GRPO policy loss: PPO-style clipped surrogate (or CISPO), token or sequence ratios, three
aggregations, optional KL.

Per completion token t of episode i (advantage A_i, shared by all its tokens):

    ratio_t = pi(tok_t) / pi_old(tok_t) = exp(logp_t - old_logp_t)
    loss_t  = -min(ratio_t * A_i, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A_i)
              + beta * k3(pi || pi_ref)_t

The min makes the objective pessimistic: once the ratio has moved past the clip
edge *in the direction the advantage rewards* (above 1 + eps_high for A > 0, below
1 - eps_low for A < 0) the term is constant and its gradient is zero, so one batch
cannot push the policy arbitrarily far. Moves in the other direction are never
clipped. eps_high > eps_low is DAPO's "clip-higher": it leaves more room to raise
the probability of unlikely-but-good tokens, which fights entropy collapse.

Variants (the defaults give the loss above):
  * ratio_level="sequence" (GSPO, Zheng et al. 2025): one ratio per episode,
        s_i = exp(mean_t(logp_t - old_logp_t)),
    used for every token of the episode and clipped as a sequence, with its own much
    smaller eps (the paper: 3e-4 / 4e-4). Its gradient reaches every token through the mean.
  * delta (two-sided clipping, off by default): the unclipped term's ratio is capped at
    delta, so for A < 0 a ratio that has grown far above 1 cannot make the loss explode:
        loss_t = -min(min(ratio_t, delta) * A_i, clip(ratio_t, ...) * A_i).
  * objective="cispo" (CISPO, MiniMax-M1): the clipped ratio becomes a stop-gradient weight on
    the log-probability, so clipped tokens still carry gradient:
        loss_t = -sg(min(ratio_t, 1 + eps_high)) * A_i * logp_t.
    (TRL's cispo caps at epsilon_high itself; here the cap is 1 + eps_high, like the clip.)
  * token_weights (B, T): multiply each token's policy term, e.g. 0/1 for "only the top
    entropy quantile gets gradient" (Wang et al. 2025) or a truncated importance weight
    (grpo/trainer.py builds both).

Aggregation -- how token losses become one number (it decides how much each
token weighs):
  * "token_mean" (DAPO, default): sum over all completion tokens / number of
    completion tokens in the batch. Every token weighs the same, so long answers
    are not under-weighted.
  * "seq_mean_token_mean" (original GRPO): average within each sequence, then over
    sequences. A token in a short answer weighs more than one in a long answer.
  * "seq_mean_token_sum_norm" (Dr. GRPO): each sequence's token *sum* divided by a
    constant (the generation budget ``max_tokens``), then averaged over sequences.
    No length-dependent normaliser, so no length bias.

Micro-batching. Normalisers are *arguments* (num_tokens, num_sequences, max_tokens)
so each micro-batch can be divided by the counts of the WHOLE batch. Every
aggregation is then a plain sum over micro-batches:

    sum_k policy_loss(micro_k, num_tokens=N_all, num_sequences=B_all, ...)[0]
        == policy_loss(full_batch)[0]

and so are the gradients: call ``backward()`` on each micro-batch loss (no extra
division by the number of micro-batches) and the accumulated gradient is exactly the
full-batch gradient. Every variant above is per token or per sequence, so this holds
for them too. Left at None, the normalisers default to the counts of this call.

Simplification: the KL term uses the k3 estimator (below) on the sampled tokens only, as
TRL did before its `use_bias_correction_kl` option. TRL's default since then (True) multiplies k3
by the ratio pi / pi_old, whose value is 1 on-policy but whose gradient is not zero: with beta > 0
its KL gradient differs from ours (a user comparing at TRL's defaults saw a 0.4% gradient difference),
so compare with TRL at `use_bias_correction_kl=False`; with beta = 0 (the default) both agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
OBJECTIVES = ("ppo_clip", "cispo")
RATIO_LEVELS = ("token", "sequence")


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) from tokens sampled from pi.

    With d = ref_logp - logp:  k3 = exp(d) - d - 1  (Schulman, "Approximating KL
    divergence"). It is unbiased, always >= 0 (since e^x >= 1 + x), and lower-variance
    than -d. Its gradient w.r.t. logp is 1 - exp(d).
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1


@dataclass(frozen=True)
class PolicyLoss:
    """The loss of a run, chosen once: built from the config (`Config.policy_loss`), passed to every call."""

    eps_low: float = 0.2  # clip range [1 - eps_low, 1 + eps_high] for the ratio
    eps_high: float = 0.28
    aggregation: str = "token_mean"  # one of AGGREGATIONS (module docstring)
    beta: float = 0.0  # weight of the k3 KL penalty (0 = no KL, the default, as in DAPO/Dr. GRPO)
    objective: str = "ppo_clip"  # one of OBJECTIVES
    ratio_level: str = "token"  # one of RATIO_LEVELS: "token", or "sequence" (GSPO)
    delta: float | None = None  # two-sided clipping: cap of the unclipped ratio (None = off)
    max_tokens: int | None = None  # Dr. GRPO's constant normaliser, the generation budget (None: T of the call)

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
        if self.objective not in OBJECTIVES or self.ratio_level not in RATIO_LEVELS:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)} and ratio_level one of "
                             f"{', '.join(RATIO_LEVELS)}; got {self.objective!r}, {self.ratio_level!r}")


@dataclass
class LossStats:
    """Statistics of one policy_loss call over its completion tokens, as 0-dim tensors on the device
    (read back once per step by the trainer, not per micro-batch)."""

    loss: Tensor  # the returned loss, detached
    clip_frac_low: Tensor  # share of tokens whose gradient the clip zeroed: ratio < 1 - eps_low (or > delta), A < 0
    clip_frac_high: Tensor  # ... ratio > 1 + eps_high, A > 0 (CISPO: tokens whose weight was capped)
    ratio_mean: Tensor  # mean ratio pi / pi_old
    kl: Tensor | None  # mean k3 KL to the reference, when ref_logp is given


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    settings: PolicyLoss = PolicyLoss(),
    *,
    ref_logp: Tensor | None = None,
    num_sequences: int | None = None,
    num_tokens: int | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, LossStats]:
    """Clipped GRPO loss of one (micro-)batch.

    Args:
        logp: (B, T) log-probs of the completion tokens under the current policy (with grad).
        old_logp: (B, T) the same under the policy that sampled them (no grad).
        advantages: (B,) one advantage per sequence.
        mask: (B, T) 1 for completion tokens (including a generated eos), 0 for padding.
        settings: which loss (clip range, aggregation, variant, KL weight); see PolicyLoss.
        ref_logp: (B, T) log-probs under the frozen reference model; needed if beta > 0.
        num_sequences: sequences in the whole batch (default: B of this call).
        num_tokens: completion tokens in the whole batch (default: mask.sum() of this call).
        token_weights: (B, T) multiplies each token's policy term (None = all 1).

    Returns:
        loss: scalar tensor; summing it over micro-batches gives the full-batch loss.
        stats: LossStats over this call's completion tokens, on the device (no host sync here).
    """
    s = settings
    if s.beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp")

    mask = mask.bool()
    adv = advantages.to(logp.dtype).unsqueeze(1)  # (B, 1), broadcast over tokens

    # Zero the log-ratio at padding *before* exp: padded log-probs are arbitrary, and
    # exp(large) = inf would turn into NaN gradients even if masked afterwards.
    log_ratio = torch.where(mask, logp - old_logp, torch.zeros_like(logp))  # (B, T)
    if s.ratio_level == "sequence":  # GSPO: the mean log-ratio of each episode, for all its tokens
        log_ratio = (log_ratio.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)).expand_as(logp)
    ratio = torch.exp(log_ratio)  # (B, T)
    clipped = torch.clamp(ratio, 1.0 - s.eps_low, 1.0 + s.eps_high)  # (B, T)
    if s.objective == "cispo":
        # The clipped ratio only weighs the log-prob's gradient: clipped tokens still learn.
        per_token = -torch.clamp(ratio, max=1.0 + s.eps_high).detach() * adv * torch.where(mask, logp, 0.0)
    else:
        unclipped = ratio if s.delta is None else torch.clamp(ratio, max=s.delta)
        per_token = -torch.minimum(unclipped * adv, clipped * adv)  # (B, T)
    if token_weights is not None:
        per_token = per_token * token_weights

    kl = None
    if ref_logp is not None:
        # Same padding guard as above: k3 of (0, 0) is 0.
        kl = k3_kl(torch.where(mask, logp, 0.0), torch.where(mask, ref_logp, 0.0))  # (B, T)
        if s.beta != 0.0:
            per_token = per_token + s.beta * kl

    per_token = per_token * mask  # (B, T), exact zeros at padding
    B, T = logp.shape
    if s.aggregation == "token_mean":
        denom = num_tokens if num_tokens is not None else mask.sum()
        loss = per_token.sum() / denom
    elif s.aggregation == "seq_mean_token_mean":
        n = num_sequences if num_sequences is not None else B
        seq_len = mask.sum(dim=1).clamp(min=1)  # (B,); clamp: an empty row contributes 0
        loss = (per_token.sum(dim=1) / seq_len).sum() / n
    else:  # seq_mean_token_sum_norm
        n = num_sequences if num_sequences is not None else B
        budget = s.max_tokens if s.max_tokens is not None else T
        loss = (per_token.sum(dim=1) / budget).sum() / n

    with torch.no_grad():
        n_tok = mask.sum().clamp(min=1)

        def frac(x: Tensor) -> Tensor:
            return (x & mask).sum() / n_tok

        if s.objective == "cispo":  # nothing is zeroed; "high" counts the tokens whose weight was capped
            low, high = torch.zeros_like(mask), ratio > 1.0 + s.eps_high
        else:
            low, high = (ratio < 1.0 - s.eps_low) & (adv < 0), (ratio > 1.0 + s.eps_high) & (adv > 0)
            if s.delta is not None:  # two-sided: a negative-advantage token above delta is held too
                low = low | ((ratio > s.delta) & (adv < 0))
        stats = LossStats(loss.detach(), frac(low), frac(high), (ratio * mask).sum() / n_tok,
                          None if kl is None else (kl * mask).sum() / n_tok)
    return loss, stats


def top_entropy_mask(entropies: Tensor, mask: Tensor, quantile: float,
                     gather: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """1.0 on the `quantile` share of `mask`'s tokens with the highest entropy, else 0.0 (B, T).

    "Beyond the 80/20 rule" (Wang et al. 2025): the few high-entropy "forking" tokens carry the
    learning signal. The threshold is taken over the whole batch, so micro-batching keeps the loss
    exact; ties at the threshold are kept. `gather` collects the entropies of the whole step when
    these are one rank's share (Dist.gather): the threshold is then the step's, as for one process.
    """
    mask = mask.bool()
    if quantile >= 1.0:
        return mask.float()
    pool = entropies[mask].float()
    threshold = torch.quantile(pool if gather is None else gather(pool), 1.0 - quantile)
    return (mask & (entropies >= threshold)).float()


def truncated_importance_weights(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """min(pi_old / pi_sampler, cap) per token (B, T): the sampler drew the tokens, the loss's pi_old is
    the trainer's own computation of the same policy; numerically they differ (bf16, other kernels),
    and this truncated importance-sampling weight corrects for it (Yao et al. 2025). 0 on padding."""
    ratio = torch.exp(torch.where(mask.bool(), old_logp - sampler_logp, 0.0))
    return torch.clamp(ratio, max=cap) * mask
