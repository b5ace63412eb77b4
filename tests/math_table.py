"""The (completion, gold) table that tests/test_math_answer.py holds our math checker and math-verify to.

Each row: the completion, the gold answer as a data set writes it, our verdict (what a careful grader
says, except where `limit` names the documented limit of data/math_answer.py that decides it), and
`mv`: None when math-verify gives the same verdict, else why the two differ. Run this file to print
the agreement and the disagreement list for docs/math.md (it needs math-verify, a test-only extra).
"""

from __future__ import annotations

from typing import NamedTuple

THINK = "<think>\nLet me work it out step by step.\n</think>\n"


class Row(NamedTuple):
    completion: str
    gold: str
    ours: bool
    mv: str | None = None  # why math-verify's verdict differs from ours; None: it agrees
    limit: str | None = None  # the documented limit that decides our verdict, where a grader might differ


def box(answer: str) -> str:
    """Our prompt's layout: reasoning, then the answer boxed inside <answer>."""
    return f"{THINK}<answer>\\boxed{{{answer}}}</answer>"


def qwen(answer: str) -> str:
    """Qwen2.5-Math / Qwen3's own layout: prose ending in a boxed answer, no tags."""
    return f"So the final answer is $\\boxed{{{answer}}}$."


def tagged(answer: str) -> str:
    """The answer written plainly inside <answer>, no box."""
    return f"{THINK}<answer>{answer}</answer>"


# Reasons, shared by several rows.
MV_NO_TAG = "math-verify reads no answer from a bare <answer>...</answer> without $ or \\boxed"
MV_REASONING = "math-verify takes a box inside <think>: ours reads only the text after </think> (by design)"
MV_AFTER_ANSWER = "math-verify takes the last box anywhere; ours the one inside the last <answer> (by design)"
MV_PERCENT = "math-verify reads 50\\% as 0.5; ours drops the % sign (documented limit)"
MV_RELATION = "math-verify compares relations symbolically; ours compares them as text (documented limit)"
MV_ROUNDING = "math-verify rounds to 6 decimals; ours compares decimals exactly (documented limit)"
MV_UNICODE = "math-verify does not read the Unicode symbol (√, °, ²); ours maps it to LaTeX"
MV_CHOICE = "math-verify reads \\textbf{(D) } 7 as d*7; ours as choice D with the option's value 7"

