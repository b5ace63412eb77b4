"""Rewards and prompt templates, scored against real GSM8K fixture rows."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import pytest

from data.gsm8k import load_gsm8k
from data.prompts import TEMPLATES, build_messages, template_tags
from data.rewards import (
    GSM8K_WEIGHTS,
    MAX_NUMBER_CHARS,
    REWARD_FUNCTIONS,
    answers_match,
    combined_reward,
    correctness_reward,
    overlong_penalty,
    extract_answer,
    format_reward,
    integer_reward,
    parse_number,
    tag_count_reward,
)

FIXTURES = Path(__file__).parent / "fixtures" / "gsm8k"
PROBLEMS = load_gsm8k(FIXTURES / "train_sample.jsonl") + load_gsm8k(FIXTURES / "test_sample.jsonl")
PERFECT = GSM8K_WEIGHTS["format"] + GSM8K_WEIGHTS["correctness"]  # 1.1


def completion(reasoning: str, answer: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n<answer>{answer}</answer>"


def gsm8k_score(text: str, answer: str, tags=("think", "answer")):
    return combined_reward(text, answer, GSM8K_WEIGHTS, tags=tags)


# ---------------------------------------------------------------- the GSM8K reward on real rows


def test_gold_inside_tags_scores_format_plus_answer_on_every_fixture_row():
    assert PERFECT == pytest.approx(1.1)
    for p in PROBLEMS:
        score = gsm8k_score(completion(p.solution, p.answer), p.answer)
        assert score.total == pytest.approx(PERFECT), p
        assert score.parts == pytest.approx({"format": 0.1, "correctness": 1.0}) and score.correct is True


def test_wrong_number_keeps_only_the_format_reward():
    for p in PROBLEMS:
        wrong = str(Fraction(p.answer) + 1)
        score = gsm8k_score(completion(p.solution, wrong), p.answer)
        assert score.total == pytest.approx(0.1) and score.parts["correctness"] == 0.0 and score.correct is False


@pytest.mark.parametrize(
    "spelling",
    [
        lambda n: f"${n:,}",  # $1,000
        lambda n: f"{n}.0",  # 1000.0
        lambda n: f" {n} ",  # padded
        lambda n: f"{n}.",  # trailing period
        lambda n: f"{n:,}.00",  # 1,000.00
        lambda n: f"\n{n}\n",  # on its own line
    ],
)
def test_equivalent_spellings_of_the_gold_number_are_correct(spelling):
    for p in PROBLEMS:
        assert gsm8k_score(completion("...", spelling(int(p.answer))), p.answer).parts["correctness"] == 1.0


def test_thousands_and_dollars_normalise_to_the_same_value():
    values = {parse_number(s) for s in ["$1,000", "1000.0", " 1000 ", "1000.", "1 000", "1000"]}
    assert values == {Fraction(1000)}


def test_negatives_and_decimals_compare_exactly():
    assert answers_match("-7", "-7") and answers_match("$-7.0", "-7")
    assert not answers_match("7", "-7")
    assert answers_match("-3.50", "-3.5") and answers_match("0.1", "0.10")
    assert not answers_match("0.3", "0.33")
    # Floats would call these equal; exact comparison must not.
    assert float("12345678901234567891") == float("12345678901234567890")
    assert not answers_match("12345678901234567891", "12345678901234567890")
    assert not answers_match("0.30000000000000001", "0.3")


@pytest.mark.parametrize("not_a_number", ["seventy-two", "72 apples", "1e3", "", "-", "$", ".", "72/1", "NaN"])
def test_non_numbers_are_never_correct(not_a_number):
    assert parse_number(not_a_number) is None
    assert correctness_reward(completion("...", not_a_number), "72") == 0.0


def test_gold_that_is_not_a_number_is_a_clear_error():
    with pytest.raises(ValueError, match="gold answer 'abc' is not a number"):
        gsm8k_score(completion("...", "1"), "abc")


# ---------------------------------------------------------------- format


P = PROBLEMS[0]


@pytest.mark.parametrize(
    "text",
    [
        f"<think>{P.solution}</think><answer>{P.answer}</answer>",  # no whitespace at all
        f"  \n<think>{P.solution}</think>  \n\n <answer>{P.answer}</answer>\n  ",  # whitespace around
        f"<think></think>\n<answer>{P.answer}</answer>",  # empty reasoning
    ],
)
def test_accepted_layouts_get_the_format_reward(text):
    assert format_reward(text, P.answer) == 1.0
    assert gsm8k_score(text, P.answer).total == pytest.approx(PERFECT)


@pytest.mark.parametrize(
    "text, answer_still_counts",
    [
        (f"<think>{P.solution}\n<answer>{P.answer}</answer>", True),  # missing </think>
        (f"{P.solution}</think>\n<answer>{P.answer}</answer>", True),  # missing <think>
        (f"<answer>{P.answer}</answer>\n<think>{P.solution}</think>", True),  # answer before think
        (f"<think>{P.solution}</think>\n<answer>{P.answer}</answer> Hope this helps!", True),  # text after
        (f"Sure! <think>{P.solution}</think>\n<answer>{P.answer}</answer>", True),  # text before
        (f"<think>{P.solution}</think> so <answer>{P.answer}</answer>", True),  # text between
        (f"<think>a</think><answer>1</answer><think>b</think><answer>{P.answer}</answer>", True),  # twice
        (f"<think>{P.solution}</think>\n<answer>{P.answer}", False),  # unclosed answer
        (f"<think>{P.solution}</think>\n{P.answer}", False),  # no answer tags
    ],
)
def test_mangled_tags_get_no_format_reward(text, answer_still_counts):
    score = gsm8k_score(text, P.answer)
    assert score.parts["format"] == 0.0
    # Format and correctness are separate signals: the last closed <answer> still counts.
    assert score.parts["correctness"] == (1.0 if answer_still_counts else 0.0)


def test_extract_answer_takes_the_last_closed_answer():
    assert extract_answer("<answer>1</answer> <answer>2</answer>") == "2"
    assert extract_answer("<answer>1</answer> <answer>2") is None
    assert extract_answer("no tags") is None


# ---------------------------------------------------------------- adversarial inputs stay cheap


MB = 1_000_000
ADVERSARIAL = {
    "many think": "<think>" * (MB // 7),
    "huge comma number": "<answer>" + "1," * (MB // 2),
    "huge comma number closed": "<answer>" + "1," * (MB // 2) + "</answer>",
    "many closing pairs": "<think>" + "</think><answer></answer>" * (MB // 25) + "x",
    "long think then junk": "<think>" + "a" * MB + "</think><answer>1</answer>x",
    "long whitespace": "<think></think>" + " \n" * (MB // 2) + "<answer>1</answer>" + " " * MB + "x",
    "many answers": "<answer>1</answer>" * (MB // 18),
    "open answers": "<answer>" * (MB // 8) + "</answer>",
    "digits": "<think></think><answer>" + "9" * MB + "</answer>",
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_megabyte_completion_is_scored_quickly(name):
    text = ADVERSARIAL[name]
    all_rewards = dict.fromkeys(REWARD_FUNCTIONS, 1.0)
    start = time.perf_counter()
    score = combined_reward(text, "1", all_rewards)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{name} took {elapsed:.2f}s"
    assert 0.0 <= score.total <= len(REWARD_FUNCTIONS)


def test_overlong_answer_content_is_not_parsed():
    assert parse_number("1" * (MAX_NUMBER_CHARS + 1)) is None
    assert parse_number("1" * MAX_NUMBER_CHARS) == int("1" * MAX_NUMBER_CHARS)


# ---------------------------------------------------------------- tag_count and integer


def test_tag_count_gives_a_quarter_per_tag_seen_exactly_once():
    good = completion(P.solution, P.answer)
    assert tag_count_reward(good, P.answer) == 1.0
    for tag in ["<think>", "</think>", "<answer>", "</answer>"]:
        assert tag_count_reward(good.replace(tag, ""), P.answer) == 0.75  # missing
        assert tag_count_reward(good.replace(tag, tag * 2), P.answer) == 0.75  # doubled
    assert tag_count_reward("", P.answer) == 0.0
    assert tag_count_reward("<think><think></think></think>", P.answer) == 0.0


@pytest.mark.parametrize(
    "content, expected",
    [("72", 1.0), (" -7 ", 1.0), ("72.5", 0.0), ("$72", 0.0), ("1,000", 0.0), ("72.0", 0.0), ("x", 0.0)],
)
def test_integer_reward_wants_bare_digits(content, expected):
    assert integer_reward(completion("...", content), "72") == expected


def test_integer_reward_needs_a_closed_answer_tag():
    assert integer_reward("<think>72</think> 72", "72") == 0.0


# ---------------------------------------------------------------- combined_reward


def test_combined_reward_weights_each_part_and_sums_them():
    weights = {"format": 0.5, "tag_count": 2.0, "integer": 0.3, "correctness": 1.5}
    texts = [
        completion(P.solution, P.answer),
        completion(P.solution, "$1,000,000.5"),
        f"<think>x<answer>{P.answer}</answer>",
    ]
    for text in texts:
        score = combined_reward(text, P.answer, weights)
        assert list(score.parts) == list(weights)
        for name, weight in weights.items():
            assert score.parts[name] == pytest.approx(weight * REWARD_FUNCTIONS[name](text, P.answer))
        assert score.total == pytest.approx(sum(score.parts.values()))
        assert score.correct == (correctness_reward(text, P.answer) == 1.0)


def test_correct_is_reported_even_when_correctness_is_not_weighted():
    score = combined_reward(completion("", P.answer), P.answer, {"format": 1.0})
    assert score.correct is True and "correctness" not in score.parts
    assert score.total == 1.0


def test_unknown_reward_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        combined_reward("x", "1", {"format": 1.0, "length": 0.5})
    message = str(info.value)
    assert "'length'" in message and all(name in message for name in REWARD_FUNCTIONS)


def test_bad_tags_are_a_clear_error():
    with pytest.raises(ValueError, match="two bare tag names"):
        format_reward("x", "1", tags=("<think>", "answer"))
    with pytest.raises(ValueError, match="two bare tag names"):
        combined_reward("x", "1", {"format": 1.0}, tags=("think",))


# ---------------------------------------------------------------- templates and their tags


def test_reasoning_template_tags_drive_the_rewards():
    tags = template_tags("reasoning")
    text = f"<reasoning>\n{P.solution}\n</reasoning>\n<answer>\n{P.answer}\n</answer>"
    assert gsm8k_score(text, P.answer, tags=tags).total == pytest.approx(PERFECT)
    assert gsm8k_score(text, P.answer).parts["format"] == 0.0  # default <think> tags are absent
    assert combined_reward(text, P.answer, {"tag_count": 1.0}, tags=tags).parts["tag_count"] == 1.0


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_every_template_asks_for_its_own_tags(name):
    messages = build_messages(P.question, name)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == P.question
    for tag in template_tags(name):
        assert f"<{tag}>" in messages[0]["content"] and f"</{tag}>" in messages[0]["content"]


def test_chinese_template_is_written_in_chinese():
    system = build_messages("问题", "chinese")[0]["content"]
    assert sum("\u4e00" <= ch <= "\u9fff" for ch in system) > 20
    assert build_messages("q")[0]["content"] == TEMPLATES["think"].system  # "think" is the default


def test_unknown_template_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        build_messages("q", "cot")
    assert all(name in str(info.value) for name in TEMPLATES)


@pytest.mark.parametrize("length,expected", [(0, 0.0), (6, 0.0), (7, -0.25), (8, -0.5), (10, -1.0), (12, -1.0)])
def test_overlong_penalty_is_zero_then_linear_then_minus_one(length, expected):
    # max_tokens 10, buffer 4: free up to 6 tokens, -1 from 10 on (DAPO's soft overlong punishment).
    assert overlong_penalty(length, max_tokens=10, buffer=4) == pytest.approx(expected)


def test_a_score_gains_a_part():
    score = combined_reward(completion("...", P.answer), P.answer, GSM8K_WEIGHTS).plus("overlong", -0.5)
    assert score.parts["overlong"] == -0.5 and score.total == pytest.approx(PERFECT - 0.5) and score.correct
