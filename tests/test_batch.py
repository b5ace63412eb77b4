"""Episodes -> padded batch -> micro-batches: the layout, and log-probs that do not depend on the cut."""

from __future__ import annotations

import pytest
import torch

from conftest import hf_model, save_hf
from data.rewards import Score
from grpo.batch import build_batch, micro_batches
from grpo.logprobs import token_logprobs
from grpo.rollout import Episode
from qwen2 import load_model

PAD = 0


def episodes(seed: int = 0) -> list[Episode]:
    """Ragged prompts and completions, so micro-batches have columns that are padding in all their rows."""
    g = torch.Generator().manual_seed(seed)
    prompt_lens, completion_lens = [3, 9, 4, 4, 12, 2, 6], [5, 1, 8, 3, 2, 11, 4]
    out = []
    for i, (p, c) in enumerate(zip(prompt_lens, completion_lens)):
        prompt = torch.randint(1, 300, (p,), generator=g).tolist()
        completion = torch.randint(1, 300, (c,), generator=g).tolist()
        out.append(Episode(i // 2, prompt, completion, True, "", "0", Score({}, 0.0, False)))
    return out


def test_layout_is_left_padded_prompt_then_completion():
    eps = episodes()
    batch = build_batch(eps, torch.arange(len(eps), dtype=torch.float32), PAD, "cpu")
    P = max(len(e.prompt_ids) for e in eps)
    assert batch.prompt_len == P and batch.input_ids.shape == (len(eps), P + max(len(e.completion_ids) for e in eps))
    for row, e in enumerate(eps):
        assert batch.input_ids[row, P - len(e.prompt_ids):P].tolist() == e.prompt_ids
        assert batch.input_ids[row, P:P + len(e.completion_ids)].tolist() == e.completion_ids
        assert batch.loss_mask[row].sum() == len(e.completion_ids)
        assert batch.attention_mask[row].sum() == len(e.prompt_ids) + len(e.completion_ids)


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_micro_batch_logprobs_equal_the_full_batch(tmp_path, size):
    model = load_model(save_hf(hf_model(seed=3), tmp_path / "m"))
    eps = episodes()
    batch = build_batch(eps, torch.zeros(len(eps)), PAD, "cpu")
    with torch.no_grad():
        full = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_len, temperature=0.7)
        got = torch.zeros_like(full)
        trimmed = False
        for micro in micro_batches(batch, size):
            width = micro.loss_mask.shape[1]
            assert torch.equal(micro.loss_mask, batch.loss_mask[micro.rows, :width])
            trimmed |= micro.input_ids.shape[1] < batch.input_ids.shape[1]
            got[micro.rows, :width] = token_logprobs(model, micro.input_ids, micro.attention_mask,
                                                     micro.targets_start, temperature=0.7)
    mask = batch.loss_mask.bool()
    assert torch.allclose(got[mask], full[mask], atol=1e-5)
    assert trimmed or size == len(eps), "the test needs micro-batches narrower than the batch"
