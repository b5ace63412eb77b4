"""The math checker (data/math_answer.py): the table of tests/math_table.py, math-verify on the same
table, extraction rules, and hostile completions up to 1 MB scored in milliseconds."""

from __future__ import annotations

import time

import pytest

from data.math_answer import MAX_ANSWER_CHARS, extract_math_answer, math_equal, math_reward, normalise
from data.math_expr import MAX_DEPTH
from math_table import ROWS, THINK, box

MIN_AGREEMENT = 0.9  # share of the table where math-verify's verdict equals ours (measured: docs/math.md)


def our_verdict(row) -> bool:
    return math_reward(row.completion, row.gold) == 1.0


def test_the_table_covers_every_form_right_and_wrong():
    assert len(ROWS) >= 200
    assert sum(r.ours for r in ROWS) >= 80 and sum(not r.ours for r in ROWS) >= 60
    text = "".join(r.completion + r.gold for r in ROWS)
    for form in ("\\frac", "\\dfrac", "\\tfrac", "/", "\\sqrt", "\\pi", "^\\circ", "\\%", "\\text{", "\\left",
                 "1,000", "0.5", "\\infty", "\\cup", "\\{", "x = 3", "pmatrix", "\\fbox", "<answer>", "</think>"):
        assert form in text, form


def test_our_verdicts_on_the_table():
    wrong = [(i, r.completion[-60:], r.gold[:40], r.ours) for i, r in enumerate(ROWS) if our_verdict(r) != r.ours]
    assert not wrong


def test_math_verify_agrees_except_on_the_documented_rows():
    mv = pytest.importorskip("math_verify")
    disagree = {i for i, r in enumerate(ROWS)
                if bool(mv.verify(mv.parse("\\boxed{" + r.gold + "}"), mv.parse(r.completion))) != r.ours}
    documented = {i for i, r in enumerate(ROWS) if r.mv is not None}
    assert disagree == documented, {i: (ROWS[i].completion[-50:], ROWS[i].gold) for i in disagree ^ documented}
    assert 1 - len(disagree) / len(ROWS) >= MIN_AGREEMENT


def test_every_documented_limit_is_in_the_module_docstring():
    import data.math_answer as m
    doc = " ".join(m.__doc__.split())
    for phrase in ("50\\% equals 50", "30^\\circ equals 30", "decimals are exact", "i and e are variables",
                   "relations beyond a leading", "MAX_ANSWER_CHARS", "words"):
        assert phrase in doc, phrase


# ---------------------------------------------------------------- extraction


def test_extraction_order_reasoning_then_answer_tag_then_box():
    assert extract_math_answer("<think>\\boxed{1}</think>\\boxed{2}") == "2"
    assert extract_math_answer("<think>\\boxed{1}</think> no box") is None  # the reasoning's box is not the answer
    assert extract_math_answer("<answer>\\boxed{3}</answer> \\boxed{4}") == "3"
    assert extract_math_answer("<answer> x = \\frac{1}{2} </answer>") == "x = \\frac{1}{2}"  # as written
    assert extract_math_answer("\\boxed{\\frac{a}{\\{b\\}}}") == "\\frac{a}{\\{b\\}}"  # nested and escaped braces
    assert extract_math_answer("\\boxed 7 and more") == "7"
    assert extract_math_answer("\\boxedx") is None and extract_math_answer("\\boxed") is None
    assert extract_math_answer("<answer>unclosed") is None and extract_math_answer("") is None


def test_tags_are_a_parameter():
    completion = "<reasoning>\\boxed{1}</reasoning><answer>\\boxed{2}</answer>"
    assert extract_math_answer(completion, ("reasoning", "answer")) == "2"
    assert math_reward(completion, "2", tags=("reasoning", "answer")) == 1.0
    assert math_reward("<r>5</r><final>6</final>", "6", tags=("r", "final")) == 1.0
    with pytest.raises(ValueError, match="two bare tag names"):
        math_reward("x", "1", tags=("<think>", "answer"))


def test_math_is_a_builtin_reward():
    from data.rewards import REWARD_FUNCTIONS
    assert REWARD_FUNCTIONS["math"] is math_reward


