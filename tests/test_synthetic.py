"""Synthetic arithmetic problems: deterministic, correct, held out, reward-ready."""

from __future__ import annotations

import operator
import re

import pytest

from data.rewards import GSM8K_WEIGHTS, combined_reward, integer_reward
from data.synthetic import KINDS, format_completion, make_problems, split_of

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
STEP_RE = re.compile(r"(\d+) ([-+*]) (\d+) = (-?\d+)")
TRAIN = make_problems(2000, seed=0)
TEST = make_problems(300, seed=1, split="test")


def test_same_seed_same_problems_other_seed_other_problems():
    assert make_problems(50, seed=7) == make_problems(50, seed=7)
    assert make_problems(50, seed=7) != make_problems(50, seed=8)
    assert make_problems(20, seed=7) == make_problems(50, seed=7)[:20]  # n only truncates


def test_held_out_questions_never_appear_in_training():
    assert not {p.question for p in TRAIN} & {p.question for p in TEST}
    # Also across seeds: the split is a property of the question text.
    other_train = make_problems(2000, seed=123)
    assert not {p.question for p in other_train} & {p.question for p in TEST}
    assert all(split_of(p.question) == "train" for p in TRAIN)
    assert all(split_of(p.question) == "test" for p in TEST)


def test_problems_within_a_set_are_distinct():
    assert len({p.question for p in TRAIN}) == len(TRAIN)


def test_every_step_of_every_solution_is_right_and_ends_at_the_answer():
    for p in TRAIN + TEST:
        steps = STEP_RE.findall(p.solution)
        assert steps, p.solution
        for a, op, b, result in steps:
            assert OPS[op](int(a), int(b)) == int(result), p.solution
            assert a in p.question or a == steps[0][3]  # operands come from the question or the first step
        assert steps[-1][3] == p.answer


def test_numbers_stay_small_and_answers_are_whole_and_non_negative():
    for p in TRAIN:
        for a, op, b, _ in STEP_RE.findall(p.solution):
            limit = 12 if op == "*" else 99
            assert (2 if op == "*" else 1) <= int(b) <= limit
        assert p.answer.isdigit()
        assert int(p.answer) <= 198


def test_all_kinds_show_up_and_kinds_can_be_restricted():
    solutions = [p.solution for p in TRAIN]
    assert any("*" in s for s in solutions) and any("," in s for s in solutions)
    assert any(" + " in s and "," not in s for s in solutions) and any(" - " in s and "," not in s for s in solutions)
    only_mul = make_problems(30, seed=0, kinds=("mul",))
    assert all(" * " in p.solution and "boxes" in p.question for p in only_mul)


def test_format_completion_earns_the_full_reward():
    for p in TRAIN[:200] + TEST[:50]:
        text = format_completion(p)
        assert combined_reward(text, p.answer, GSM8K_WEIGHTS).total == pytest.approx(1.1)
        assert integer_reward(text, p.answer) == 1.0
        assert len(text) < 80  # the tiny model generates only ~30 tokens
    assert format_completion(TRAIN[0]) == f"<think>{TRAIN[0].solution}</think>\n<answer>{TRAIN[0].answer}</answer>"


def test_format_completion_follows_other_tags():
    text = format_completion(TRAIN[0], tags=("reasoning", "answer"))
    assert combined_reward(text, TRAIN[0].answer, GSM8K_WEIGHTS, tags=("reasoning", "answer")).total == pytest.approx(1.1)


@pytest.mark.parametrize(
    "kwargs, cause",
    [
        ({"split": "val"}, "unknown split"),
        ({"kinds": ("div",)}, "unknown problem kinds"),
        ({"kinds": ()}, "unknown problem kinds"),
        ({"n": -1}, "n must be >= 0"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, cause):
    args = {"n": 5, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=cause):
        make_problems(**args)


def test_asking_for_more_problems_than_exist_is_an_error():
    # mul questions: 11 * 11 operand pairs * 8 names * 8 items = 7744, ~10% of them in test.
    with pytest.raises(ValueError, match="ask for fewer"):
        make_problems(1000, seed=0, split="test", kinds=("mul",))


def test_kinds_constant_matches_generated_kinds():
    assert set(KINDS) == {"add", "sub", "mul", "add_sub"}
    assert make_problems(0, seed=0) == []
