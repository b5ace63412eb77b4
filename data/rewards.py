"""Rule-based rewards that score a GSM8K completion against the gold number.

GRPO needs no learned reward model here: a completion is scored by rules.
Each reward is a pure function of the completion text, called as
`fn(completion, answer=..., ...)` with the keyword arguments it names, out of:
`answer` (the gold answer), `question`, `tags` (the prompt template's two tag
names, e.g. ("think", "answer")) and every other field of the dataset row; a
function with `**kwargs` gets them all (`call_reward`). Your own functions
(reward.functions, data/reward_functions.py) are called the same way.

    format       1.0 if the text is exactly <think>...</think> <answer>...</answer>
    tag_count    0.25 for each of the four tags that appears exactly once
                 (a softer shaping signal, like open-r1's "tag_count"/willccbb's "xmlcount")
    integer      1.0 if the <answer> content is a plain integer
    correctness  1.0 if the <answer> content equals the gold number
    (overlong    DAPO's soft length penalty, in tokens: `overlong_penalty`, added by the trainer)

`Rewards` weights and sums them into a `Score`, and one of them decides
whether the answer counts as correct (reward.correct: the accuracy the log
reports); `combined_reward` is that for the built-ins. GSM8K_WEIGHTS is the
default recipe (format 0.1 + correctness 1.0, so a perfect completion scores
1.1). Tag names are a parameter so the "reasoning" prompt template
(<reasoning>/<answer>) works.

Safety: completions come from a model and can be huge or adversarial
('<think>' * 100000). Every check is linear time: tags are counted with
str.count, the answer is cut out with str.find, the only regexes have no
ambiguous nested quantifiers, and number parsing is capped at
MAX_NUMBER_CHARS. Numbers are compared exactly with Fraction, never floats.

Simplifications: no partial credit for "almost right" numbers, no units
("18 dollars" is not a number), no LaTeX (\\boxed{18}).
"""

from __future__ import annotations

import inspect
import math
import re
from fractions import Fraction
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

from qwen2.errors import InputError

from .math_answer import math_reward

DEFAULT_TAGS: tuple[str, str] = ("think", "answer")
GSM8K_WEIGHTS: dict[str, float] = {"format": 0.1, "correctness": 1.0}
# Longest answer content we try to read as a number. "-1,234,567.89" is 13
# characters; anything far longer is not a GSM8K answer, so skip the work.
MAX_NUMBER_CHARS = 64

# A cleaned-up number: optional minus, digits, optional decimal part. The
# literal "." separates the two digit runs, so there is exactly one way to
# match and no backtracking blow-up.
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
# integer_reward: digits only (an optional minus), no "$", commas or decimals.
_INTEGER_RE = re.compile(r"-?\d+")


@lru_cache(maxsize=None)
def format_pattern(tags: tuple[str, str] = DEFAULT_TAGS) -> re.Pattern:
    """Regex for the strict layout `<r>...</r> <a>...</a>` (whitespace around allowed).

    The lazy `.*?` groups could backtrack quadratically on text with many
    closing tags, so `has_strict_format` first checks that every tag occurs
    exactly once; then each `.*?` has a single place to stop and the match is
    linear.
    """
    reasoning, answer = (re.escape(tag) for tag in tags)
    return re.compile(rf"\s*<{reasoning}>.*?</{reasoning}>\s*<{answer}>.*?</{answer}>\s*", re.DOTALL)



def _tag_strings(tags: Sequence[str]) -> tuple[str, str, str, str]:
    """('think', 'answer') -> ('<think>', '</think>', '<answer>', '</answer>')."""
    if len(tags) != 2 or not all(isinstance(t, str) and t and not set(t) & set("<>/ ") for t in tags):
        raise ValueError(f"tags must be two bare tag names like ('think', 'answer'), got {tags!r}")
    reasoning, answer = tags
    return f"<{reasoning}>", f"</{reasoning}>", f"<{answer}>", f"</{answer}>"


# ---------------------------------------------------------------- parsing helpers


def extract_answer(completion: str, tag: str = "answer") -> str | None:
    """Text inside the last `<tag>...</tag>`, or None when there is no closed pair."""
    open_tag, close_tag = f"<{tag}>", f"</{tag}>"
    start = completion.rfind(open_tag)
    if start < 0:
        return None
    start += len(open_tag)
    end = completion.find(close_tag, start)
    return None if end < 0 else completion[start:end]


def parse_number(text: str) -> Fraction | None:
    """Read '$1,000', ' 18.0 ', '1000.' or '-3.5' as an exact Fraction; None if not a number."""
    text = text.strip()
    if len(text) > MAX_NUMBER_CHARS:
        return None
    cleaned = text.replace("$", "").replace(",", "").replace(" ", "")
    if cleaned.endswith("."):  # "The answer is 18." style trailing period
        cleaned = cleaned[:-1]
    if not _NUMBER_RE.fullmatch(cleaned):
        return None
    return Fraction(cleaned)  # exact: Fraction("18.0") == Fraction("18")


