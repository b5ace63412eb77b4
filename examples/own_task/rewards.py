"""Reward functions for the capitals example (examples/own_task/config.yaml), loaded by train.py
from this file through `reward.functions` (data/reward_functions.py).

A reward function takes the completion text first, then, by keyword, whichever of these it names:
`answer` (the row's gold answer, from data.answer_key), `question`, `tags` (the prompt's two tag
names) and any other field of the dataset row (`aliases` here). It returns a number. Name one of
them in reward.correct and a value >= 1 counts as a right answer (the log's acc, eval_accuracy).
"""

import unicodedata


def _plain(text: str) -> str:
    """'  Bogotá.' -> 'bogota': case, accents, spaces and a final full stop do not matter."""
    text = unicodedata.normalize("NFKD", text.strip().rstrip(".")).encode("ascii", "ignore").decode()
    return " ".join(text.lower().split())


def _answer_tag(completion: str, tag: str) -> str | None:
    """The text inside the last <tag>...</tag>, or None."""
    start = completion.rfind(f"<{tag}>")
    end = completion.find(f"</{tag}>", start)
    return completion[start + len(tag) + 2:end] if start >= 0 and end >= 0 else None


def capital(completion: str, answer: str, aliases: list[str] = (), tags=("think", "answer")) -> float:
    """1.0 when the answer tag names the capital or one of its other names (the row's `aliases`)."""
    said = _answer_tag(completion, tags[1])
    return float(said is not None and _plain(said) in {_plain(name) for name in (answer, *aliases)})


def brevity(completion: str, **fields) -> float:
    """A little shaping: 1.0 for an answer of at most 3 words, else 0.0 (takes every field, uses none)."""
    said = _answer_tag(completion, "answer")
    return float(said is not None and len(said.split()) <= 3)
