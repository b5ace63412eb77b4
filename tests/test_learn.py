"""learn/ (the three one-file versions a learner reads) computes what the project computes: the
same logits as qwen2.Qwen2, the same greedy tokens as qwen2.generate, the same GRPO loss and
gradients as the trainer's update; it imports none of the project's packages, and every file runs."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.rewards import Score
from grpo.batch import build_batch, micro_batches
from grpo.config import load_config
from grpo.logprobs import micro_batch_logprobs
from grpo.rollout import Episode
from grpo.machinery.run_log import PhaseTimer
from grpo.trainer import Trainer
from qwen2 import GREEDY, Padded, Qwen2, Qwen2Config, generate, load_model, pad_batch, save_model
from tiny_run import write_config

ROOT = Path(__file__).resolve().parents[1]
LEARN = ROOT / "learn"
FILES = ("model", "sampler", "grpo")


def _import_learn():
    """learn/model.py and learn/sampler.py as the modules `model` and `sampler` (the names their
    sibling learn/grpo.py imports them by), learn/grpo.py as `learn_grpo` (`grpo` is the trainer)."""
    sys.path.insert(0, str(LEARN))
    try:
        import model
        import sampler
        spec = importlib.util.spec_from_file_location("learn_grpo", LEARN / "grpo.py")
        grpo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(grpo)
    finally:
        sys.path.remove(str(LEARN))
    assert Path(model.__file__).parent == LEARN and Path(sampler.__file__).parent == LEARN
    return model, sampler, grpo


lmodel, lsampler, lgrpo = _import_learn()


def _perturb(model: Qwen2, seed: int) -> Qwen2:
    """Norms away from 1 and biases away from 0, so that a mistake in either shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.fixture(scope="module")
def real_shape(tmp_path_factory) -> Path:
    """Qwen2.5-0.5B's shape (width 896, 14 query heads over 2 key/value heads of 64, MLP 4864,
    rope_theta 1e6, tied head), with 2 layers and a 4096-token vocabulary to stay small: random, fp32."""
    cfg = dataclasses.replace(Qwen2Config.from_name("Qwen2.5-0.5B"), num_hidden_layers=2, vocab_size=4096)
    model = Qwen2(cfg)
    model.init_weights(std=0.02, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("real_shape")
    save_model(_perturb(model, 1), path)
    return path


@pytest.fixture(scope="module")
def untied_sharded(tmp_path_factory) -> Path:
    """Another shape (untied head, 4 query heads per key/value head), saved in several shards."""
    cfg = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=10000.0)
    model = Qwen2(cfg)
    model.init_weights(std=0.1, generator=torch.Generator().manual_seed(2))
    path = tmp_path_factory.mktemp("untied")
    save_model(_perturb(model, 3), path, max_shard_size="60KB")
    assert len(list(path.glob("model-*.safetensors"))) > 1
    return path


@pytest.mark.parametrize("ckpt", ["real_shape", "untied_sharded"])
def test_same_logits_as_qwen2_on_a_left_padded_batch(ckpt, request):
    path = request.getfixturevalue(ckpt)
    ours = load_model(path, dtype=torch.float32)
    learn = lmodel.load(path)  # learn/model.py reads config.json and the safetensors itself
    assert next(learn.parameters()).dtype == torch.float32
    assert {k for k, _ in learn.named_parameters()} == {k for k, _ in ours.named_parameters()}
    vocab = ours.config.vocab_size
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (9, 3, 6)]
    ids, mask = pad_batch(prompts, pad_id=0)
    with torch.no_grad():
        expected = ours(ids, Padded.of(mask))
        got = learn(ids, mask)
    real = mask.bool()  # padding's outputs are meaningless in both
    assert expected.abs().max() > 1.0  # logits of a real spread, not all near 0
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)


def test_same_greedy_tokens_as_qwen2_generate(real_shape):
    ours, learn = load_model(real_shape, dtype=torch.float32), lmodel.load(real_shape)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 4096, (n,), generator=g).tolist() for n in (7, 2, 5, 4)]
    free = generate(ours, prompts, 10, GREEDY).tokens
    # The stop token: the first new token row 0 reaches after its first one, so row 0 stops mid-way.
    at, stop = next((j, t) for j, t in enumerate(free[0]) if j > 0 and t not in free[0][:j])
    expected = generate(ours, prompts, 10, GREEDY, stop_token_ids=[stop])
    got = lsampler.generate(learn, prompts, 10, temperature=0, stop_ids=(stop,))
    assert got == expected.tokens
    assert len(got[0]) == at + 1 and not all(expected.finished)  # rows that stop and rows that run out


# --- the GRPO loss: learn/grpo.py against the trainer's update --------------------------------------