def answers_match(predicted: str, gold: str) -> bool:
    """True when `predicted` is a number equal to the gold number."""
    gold_value = parse_number(gold)
    if gold_value is None:
        raise ValueError(
            f"gold answer {gold[:40]!r} is not a number: pass the normalised GSM8K number (Problem.answer)"
        )
    predicted_value = parse_number(predicted)
    return predicted_value is not None and predicted_value == gold_value


def has_strict_format(completion: str, tags: Sequence[str] = DEFAULT_TAGS) -> bool:
    """True when the completion is exactly `<r>...</r>` then `<a>...</a>`, each tag once."""
    if any(completion.count(tag) != 1 for tag in _tag_strings(tags)):
        return False  # also what keeps the regex below linear
    return format_pattern(tuple(tags)).fullmatch(completion) is not None


# ---------------------------------------------------------------- reward functions


def format_reward(completion: str, answer: str, tags: Sequence[str] = DEFAULT_TAGS) -> float:
    """1.0 for the strict `<think>...</think><answer>...</answer>` layout, else 0.0."""
    return 1.0 if has_strict_format(completion, tags) else 0.0


def tag_count_reward(completion: str, answer: str, tags: Sequence[str] = DEFAULT_TAGS) -> float:
    """0.25 for each of the four tags that appears exactly once (0.0 to 1.0)."""
    return sum(0.25 for tag in _tag_strings(tags) if completion.count(tag) == 1)


def integer_reward(completion: str, answer: str, tags: Sequence[str] = DEFAULT_TAGS) -> float:
    """1.0 when the answer-tag content is a plain integer like '42' or '-7'."""
    _tag_strings(tags)  # validate tags, same error as the other rewards
    content = extract_answer(completion, tags[1])
    if content is None or len(content) > MAX_NUMBER_CHARS:
        return 0.0
    return 1.0 if _INTEGER_RE.fullmatch(content.strip()) else 0.0


def correctness_reward(completion: str, answer: str, tags: Sequence[str] = DEFAULT_TAGS) -> float:
    """1.0 when the answer-tag content equals the gold number `answer`."""
    _tag_strings(tags)  # validate tags, same error as the other rewards
    content = extract_answer(completion, tags[1])
    matched = answers_match("" if content is None else content, answer)  # validates gold even if no answer
    return 1.0 if matched else 0.0


RewardFn = Callable[..., float]


# What every reward function may ask for by name, given by us: a row's fields of these names are
# refused at load time (data/task.py), since they could not reach the function.
RESERVED_FIELDS = ("completion", "question", "answer", "tags")


def keyword_plan(fn: RewardFn) -> tuple[str | None, tuple[str, ...] | None]:
    """(the name of `fn`'s first parameter, which receives the completion; the keyword names it takes
    after it, or None when it takes **kwargs or has no signature to read)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: all keywords, none by name
        return None, None
    first = params[0].name if params and params[0].kind != params[0].VAR_POSITIONAL else None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return first, None
    return first, tuple(p.name for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def call_reward(fn: RewardFn, completion: str, available: dict[str, Any],
                plan: tuple[str | None, tuple[str, ...] | None] | None = None) -> float:
    """`fn(completion, **kwargs)` with the keyword arguments `fn` names out of `available` (all of them
    when it takes **kwargs, but never a second value for its first parameter): a reward reads only
    what it asks for, so rows may carry any fields. `plan`: keyword_plan(fn), when known."""
    first, names = plan or keyword_plan(fn)
    if names is None:
        return fn(completion, **{k: v for k, v in available.items() if k != first})
    return fn(completion, **{k: available[k] for k in names if k in available})


def missing_arguments(fn: RewardFn, available: set[str]) -> list[str]:
    """The parameters `fn` requires (no default) that `available` keywords cannot fill, and
    "completion" when it cannot take the completion as its first positional argument."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to check (a builtin): it is called and judged then
        return []
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        if not any(p.kind == p.VAR_POSITIONAL for p in params):
            return ["completion"]
    rest = params[1:] if params and params[0].kind != params[0].VAR_POSITIONAL else params
    return [p.name for p in rest if p.default is p.empty and (p.kind == p.POSITIONAL_ONLY or (
        p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in available))]


REWARD_FUNCTIONS: dict[str, RewardFn] = {
    "format": format_reward,
    "tag_count": tag_count_reward,
    "integer": integer_reward,
    "correctness": correctness_reward,
    "math": math_reward,
}


