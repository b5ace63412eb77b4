"""Evaluation: completions for held-out questions, scored by the reward functions.

Default: greedy pass@1, one completion per question (what train.py logs as eval_accuracy).
With the rollout's SamplingParams (temperature, top_p, top_k) and `samples` > 1 it is the mean
over `samples` seeded samples per question (mean@k): the expected reward of the sampling policy
itself, the quantity GRPO maximises. It moves as soon as GRPO shifts probability towards right
answers, before the greedy argmax flips.
Simplifications: no majority voting; questions are batched in order, not by length.
"""

from __future__ import annotations

from typing import Any

import torch

from data.gsm8k import Problem
from data.prompts import template_tags
from data.rewards import combined_reward
from qwen2 import GREEDY, Qwen2, SamplingParams, Tokenizer, generate
from qwen2.errors import InputError

from .distributed import Dist, full_weights
from .rollout import encode_prompt


@torch.no_grad()
def evaluate(model: Qwen2, tokenizer: Tokenizer, problems: list[Problem], *, max_new_tokens: int, template: str,
             reward_weights: dict[str, float], batch_size: int = 64, progress: bool = False,
             sampling: SamplingParams = GREEDY, samples: int = 1, seed: int = 0,
             compile: bool = False) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Returns (summary, per-completion results); summary has accuracy, reward, mean length, truncated
    share, the number of completions `n` and of `questions`, and the sampling temperature.

    batch_size counts questions; each of them is sampled `samples` times (greedy needs 1); `compile`
    decodes with the compiled static-shape step (qwen2/static_decode.py).
    """
    if samples < 1 or (sampling.temperature == 0 and samples != 1):
        raise InputError(f"samples must be >= 1, and 1 when temperature is 0 (greedy): got samples={samples} at "
                         f"temperature {sampling.temperature}; sample with a temperature > 0 to draw several")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if sampling.temperature > 0 else None
    tags = template_tags(template)
    results = []
    batches = range(0, len(problems), batch_size)
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc="eval", leave=False)
    for start in batches:
        questions = problems[start:start + batch_size]
        encoded = [encode_prompt(tokenizer, p.question, template) for p in questions]
        chunk = [p for p in questions for _ in range(samples)]
        prompts = [ids for ids in encoded for _ in range(samples)]  # the sampler prefills each distinct prompt once
        out = generate(model, prompts, max_new_tokens, sampling, stop_token_ids=tokenizer.stop_token_ids,
                       pad_token_id=tokenizer.pad_token_id, generator=generator, compile=compile)
        for p, toks, fin in zip(chunk, out.tokens, out.finished):
            text = tokenizer.decode(toks, skip_special_tokens=True)
            score = combined_reward(text, p.answer, reward_weights, tags)
            results.append(dict(question=p.question, answer=p.answer, completion=text, correct=score.correct,
                                reward=score.total, length=len(toks), finished=fin, **score.parts))
    n = max(len(results), 1)
    summary = dict(
        accuracy=sum(r["correct"] for r in results) / n,
        reward=sum(r["reward"] for r in results) / n,
        length=sum(r["length"] for r in results) / n,
        truncated=sum(not r["finished"] for r in results) / n,
        n=len(results),
        questions=len(problems),
        temperature=sampling.temperature,
    )
    return summary, results


def evaluate_on_ranks(model: Qwen2, tokenizer: Tokenizer, problems: list[Problem], dist: Dist,
                      **kwargs: Any) -> dict[str, float]:
    """`evaluate` with several ranks (torchrun): each its slice of the questions, with the full
    weights gathered once, and the summary over all of them (the means weighted by completions).
    One process: `evaluate` itself. Returns the summary."""
    with full_weights(model):
        summary, _ = evaluate(model, tokenizer, problems[dist.rank::dist.world], **kwargs)
    means = ("accuracy", "reward", "length", "truncated")
    *totals, n, q = dist.sum([summary[k] * summary["n"] for k in means] + [summary["n"], summary["questions"]])
    return summary | {k: v / max(n, 1) for k, v in zip(means, totals)} | {"n": int(n), "questions": int(q)}
