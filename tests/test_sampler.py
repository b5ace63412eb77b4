"""The KV-cache sampler: exact against transformers (greedy), seeded, and samples the right distribution."""

from __future__ import annotations

import pytest
import torch

from conftest import UNTIED, hf_model, save_hf
from qwen2 import GREEDY, SamplingParams, generate, load_model
from qwen2.sampler import sample_next, top_k_filter, top_p_filter

STOP = 5


def ragged_prompts(vocab: int, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(6, vocab, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(hf, prompts, max_new, stop):
    P = max(map(len, prompts))
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                      eos_token_id=stop, pad_token_id=0)[:, P:].tolist()
    res = []
    for row in out:
        res.append(row[: row.index(stop) + 1] if stop in row else row)
    return res


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    # Make the stop token likely so rows finish at different steps: boost its logit via the bias-free head.
    hf = hf_model(seed=7, **UNTIED)
    with torch.no_grad():
        hf.lm_head.weight[STOP] *= 3.0
    path = save_hf(hf, tmp_path_factory.mktemp("ckpt") / "m")
    return hf, load_model(path)


def assert_greedy_equals_transformers(hf, ours, cuda_path: bool, monkeypatch) -> None:
    """Our greedy generate = transformers' on a ragged batch whose rows stop at different steps, with
    compaction every 2 steps; `cuda_path` runs qwen2/attention.py's CUDA branches on the CPU."""
    if cuda_path:  # repeated heads, grouped decode queries
        import qwen2.attention

        monkeypatch.setattr(qwen2.attention, "REPEAT_HEADS_ON", ("cpu",))
    prompts = ragged_prompts(ours.config.vocab_size, [3, 11, 7, 1, 15, 9], seed=1)
    ref = hf_greedy(hf, prompts, 24, STOP)
    got = generate(ours, prompts, 24, GREEDY, stop_token_ids=[STOP], compact_every=2)
    assert got.tokens == ref
    assert got.finished == [STOP in r for r in ref]
    lengths = {len(r) for r in ref}
    assert len(lengths) > 1 and any(got.finished) and not all(got.finished), "test needs rows ending at different steps"


@pytest.mark.parametrize("cuda_path", [False, True])
def test_greedy_equals_transformers_on_ragged_batch_with_stop(models, cuda_path, monkeypatch):
    assert_greedy_equals_transformers(*models, cuda_path, monkeypatch)


def test_shared_prompts_and_compaction_do_not_change_greedy_output(models):
    _, ours = models
    prompts = ragged_prompts(ours.config.vocab_size, [4, 9, 6], seed=2)
    rows = [p for p in prompts for _ in range(3)]
    a = generate(ours, rows, 20, GREEDY, stop_token_ids=[STOP], compact_every=1)
    b = [generate(ours, [p], 20, GREEDY, stop_token_ids=[STOP], compact_every=1000).tokens[0] for p in rows]
    assert a.tokens == b


def test_seeded_sampling_reproduces_and_seeds_differ(models):
    _, ours = models
    prompts = ragged_prompts(ours.config.vocab_size, [5, 8], seed=3) * 4

    def run(seed):
        return generate(ours, prompts, 16, SamplingParams(temperature=1.0), stop_token_ids=[STOP],
                        generator=torch.Generator().manual_seed(seed)).tokens

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_top_k_1_equals_greedy(models):
    _, ours = models
    prompts = ragged_prompts(ours.config.vocab_size, [6, 2, 9], seed=4)
    greedy = generate(ours, prompts, 12, GREEDY, stop_token_ids=[STOP])
    k1 = generate(ours, prompts, 12, SamplingParams(temperature=0.8, top_k=1), stop_token_ids=[STOP],
                  generator=torch.Generator().manual_seed(0))
    assert k1.tokens == greedy.tokens


def test_logprobs_match_a_full_forward(models):
    _, ours = models
    prompts = ragged_prompts(ours.config.vocab_size, [4, 7], seed=5)
    out = generate(ours, prompts, 10, SamplingParams(temperature=0.7), stop_token_ids=[STOP], return_logprobs=True,
                   return_entropies=True, generator=torch.Generator().manual_seed(0))
    for p, toks, lps, ents in zip(prompts, out.tokens, out.logprobs, out.entropies):
        ids = torch.tensor([p + toks])
        with torch.no_grad():
            logits = ours(ids)[0, len(p) - 1:-1] / 0.7
        full = logits.log_softmax(-1)
        ref = full.gather(-1, torch.tensor(toks)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(lps), ref, atol=1e-4)
        assert torch.allclose(torch.tensor(ents), -(full.exp() * full).sum(-1), atol=1e-4)
    assert generate(ours, prompts, 3, GREEDY).entropies is None  # only computed when asked for


def _empirical(logits, n, **kw):
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(n, -1).clone(), SamplingParams(**kw), generator=g)
    return torch.bincount(draws, minlength=logits.shape[-1]).float() / n


def test_top_k_and_top_p_sample_the_truncated_distribution():
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0]])
    p = logits.softmax(-1)[0]
    n = 200_000
    # top-k=3: renormalised first three.
    want = torch.zeros(6); want[:3] = p[:3] / p[:3].sum()
    got = _empirical(logits, n, top_k=3)
    assert (got - want).abs().max() < 0.01 and got[3:].sum() == 0
    # top-p=0.7: smallest prefix reaching 0.7 (cumulative p = .38, .61, .76 -> 3 tokens).
    cum = p.cumsum(0)
    keep = int((cum - p < 0.7).sum())
    assert keep == 3
    want = torch.zeros(6); want[:keep] = p[:keep] / p[:keep].sum()
    got = _empirical(logits, n, top_p=0.7)
    assert (got - want).abs().max() < 0.01 and got[keep:].sum() == 0
    # temperature 0.5 sharpens exactly as softmax(logits / 0.5).
    got = _empirical(logits, n, temperature=0.5)
    assert (got - (logits / 0.5).softmax(-1)[0]).abs().max() < 0.01


def test_filters_are_pure_and_keep_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    before = logits.clone()
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[True, False, False, True]]
    assert torch.isinf(top_p_filter(logits, 0.01)).sum() == 3
    assert torch.equal(logits, before)


def test_logits_hook_can_force_each_row_to_stop_at_its_own_length(models):
    _, ours = models
    prompts = ragged_prompts(ours.config.vocab_size, [3, 8, 5, 6], seed=6)
    stop_at = torch.tensor([2, 9, 4, 13])  # the index of the token that must be the stop token
    seen_rows = set()

    def force(logits, rows, step):
        seen_rows.update(rows.tolist())
        logits = logits.clone()
        logits[:, STOP] = float("-inf")  # never stop early...
        hit = stop_at[rows] == step
        logits[hit, STOP] = 1e9  # ...and always at the row's own step
        return logits

    out = generate(ours, prompts, 16, SamplingParams(temperature=1.0), stop_token_ids=[STOP], logits_hook=force, compact_every=1,
                   generator=torch.Generator().manual_seed(0))
    assert [len(t) for t in out.tokens] == (stop_at + 1).tolist()
    assert all(t[-1] == STOP and STOP not in t[:-1] for t in out.tokens) and all(out.finished)
    assert seen_rows == {0, 1, 2, 3}
