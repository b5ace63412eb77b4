"""The clipped GRPO loss: hand-computed values, the six clip cases, k3 KL, aggregations."""

import math

import pytest
import torch

from grpo.loss import AGGREGATIONS, PolicyLoss, k3_kl, policy_loss, top_entropy_mask, truncated_importance_weights

EPS_LOW, EPS_HIGH = 0.2, 0.28  # clip range [0.8, 1.28]


# ---------------------------------------------------------------- the six clip cases
# One token, old_logp = 0, logp = log(r)  => ratio = r.  loss = -min(r*A, clip(r)*A).
# The gradient w.r.t. logp is d(-r*A)/dlogp = -r*A when the unclipped term wins, else 0.
CLIP_CASES = [
    # (A, ratio, expected loss, gradient flows?)
    (+1.0, 0.5, -0.5, True),    # A>0, below: min(0.5, 0.8) = 0.5 unclipped -> can still raise
    (+1.0, 1.1, -1.1, True),    # A>0, inside
    (+1.0, 1.5, -1.28, False),  # A>0, above: min(1.5, 1.28) = 1.28 clipped -> no push further
    (-1.0, 0.5, 0.8, False),    # A<0, below: min(-0.5, -0.8) = -0.8 clipped -> no push further
    (-1.0, 1.1, 1.1, True),     # A<0, inside
    (-1.0, 1.5, 1.5, True),     # A<0, above: min(-1.5, -1.28) = -1.5 unclipped -> can lower
]


@pytest.mark.parametrize("A,r,expected,has_grad", CLIP_CASES)
def test_six_clip_cases(A, r, expected, has_grad):
    logp = torch.tensor([[math.log(r)]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 1), torch.tensor([A]), torch.ones(1, 1),
                              PolicyLoss(eps_low=EPS_LOW, eps_high=EPS_HIGH))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    g = logp.grad.item()
    if has_grad:
        assert g == pytest.approx(-r * A, rel=1e-6)
    else:
        assert g == 0.0
    # the clip stats count exactly the tokens whose gradient was zeroed
    assert float(stats.clip_frac_high) == (1.0 if (A > 0 and r > 1 + EPS_HIGH) else 0.0)
    assert float(stats.clip_frac_low) == (1.0 if (A < 0 and r < 1 - EPS_LOW) else 0.0)
    assert float(stats.ratio_mean) == pytest.approx(r, rel=1e-6)


# ---------------------------------------------------------------- aggregations
def _two_sequences():
    """Sequence 0: 3 tokens, ratios [1.0, 1.1, 0.9], A = +1 -> token losses [-1, -1.1, -0.9]
    Sequence 1: 1 token (then 2 padding), ratio 1.2, A = -2 (1.2 inside the clip range)
                -> token loss -(1.2 * -2) = +2.4
    Padding log-probs are garbage (1e4) on purpose: they must not leak (no inf/NaN)."""
    logp = torch.log(torch.tensor([[1.0, 1.1, 0.9], [1.2, 1.0, 1.0]]))
    logp[1, 1:] = 1e4
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    return logp.requires_grad_(), torch.zeros(2, 3), torch.tensor([1.0, -2.0]), mask


@pytest.mark.parametrize(
    "aggregation,kwargs,expected",
    [
        # all 4 tokens equally: (-1 - 1.1 - 0.9 + 2.4) / 4 = -0.6 / 4
        ("token_mean", {}, -0.15),
        # whole batch had 8 tokens (this is one micro-batch): -0.6 / 8
        ("token_mean", {"num_tokens": 8}, -0.075),
        # per-sequence means: -3/3 = -1 and 2.4/1 = 2.4; mean over 2 sequences
        ("seq_mean_token_mean", {}, 0.7),
        ("seq_mean_token_mean", {"num_sequences": 4}, 0.35),
        # per-sequence sums / budget 4: -3/4, 2.4/4; mean over 2 sequences
        ("seq_mean_token_sum_norm", {"max_tokens": 4}, -0.075),
        # default budget = T = 3: (-3/3 + 2.4/3) / 2
        ("seq_mean_token_sum_norm", {}, -0.1),
    ],
)
def test_aggregations_hand_computed(aggregation, kwargs, expected):
    logp, old, adv, mask = _two_sequences()
    settings = PolicyLoss(aggregation=aggregation, max_tokens=kwargs.pop("max_tokens", None))
    loss, stats = policy_loss(logp, old, adv, mask, settings, **kwargs)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert float(stats.loss) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    assert logp.grad[1, 1:].eq(0).all()  # padding gets no gradient


