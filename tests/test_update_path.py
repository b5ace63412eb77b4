"""The update path reads as the algorithm and as a GPU wants it: numbers come back from the device a
fixed number of times per step, however many micro-batches it has; and the line between bad input
(one line, exit 2) and a bug (a traceback) is kept."""

from __future__ import annotations

import pytest
import torch

import train
from data.rewards import Score
from grpo.batch import build_batch, micro_batches
from grpo.config import load_config
from grpo.rollout import Episode
from grpo.machinery.run_log import PhaseTimer
from grpo.trainer import Trainer
from host_reads import HostReads
from tiny_run import write_config


def fixed_episodes(vocab: int) -> tuple[list[Episode], torch.Tensor]:
    """4 groups of 3 samples with ragged prompts and completions, sampler entropies and log-probs."""
    g = torch.Generator().manual_seed(0)
    episodes = []
    for group in range(4):
        prompt = torch.randint(3, vocab, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(3):
            n = int(torch.randint(1, 7, (1,), generator=g))
            completion = torch.randint(3, vocab, (n,), generator=g).tolist()
            episodes.append(Episode(group, prompt, completion, True, "", "0", Score({}, 0.0, False),
                                    entropies=torch.rand(n, generator=g).tolist(),
                                    sampler_logprobs=(-torch.rand(n, generator=g)).tolist()))
    return episodes, torch.randn(len(episodes), generator=g)


def test_the_counter_sees_every_kind_of_host_read():
    t = torch.arange(5.0)
    with HostReads() as reads:
        t.sum().item(), bool(t[0]), float(t[1]), int(t[2]), t.tolist(), t.nonzero(), t[t > 2]
    assert reads.count == 7, reads.where


@pytest.mark.parametrize("shared_prefix, sizes", [(True, (10_000, 40, 16)), (False, (12, 4, 1))])
def test_host_reads_of_one_update_do_not_grow_with_the_micro_batches(tmp_path, tiny_model, shared_prefix, sizes):
    """mu = 2, beta > 0, top-entropy tokens and the sampler's importance weights: every path of the
    update. The count is of numbers read back to the host (item, tolist, bool/float/int of a tensor)
    and of data-dependent ops, which a GPU pays as syncs."""
    cfg = load_config(write_config(tmp_path, tiny_model), [
        f"grpo.shared_prefix={str(shared_prefix).lower()}", "grpo.top_entropy_quantile=0.5",
        "grpo.old_logprobs=sampler"])
    trainer = Trainer(cfg)
    episodes, advantages = fixed_episodes(trainer.model.config.vocab_size)
    seen = {}
    for size in sizes:
        batch = build_batch(episodes, advantages, "cpu")
        with HostReads() as reads:
            micros = micro_batches(batch, shared_prefix=shared_prefix, micro_batch_size=size, micro_batch_tokens=size,
                                   pad_id=0, device="cpu")
            result = trainer._update(batch, micros, PhaseTimer(torch.device("cpu")))
        assert not result.skipped
        seen[len(micros)] = dict(reads.where)
    assert len(seen) == 3 and max(seen) >= 5, seen  # 1, a few and many micro-batches
    counts = {n: sum(where.values()) for n, where in seen.items()}
    assert len(set(counts.values())) == 1, seen
    # What is left: one read per optimizer step (loss and gradient norm: refuse a non-finite
    # update), the step's statistics, the sampler ratio's, and the entropy quantile's mask.
    assert counts[min(counts)] <= 2 * cfg.grpo.updates_per_batch + 4, seen


def test_an_internal_error_during_setup_keeps_its_traceback(tmp_path, tiny_model, monkeypatch, capsys):
    import grpo.policy

    def broken_loader(*args, **kwargs):
        raise ValueError("an internal bug, not the user's input")

    monkeypatch.setattr(grpo.policy, "load_model", broken_loader)
    with pytest.raises(ValueError, match="an internal bug"):  # not swallowed into a one-line "error:"
        train.main(["--config", str(write_config(tmp_path, tiny_model))])
    assert "error:" not in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["config", "file"])
def test_a_config_or_file_error_during_setup_stays_one_line(tmp_path, tiny_model, capsys, bad):
    if bad == "config":
        args = ["--config", str(write_config(tmp_path, tiny_model)), "--set", "rollout.group_size=1"]
    else:
        args = ["--config", str(write_config(tmp_path, tiny_model, data={"train_file": str(tmp_path / "nope.jsonl")}))]
    assert train.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