ROWS: list[Row] = [
    # ---- fractions
    Row(box("\\frac{1}{2}"), "\\frac{1}{2}", True),
    Row(box("\\dfrac{1}{2}"), "\\frac{1}{2}", True),
    Row(box("\\tfrac12"), "\\frac{1}{2}", True),
    Row(box("1/2"), "\\frac{1}{2}", True),
    Row(box("0.5"), "\\frac{1}{2}", True),
    Row(box("\\frac{2}{4}"), "\\frac{1}{2}", True),
    Row(box("\\frac{1}{3}"), "\\frac{1}{2}", False),
    Row(box("-\\frac{3}{4}"), "-\\frac34", True),
    Row(box("\\frac{-3}{4}"), "-\\frac{3}{4}", True),
    Row(box("-0.75"), "-\\frac{3}{4}", True),
    Row(box("\\frac{3}{4}"), "-\\frac{3}{4}", False),
    Row(box("\\frac{7}{2}"), "3\\frac{1}{2}", True),
    Row(box("0.333"), "\\frac{1}{3}", False),
    Row(box("0.3333333333"), "\\frac{1}{3}", False, mv=MV_ROUNDING, limit="decimals are exact"),
    Row(qwen("\\frac{14}{3}"), "\\frac{14}{3}", True),
    Row(box("4.67"), "\\frac{14}{3}", False),
    Row(box("1.25"), "\\frac{5}{4}", True),
    Row(box("\\frac54"), "1.25", True),
    Row(box("\\frac{1}{2}"), "\\frac{2}{1}", False),
    Row(box("{1}/{2}"), "\\frac{1}{2}", True),
    Row(box("\\frac{1}{2}+\\frac{1}{3}"), "\\frac{5}{6}", True),
    Row(box("\\frac{3}{2}"), "1.5", True),
    # ---- integers and decimals
    Row(box("42"), "42", True),
    Row(box("42.0"), "42", True),
    Row(box("42.00"), "42", True),
    Row(box("43"), "42", False),
    Row(box("-7"), "-7", True),
    Row(box("7"), "-7", False),
    Row(box("1,000"), "1000", True),
    Row(box("1{,}000"), "1000", True),
    Row(box("1,000,000"), "1000000", True),
    Row(box("10^6"), "1000000", True),
    Row(box("1000001"), "1000000", False),
    Row(box("3.14"), "\\pi", False),
    Row(box("2.5"), "\\frac52", True),
    Row(box(".5"), "0.5", True),
    Row(box("+5"), "5", True),
    Row(box("0"), "0", True),
    Row(box("-0"), "0", True),
    Row(box("0.1+0.2"), "0.3", True),
    Row(box("100"), "10", False),
    Row(box("1\\,000"), "1000", True, mv="math-verify does not read \\, as a thousands separator"),
    Row(box("12345"), "12,345", True),
    # ---- roots
    Row(box("\\sqrt{2}"), "\\sqrt{2}", True),
    Row(box("\\sqrt2"), "\\sqrt{2}", True),
    Row(box("2\\sqrt{2}"), "\\sqrt{8}", True),
    Row(box("\\sqrt{8}"), "2\\sqrt2", True),
    Row(box("\\frac{\\sqrt{3}}{2}"), "\\frac{\\sqrt3}{2}", True),
    Row(box("\\frac{1}{2}\\sqrt{3}"), "\\frac{\\sqrt{3}}{2}", True),
    Row(box("\\sqrt{3}/2"), "\\frac{\\sqrt{3}}{2}", True),
    Row(box("\\frac{\\sqrt{3}}{3}"), "\\frac{1}{\\sqrt{3}}", True),
    Row(box("\\sqrt{3}"), "\\sqrt{2}", False),
    Row(box("1.414"), "\\sqrt{2}", False),
    Row(box("\\sqrt[3]{27}"), "3", True),
    Row(box("3+2\\sqrt{2}"), "2\\sqrt{2}+3", True),
    Row(box("3-2\\sqrt{2}"), "3+2\\sqrt2", False),
    Row(box("\\sqrt{4}"), "2", True),
    Row(box("4 \\sqrt 3"), "4\\sqrt{3}", True),
    Row(box("\\frac{5\\sqrt{2}}{2}"), "\\frac{5}{\\sqrt2}", True),
    Row(box("\\sqrt{\\frac{1}{4}}"), "\\frac12", True),
    Row(box("2^{1/2}"), "\\sqrt2", True),
    Row(box("\\sqrt{2}+\\sqrt{3}"), "\\sqrt{5}", False),
    Row(box("√2"), "\\sqrt{2}", True, mv=MV_UNICODE),
    # ---- pi
    Row(box("3\\pi"), "3\\pi", True),
    Row(box("\\pi \\cdot 3"), "3\\pi", True),
    Row(box("\\frac{\\pi}{2}"), "\\frac12\\pi", True),
    Row(box("\\frac{3\\pi}{4}"), "\\frac{3}{4}\\pi", True),
    Row(box("2\\pi"), "\\pi", False),
    Row(box("9\\pi-18"), "9\\pi - 18", True),
    Row(box("18-9\\pi"), "9\\pi-18", False),
    Row(box("π"), "\\pi", True),
    Row(box("\\pi r^2"), "r^2\\pi", True),
    Row(box("2\\pi r"), "\\pi r", False),
    # ---- degrees and percent
    Row(box("30^\\circ"), "30", True),
    Row(box("30^{\\circ}"), "30^\\circ", True),
    Row(box("30°"), "30", True, mv=MV_UNICODE),
    Row(box("30"), "30^\\circ", True),
    Row(box("\\frac{\\pi}{6}"), "30^\\circ", False, limit="degrees are not radians"),
    Row(box("50\\%"), "50", True),
    Row(box("50"), "50\\%", True),
    Row(box("0.5"), "50\\%", False, mv=MV_PERCENT, limit="percent is not a fraction"),
    Row(box("25\\%"), "25\\%", True),
    Row(box("75\\%"), "25\\%", False),
    Row(box("45^\\circ"), "135^\\circ", False),
    # ---- text and units
    Row(box("\\text{Monday}"), "\\text{Monday}", True),
    Row(box("Monday"), "\\text{Monday}", True),
    Row(box("\\text{monday}"), "\\text{Monday}", True),
    Row(box("\\text{Tuesday}"), "\\text{Monday}", False),
    Row(box("10\\text{ cm}"), "10", True),
    Row(box("10 \\text{cm}"), "10", True),
    Row(box("10\\text{ cm}^2"), "10", True),
    Row(box("10 \\mbox{ inches}"), "10", True),
    Row(box("10 inches"), "10", True),
    Row(box("12 square units"), "12", True),
    Row(box("11 cm"), "10", False),
    Row(box("\\$18"), "18", True),
    Row(box("\\$18.00"), "18", True),
    Row(box("18 dollars"), "18", True, mv="math-verify does not drop a unit written as a plain word"),
    Row(box("5\\text{ apples}"), "5", True),
    Row(box("\\text{(C)}"), "\\text{(C)}", True),
    Row(box("(C)"), "\\text{(C)}", True),
    Row(box("C"), "\\text{(C)}", True),
    Row(box("\\textbf{(C)}"), "\\text{(C)}", True),
    Row(box("(D)"), "\\text{(C)}", False),
    Row(box("\\text{Devon}"), "\\text{Devon}", True),
    Row(box("\\text{yes}"), "\\text{Yes}", True),
    Row(box("\\text{no}"), "\\text{Yes}", False),
    Row(box("\\text{three}"), "3", False, limit="numbers in words are not read"),
    Row(box("\\mathrm{5\\,cm}"), "5", True, mv="math-verify does not drop a unit inside \\mathrm"),
    Row(box("\\frac{1}{2}\\text{ hour}"), "\\frac12", True),
    # ---- x = ...
    Row(box("x = 3"), "3", True),
    Row(box("x=3"), "x=3", True),
    Row(box("3"), "x=3", True),
    Row(box("y = 3"), "3", True),
    Row(box("x = 4"), "3", False),
    Row(box("k=-2"), "-2", True),
    Row(box("y = 2x + 3"), "y=2x+3", True),
    Row(box("y = 3 + 2x"), "y=2x+3", True),
    Row(box("y = 2x - 3"), "y=2x+3", False),
    Row(box("x^2+y^2=25"), "x^2+y^2=25", True),
    Row(box("y^2+x^2=25"), "x^2+y^2=25", False, mv=MV_RELATION, limit="relations compared as text"),
    Row(box("\\theta = \\frac{\\pi}{4}"), "\\frac{\\pi}{4}", True),
    Row(box("a_1 = 5"), "5", True),
    Row(box("x \\le 3"), "x\\leq 3", True),
    Row(box("x \\ge 3"), "x\\leq 3", False),
    # ---- intervals
    Row(box("(-\\infty, 3]"), "(-\\infty,3]", True),
    Row(box("\\left(-\\infty, 3\\right]"), "(-\\infty,3]", True),
    Row(box("(-\\infty, 3)"), "(-\\infty,3]", False),
    Row(box("[2, 5)"), "[2,5)", True),
    Row(box("[2,5]"), "[2,5)", False),
    Row(box("(0, \\infty)"), "(0,\\infty)", True),
    Row(box("(-\\infty,0)\\cup(1,\\infty)"), "(-\\infty,0)\\cup(1,\\infty)", True),
    Row(box("(1,\\infty)\\cup(-\\infty,0)"), "(-\\infty,0)\\cup(1,\\infty)", True),
    Row(box("(-\\infty,0]\\cup(1,\\infty)"), "(-\\infty,0)\\cup(1,\\infty)", False),
    Row(box("x \\in [1, 2]"), "[1,2]", True),
    Row(box("[\\frac12, 1]"), "[0.5,1]", True),
    Row(box("(-2, 2)"), "(-2,2)", True),
    Row(box("(-\\infty, -1] \\cup [1, \\infty)"), "(-\\infty,-1]\\cup[1,\\infty)", True),
    Row(box("(2, \\infty)"), "(3,\\infty)", False),
    Row(box("[-\\frac{1}{2}, \\frac{1}{2}]"), "\\left[-\\frac12,\\frac12\\right]", True),
    # ---- tuples, sets, lists
    Row(box("(1, 2)"), "(1,2)", True),
    Row(box("(2, 1)"), "(1,2)", False),
    Row(box("(1, -2)"), "(1,-2)", True),
    Row(box("\\left(\\frac12, 3\\right)"), "(0.5,3)", True),
    Row(box("(3, \\frac{\\pi}{2})"), "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    Row(box("(1,2,3)"), "(1,2,3)", True),
    Row(box("(1,2)"), "(1,2,3)", False),
    Row(box("\\{1, 2, 3\\}"), "\\{1,2,3\\}", True),
    Row(box("\\{3, 1, 2\\}"), "\\{1,2,3\\}", True),
    Row(box("\\{1, 2\\}"), "\\{1,2,3\\}", False),
    Row(box("1, 2, 3"), "1,2,3", True),
    Row(box("3, 2, 1"), "1,2,3", True),
    Row(box("1 \\text{ and } 3"), "1,3", True),
    Row(box("1 and 3"), "1, 3", True),
    Row(box("-1, 1"), "1,-1", True),
    Row(box("-1, 2"), "1,-1", False),
    Row(box("\\emptyset"), "\\emptyset", True),
    Row(box("\\varnothing"), "\\emptyset", True, mv="math-verify does not read \\varnothing as the empty set"),
    Row(box("\\{5\\}"), "5", True),
    Row(box("\\{-2, \\frac{1}{2}\\}"), "-2,\\frac12", True),
    Row(box("(1,2),(3,4)"), "(3,4),(1,2)", True),
    Row(box("\\frac{1}{2}, \\frac{1}{3}"), "\\frac13, \\frac12", True),
    Row(box("1, 1, 2"), "1, 2, 2", False, mv="math-verify compares lists as sets (duplicates vanish); ours as multisets"),
    Row(box("(1,2)"), "\\{1,2\\}", False, mv="math-verify equates the ordered pair (1,2) with the set {1,2}"),
    # ---- matrices and vectors
    Row(box("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"), "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    Row(box("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"), "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
    Row(box("\\begin{pmatrix} 1 & 2 \\\\ 4 & 3 \\end{pmatrix}"), "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False),
    Row(box("\\begin{bmatrix} \\frac12 \\\\ 2 \\end{bmatrix}"), "\\begin{pmatrix}0.5\\\\2\\end{pmatrix}", True),
    Row(box("\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}"), "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    Row(box("\\begin{pmatrix} 1 & 2 \\end{pmatrix}"), "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    # ---- expressions in variables
    Row(box("x^2+2x+1"), "(x+1)^2", True),
    Row(box("(x+1)^2"), "x^2+2x+1", True),
    Row(box("x^2+2x"), "(x+1)^2", False),
    Row(box("x+x"), "2x", True),
    Row(box("\\frac{n(n+1)}{2}"), "\\frac{n^2+n}{2}", True),
    Row(box("\\frac{n(n-1)}{2}"), "\\frac{n^2+n}{2}", False),
    Row(box("3x-2"), "-2+3x", True),
    Row(box("a^2 b"), "ba^2", True),
    Row(box("\\frac{1}{x}"), "x^{-1}", True),
    Row(box("2^{10}"), "1024", True),
    Row(box("2^{10}"), "1000", False),
    Row(box("3^4"), "81", True),
    Row(box("\\frac{x+1}{x-1}"), "\\frac{1+x}{x-1}", True),
    Row(box("\\frac{x+1}{x-1}"), "\\frac{x-1}{x+1}", False),
    Row(box("(x-2)(x+3)"), "x^2+x-6", True),
    Row(box("(x-2)(x+3)"), "x^2-x-6", False),
    Row(box("a_1 + a_2"), "a_2+a_1", True),
    Row(box("\\alpha+\\beta"), "\\beta+\\alpha", True),
    Row(box("6!"), "720", True),
    Row(box("\\binom{6}{2}"), "15", True),
    Row(box("\\binom{6}{3}"), "15", False),
    Row(box("2 \\times 10^3"), "2000", True),
    Row(box("1.5 \\times 10^{3}"), "1500", True),
    Row(box("2\\cdot 3"), "6", True),
    Row(box("4 + 3i"), "3i+4", True),
    Row(box("4 - 3i"), "4+3i", False),
    Row(box("x^2"), "y^2", False),
    Row(box("\\sin\\frac{\\pi}{6}"), "\\frac12", True),
    Row(box("\\ln 8"), "3\\ln 2", True),
    Row(box("e^{2}"), "e^2", True),
    Row(box("\\sqrt{-1}"), "i", False, limit="no complex numbers"),
    Row(box("(1+i)^2"), "2i", False, limit="no complex numbers"),
    Row(box("\\infty"), "\\infty", True),
    Row(box("-\\infty"), "\\infty", False),
    Row(box("\\frac{2x}{4}"), "\\frac{x}{2}", True),
    Row(box("x(x+1)"), "x^2+x", True),
    # ---- review findings: text that raised, distinct variables, units, named lists, exponents
    Row(qwen("x²+1"), "x^2+1", True, mv=MV_UNICODE),
    Row(box("5²"), "25", True, mv=MV_UNICODE),
    Row(box("2("), "2", False),
    Row(box("10^{400}"), "\\frac{\\sqrt{3}}{2}", False),
    Row(box("x1" * 495), "1", False),
    Row(box("2x" * 499), "1", False),
    Row(box("3" + "!" * 900), "6", False),
    Row(box("x-n"), "n-x", False),
    Row(box("2a+p"), "a+2p", False),
    Row(box("x^2n"), "xn^2", False),
    Row(box("m+2r"), "2m+r", False),
    Row(box("nx^2"), "x^2n", True),
    Row(box("3 + 4 i"), "7", False),
    Row(box("2 x"), "2", False),
    Row(box("3 + 4 i"), "4i+3", True, mv="math-verify parses both as 4i + 3, yet its verify says no (i as the imaginary unit?)"),
    Row(box("a=1,b=2"), "a=2, b=1", False),
    Row(box("b=2, a=1"), "a=1,b=2", True),
    Row(box("x=1, x=2"), "2, 1", True),
    Row(box("2^10"), "0", False),
    Row(box("2^10"), "1024", True),
    Row(box("2^31-1"), "2^{31}-1", True),
    Row(box("10001_{2}"), "10001_2", True),
    Row(box("10001_2"), "10011_2", False),
    Row(box("\\pm 3"), "3, -3", True),
    Row(box("\\{-1,1\\}"), "\\pm 1", True),
    Row(box("\\pm 3"), "3", False),
    Row(box("x = \\frac{1 \\pm \\sqrt{5}}{2}"), "\\frac{1-\\sqrt5}{2}, \\frac{1+\\sqrt5}{2}", True,
        mv="math-verify does not expand \\pm inside an expression into its two values"),
    Row(box("\\textbf{(D) } 7"), "D", True, mv=MV_CHOICE),
    Row(box("\\textbf{(D) } 7"), "7", True, mv=MV_CHOICE),
    Row(box("\\textbf{(D) } 7"), "\\text{(C)}", False),
    Row(box("\\{1\\} \\bigcup \\{2\\}"), "\\{1\\}\\cup\\{2\\}", True, mv="math-verify does not read \\bigcup"),
    Row(box("\\binom{10000}{5000}"), "1", False),
    Row(box("\\binom{10}{5}"), "252", True),
    Row(box("\\log_2 8"), "3", True),
    Row(box("(a,b)=(1,2)"), "(1,2)", True),
    Row(box("(a,b)=(2,1)"), "(1,2)", False),
    Row(box("f(x)=2x"), "2x", True),
    Row(box("\\sin^2 x"), "(\\sin x)^2", True),
    Row(box("\\sin^2 x+\\cos^2 x"), "1", False, limit="an expression in variables never equals a constant",
        mv="math-verify simplifies sin^2 + cos^2 to 1; ours never equates an expression in variables with a constant (documented limit)"),
    Row(box("0.\\overline{3}"), "\\frac13", False, limit="repeating decimals are not read"),
    Row(box("12\\text{th}"), "12", True, limit="a word after a number is a unit"),
    Row(box("3.14159265358979"), "\\pi", True),
    Row(box("3.14159"), "\\pi", False),
    Row(box("5 m"), "5", False, limit="one-letter units are variables",
        mv="math-verify drops the one-letter unit m; ours reads it as a variable, like 2 x (documented limit)"),
    # ---- where the answer is taken from
    Row(f"{THINK}<answer>\\boxed{{5}}</answer>", "5", True),
    Row(tagged("5"), "5", True, mv=MV_NO_TAG),
    Row(tagged("$\\frac{1}{2}$"), "\\frac12", True),
    Row(tagged("\\frac{1}{2}"), "\\frac12", True),
    Row(tagged("-3"), "-3", True, mv=MV_NO_TAG),
    Row(tagged("(1, 2)"), "(1,2)", True, mv=MV_NO_TAG),
    Row(tagged("4"), "5", False),
    Row("<think>\n\\boxed{4}\n</think>\n<answer>\\boxed{5}</answer>", "5", True),
    Row("<think>\n\\boxed{5}\n</think>\n<answer>\\boxed{4}</answer>", "5", False),
    Row("<think>\nthe answer is \\boxed{5}\n</think>\nI am not sure.", "5", False, mv=MV_REASONING),
    Row("Therefore the answer is $\\boxed{5}$.", "5", True),
    Row("First \\boxed{3}, then corrected: \\boxed{5}", "5", True, mv="math-verify joins several boxes into one set {3, 5}; ours takes the last box"),
    Row("First \\boxed{5}, then corrected: \\boxed{3}", "5", False),
    Row("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt2}{2}", True),
    Row("The answer is \\boxed 5.", "5", True),
    Row("\\fbox{7}", "7", True, mv="math-verify does not read \\fbox"),
    Row(f"{THINK}<answer>The answer is \\boxed{{12}}.</answer>", "12", True),
    Row(f"{THINK}<answer>\\boxed{{12}}</answer>\n\\boxed{{13}}", "12", True, mv=MV_AFTER_ANSWER),
    Row(f"{THINK}<answer>5", "5", False),
    Row(f"{THINK}<answer></answer>", "5", False),
    Row("", "5", False),
    Row("no answer here", "5", False),
    Row("\\boxed{}", "5", False),
    Row("\\boxed{5", "5", False),
    Row(f"{THINK}<answer>\\boxed{{\\boxed{{5}}}}</answer>", "5", True),
    Row("<think>unfinished reasoning \\boxed{5}", "5", True),
    Row("<think>a</think><think>b</think>\\boxed{5}", "5", True),
    Row("Final: $\\boxed{\\dfrac{9}{4}}$", "\\frac{9}{4}", True),
    Row("$\\boxed{x = -\\frac{1}{2}}$", "-\\frac12", True),
    Row(qwen("\\left\\{ 1, 2 \\right\\}"), "\\{1,2\\}", True),
    Row(qwen("\\{1,2\\}"), "\\{2,1\\}", True),
    # ---- adversarial (short enough for math-verify; the 1 MB ones are in the test file)
    Row(box("5") + "}}}", "5", True),
    Row("\\boxed{" * 50 + "5", "5", False),
    Row("<think>" * 100 + "\\boxed{5}", "5", True),
    Row("</think>" * 100 + "\\boxed{5}", "5", True),
    Row(box("{" * 6 + "5" + "}" * 6), "5", True),  # deeper: math-verify's parser is exponential in it
    Row(box("9" * 900), "9" * 900, True),
    Row(box("9" * 1100), "9" * 1100, False, mv="math-verify reads answers of any length; ours stops at MAX_ANSWER_CHARS",
        limit="answers over MAX_ANSWER_CHARS are not read"),
    Row(box("1/0"), "5", False),
    Row(box("\\frac{1}{0}"), "\\infty", False),
    Row(box("\\sqrt" * 100 + "{2}"), "2", False),
    Row(box("\\frac{1}{2}" * 3), "\\frac18", True),
    Row("\\boxed{\\text{\\textbf{Monday}}}", "\\text{Monday}", True, mv="math-verify does not unwrap \\textbf inside \\text"),
    Row(box("5 \\text{ or } 7"), "5,7", True),
    Row(box("1,2,3,4,5,6,7,8,9,10"), "10,9,8,7,6,5,4,3,2,1", True),
    Row(box("1,2,3,4,5,6,7,8,9,10"), "10,9,8,7,6,5,4,3,2,0", False),
    Row(box("x" * 3), "x^3", False, mv="math-verify reads xxx as x^3; ours reads three letters as a word (documented limit)",
        limit="a run of three letters is a word"),
]


def report() -> str:
    """The agreement with math-verify and every difference, as Markdown (docs/math.md)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from math_verify import parse, verify

    from data.math_answer import extract_math_answer, math_reward
    lines, differ = [], 0
    for i, r in enumerate(ROWS):
        ours = math_reward(r.completion, r.gold) == 1.0
        theirs = bool(verify(parse("\\boxed{" + r.gold + "}"), parse(r.completion)))
        if ours != theirs:
            differ += 1
            shown = extract_math_answer(r.completion)
            shown = (r.completion if shown is None else shown).replace("\n", " ")
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            lines.append(f"| {i} | `{shown}` | `{r.gold[:30]}` | {'right' if ours else 'wrong'} | "
                         f"{'right' if theirs else 'wrong'} | {r.mv} |")
    head = (f"{len(ROWS)} rows ({sum(r.ours for r in ROWS)} right, {sum(not r.ours for r in ROWS)} wrong); "
            f"math-verify gives our verdict on {len(ROWS) - differ} ({(len(ROWS) - differ) / len(ROWS):.1%}) "
            f"and differs on {differ}:\n\n| row | answer (ours extracted) | gold | ours | math-verify | why |\n"
            "|---|---|---|---|---|---|")
    return "\n".join([head, *lines])


if __name__ == "__main__":
    print(report())
