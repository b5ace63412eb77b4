"""The math checker (data/math_answer.py): the table of tests/math_table.py, math-verify on the same
table, extraction rules, and hostile completions up to 1 MB scored in milliseconds."""

from __future__ import annotations

import random
import time
import warnings
from fractions import Fraction

import pytest

import data.math_answer as math_answer
from data.math_answer import MAX_ANSWER_CHARS, extract_math_answer, math_equal, math_reward, normalise
from data.math_expr import MAX_DEPTH, close, values
from math_table import ROWS, THINK, box

# Share of the table where math-verify's verdict equals ours (measured: docs/math.md, 89.9%). The
# rows added for the review's findings sit where the two differ by design, so the floor is 0.88;
# the exact set of differing rows is pinned below, which is the stronger check.
MIN_AGREEMENT = 0.88


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
                   "relations beyond a leading", "MAX_ANSWER_CHARS", "words", "1e-9 relative tolerance",
                   "repeating decimals", "12\\text{th} equals 12", "5 m is 5m", "never equals one without them"):
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


# ---------------------------------------------------------------- review findings


@pytest.mark.parametrize("completion, gold", [
    ("So $\\boxed{x²+1}$.", "x^2+1"),  # "²".isdigit() is True, Fraction("²") raised ValueError
    ("\\boxed{5²}", "25"),
    ("\\boxed{2(}", "2"),  # "" in "({[" is True: KeyError '' at the end of the text
    ("\\boxed{10^{400}}", "\\frac{\\sqrt{3}}{2}"),  # float(10^400): OverflowError in close()
    ("\\boxed{" + "x1" * 495 + "}", "1"),  # 990 juxtaposed factors: RecursionError in evaluate
    ("\\boxed{" + "2x" * 499 + "}", "1"),
    ("\\boxed{" + "1+" * 499 + "1}", "500"),
    ("\\boxed{3" + "!" * 900 + "}", "6"),
    ("\\boxed{\\binom{10000}{5000}}", "1"),
    ("\\boxed{٣}", "3"),  # an Arabic-Indic digit: not a digit here
])
def test_text_that_raised_scores_without_an_exception_or_warning(completion, gold):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the backstop's warning would be an error: no bug is hidden
        assert math_reward(completion, gold) in (0.0, 1.0)
        math_equal(extract_math_answer(completion), gold)


def test_the_old_crashes_give_the_right_verdicts():
    assert math_reward("So $\\boxed{x²+1}$.", "x^2+1") == 1.0 and math_equal("5²", "25")
    assert math_equal("x³", "x^3") and not math_equal("x²", "x^3")
    assert math_equal("\\sin^2x", "(\\sin x)^2") and math_equal("\\log_2 8", "3")
    assert math_equal("1+" * 499 + "1", "500") and math_equal("x" + "*1" * 400, "x")
    assert math_equal("3!!", "720") and not math_equal("\\sin^{-1}x", "\\frac{1}{\\sin x}")
    assert not close(Fraction(10 ** 400), 0.5) and close(Fraction(10 ** 400), Fraction(10 ** 400))


def test_the_binomial_is_capped_by_its_size_not_its_arguments():
    start = time.perf_counter()
    assert values("\\binom{10000}{5000}") is None  # ~10^4 bits: not evaluated
    assert time.perf_counter() - start < 0.005
    assert math_equal("\\binom{100000}{2}", "4999950000") and math_equal("\\binom{3}{5}", "0")


def test_distinct_variables_get_distinct_values():
    for a, b in [("x-n", "n-x"), ("2a+p", "a+2p"), ("x^2n", "xn^2"), ("m+2r", "2m+r"), ("a_1+2a_2", "2a_1+a_2"),
                 ("\\alpha-\\beta", "\\beta-\\alpha"), ("x+z", "2y")]:
        assert not math_equal(a, b), (a, b)
    for a, b in [("x-n", "-(n-x)"), ("2a+p", "p+a+a"), ("x^2n", "nx^2"), ("\\sqrt{4x}", "2\\sqrt x")]:
        assert math_equal(a, b), (a, b)
    names = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    assert len({values(name)[1] for name in names}) == 1  # alone, every name is the first name ...
    sums = values("+".join(f"{k}{n}" for k, n in enumerate(names, 1)))[1]
    assert sums != values("+".join(f"{k}{n}" for k, n in enumerate(reversed(names), 1)))[1]  # ... together, not


def test_a_one_letter_word_after_a_number_is_a_variable_not_a_unit():
    assert not math_equal("3 + 4 i", "7") and not math_equal("2 x", "2") and not math_equal("5 m", "5")
    assert math_equal("3 + 4 i", "3+4i") and math_equal("2 x", "2x")
    assert math_equal("5 cm", "5") and math_equal("12 square units", "12") and not math_equal("3 + 4 ab", "7")


def test_named_items_are_matched_by_name():
    assert not math_equal("a=1,b=2", "a=2, b=1") and math_equal("b=2, a=1", "a=1,b=2")
    assert math_equal("x=1, x=2", "2, 1") and math_equal("a=1, b=2", "1, 2")
    assert not math_equal("(x=1, y=2)", "(y=1, x=2)")
    assert math_equal("x = 3", "3") and math_equal("f(x) = 2x", "2x") and math_equal("(a,b)=(1,2)", "(1,2)")