def test_default_aggregation_is_token_mean():
    logp, old, adv, mask = _two_sequences()
    assert policy_loss(logp, old, adv, mask)[0].item() == pytest.approx(-0.15, rel=1e-5)


def test_unknown_aggregation_lists_valid_ones():
    logp, old, adv, mask = _two_sequences()
    with pytest.raises(ValueError) as e:
        policy_loss(logp, old, adv, mask, PolicyLoss(aggregation="sum"))
    for name in AGGREGATIONS:
        assert name in str(e.value)


# ---------------------------------------------------------------- k3 KL
def test_k3_value_hand_computed():
    # d = ref - logp:  d = ln 2 -> 2 - 0.693147 - 1 = 0.306853
    #                  d = 0    -> 0
    #                  d = -1   -> e^-1 + 1 - 1 = 0.367879
    logp = torch.tensor([0.0, -0.5, 1.0])
    ref = torch.tensor([math.log(2.0), -0.5, 0.0])
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor([0.306853, 0.0, 0.367879]))


def test_k3_nonnegative_and_gradient_matches_analytic():
    torch.manual_seed(0)
    logp = torch.randn(50, requires_grad=True)
    ref = torch.randn(50)
    kl = k3_kl(logp, ref)
    assert (kl >= 0).all()
    kl.sum().backward()
    # d/dlogp [e^(ref-logp) - (ref-logp) - 1] = -e^(ref-logp) + 1
    torch.testing.assert_close(logp.grad, 1 - torch.exp(ref - logp.detach()))


def test_kl_term_in_loss():
    # ratio 1 and A = 0 -> the policy term is 0, the loss is beta * mean k3.
    # Tokens: d = ln 2 (k3 0.306853) and d = -1 (k3 0.367879); third token is padding.
    logp = torch.tensor([[0.0, 1.0, 5.0]], requires_grad=True)
    ref = torch.tensor([[math.log(2.0), 0.0, -50.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = policy_loss(logp, logp.detach(), torch.zeros(1), mask, PolicyLoss(beta=0.1), ref_logp=ref)
    kl_mean = (0.306853 + 0.367879) / 2
    assert loss.item() == pytest.approx(0.1 * kl_mean, rel=1e-5)
    assert float(stats.kl) == pytest.approx(kl_mean, rel=1e-5)
    loss.backward()
    # token_mean over 2 tokens: grad = beta * (1 - e^d) / 2 ; padding: 0
    expected = torch.tensor([[0.1 * (1 - 2.0) / 2, 0.1 * (1 - math.exp(-1)) / 2, 0.0]])
    torch.testing.assert_close(logp.grad, expected)


def test_kl_logged_but_not_added_when_beta_zero():
    logp = torch.tensor([[0.0]])
    loss, stats = policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 1),
                              ref_logp=torch.tensor([[math.log(2.0)]]))
    assert loss.item() == 0.0
    assert float(stats.kl) == pytest.approx(0.306853, rel=1e-5)


def test_beta_without_reference_raises():
    logp, old, adv, mask = _two_sequences()
    with pytest.raises(ValueError):
        policy_loss(logp, old, adv, mask, PolicyLoss(beta=0.1))


# ---------------------------------------------------------------- variants: GSPO, CISPO, two-sided clip, weights
GSPO_EPS = (3e-4, 4e-4)
GSPO = PolicyLoss(eps_low=GSPO_EPS[0], eps_high=GSPO_EPS[1], ratio_level="sequence")


def test_gspo_sequence_ratio_is_the_mean_log_ratio_and_clips_as_a_sequence():
    # Log-ratios [0.1, -0.1, 0.3]: s = exp(0.1) = 1.10517 > 1 + 4e-4 with A > 0 -> clipped for every token.
    logp = torch.tensor([[0.1, -0.1, 0.3]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 3), torch.tensor([1.0]), torch.ones(1, 3), GSPO)
    assert loss.item() == pytest.approx(-(1 + 4e-4), rel=1e-6)
    assert float(stats.ratio_mean) == pytest.approx(math.exp(0.1), rel=1e-6) and float(stats.clip_frac_high) == 1.0
    loss.backward()
    assert logp.grad.abs().max() == 0.0
    # Inside the range: s = exp(0) = 1, loss = -s * A; d loss / d logp_t = -s * A / |y| = -1/3 for every token.
    logp = torch.tensor([[1e-4, -1e-4, 0.0, 7.0]], requires_grad=True)  # the last one is padding
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, _ = policy_loss(logp, torch.zeros(1, 4), torch.tensor([1.0]), mask, GSPO)
    assert loss.item() == pytest.approx(-1.0, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1 / 3, -1 / 3, -1 / 3, 0.0]]))


