"""Rollout: N questions x G samples through our sampler -> scored episodes.

Two phases, which the trainer times one after the other:
  sample_groups  each question becomes a chat prompt (system + user, rendered with the checkpoint's
                 own template), is repeated G times, and the whole batch goes through
                 `qwen2.generate` in one call; the sampler prefills each distinct prompt once and
                 shares its KV cache with the G rows
  score_groups   completions are decoded and scored by the reward functions
The stop token (`<|im_end|>`) stays in the completion
ids so the model is trained to stop. The sampler also reports the policy's entropy at every sampled
token (logged as `entropy`), so the update need not spend a pass over the vocabulary on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from data.gsm8k import Problem
from data.prompts import PromptTemplate, build_messages, get_template
from data.rewards import Rewards, Score, overlong_penalty
from qwen2 import GenerationOutput, Qwen2, SamplingParams, Tokenizer, generate
from qwen2.streams import Streams

from .tools import ToolRunner, tool_specs
from qwen2.errors import InputError

if TYPE_CHECKING:
    from .config import DataConfig


@dataclass
class Episode:
    group: int  # index of the question within the step; the G samples of a question share it
    prompt_ids: list[int]
    completion_ids: list[int]  # includes the stop token when the model stopped
    finished: bool  # False = hit max_new_tokens (truncated)
    text: str  # decoded completion, special tokens removed
    answer: str  # gold answer
    score: Score  # weighted reward parts, their sum (the reward), whether the answer is right
    entropies: list[float] = field(default_factory=list)  # the sampler's entropy at each completion token
    sampler_logprobs: list[float] = field(default_factory=list)  # its log-probs (grpo.old_logprobs: sampler)
    action_mask: list[int] = field(default_factory=list)  # with tools: 1 on the model's tokens, 0 on the tools'
    tool_calls: int = 0  # tool calls run in this episode
    tool_errors: int = 0  # ... of which the tool answered with an error

    @property
    def actions(self) -> list[int]:
        """1 on every completion token the model sampled (the loss's tokens), 0 on pushed-in context."""
        return self.action_mask or [1] * len(self.completion_ids)

    @property
    def reward(self) -> float:
        return self.score.total


def encode_prompt(tokenizer: Tokenizer, question: str, template: str | PromptTemplate,
                  tools: list[str] = ()) -> list[int]:
    """The chat prompt of a question, offering `tools` (grpo/tools.py) through the template."""
    return tokenizer.encode(prompt_text(tokenizer, question, template, tools))


def prompt_text(tokenizer: Tokenizer, question: str, template: str | PromptTemplate, tools: list[str] = ()) -> str:
    """The rendered chat prompt: the checkpoint's chat template over the template's messages, with its
    variables (Qwen3's enable_thinking) when the template sets them."""
    return tokenizer.apply_chat_template(build_messages(question, template), add_generation_prompt=True,
                                         tools=tool_specs(list(tools)), **get_template(template).chat_kwargs())


ASSISTANT_HEADER = "<|im_start|>assistant\n"  # where the assistant's turn starts in Qwen's chat format


def prefill(tokenizer: Tokenizer, template: str | PromptTemplate) -> str:
    """What the chat template itself writes into the assistant's turn before the model does: Qwen3
    with enable_thinking false pre-fills "<think>\n\n</think>\n\n". The rewards read the whole turn
    (this + the completion), so a format reward sees the reasoning block the template wrote."""
    text = prompt_text(tokenizer, "?", template)
    return text.rpartition(ASSISTANT_HEADER)[2] if ASSISTANT_HEADER in text else ""


def problems_that_fit(problems: list[Problem], tokenizer: Tokenizer, data: DataConfig,
                      tools: list[str] = ()) -> list[Problem]:
    """The training problems whose chat prompt has at most data.max_prompt_tokens tokens."""
    limit = data.max_prompt_tokens
    kept = [p for p in problems if len(encode_prompt(tokenizer, p.question, data.prompt, tools)) <= limit]
    if len(kept) < len(problems):
        print(f"skipping {len(problems) - len(kept)} of {len(problems)} training problems longer than "
              f"data.max_prompt_tokens={limit}")
    if not kept:
        raise InputError(f"no training problem in {data.train_file} fits data.max_prompt_tokens={limit}: raise it")
    return kept


def final_turn(tokens: list[int], action: list[int]) -> list[int]:
    """The tokens of the last turn: after the last pushed-in (tool) token."""
    last = max((j for j, a in enumerate(action) if not a), default=-1)
    return tokens[last + 1:]


@torch.no_grad()
def sample_groups(model: Qwen2, tokenizer: Tokenizer, problems: list[Problem], group_size: int, *,
                  max_new_tokens: int, template: str | PromptTemplate, sampling: SamplingParams,
                  streams: Streams | None = None, generator: torch.Generator | None = None, progress: bool = False,
                  return_logprobs: bool = False, return_entropies: bool = True, compile: bool = False,
                  tools: list[str] = (), max_tool_calls: int = 0,
                  ) -> tuple[list[list[int]], GenerationOutput, ToolRunner | None]:
    """Phase 1, generate: each problem's chat prompt, repeated `group_size` times, through the sampler.
    Returns the prompt of every row and the sampler's output (the sampler's log-probs with
    `return_logprobs`, for grpo.old_logprobs: sampler; its entropies always); `streams`: each row's
    random stream (qwen2.streams.Streams, in the rows' order), else `generator`; `compile`: the
    compiled static-shape decode step (rollout.compile); `tools`: the tools offered (rollout.tools),
    whose calls the returned ToolRunner ran (None without tools)."""
    prompts = [encode_prompt(tokenizer, p.question, template, tools) for p in problems]
    rows = [ids for ids in prompts for _ in range(group_size)]
    runner = None
    if tools:
        messages = [build_messages(p.question, template) for p in problems for _ in range(group_size)]
        runner = ToolRunner(tokenizer, messages, tool_specs(list(tools)), max_tool_calls,
                            get_template(template).chat_kwargs())
    out = generate(model, rows, max_new_tokens, sampling, stop_token_ids=tokenizer.stop_token_ids,
                   streams=streams, generator=generator, pad_token_id=tokenizer.pad_token_id, progress=progress,
                   return_entropies=return_entropies,
                   return_logprobs=return_logprobs, compile=compile,
                   on_stop=runner.on_stop if runner else None, room=runner.token_budget() if runner else 0)
    return rows, out, runner


def score_groups(tokenizer: Tokenizer, problems: list[Problem], rows: list[list[int]], out: GenerationOutput, *,
                 template: str | PromptTemplate, rewards: Rewards, overlong: tuple[int, int] | None = None,
                 first_group: int = 0, runner: ToolRunner | None = None) -> list[Episode]:
    """Phase 2, reward: decode and score every completion of `sample_groups` with `rewards` (the
    task's functions; the reward reads the assistant's whole turn: the template's pre-fill, if any,
    then the completion).

    `overlong` = (max_tokens, buffer) adds DAPO's soft length penalty as the reward part "overlong";
    groups are numbered from `first_group` (a step that samples in several rounds). With tools the
    reward reads the final turn (the one after the last tool answer), the episode's text is the
    whole exchange, and `length` (and the overlong penalty) counts the model's own tokens.
    """
    group_size = len(rows) // len(problems)
    tags, head = get_template(template).tags, prefill(tokenizer, template)
    episodes = []
    entropies = out.entropies or [[] for _ in rows]
    for i, (ids, toks, fin, ent) in enumerate(zip(rows, out.tokens, out.finished, entropies)):
        problem = problems[i // group_size]
        action = out.action_mask[i] if out.action_mask is not None else []
        text = tokenizer.decode(toks, skip_special_tokens=not action)  # a tool exchange keeps its markers
        final = tokenizer.decode(final_turn(toks, action), skip_special_tokens=True) if action else text
        # The template's pre-fill opens every assistant turn, the final one after a tool answer too.
        score = rewards.score(head + final, problem.answer, tags, question=problem.question,
                              fields=problem.fields, where=problem.where)
        if overlong is not None:
            score = score.plus("overlong", overlong_penalty(sum(action) if action else len(toks), *overlong))
        episodes.append(Episode(first_group + i // group_size, ids, toks, fin, text, problem.answer, score, ent,
                                out.logprobs[i] if out.logprobs is not None else [], action,
                                runner.calls.get(i, 0) if runner else 0, runner.errors.get(i, 0) if runner else 0))
    return episodes
