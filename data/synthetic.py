"""Synthetic one- and two-step arithmetic word problems for the offline tiny recipe.

A few-million-parameter model cannot learn GSM8K on a CPU in minutes, but it
can learn "Tom has 12 apples. He buys 7 more. How many apples does Tom have?"
The tiny recipe first fine-tunes (SFT) on `format_completion(problem)`, e.g.

    <think>12 + 7 = 19</think>
    <answer>19</answer>

and then GRPO-trains with the same rewards as GSM8K (`data.rewards`).

Problems are drawn from four templates (add, sub, mul, add_sub) with small
numbers. Generation is deterministic for a seed (`random.Random(seed)`).
Train and test never share a question: every question is assigned to one
split by a stable hash of its text (`split_of`), whatever the seed or size.

Simplifications: English only, whole numbers only, answers never negative.
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path

from data.gsm8k import Problem

KINDS = ("add", "sub", "mul", "add_sub")
SPLITS = ("train", "test")
TEST_PERCENT = 10  # share of all possible questions reserved for the test split

NAMES = (("Tom", "He"), ("Sam", "He"), ("Ben", "He"), ("Max", "He"),
         ("Ann", "She"), ("Mia", "She"), ("Eva", "She"), ("Lily", "She"))
ITEMS = ("apples", "pens", "books", "cards", "eggs", "coins", "cups", "toys")


def split_of(question: str) -> str:
    """'test' for a fixed ~TEST_PERCENT% of question texts, else 'train'.

    crc32 is stable across runs and machines (Python's hash() of a str is not),
    so a question always lands in the same split.
    """
    return "test" if zlib.crc32(question.encode("utf-8")) % 100 < TEST_PERCENT else "train"


def _sample(kind: str, rng: random.Random) -> Problem:
    """Draw one problem of `kind`; numbers stay small so a tiny model can learn them."""
    name, pronoun = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    if kind == "add":
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        question = f"{name} has {a} {item}. {pronoun} buys {b} more. How many {item} does {name} have?"
        result, steps = a + b, f"{a} + {b} = {a + b}"
    elif kind == "sub":
        a = rng.randint(2, 99)
        b = rng.randint(1, a)
        question = f"{name} has {a} {item}. {pronoun} gives away {b}. How many {item} does {name} have left?"
        result, steps = a - b, f"{a} - {b} = {a - b}"
    elif kind == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        question = f"{name} has {a} boxes with {b} {item} in each box. How many {item} does {name} have?"
        result, steps = a * b, f"{a} * {b} = {a * b}"
    else:  # add_sub: buy some, then give some away
        a, b = rng.randint(1, 49), rng.randint(1, 49)
        c = rng.randint(1, a + b)
        question = (f"{name} has {a} {item}. {pronoun} buys {b} more and then gives away {c}. "
                    f"How many {item} does {name} have now?")
        result, steps = a + b - c, f"{a} + {b} = {a + b}, {a + b} - {c} = {a + b - c}"
    return Problem(question=question, answer=str(result), solution=steps)


def make_problems(n: int, seed: int, split: str = "train", kinds: tuple[str, ...] = KINDS) -> list[Problem]:
    """`n` distinct problems of the given kinds from `split`, deterministic for `seed`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown problem kinds {bad or kinds!r}: choose from {', '.join(KINDS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    problems: list[Problem] = []
    seen: set[str] = set()
    # Rejection sampling: keep draws that belong to `split` and are new. The
    # test split accepts ~1 draw in 10, so allow a few times that many draws.
    for _ in range(40 * n + 1000):
        if len(problems) == n:
            break
        problem = _sample(rng.choice(kinds), rng)
        if problem.question not in seen and split_of(problem.question) == split:
            seen.add(problem.question)
            problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"could only make {len(problems)} distinct {split} problems of kinds {kinds}: ask for fewer")
    return problems


def format_completion(problem: Problem, tags: tuple[str, str] = ("think", "answer")) -> str:
    """The SFT target in the exact reward format: '<think>12 + 7 = 19</think>\\n<answer>19</answer>'."""
    reasoning, answer = tags
    return f"<{reasoning}>{problem.solution}</{reasoning}>\n<{answer}>{problem.answer}</{answer}>"


def write_jsonl(problems: list[Problem], path: str | Path) -> Path:
    """Write problems in GSM8K's own JSONL format ("solution\\n#### answer"), so `load_gsm8k` reads them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for p in problems:
            f.write(json.dumps({"question": p.question, "answer": f"{p.solution}\n#### {p.answer}"}) + "\n")
    return path
