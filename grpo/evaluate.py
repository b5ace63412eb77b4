"""Evaluation: completions for held-out questions, scored by the reward functions.

Default: greedy pass@1, one completion per question (what train.py logs as eval_accuracy unless
train.eval_samples / eval_temperature ask for sampling).
With the rollout's SamplingParams (temperature, top_p, top_k) and `samples` > 1 it is the mean
over `samples` seeded samples per question (mean@k): the expected reward of the sampling policy
itself, the quantity GRPO maximises. It moves as soon as GRPO shifts probability towards right
answers, before the greedy argmax flips.
Simplifications: no majority voting; questions are batched in order, not by length.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from data.gsm8k import Problem
from data.prompts import PromptTemplate
from data.rewards import Rewards
from qwen2 import GREEDY, Qwen2, SamplingParams, Tokenizer
from qwen2.errors import InputError
from qwen2.streams import Streams, stream_key

from .eval_stats import by_question, pass_at_k
from .machinery.distributed import Dist, full_weights
from .rollout import sample_groups, score_groups


EVAL_STREAM = -1  # in the place of the step number: evaluation's draws are none of training's


@torch.no_grad()
def evaluate(model: Qwen2, tokenizer: Tokenizer, problems: list[Problem], *, max_new_tokens: int,
             template: str | PromptTemplate, rewards: Rewards, batch_size: int = 64, progress: bool = False,
             sampling: SamplingParams = GREEDY, samples: int = 1, seed: int = 0, compile: bool = False,
             tools: list[str] = (), max_tool_calls: int = 4, question_ids: Sequence[int] | None = None,
             ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Returns (summary, per-completion results); summary has accuracy, reward, mean length, truncated
    share, the number of completions `n` and of `questions`, and the sampling temperature (and with
    `tools` the tool calls per completion). `rewards` score the completions and decide "correct"
    (the task's, data/task.py); each result carries its row's other fields (subject, level, ...).

    batch_size counts questions; each of them is sampled `samples` times (greedy needs 1); `compile`
    decodes with the compiled static-shape step (qwen2/static_decode.py); `tools` offers them as the
    rollouts do (grpo/tools.py): each result then holds the whole exchange. Sampled, sample j of
    question i draws from the stream (seed, i, j) (qwen2/streams.py), `question_ids` giving each
    problem's i (default its position): the draws do not depend on batch size or how many ranks
    share the questions. With samples > 1 the summary also has pass_at_k: the share of questions
    with at least one correct sample.
    """
    if samples < 1 or (sampling.temperature == 0 and samples != 1):
        raise InputError(f"samples must be >= 1, and 1 when temperature is 0 (greedy): got samples={samples} at "
                         f"temperature {sampling.temperature}; sample with a temperature > 0 to draw several")
    device = next(model.parameters()).device
    ids = list(range(len(problems))) if question_ids is None else list(question_ids)
    results = []
    batches = range(0, len(problems), batch_size)
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc="eval", leave=False)
    for start in batches:
        questions = problems[start:start + batch_size]
        keys = [stream_key(seed, EVAL_STREAM, i, j) for i in ids[start:start + batch_size] for j in range(samples)]
        rows, out, runner = sample_groups(model, tokenizer, questions, samples, max_new_tokens=max_new_tokens,
                                          template=template, sampling=sampling, streams=Streams.of(keys, device),
                                          return_entropies=False, compile=compile, tools=tools,
                                          max_tool_calls=max_tool_calls)
        for e in score_groups(tokenizer, questions, rows, out, template=template, rewards=rewards, runner=runner):
            result = {**questions[e.group].fields,  # the row's own fields first: ours win a name clash
                      **dict(question=questions[e.group].question, answer=e.answer, completion=e.text,
                             correct=e.score.correct, reward=e.reward, length=sum(e.actions), finished=e.finished,
                             **e.score.parts)}
            if tools:
                result |= dict(tool_calls=e.tool_calls, tool_errors=e.tool_errors)
            results.append(result)
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
    if tools:
        summary["tool_calls"] = sum(r["tool_calls"] for r in results) / n
    if samples > 1:  # pass@k at k = samples: a question with any right sample (grpo/eval_stats.py)
        per_question = [sum(r["correct"] for r in g) for g in by_question(results, samples)]
        summary["pass_at_k"] = sum(pass_at_k(samples, c, samples) for c in per_question) / max(len(per_question), 1)
    return summary, results


def evaluate_on_ranks(model: Qwen2, tokenizer: Tokenizer, problems: list[Problem], dist: Dist,
                      **kwargs: Any) -> dict[str, float]:
    """`evaluate` with several ranks (torchrun): each its slice of the questions, with the full
    weights gathered once, and the summary over all of them (the means weighted by completions).
    One process: `evaluate` itself. Returns the summary."""
    with full_weights(model):
        summary, _ = evaluate(model, tokenizer, problems[dist.rank::dist.world],
                              question_ids=range(dist.rank, len(problems), dist.world), **kwargs)
    means = ("accuracy", "reward", "length", "truncated", *(("tool_calls",) if "tool_calls" in summary else ()))
    solved = summary.get("pass_at_k", 0.0) * summary["questions"]
    *totals, n, q, solved = dist.sum([summary[k] * summary["n"] for k in means] + [summary["n"], summary["questions"],
                                                                                    solved])
    passed = {"pass_at_k": solved / max(q, 1)} if "pass_at_k" in summary else {}
    return summary | {k: v / max(n, 1) for k, v in zip(means, totals)} | {"n": int(n), "questions": int(q)} | passed
