"""The math sets download.py fetches: which file of which Hugging Face dataset, and how one of its
rows becomes one of ours, `{question, answer, id, subject, level}` as data/gsm8k.py's loader reads
it (the answer as written: "\\frac{1}{2}", scored by the `math` reward, data/math_answer.py).

    math500        HuggingFaceH4/MATH-500 (JSONL): 500 MATH test problems, subject and level
    amc23          AI-MO/aimo-validation-amc, its 2023 rows (40)
    aime24         HuggingFaceH4/aime_2024 (30)
    olympiadbench  Hothan/OlympiadBench, the English open-ended competition maths (675)
    math_train     DigitalLearningGmbH/MATH-lighteval's train split (7500), answer = the solution's last \\boxed{}

Simplifications: one file per set; the row counts are those of the sets when this was written (a
different count is reported, not fatal); no deduplication against the test sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .math_answer import extract_math_answer


def _number(value) -> str:
    """An answer stored as a number (AMC's 142.0) as it is written: '142'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _level(value):
    """MATH's 'Level 3' -> 3 (MATH-500 writes 3); anything else as it is."""
    text = str(value).removeprefix("Level ").strip()
    return int(text) if text.isdigit() else value


def _math500(r: dict) -> dict:
    return dict(question=r["problem"], answer=r["answer"], id=r["unique_id"], subject=r["subject"], level=r["level"])


def _amc23(r: dict) -> dict | None:
    if "2023" not in str(r.get("url", "")):
        return None  # the copy holds AMC 12 2022 and 2023; AMC23 is the 2023 part
    return dict(question=r["problem"], answer=_number(r["answer"]), id=f"amc23/{r['id']}", url=r["url"])


def _aime24(r: dict) -> dict:
    return dict(question=r["problem"], answer=_number(r["answer"]), id=f"aime24/{r['id']}", url=r.get("url"))


def _olympiadbench(r: dict) -> dict:
    answers = r["final_answer"] if isinstance(r["final_answer"], list) else [r["final_answer"]]
    question = r["question"] if not r.get("context") else f"{r['context']}\n\n{r['question']}"
    return dict(question=question, answer=", ".join(str(a).strip().strip("$").strip() for a in answers),
                id=f"olympiadbench/{r['id']}", subject=r.get("subfield"))


def _math_train(r: dict) -> dict | None:
    answer = extract_math_answer(r["solution"])  # MATH's answer is the last \boxed{} of its solution
    if answer is None:
        return None
    return dict(question=r["problem"], answer=answer.strip().strip("$").strip(), subject=r["type"],
                level=_level(r["level"]))


@dataclass(frozen=True)
class HubSet:
    """One math set: which file of which Hub dataset, what we write, and how a row is rewritten."""

    repo: str
    filename: str
    split: str  # our file: test.jsonl or train.jsonl
    rows: int  # rows the set has after convert (a different count is reported, not fatal)
    convert: Callable[[dict], dict | None]  # a source row -> our row, or None to leave it out


MATH_SETS = {
    "math500": HubSet("HuggingFaceH4/MATH-500", "test.jsonl", "test", 500, _math500),
    "amc23": HubSet("AI-MO/aimo-validation-amc", "data/train-00000-of-00001.parquet", "test", 40, _amc23),
    "aime24": HubSet("HuggingFaceH4/aime_2024", "data/train-00000-of-00001.parquet", "test", 30, _aime24),
    "olympiadbench": HubSet("Hothan/OlympiadBench", "OE_TO_maths_en_COMP/train/0000.parquet", "test", 675,
                            _olympiadbench),
    "math_train": HubSet("DigitalLearningGmbH/MATH-lighteval", "data/train-00000-of-00001.parquet", "train", 7500,
                         _math_train),
}
