"""Greedy pass@1 evaluation: one greedy completion per question, scored by the reward functions."""

from __future__ import annotations

from typing import Any

import torch

from data.gsm8k import Problem
from qwen2 import Qwen2, Tokenizer, generate

from .rollout import encode_prompt, score


@torch.no_grad()
def evaluate(model: Qwen2, tokenizer: Tokenizer, problems: list[Problem], *, max_new_tokens: int, template: str,
             reward_weights: dict[str, float], batch_size: int = 64, progress: bool = False) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Returns (summary, per-question results); summary has accuracy, reward, mean length, truncated share."""
    results = []
    batches = range(0, len(problems), batch_size)
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc="eval", leave=False)
    for start in batches:
        chunk = problems[start:start + batch_size]
        prompts = [encode_prompt(tokenizer, p.question, template) for p in chunk]
        out = generate(model, prompts, max_new_tokens, temperature=0.0, stop_token_ids=tokenizer.stop_token_ids,
                       pad_token_id=tokenizer.pad_token_id)
        for p, toks, fin in zip(chunk, out.tokens, out.finished):
            text = tokenizer.decode(toks, skip_special_tokens=True)
            parts, reward, correct = score(text, p.answer, reward_weights, template)
            results.append(dict(question=p.question, answer=p.answer, completion=text, correct=correct,
                                reward=reward, length=len(toks), finished=fin, **parts))
    n = max(len(results), 1)
    summary = dict(
        accuracy=sum(r["correct"] for r in results) / n,
        reward=sum(r["reward"] for r in results) / n,
        length=sum(r["length"] for r in results) / n,
        truncated=sum(not r["finished"] for r in results) / n,
        n=len(results),
    )
    return summary, results