def test_an_exponent_of_several_digits_without_braces():
    assert not math_equal("2^10", "0") and math_equal("2^10", "1024") and math_equal("2^31-1", "2^{31}-1")
    assert math_equal("x^-12", "\\frac{1}{x^{12}}") and math_equal("\\frac12", "0.5")  # \frac12 stays 1/2


def test_base_subscripts_plus_minus_and_choice_letters():
    assert math_equal("10001_{2}", "10001_2") and not math_equal("10001_2", "10011_2")
    assert math_equal("\\pm 3", "3, -3") and math_equal("\\{-1,1\\}", "\\pm 1") and not math_equal("\\pm 3", "3")
    assert math_equal("x = 2 \\pm \\sqrt{3}", "2+\\sqrt3, 2-\\sqrt3")
    assert math_equal("\\textbf{(D) } 7", "D") and math_equal("\\textbf{(D) } 7", "7")
    assert not math_equal("\\textbf{(D) } 7", "C") and not math_equal("(D) 7", "(C) 7") and not math_equal("D", "7")


def test_commands_are_replaced_only_whole():
    assert normalise("A\\bigcup B") == "A\\cup B" and normalise("\\big(1\\big)") == "(1)"
    assert normalise("1,\\cdots,n") == "1,\\dots,n" and normalise("2\\cdot3") == "2*3"
    assert normalise("7 \\pmod{9}") == "7\\pmod{9}" and normalise("\\pm1") == "±1"
    assert normalise("x\\leftarrow y") == "x\\leftarrow y" and normalise("\\left(1\\right)") == "(1)"


def test_tolerance_applies_against_irrational_golds_only():
    assert math_equal("3.14159265358979", "\\pi") and not math_equal("3.14159", "\\pi")
    assert not math_equal("0.3333333333", "\\frac13")


def test_the_backstop_scores_our_bug_zero_with_a_warning(monkeypatch):
    def broken(predicted, gold):
        raise KeyError("a bug")
    monkeypatch.setattr(math_answer, "math_equal", broken)
    with pytest.warns(RuntimeWarning, match="KeyError"):
        assert math_answer.math_reward("\\boxed{5}", "5") == 0.0
    with pytest.raises(ValueError, match="two bare tag names"):  # the caller's input still raises
        math_answer.math_reward("\\boxed{5}", "5", tags=("a",))


FRAGMENTS = ["\\frac", "\\sqrt", "\\binom", "\\pi", "\\sin", "\\log_", "\\text{", "\\left(", "\\right)", "\\{",
             "\\}", "{", "}", "(", ")", "[", "]", "^", "_", "!", "+", "-", "*", "/", "=", ",", ".", " ", "x", "n",
             "i", "e", "0", "1", "2", "9", "10^{400}", "²", "³", "٣", "\\pm", "\\infty", "\\cup", "\\circ", "\\%",
             "\\", "&", "\\begin{pmatrix}", "\\end{pmatrix}", "(C)", "\\textbf{(D) }", "cm", "and", "<answer>",
             "</answer>", "</think>", "\\boxed{", "\\fbox", "\\overline{", "\\cdots", "\\bigcup", "$", "~", "\\,"]

# Short units, no run of three letters (a word, compared as text): "x1x1..." of 990 characters was
# a 990-deep tree (RecursionError).
TWO_CHARS = ["x1", "n2", "y3", "x2", "y9", "n1"]  # letter then digit: 990 characters, 990 atoms
ATOMS = TWO_CHARS + ["9", "1", "a_1", "(x)", "3!", "\\sqrt2", "x^2", "2^10"]
OPS = ["", "", "+", "-", "*", "/"]


def test_fuzz_hostile_answers_never_raise():
    """A seeded generator of answers from LaTeX fragments (and long chains of one fragment): each
    is scored against a few golds; any exception, or the backstop's warning, fails the test."""
    rng = random.Random(20261206)
    golds = ["5", "\\frac{\\sqrt{3}}{2}", "x^2+1", "(1,2)", "\\{1,2\\}", "\\text{(C)}", "a=1,b=2", "\\pm 1", "10^{400}"]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for k in range(3000):
            if k % 10 == 0:  # a long chain: 600 to 1000 characters of one to three fragments repeated
                answer = ("".join(rng.choices(FRAGMENTS, k=rng.randint(1, 3))) * 1000)[:rng.randint(600, 1000)]
            elif k % 10 == 5:  # a long expression that parses, one operator: x12n..., 2n+x1+... (900-1000 chars)
                op, parts, limit, atoms = rng.choice(OPS), [], rng.randint(900, 1000), rng.choice([TWO_CHARS, ATOMS])
                while sum(map(len, parts)) + len(op) * len(parts) < limit - 8:
                    parts.append(rng.choice(atoms))
                answer = op.join(parts)
            else:
                answer = "".join(rng.choices(FRAGMENTS, k=rng.randint(1, 25)))
            gold = golds[k % len(golds)]
            math_equal(answer, gold), math_equal(gold, answer)  # our bug: a traceback here
            assert math_reward(f"{THINK}<answer>\\boxed{{{answer}}}</answer>", gold) in (0.0, 1.0)
            assert math_reward(answer, answer) in (0.0, 1.0)
    assert time.perf_counter() - start < 6  # about 2-3 s on a 2-vCPU VM
