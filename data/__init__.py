"""Data side of the trainer: problems in, prompts out, completions scored.

    gsm8k.py      JSONL into `Problem(question, answer, solution, fields)`: GSM8K's or any field names
    prompts.py    prompt templates and `build_messages(question, template)`; your own via the config
    rewards.py    rule-based rewards (format, tag_count, integer, correctness, math) -> Rewards -> Score
    reward_functions.py  your own reward functions (reward.functions), imported and checked
    task.py       Task: rows + prompt + rewards, what training, evaluation and resume share
    math_sets.py  which Hub file each math set is, and how its rows become ours
    synthetic.py  tiny arithmetic word problems for the offline CPU recipe
    math_answer.py  math answers (\\boxed{}, LaTeX) and math_equal: the reward `math`; math_expr.py its evaluator

Downloading the real files is `download.py` at the repository root.
"""

from data.gsm8k import Problem, load_gsm8k, load_problems
from data.prompts import TEMPLATES, build_messages, template_tags
from data.rewards import GSM8K_WEIGHTS, REWARD_FUNCTIONS, Rewards, Score, combined_reward
from data.task import Task
from data.synthetic import format_completion, make_problems

__all__ = [
    "Problem",
    "load_gsm8k",
    "load_problems",
    "Task",
    "Rewards",
    "TEMPLATES",
    "build_messages",
    "template_tags",
    "GSM8K_WEIGHTS",
    "REWARD_FUNCTIONS",
    "Score",
    "combined_reward",
    "make_problems",
    "format_completion",
]