def test_cispo_keeps_gradient_on_clipped_tokens():
    # ratio 1.5, A = +1: PPO-clip stops the gradient; CISPO weighs logp by sg(min(1.5, 1.28)) = 1.28.
    logp = torch.tensor([[math.log(1.5)]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1),
                              PolicyLoss(eps_low=EPS_LOW, eps_high=EPS_HIGH, objective="cispo"))
    assert loss.item() == pytest.approx(-1.28 * math.log(1.5), rel=1e-6)
    loss.backward()
    assert logp.grad.item() == pytest.approx(-1.28, rel=1e-6)
    assert float(stats.clip_frac_high) == 1.0 and float(stats.clip_frac_low) == 0.0
    # Inside the range CISPO's gradient equals PPO's: -ratio * A.
    logp = torch.tensor([[math.log(1.1)]], requires_grad=True)
    policy_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), PolicyLoss(objective="cispo"))[0].backward()
    assert logp.grad.item() == pytest.approx(1.1, rel=1e-6)


def test_two_sided_clip_caps_a_negative_advantage_ratio_at_delta():
    # A = -1, ratio 3: plain PPO-clip gives loss 3 and gradient 3; with delta = 2 the loss is
    # -min(min(3, 2) * -1, 1.28 * -1) = 2 and no gradient.
    for delta, expected, grad in [(None, 3.0, 3.0), (2.0, 2.0, 0.0)]:
        logp = torch.tensor([[math.log(3.0)]], requires_grad=True)
        loss, stats = policy_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), PolicyLoss(delta=delta))
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        loss.backward()
        assert logp.grad.item() == pytest.approx(grad, rel=1e-6)
        assert float(stats.clip_frac_low) == (1.0 if delta else 0.0)
    # A > 0 is unaffected by a delta above 1 + eps_high (the clip already caps it there).
    for r in (1.1, 2.5):
        logp = torch.tensor([[math.log(r)]])
        with_delta, without = (policy_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), PolicyLoss(delta=d))[0]
                               for d in (2.0, None))
        assert with_delta.item() == pytest.approx(without.item(), rel=1e-6) == -min(r, 1.28)


def test_token_weights_scale_each_token_and_keep_the_normaliser():
    logp, old, adv, mask = _two_sequences()  # token losses [-1, -1.1, -0.9 | 2.4], 4 tokens
    weights = torch.tensor([[1.0, 0.0, 1.0], [0.5, 1.0, 1.0]])
    loss, _ = policy_loss(logp, old, adv, mask, token_weights=weights)
    assert loss.item() == pytest.approx((-1 - 0.9 + 0.5 * 2.4) / 4, rel=1e-5)
    loss.backward()
    assert logp.grad[0, 1] == 0.0


def test_unknown_objective_or_ratio_level_is_a_clear_error():
    logp, old, adv, mask = _two_sequences()
    with pytest.raises(ValueError, match="objective must be one of ppo_clip, cispo and ratio_level one of token, sequence"):
        policy_loss(logp, old, adv, mask, PolicyLoss(objective="gspo"))


def test_top_entropy_mask_keeps_the_top_quantile_of_real_tokens():
    entropies = torch.tensor([[0.1, 0.9, 0.5, 9.0], [0.7, 0.3, 0.2, 0.8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # the 9.0 is padding: it must not count
    # 7 real tokens; the top 3/7 by entropy are 0.9, 0.8, 0.7.
    got = top_entropy_mask(entropies, mask, 3 / 7)
    assert got.tolist() == [[0, 1, 0, 0], [1, 0, 0, 1]]
    assert torch.equal(top_entropy_mask(entropies, mask, 1.0), mask.float())


def test_truncated_importance_weights_hand_computed():
    old = torch.tensor([[math.log(0.5), math.log(0.9), 0.0]])
    sampler = torch.tensor([[math.log(0.4), math.log(0.3), 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    # 0.5 / 0.4 = 1.25; 0.9 / 0.3 = 3 -> capped at 2; padding -> 0.
    torch.testing.assert_close(truncated_importance_weights(old, sampler, mask, cap=2.0), torch.tensor([[1.25, 2.0, 0.0]]))
