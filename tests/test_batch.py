"""Episodes -> micro-batches: both layouts, and the shared-prefix update computing exactly what the
padded one does (log-probs token for token, losses and every gradient), with partial groups,
groups split across micro-batches, mu > 1 (a fixed pi_old) and beta > 0 (a reference model)."""

from __future__ import annotations

import pytest
import torch

from conftest import hf_model, save_hf
from data.rewards import Score
from grpo.batch import build_batch, micro_batches, padded_tokens
from grpo.logprobs import micro_batch_logprobs, token_logprobs
from grpo.loss import AGGREGATIONS, PolicyLoss, policy_loss
from grpo.rollout import Episode
from qwen2 import load_model, pad_batch
from qwen2.shared_prefix import block_attention_bound, shared_prefix_layout

PAD, TEMPERATURE = 0, 0.7


def episodes(drop: tuple[int, ...] = (), seed: int = 0, tools: bool = False) -> list[Episode]:
    """3 groups of 4 samples with ragged prompts and completions; `drop` removes episodes (partial
    groups); `tools`: completions of 4+ tokens hold a tool's answer (tokens 1 and 2: context, not actions)."""
    g = torch.Generator().manual_seed(seed)
    completion_lens = [[5, 1, 8, 3], [2, 11, 4, 4], [6, 2, 9, 1]]
    out = []
    for group, (prompt_len, lens) in enumerate(zip([3, 9, 6], completion_lens)):
        prompt = torch.randint(1, 300, (prompt_len,), generator=g).tolist()
        for n in lens:
            completion = torch.randint(1, 300, (n,), generator=g).tolist()
            action = [0 if tools and n >= 4 and j in (1, 2) else 1 for j in range(n)] if tools else []
            out.append(Episode(group, prompt, completion, True, "", "0", Score({}, 0.0, False), action_mask=action))
    return [e for i, e in enumerate(out) if i not in drop]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(save_hf(hf_model(seed=3), tmp_path_factory.mktemp("m") / "m"))


def layouts(batch, **kw):
    """Micro-batches of the same batch: padded (several sizes) and shared-prefix (several budgets,
    the smallest splitting groups into parts that each carry the prompt)."""
    common = dict(pad_id=PAD, device="cpu", micro_batch_size=4, micro_batch_tokens=10_000)
    out = {f"padded-{n}": micro_batches(batch, shared_prefix=False, **common | {"micro_batch_size": n}) for n in (1, 5)}
    for budget in (16, 40, 10_000):
        out[f"shared-{budget}"] = micro_batches(batch, shared_prefix=True, **common | {"micro_batch_tokens": budget})
    return out


def reference_logprobs(model, batch) -> torch.Tensor:
    """One padded forward over the whole batch: (E, C) log-probs of every completion token."""
    eps = batch.episodes
    ids, attn = pad_batch([e.prompt_ids for e in eps], PAD, [e.completion_ids for e in eps])
    P = max(len(e.prompt_ids) for e in eps)
    return token_logprobs(model, ids, attn, P, TEMPERATURE, chunk_tokens=7)


def test_shared_prefix_rows_hold_the_prompt_once_then_each_completion():
    eps = episodes(drop=(2,))  # a partial group: group 0 has 3 samples
    batch = build_batch(eps, torch.zeros(len(eps)), "cpu")
    (micro,) = micro_batches(batch, shared_prefix=True, micro_batch_size=4, micro_batch_tokens=10_000,
                             pad_id=PAD, device="cpu")
    assert micro.input_ids.shape[0] == 3  # one row per group
    row = micro.input_ids[0].tolist()
    group0 = [e for e in eps if e.group == 0]
    expected = group0[0].prompt_ids + [t for e in group0 for t in e.completion_ids]
    assert row[:len(expected)] == expected and set(row[len(expected):]) <= {PAD}
    # Positions: the prompt from 0, every completion continuing from the prompt's length.
    assert micro.layout.positions[0, :len(expected)].tolist() == (
        [0, 1, 2] + [3 + j for e in group0 for j in range(len(e.completion_ids))])
    # Fewer tokens than the padded layout, which repeats the prompt and pads every row.
    assert micro.num_tokens < padded_tokens(eps, 4)


def test_a_group_longer_than_the_budget_is_split_and_each_part_carries_the_prompt():
    eps = episodes()
    batch = build_batch(eps, torch.zeros(len(eps)), "cpu")
    micros = micro_batches(batch, shared_prefix=True, micro_batch_size=4, micro_batch_tokens=16, pad_id=PAD,
                           device="cpu")
    group1_rows = [row for m in micros for row in m.input_ids if row[:9].tolist() == eps[4].prompt_ids]
    assert len(group1_rows) >= 2  # 9 prompt tokens + 21 completion tokens do not fit 16
    assert [m.episodes.start for m in micros] == sorted(m.episodes.start for m in micros)
    assert sum(m.episodes.stop - m.episodes.start for m in micros) == len(eps)  # every episode exactly once


def test_completions_continue_the_prompt_and_see_only_it_and_themselves():
    # One row: prompt of 3, completions of 2, 5 and 1 tokens, then padding.
    blocks = shared_prefix_layout([3], [[2, 5, 1]], width=12)
    assert blocks.positions[0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5, 6, 7, 3, 0]
    # Who sees whom, read back from the blocks: key j visible to query i.
    seen = torch.zeros(12, 12, dtype=torch.bool)
    P = blocks.prompt_index.shape[1]
    for c in blocks.completions:
        keys = torch.cat([blocks.prompt_index[c.row], c.index], dim=1)  # (S, P + C)
        for s in range(len(c.row)):
            for i, qi in enumerate(c.index[s].tolist()):
                for j, kj in enumerate(keys[s].tolist()):
                    if qi < 12 and c.mask[s, 0, i, j]:
                        seen[qi, kj] = True
                        assert j < P or kj <= qi  # its own earlier tokens only
    expect = {3: [0, 1, 2, 3], 4: [0, 1, 2, 3, 4], 7: [0, 1, 2, 5, 6, 7], 10: [0, 1, 2, 10]}
    for query, keys in expect.items():
        assert seen[query].nonzero()[:, 0].tolist() == keys