def test_gold_in_a_box_or_dollars_is_read():
    assert math_equal("0.5", "\\boxed{\\frac{1}{2}}") and math_equal("0.5", "$\\frac12$")
    assert not math_equal("", "5") and not math_equal("5", "")


def test_normalise_spellings():
    assert normalise("\\left( \\dfrac{1}{2}, 3 \\right)") == "(\\frac{1}{2},3)"
    assert normalise("1{,}000") == "1000" and normalise("\\$18.00") == "18.00"
    assert normalise("10\\text{ cm}^2") == "10" and normalise("\\text{(C)}") == "(C)"
    assert normalise("2\\pi r") == "2\\pi r"  # the space after a command survives: not \pir
    assert normalise("9" * (MAX_ANSWER_CHARS + 1)) is None


# ---------------------------------------------------------------- hostile text

MB = 1_000_000


def hostile_completions() -> dict[str, str]:
    return {
        "boxes": "\\boxed{" * (MB // 7),
        "open braces": "\\boxed" + "{" * MB,
        "closed braces": "\\boxed{" + "{}" * (MB // 2) + "}",
        "answer tags": "<answer>" * (MB // 8) + "</answer>",
        "think tags": "</think>" * (MB // 8) + "<answer>5</answer>",
        "long sum": "\\boxed{" + "1+" * (MB // 2) + "1}",
        "fracs in an answer": THINK + "<answer>" + "\\frac{" * (MB // 6) + "</answer>",
        "list in an answer": THINK + "<answer>" + "1," * (MB // 2) + "</answer>",
        "bare boxes": "\\boxed 1 " * (MB // 9),
        "text commands": "<answer>" + "\\text{" * (MB // 6) + "</answer>",
        "no tags at all": "a" * MB,
        "backslashes": "<answer>" + "\\" * MB + "</answer>",
    }


@pytest.mark.parametrize("name", list(hostile_completions()))
def test_a_1mb_hostile_completion_is_scored_in_milliseconds(name):
    completion = hostile_completions()[name]
    assert len(completion) >= 0.99 * MB
    start = time.perf_counter()
    reward = math_reward(completion, "5")
    seconds = time.perf_counter() - start
    assert reward in (0.0, 1.0)
    assert seconds < 0.05, f"{name}: {seconds * 1000:.1f} ms"


@pytest.mark.parametrize("answer", [
    "(" * 300 + "1" + ")" * 300,  # deeper than MAX_DEPTH: compared as text, no RecursionError
    "\\sqrt" * 190 + "{2}",
    "\\sin" * 240 + "x",
    "-" * 900 + "1",
    "2^{2^{2^{2^{2^{2}}}}}",  # 2^65536 and beyond: too large to evaluate
    "9^{999}*9^{999}*9^{999}*9^{999}*9^{999}*9^{999}*9^{999}*9^{999}*9^{999}",
    "100!" * 200,
    "\\binom{10000}{5000}",
    ",".join(["(1,2)"] * 160),  # more items than MAX_ITEMS
    ",".join(str(i) for i in range(60)),  # 60 items matched in any order against 60 others
    "\\{" * 200 + "\\}" * 200,
    "\\text{" * 150 + "}" * 150,
])
def test_a_hostile_answer_is_judged_fast_without_errors(answer):
    start = time.perf_counter()
    math_equal(answer, ",".join(str(i) for i in range(59, -1, -1)))
    math_equal(answer, answer[::-1])
    assert time.perf_counter() - start < 0.2


def test_nesting_is_evaluated_up_to_the_cap_only():
    shallow = MAX_DEPTH // 2 - 2  # a bracket costs two levels
    assert math_equal("(" * shallow + "1" + ")" * shallow, "1")
    assert not math_equal("(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH, "1")  # documented limit, no crash


def test_long_unordered_lists_match_in_any_order():
    assert math_equal(",".join(map(str, range(60))), ",".join(map(str, range(59, -1, -1))))
    assert not math_equal(",".join(map(str, range(60))), ",".join(map(str, range(1, 61))))


def test_box_layout_helper_is_the_prompt_layout():
    from data.prompts import TEMPLATES
    template = TEMPLATES["math"]
    assert template.tags == ("think", "answer")
    assert "\\boxed" in template.system and "<think>" in template.system and "<answer>" in template.system
    assert math_reward(box("7"), "7", tags=template.tags) == 1.0
