"""Load word problems from JSONL into small `Problem` records: GSM8K, or any task of your own.

Each GSM8K line is `{"question": ..., "answer": ...}` where `answer` is the
worked solution followed by `#### <number>`, e.g.

    "Natalia sold 48/2 = <<48/2=24>>24 clips in May. ... #### 72"

We split that into the reasoning text (`solution`) and the gold number
(`answer`, thousands commas removed: "1,080" -> "1080"). The Chinese
translation written by `download.py --dataset gsm8k_zh` uses the same two
fields, so the same loader reads it.

Any other JSONL works too (`load_problems(path, question_key, answer_key)`, config keys
`data.question_key` / `data.answer_key`): an answer that holds `####` is split as above, any
other answer (a word, a LaTeX expression, a number) is the gold answer as written, and the row's
other fields travel along in `Problem.fields`, to the reward functions and into samples.jsonl.

Simplifications: the whole file is read into memory (GSM8K is ~5 MB), and
the `<<48/2=24>>` calculator annotations are kept in `solution`; call
`strip_calculator_annotations` if you want them gone.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen2.errors import InputError, MissingInput

# The gold answer after "####" must look like a plain number once commas are
# removed. GSM8K only has integers (some negative); decimals are allowed for
# other datasets in the same format.
_GOLD_RE = re.compile(r"-?\d+(?:\.\d+)?")
# GSM8K solutions carry calculator calls like <<48/2=24>>; no nesting occurs.
_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True)
class Problem:
    """One word problem: the question, its gold number and the worked solution."""

    question: str
    answer: str  # gold answer: GSM8K's normalised number ("1080", "-7"), else the row's answer as written
    solution: str  # reasoning text that came before "####" ("" for answers without it)
    # The row's other fields (e.g. {"subject": "Algebra", "level": 3}): reward functions receive them
    # as keyword arguments. Not hashed: the values may be lists or dicts.
    fields: dict[str, Any] = field(default_factory=dict, hash=False)
    where: str = field(default="", compare=False)  # "train.jsonl:12": names the row in errors


def split_solution(answer_field: str) -> tuple[str, str]:
    """Split a GSM8K `answer` field into (solution text, normalised gold number).

    Raises ValueError (without location; `parse_line` adds it) when there is
    no `####` or the text after it is not a number.
    """
    if "####" not in answer_field:
        raise ValueError("answer has no '####' separator before the final number")
    solution, _, gold = answer_field.rpartition("####")
    gold = gold.strip().replace(",", "")
    if not _GOLD_RE.fullmatch(gold):
        raise ValueError(f"text after '####' is {gold[:40]!r}, not a number")
    return solution.strip(), gold


def number_text(value: int | float) -> str:
    """A JSON number as it would be written: 42 -> "42", 42.0 -> "42", 1e16 -> "10000000000000000",
    0.5 -> "0.5" (no exponents: the rewards read plain decimals)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return format(Decimal(repr(value)), "f")


def parse_line(line: str, where: str = "<string>", question_key: str = "question",
               answer_key: str = "answer", gsm8k: bool = True) -> Problem:
    """Parse one JSONL line; `where` (e.g. "train.jsonl:12") prefixes errors. The answer is split at
    GSM8K's `####` (required with `gsm8k`), else taken as written (a JSON number becomes its text)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        # json's messages may end in "at" ("Unterminated string starting at"): the column follows it.
        reason = err.msg.removesuffix(" at").removesuffix(" starting")
        raise InputError(f"{where}:{err.colno}: not valid JSON ({reason}); fix or delete the line") from None
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object with {question_key!r} and {answer_key!r}")
    number = row.get(answer_key)
    if not gsm8k and isinstance(number, (int, float)) and not isinstance(number, bool):
        row[answer_key] = number_text(number)  # {"answer": 42}: the number's text
    for key, setting in ((question_key, "question_key"), (answer_key, "answer_key")):
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            has = f" (the row has: {', '.join(map(str, list(row)[:8]))})" if key not in row else ""
            raise InputError(f"{where}: missing or empty string field {key!r}{has}; name the row's field with "
                             f"data.{setting}")
    answer = row[answer_key]
    if "####" in answer or gsm8k:
        try:
            solution, gold = split_solution(answer)
        except ValueError as err:
            raise InputError(f"{where}: {err}") from None
    else:
        solution, gold = "", answer.strip()
    fields = {k: v for k, v in row.items() if k not in (question_key, answer_key)}
    return Problem(question=row[question_key].strip(), answer=gold, solution=solution, fields=fields, where=where)


def load_problems(path: str | Path, question_key: str = "question", answer_key: str = "answer",
                  gsm8k: bool = False) -> list[Problem]:
    """Read every problem of a JSONL file (blank lines are skipped); the keys name the question's and
    the answer's fields (data.question_key, data.answer_key); `gsm8k` requires every answer to end in
    `#### N`."""
    path = Path(path)
    if not path.is_file():
        if path.parent.name in ("gsm8k", "gsm8k_zh") and path.name in ("train.jsonl", "test.jsonl"):
            # Where download.py puts the data set: it has not been fetched yet.
            raise MissingInput(f"GSM8K file {path} not found: run python download.py --dataset {path.parent.name} "
                               "(or place train.jsonl/test.jsonl there by hand)")
        near = sorted(p.name for p in path.parent.glob("*.jsonl")) if path.parent.is_dir() else []
        hint = f"; {path.parent} holds {', '.join(near[:5])}" if near else ""
        raise MissingInput(f"data file {path} not found: check the path{hint}")
    problems = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"{path}:{number}: not UTF-8 text (byte {err.start} of the line); "
                                 "save the file as UTF-8") from None
            if line.strip():
                problems.append(parse_line(line.rstrip("\r\n"), f"{path}:{number}", question_key, answer_key, gsm8k))
    if not problems:
        raise InputError(f"{path}: file has no problems; re-download it with python download.py")
    return problems


def load_gsm8k(path: str | Path) -> list[Problem]:
    """Read a GSM8K-format JSONL file: fields `question` and `answer`, every answer ending in `#### N`."""
    return load_problems(path, gsm8k=True)


def calculations(solution: str) -> list[str]:
    """The arithmetic a solution performs, in order: the expressions of GSM8K's `<<48/2=24>>`
    annotations, else those of plain `expression = result` steps (the synthetic problems write
    "7 + 5 = 12, 12 - 3 = 9"). What an SFT example with a calculator calls (scripts/sft.py)."""
    annotated = [a[2:-2].split("=")[0] for a in _CALCULATOR_RE.findall(solution)]
    if annotated:
        return annotated
    return [step.split("=")[0].strip() for step in re.split(r",\s*|\n", solution) if "=" in step]


def strip_calculator_annotations(solution: str) -> str:
    """Remove GSM8K's `<<48/2=24>>` calculator calls, leaving readable prose."""
    return _CALCULATOR_RE.sub("", solution)