def test_ragged_completions_are_batched_by_length_and_the_planner_bound_holds():
    # One long completion and seven short ones per group: padding every completion to the longest
    # would cost 8 x 64 x (P + 64) scores per group; batched by length the short ones pay their own.
    g = torch.Generator().manual_seed(0)
    eps = []
    for group, P in enumerate([12, 7]):
        prompt = torch.randint(1, 300, (P,), generator=g).tolist()
        for n in [64, 3, 1, 4, 2, 5, 3, 2]:
            eps.append(Episode(group, prompt, torch.randint(1, 300, (n,), generator=g).tolist(), True, "", "0",
                               Score({}, 0.0, False)))
    batch = build_batch(eps, torch.zeros(len(eps)), "cpu")
    budget = 400
    (micro,) = micro_batches(batch, shared_prefix=True, micro_batch_size=4, micro_batch_tokens=budget, pad_id=PAD,
                             device="cpu")
    blocks = micro.layout
    scores = blocks.prompt_mask.numel() + sum(c.mask.numel() for c in blocks.completions)
    assert len(blocks.completions) == 5  # lengths 1 | 2 | 3-4 | 5 | 64
    assert scores < 16 * 64 * (12 + 64) / 4  # well under one block padded to the longest completion
    assert scores <= block_attention_bound(budget, 12, 64)


@pytest.mark.parametrize("drop, repeat_heads, tools", [((), False, False), ((2, 5, 6), False, False),
                                                      ((2, 5, 6), True, False), ((2,), False, True)])
def test_log_probs_are_the_same_token_for_token_in_every_layout(model, drop, repeat_heads, tools, monkeypatch):
    if repeat_heads:  # the CUDA path of qwen2/attention.py: masked attention over repeated key/value heads
        import qwen2.attention

        monkeypatch.setattr(qwen2.attention, "REPEAT_HEADS_ON", ("cpu",))
    batch = build_batch(episodes(drop, tools=tools), torch.zeros(12 - len(drop)), "cpu")
    mask = batch.loss_mask.bool()
    if tools:  # a tool's tokens are no targets: masked out of the loss, no log-prob computed
        assert (batch.loss_mask.sum(1) < torch.tensor([len(e.completion_ids) for e in batch.episodes])).any()
    with torch.no_grad():
        ref = reference_logprobs(model, batch)
        for name, micros in layouts(batch).items():
            got = torch.zeros_like(batch.loss_mask)
            for micro in micros:
                logp, _ = micro_batch_logprobs(model, micro, TEMPERATURE, chunk_tokens=5)
                got[micro.episodes, :logp.shape[1]] = logp
            assert torch.allclose(got[mask], ref[:, :mask.shape[1]][mask], atol=1e-5), name
            assert (got[~mask] == 0).all(), name


VARIANTS = {  # the loss variants of grpo.loss / ratio_level / delta / top_entropy_quantile / old_logprobs
    "ppo_clip": {},
    "cispo": {"objective": "cispo"},
    "gspo": {"ratio_level": "sequence", "eps_low": 3e-4, "eps_high": 4e-4},
    "two_sided": {"delta": 1.5},
    "token_weights": {"token_weights": True},
}


@pytest.mark.parametrize("variant", [*VARIANTS, "tools"])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_loss_and_every_gradient_equal_the_padded_update(model, aggregation, variant):
    """mu = 2's fixed pi_old and beta > 0's reference log-probs as the trainer uses them, on partial
    groups, for every loss variant: micro-batching and packing change nothing."""
    eps = episodes(drop=(2, 9), tools=variant == "tools")
    g = torch.Generator().manual_seed(1)
    batch = build_batch(eps, torch.randn(len(eps), generator=g), "cpu")
    with torch.no_grad():
        base = reference_logprobs(model, batch)
    old = base + 0.3 * torch.randn(base.shape, generator=g)  # many ratios outside the clip range
    ref = base + 0.3 * torch.randn(base.shape, generator=g)
    num_tokens = int(batch.loss_mask.sum())
    assert num_tokens == batch.completion_tokens
    extra = dict(VARIANTS.get(variant, {}))
    weights = torch.rand(base.shape, generator=g) if extra.pop("token_weights", False) else None

    def update(micros):
        model.zero_grad()
        total = 0.0
        for micro in micros:
            logp, _ = micro_batch_logprobs(model, micro, TEMPERATURE, chunk_tokens=5)
            width = micro.loss_mask.shape[1]
            settings = PolicyLoss(aggregation=aggregation, beta=0.04, max_tokens=16, **extra)
            loss, _ = policy_loss(logp, old[micro.episodes, :width], batch.advantages[micro.episodes], micro.loss_mask,
                                  settings, ref_logp=ref[micro.episodes, :width], num_sequences=len(eps),
                                  num_tokens=num_tokens,
                                  token_weights=None if weights is None else weights[micro.episodes, :width])
            loss.backward()
            total += loss.item()
        return total, [p.grad.clone() for p in model.parameters()]

    results = {name: update(micros) for name, micros in layouts(batch).items()}
    ref_loss, ref_grads = results.pop("padded-5")
    for name, (loss, grads) in results.items():
        assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-7), name
        for got, want in zip(grads, ref_grads):
            assert (got - want).norm() <= 1e-5 * want.norm() + 1e-8, name