def overlong_penalty(length: int, max_tokens: int, buffer: int) -> float:
    """DAPO's soft overlong punishment of a completion of `length` tokens: 0 up to max_tokens - buffer,
    then linearly down to -1 at max_tokens, and -1 beyond. A reward part of its own, in tokens
    rather than text, so the trainer adds it (reward.overlong), not `combined_reward`."""
    start = max_tokens - buffer
    if length <= start:
        return 0.0
    if length >= max_tokens:
        return -1.0
    return (start - length) / buffer


@dataclass(frozen=True)
class Score:
    """A completion's score: each weighted reward part, their sum, and whether the answer is right."""

    parts: dict[str, float]  # name -> weight * reward, one entry per name in the weights
    total: float  # sum of the parts: the reward GRPO maximises
    correct: bool  # the answer equals the gold number, whatever the weights (for accuracy)

    def plus(self, name: str, value: float) -> Score:
        """This score with one more part (e.g. the overlong penalty)."""
        return Score({**self.parts, name: value}, self.total + value, self.correct)


class Rewards:
    """The reward of a task: named functions (the built-ins plus your own), their weights, and the one
    that decides "correct" (a value >= 1 counts as right: accuracy in the log and the evaluation)."""

    def __init__(self, weights: dict[str, float], functions: dict[str, RewardFn] | None = None,
                 correct: str = "auto") -> None:
        self.functions = {**REWARD_FUNCTIONS, **(functions or {})}
        unknown = sorted(set(weights) - set(self.functions))
        if unknown:
            names = ", ".join(map(repr, unknown))
            raise ValueError(f"unknown reward {names}: valid names are {', '.join(self.functions)}")
        self.weights = dict(weights)
        self.correct = correct_reward_name(weights, list(functions or {})) if correct == "auto" else correct
        if self.correct not in self.functions:
            raise ValueError(f"reward.correct = {self.correct!r} is no reward function: valid are "
                             f"{', '.join(self.functions)}")
        self._plans = {name: keyword_plan(fn) for name, fn in self.functions.items()}  # read each signature once

    def used(self, name: str) -> bool:
        """Whether `name` is called: weighted (not 0) or the one that decides "correct"."""
        return bool(self.weights.get(name)) or name == self.correct

    def score(self, completion: str, answer: str, tags: Sequence[str] = DEFAULT_TAGS, *, question: str = "",
              fields: dict[str, Any] | None = None, where: str = "") -> Score:
        """Each weighted part, their sum and the verdict for one completion; `fields` are the row's
        other fields and `where` names the row ("train.jsonl:12") in errors."""
        available = {**(fields or {}), "question": question, "answer": answer, "tags": tuple(tags)}
        raw = {name: self._call(name, completion, available, where) for name in self.functions if self.used(name)}
        parts = {name: weight * raw[name] if weight else 0.0 for name, weight in self.weights.items()}
        return Score(parts, sum(parts.values()), raw[self.correct] >= 1.0)

    def _call(self, name: str, completion: str, available: dict[str, Any], where: str) -> float:
        fn = self.functions[name]
        try:
            value = call_reward(fn, completion, available, self._plans[name])
        except Exception as err:  # the function's own bug: its traceback stays, this says where it struck
            if fn is not REWARD_FUNCTIONS.get(name):
                err.add_note(f"raised by reward function {name!r} on row {where or '?'} (completion: "
                             f"{completion[:60]!r}...)")
            raise
        returned = value
        try:  # a number of any kind (int, float, bool, a numpy or one-element tensor scalar), not text
            value = None if isinstance(returned, (str, bytes)) else float(returned)
        except (TypeError, ValueError, RuntimeError):
            value = None
        if value is None:
            raise InputError(f"reward function {name!r} returned {str(returned)[:40]!r} ({type(returned).__name__}) "
                             f"on row {where or '?'}: it must return a number (e.g. 1.0 for right, 0.0 for wrong)")
        if not math.isfinite(value):
            raise InputError(f"reward function {name!r} returned {value} on row {where or '?'}: it must return "
                             "a finite number")
        return value


def correct_reward_name(weights: dict[str, float], own: list[str]) -> str:
    """reward.correct: auto = correctness or math, whichever is weighted (not 0), else the first
    weighted function of your own, else correctness."""
    for name in ("correctness", "math", *own):
        if weights.get(name):
            return name
    return "correctness"


def combined_reward(
    completion: str,
    answer: str,
    weights: dict[str, float],
    tags: Sequence[str] = DEFAULT_TAGS,
) -> Score:
    """Weighted sum of the named built-in rewards, e.g. weights={"format": 0.1, "correctness": 1.0};
    correct = the gold number's (correctness)."""
    return Rewards(weights, correct="correctness").score(completion, answer, tags)