def _episodes(vocab: int, seed: int = 0) -> tuple[list[Episode], torch.Tensor]:
    """4 groups of 3 samples, ragged prompts and completions."""
    g = torch.Generator().manual_seed(seed)
    episodes = []
    for group in range(4):
        prompt = torch.randint(3, vocab, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(3):
            completion = torch.randint(3, vocab, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
            episodes.append(Episode(group, prompt, completion, True, "", "0", Score({}, 0.0, False),
                                    entropies=[1.0] * len(completion)))
    return episodes, torch.randn(len(episodes), generator=g)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 with a tokenizer (what the Trainer needs), with perturbed norms and biases."""
    from tiny_run import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("policy") / "model")
    save_model(_perturb(load_model(path, dtype=torch.float32), 6), path)
    return path


TEMPERATURE = 0.8  # the log-probs are those of the sampling distribution: test that the two divide alike


def _trainer(tmp_path: Path, policy_dir: Path, shared_prefix: bool) -> Trainer:
    cfg = load_config(write_config(tmp_path, policy_dir, grpo={
        "beta": 0.0, "updates_per_batch": 1, "shared_prefix": shared_prefix, "micro_batch_size": 3,
        "micro_batch_tokens": 30}, rollout={"temperature": TEMPERATURE}))
    assert (cfg.grpo.epsilon_low, cfg.grpo.epsilon_high, cfg.grpo.aggregation) == (0.2, 0.28, "token_mean")
    return Trainer(cfg)


def _micros(trainer: Trainer, batch, shared_prefix: bool):
    micros = micro_batches(batch, shared_prefix=shared_prefix, micro_batch_size=3, micro_batch_tokens=30,
                           pad_id=trainer.tokenizer.pad_token_id, device="cpu")
    assert len(micros) > 1  # the gradient is accumulated over micro-batches
    return micros


def _learn_loss(policy_dir: Path, episodes: list[Episode], advantages: torch.Tensor, old=None):
    learn = lmodel.load(policy_dir).train()
    loss, _ = lgrpo.grpo_loss(learn, [e.prompt_ids for e in episodes], [e.completion_ids for e in episodes],
                              advantages, old_logp=old, temperature=TEMPERATURE)
    loss.backward()
    return loss.item(), {n: p.grad for n, p in learn.named_parameters()}


def _assert_same(loss: float, grads: dict, expected_loss: float, expected_grads: dict) -> None:
    assert loss == pytest.approx(expected_loss, abs=1e-5)
    assert grads.keys() == expected_grads.keys()
    assert max(g.abs().max() for g in grads.values()) > 1e-3  # gradients worth comparing
    for name, g in grads.items():
        torch.testing.assert_close(g, expected_grads[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_same_loss_and_gradients_as_the_trainers_update(tmp_path, policy_dir, shared_prefix):
    """Trainer._update as it runs in a step (mu = 1: pi_old is the pass's own detached log-probs),
    stopped at the optimizer step to read the accumulated gradients."""
    trainer = _trainer(tmp_path, policy_dir, shared_prefix)
    episodes, advantages = _episodes(trainer.model.config.vocab_size)
    seen = {}

    def optimizer_step(loss):  # in place of clip + AdamW: read what the update accumulated
        seen["loss"] = float(loss)
        seen["grads"] = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
        trainer.optimizer.zero_grad(set_to_none=True)
        return 0.0, True

    trainer._optimizer_step = optimizer_step
    batch = build_batch(episodes, advantages, "cpu")
    result = trainer._update(batch, _micros(trainer, batch, shared_prefix), PhaseTimer(torch.device("cpu")))
    assert result.stats.loss == pytest.approx(seen["loss"])
    _assert_same(*_learn_loss(policy_dir, episodes, advantages), seen["loss"], seen["grads"])


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_same_clipped_loss_and_gradients_with_given_old_logprobs(tmp_path, policy_dir, shared_prefix):
    """pi_old away from pi (as in a later pass, mu > 1), so that the clip is active on some tokens:
    the trainer's micro-batch steps (_micro_step) against learn/grpo.py on the same old log-probs."""
    trainer = _trainer(tmp_path, policy_dir, shared_prefix)
    episodes, advantages = _episodes(trainer.model.config.vocab_size, seed=1)
    batch = build_batch(episodes, advantages, "cpu")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        ids, attn, mask = lgrpo.make_batch([e.prompt_ids for e in episodes], [e.completion_ids for e in episodes])
        logp = lgrpo.completion_logprobs(lmodel.load(policy_dir), ids, attn, mask.shape[1], TEMPERATURE)
    old = logp + 0.4 * torch.randn(logp.shape, generator=g)  # ratios exp(-0.4 z): many outside [0.8, 1.28]
    counts = (batch.completion_tokens, batch.sequences)
    stats = torch.zeros(3)
    trainer.model.train()
    for micro in _micros(trainer, batch, shared_prefix):
        logp_k, _ = micro_batch_logprobs(trainer.model, micro, TEMPERATURE)
        old_k = old[micro.episodes, :micro.loss_mask.shape[1]]
        stats += trainer._micro_step(micro, batch, logp_k, old_k, None, torch.ones_like(micro.loss_mask), counts)
    assert stats[2] > 0.05  # the clip zeroed the gradient of some tokens
    expected = {n: p.grad for n, p in trainer.model.named_parameters()}
    _assert_same(*_learn_loss(policy_dir, episodes, advantages, old), float(stats[0]), expected)


# --- self-contained, and runnable --------------------------------------------------------------------


def test_learn_imports_none_of_the_projects_packages():
    allowed = set(sys.stdlib_module_names) | {"torch", "tokenizers", "safetensors", "model", "sampler"}
    for name in FILES:
        tree = ast.parse((LEARN / f"{name}.py").read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert {m.split(".")[0] for m in imported} <= allowed, (name, imported)
    # And in a fresh interpreter: importing all three loads none of them.
    code = ("import sys; sys.path.insert(0, 'learn'); import model, sampler, runpy; runpy.run_path('learn/grpo.py'); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'qwen2', 'grpo', 'data', 'train'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("name, args, expect", [
    ("model", [], "max |logit difference| to each row alone"),
    ("sampler", [], "(same)"),
    ("grpo", ["--steps", "3"], "greedy answers:"),
])
def test_each_file_runs(tmp_path, name, args, expect):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(LEARN / f"{name}.py"), *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert expect in out.stdout, out.stdout


def test_grpo_reward_rises():
    """A short run of learn/grpo.py's loop: the reward of its last steps beats its first ones'."""
    history = lgrpo.main(["--steps", "60"])
    first, last = (sum(s["reward"] for s in part) / len(part) for part in (history[:10], history[-10:]))
    assert last > first + 0.05, (first, last)
