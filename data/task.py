"""A task: which rows to read, how a question becomes a prompt, and how a completion is scored.

GSM8K is one task (fields `question` / `answer "... #### N"`, the "think" prompt, format +
correctness rewards); your own is another, written entirely in the config (grpo/config.py
`Config.task()`):

    data:   {train_file: mine/train.jsonl, test_file: mine/test.jsonl,
             question_key: prompt_text, answer_key: target,
             system_prompt: "Answer with one word inside <answer></answer>.", tags: [think, answer]}
    reward: {functions: {exact: mine/rewards.py:exact}, weights: {format: 0.1, exact: 1.0}}

Training, evaluation (train.py's and scripts/eval.py --run), a --resume and every torchrun rank build
the same Task from the run's config, so they read, prompt and score alike.

Checks at load time, so a mismatch is one line before any training: each reward function of your
own can be called with the rows' fields; `correctness` (which compares numbers) is not asked to judge
gold answers that are not numbers (a word answer would otherwise score 0 forever, silently).

Simplification: every row is read into memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qwen2.errors import InputError

from .gsm8k import Problem, load_problems
from .prompts import PromptTemplate
from .reward_functions import check_arguments
from .rewards import RESERVED_FIELDS, REWARD_FUNCTIONS, Rewards, Score, parse_number


@dataclass
class Task:
    prompt: PromptTemplate  # system prompt, the two tags the rewards read, the user turn, thinking switch
    rewards: Rewards  # the weighted reward functions and the one that decides "correct"
    question_key: str = "question"
    answer_key: str = "answer"

    def load(self, path: str | Path) -> list[Problem]:
        """The rows of `path` as problems, checked against the reward functions."""
        problems = load_problems(path, self.question_key, self.answer_key)
        for p in problems:
            clash = [k for k in RESERVED_FIELDS if k in p.fields]
            if clash:
                raise InputError(f"{p.where}: the row has a field {clash[0]!r}, a name the reward functions get from "
                                 f"the trainer ({', '.join(RESERVED_FIELDS)}); rename it in the data (or make it "
                                 f"the question or answer: data.question_key / data.answer_key)")
        common = set.intersection(*(set(p.fields) for p in problems))
        own = {k: fn for k, fn in self.rewards.functions.items() if REWARD_FUNCTIONS.get(k) is not fn}
        check_arguments({k: fn for k, fn in own.items() if self.rewards.used(k)}, common, str(path))
        self._check_numeric_answers(problems)
        return problems

    def _check_numeric_answers(self, problems: list[Problem]) -> None:
        if not self.rewards.used("correctness"):
            return
        for p in problems:
            if parse_number(p.answer) is None:
                role = "is weighted" if self.rewards.weights.get("correctness") else "decides accuracy (reward.correct)"
                raise InputError(f"{p.where}: gold answer {p.answer[:40]!r} is not a number, but reward 'correctness' "
                                 f"{role} and compares numbers: score this data with 'math' or a function of your own "
                                 "(reward.functions), and name it in reward.correct")

    def score(self, completion: str, problem: Problem) -> Score:
        """The weighted reward parts of one completion of `problem` (the assistant's whole turn), their
        sum and the verdict: what grpo/rollout.py's score_groups computes for each episode."""
        return self.rewards.score(completion, problem.answer, self.prompt.tags, question=problem.question,
                                  fields=problem.fields, where=problem.where)
