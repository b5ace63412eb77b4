"""A small evaluator for normalised LaTeX / plain math expressions, so answers compare by value.

    value_of("\\frac{\\sqrt{3}}{2}")            -> 0.866... (float: a square root that is not exact)
    value_of("0.5") == value_of("\\frac12")   -> Fraction(1, 2) both: exact
    same_value("x^2+2x+1", "(x+1)^2")        -> True  (evaluated at two fixed rational points)

`data.math_answer` hands this file one scalar at a time, already normalised (no spaces, no
`\\left`, `\\cdot` -> `*`, `\\infty` -> `∞`, `\\dfrac` -> `\\frac`). The grammar, lowest precedence first:

    expr   := ['+'|'-'] term (('+'|'-') term)*
    term   := power (('*'|'/') power | power)*           juxtaposition is multiplication: 2\\sqrt3, 3x
    power  := postfix ('^' arg)?                         x^2, 2^{10}, x^-1, 2^10 (a digit run: 2^{10})
    postfix:= atom '!'*
    atom   := number | (expr) | {expr} | [expr] | \\frac A B | \\sqrt[n] A | \\binom A B | \\pi | ∞
              | letter (subscript)? | \\greek | \\sin A (cos, tan, ln, log, exp) | '-' atom
              | \\sin^n A (a positive power of the function) | \\log_b A (base b)
    A, arg := {expr} | one character                     \\frac12, \\sqrt2, x^2

Values are Fractions while the arithmetic stays rational (exact: 0.1 + 0.2 == 0.3), floats once a
square root, pi or a function leaves the rationals; `same_value` compares two Fractions exactly and
anything else with a relative tolerance of 1e-9. Variables (x, a_1, \\theta) get fixed rational
values at two points, distinct names distinct values (_point), the same on both sides: two different
rational functions agree at a point only by accident (the Schwartz-Zippel idea), and agreeing at two
points chosen in advance is rarer still. Chains (a+b-c, 2x*y/z) are flat nodes evaluated by a loop,
so recursion depth follows the nesting (capped), not the length.

Safety: the text is capped by the caller (math_answer.MAX_ANSWER_CHARS); nesting deeper than
MAX_DEPTH, exponents beyond MAX_EXPONENT and Fractions of more than MAX_BITS bits stop the evaluation
(`Unevaluable`) instead of eating memory: 2^{2^{2^{2^2}}} is not evaluated, so it compares as text.

Simplifications: `i` and `e` are plain variables (no complex numbers, no Euler's number), \\log is the
natural logarithm, a number directly before an integer \\frac is a mixed number (2\\frac12 = 5/2),
only ASCII digits are digits, variables are positive (\\sqrt{x^2} is x), 5!! is (5!)!.
"""

from __future__ import annotations

import math
import zlib
from fractions import Fraction
from functools import lru_cache

MAX_DEPTH = 64  # nesting levels (a bracket costs two, a \\command one) beyond this: not evaluated
MAX_EXPONENT = 1000  # |n| of an exact integer power
MAX_BITS = 20_000  # numerator + denominator bits of any exact intermediate value
MAX_BINOM_BITS = 4096  # \\binom{n}{k} estimated larger than this: not evaluated (math.comb's cost grows with it)
DIGITS = "0123456789"  # only ASCII digits are digits: "²".isdigit() is True, but Fraction("²") fails
GREEK = frozenset("alpha beta gamma delta epsilon theta lambda mu nu phi psi rho sigma tau omega".split())
FUNCTIONS = {"sin": math.sin, "cos": math.cos, "tan": math.tan, "ln": math.log, "log": math.log, "exp": math.exp}
# The denominators of the two points' values (primes): see _point.
POINT_PRIMES = (10007, 9973)

Value = Fraction | float


class Unevaluable(Exception):
    """The text is not an expression this grammar reads, or evaluating it would cost too much."""


def _point(rank: int, which: int) -> Fraction:
    """The value at point `which` of the rank-th variable name in sorted order: in (rank+1, rank+2),
    so distinct names differ (x-n is not n-x), plus h/p from a stable hash so that values have no
    relation (no x + z = 2y). Both sides have the same names (same_value), so the same rank is the
    same name. Positive, so that \\sqrt{x} and \\ln x evaluate (and \\sqrt{x^2} equals x)."""
    p = POINT_PRIMES[which]
    h = zlib.crc32(f"{which}:{rank}".encode()) % (p - 1) + 1  # 1 <= h < p
    return rank + 1 + Fraction(h, p)


def _check(v: Value) -> Value:
    if isinstance(v, Fraction) and v.numerator.bit_length() + v.denominator.bit_length() > MAX_BITS:
        raise Unevaluable("number too large")
    if isinstance(v, float) and math.isnan(v):
        raise Unevaluable("not a number")
    return v


def _pow(base: Value, exp: Value) -> Value:
    if isinstance(exp, Fraction) and exp.denominator == 1:
        if abs(exp) > MAX_EXPONENT:
            raise Unevaluable("exponent too large")
        if isinstance(base, Fraction):
            bits = base.numerator.bit_length() + base.denominator.bit_length()
            if bits * abs(exp.numerator) > MAX_BITS:
                raise Unevaluable("power too large")
            return base ** exp.numerator  # exact; a zero base with a negative exponent raises ZeroDivisionError
        return base ** int(exp)
    if isinstance(exp, Fraction) and isinstance(base, Fraction) and base >= 0 and exp.denominator <= 16:
        root = _exact_root(base, exp.denominator)  # 8^{1/3} = 2 exactly, 4^{3/2} = 8
        if root is not None:
            return _pow(root, Fraction(exp.numerator))
    if float(base) < 0:
        raise Unevaluable("fractional power of a negative number")
    return float(base) ** float(exp)


def _exact_root(x: Fraction, n: int) -> Fraction | None:
    """The n-th root of x when it is rational, else None."""
    if x < 0 or n < 1:
        return None
    roots = []
    for part in (x.numerator, x.denominator):
        r = round(part ** (1.0 / n)) if part.bit_length() < 1000 else None
        if r is None or r ** n != part:
            return None
        roots.append(r)
    return Fraction(roots[0], roots[1])


def _root(x: Value, n: Value) -> Value:
    if not (isinstance(n, Fraction) and n.denominator == 1 and 2 <= n <= 64):
        raise Unevaluable("root index must be an integer from 2 to 64")
    exact = _exact_root(x, int(n)) if isinstance(x, Fraction) else None
    if exact is not None:
        return exact
    if float(x) < 0:
        if n % 2 == 1:
            return -(-float(x)) ** (1.0 / float(n))
        raise Unevaluable("even root of a negative number")
    return float(x) ** (1.0 / float(n))


class _Parser:
    """Recursive descent over the normalised text into a tree of tuples (evaluated later, per point)."""

    def __init__(self, text: str):
        self.s, self.i, self.depth, self.names = text, 0, 0, set()

    def peek(self) -> str:
        while self.s.startswith(" ", self.i):  # the one space normalise keeps: '\\pi r'
            self.i += 1
        return self.s[self.i] if self.i < len(self.s) else ""

    def take(self, token: str) -> bool:
        self.peek()
        if self.s.startswith(token, self.i):
            self.i += len(token)
            return True
        return False

    def command(self) -> str:
        """The letters after a backslash at the cursor ('' when the cursor is not at a command)."""
        if self.peek() != "\\":
            return ""
        j = self.i + 1
        while j < len(self.s) and self.s[j].isalpha():
            j += 1
        return self.s[self.i + 1:j]

    def nest(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise Unevaluable("nested too deeply")

    def parse(self) -> tuple:
        tree = self.expr()
        if self.i != len(self.s):
            raise Unevaluable(f"unexpected {self.s[self.i:self.i + 10]!r}")
        return tree

    # A chain a+b-c or a*b/c (x1x1x1...: 990 factors) is one flat node ("chain", ((op, tree), ...)),
    # evaluated by a loop: a left-leaning tree of binary nodes would recurse once per operator.
    def expr(self) -> tuple:
        self.nest()
        sign = "-" if self.take("-") else (self.take("+") and "+")
        first = self.term()
        links = [("add", ("neg", first) if sign == "-" else first)]
        while self.peek() in ("+", "-"):
            op = "add" if self.s[self.i] == "+" else "sub"
            self.i += 1
            links.append((op, self.term()))
        self.depth -= 1
        return links[0][1] if len(links) == 1 else ("chain", tuple(links))

    def term(self) -> tuple:
        links = [("mul", self.power())]
        while True:
            if self.peek() in ("*", "/"):
                op = "mul" if self.s[self.i] == "*" else "div"
                self.i += 1
                links.append((op, self.power()))
            elif self.starts_atom():
                links.append(("mul", self.power()))  # 2\sqrt3, 3x, (x+1)(x-1)
            else:
                return links[0][1] if len(links) == 1 else ("chain", tuple(links))

    def starts_atom(self) -> bool:
        c = self.peek()
        return bool(c) and (c in DIGITS or c.isalpha() or c in "({[.∞" or (c == "\\" and self.command() in ATOM_COMMANDS))

    def power(self) -> tuple:
        base = self.atom()
        start = self.i
        while self.take("!"):
            pass
        if self.i > start:  # one node for 5!!!: a chain of 999 nodes would recurse in evaluate
            base = ("fact", base, self.s.count("!", start, self.i))
        if self.take("^"):
            self.nest()
            base = ("pow", base, self.argument(signed=True, run=True) if self.peek() != "{" else self.group("{", "}"))
            self.depth -= 1
        return base

    def argument(self, signed: bool = False, run: bool = False) -> tuple:
        """A braced group, or one character: the 2 of \\sqrt2, x^2, \\frac12 (x^-1 with `signed`); with
        `run` (an exponent) a digit run: 2^10 is 2^{10} as a model means it (TeX reads 2^1 0)."""
        if self.peek() == "{":
            return self.group("{", "}")
        if signed and self.take("-"):
            return ("neg", self.argument(run=run))
        c = self.peek()
        if c in DIGITS and c:
            end = self.i + 1
            while run and end < len(self.s) and self.s[end] in DIGITS:
                end += 1
            text, self.i = self.s[self.i:end], end
            return ("num", Fraction(int(text)))
        if c == "\\" or c.isalpha():
            return self.atom()
        raise Unevaluable(f"expected an argument at {self.s[self.i:self.i + 10]!r}")

    def group(self, open_: str, close: str) -> tuple:
        self.take(open_)
        tree = self.expr()
        if not self.take(close):
            raise Unevaluable(f"missing {close!r}")
        return tree

    def atom(self) -> tuple:
        self.nest()  # \\sqrt\\sqrt..., \\sin\\sin...: chains of commands count as nesting too
        tree = self.command_or_group()
        self.depth -= 1
        return tree

    def command_or_group(self) -> tuple:
        c = self.peek()
        if c == "-":  # 2*-3, x^{-1} inside braces goes through expr
            self.i += 1
            self.nest()
            tree = ("neg", self.power())
            self.depth -= 1
            return tree
        if c and c in DIGITS + ".":
            return self.number()
        if c and c in "({[":  # "" is in every string: the end of the text is no bracket
            return self.group(c, {"(": ")", "{": "}", "[": "]"}[c])
        if c == "∞":
            self.i += 1
            return ("num", math.inf)
        if c.isalpha():
            return self.variable(c, 1)
        name = self.command()
        if name == "frac":
            self.i += 5
            return ("div", self.argument(), self.argument())
        if name == "binom":
            self.i += 6
            return ("binom", self.argument(), self.argument())
        if name == "sqrt":
            self.i += 5
            index = self.group("[", "]") if self.peek() == "[" else ("num", Fraction(2))
            return ("root", self.argument(), index)
        if name == "pi":
            self.i += 3
            return ("num", math.pi)
        if name in FUNCTIONS:
            self.i += len(name) + 1
            base = None
            if name == "log" and self.take("_"):  # \\log_2 8 = ln 8 / ln 2
                base = self.argument()
            exponent = self.argument() if self.take("^") else None  # \\sin^2 x = (sin x)^2
            if exponent is not None and not (exponent[0] == "num" and exponent[1] >= 1):
                raise Unevaluable("a function power other than a positive number (\\sin^{-1} is arcsin)")
            tree = ("fn", name, self.power())
            tree = tree if base is None else ("div", tree, ("fn", "ln", base))
            return tree if exponent is None else ("pow", tree, exponent)
        if name in GREEK:
            return self.variable("\\" + name, len(name) + 1)
        raise Unevaluable(f"unknown {self.s[self.i:self.i + 12]!r}")

    def variable(self, name: str, width: int) -> tuple:
        self.i += width
        if self.take("_"):  # a_1, x_{10}: the subscript is part of the name
            start = self.i
            if self.peek() == "{":
                end = self.s.find("}", start)
                if end < 0:
                    raise Unevaluable("unclosed subscript")
                self.i = end + 1
            elif self.peek():
                self.i += 1
            name += "_" + self.s[start:self.i].strip("{}")
        self.names.add(name)
        return ("var", name)

    def number(self) -> tuple:
        start = self.i
        while self.peek() and self.peek() in DIGITS:
            self.i += 1
        if self.peek() == "." and self.i + 1 < len(self.s) and self.s[self.i + 1] in DIGITS:
            self.i += 1
            while self.peek() and self.peek() in DIGITS:
                self.i += 1
        text = self.s[start:self.i]
        if text in ("", "."):
            raise Unevaluable("lone '.'")
        value = Fraction(text)
        # A mixed number: an integer directly before \frac of two integer literals, 2\frac{1}{2} = 5/2.
        if "." not in text and self.command() == "frac":
            save = self.i
            self.i += 5
            numerator, denominator = self.argument(), self.argument()
            if numerator[0] == "num" == denominator[0] and isinstance(numerator[1], Fraction) \
                    and isinstance(denominator[1], Fraction) and denominator[1] != 0:
                return ("num", value + numerator[1] / denominator[1])
            self.i = save  # 2\frac{\pi}{3}: a product, read by term()
        return ("num", value)


ATOM_COMMANDS = frozenset({"frac", "binom", "sqrt", "pi", *FUNCTIONS, *GREEK})


def evaluate(tree: tuple, point: int, ranks: dict[str, int]) -> Value:
    """The value of a parsed tree with every variable at its value of `point` (0 or 1); `ranks`
    numbers the variable names in sorted order."""
    kind = tree[0]
    if kind == "num":
        return tree[1]
    if kind == "var":
        return _point(ranks[tree[1]], point)
    if kind == "neg":
        return -evaluate(tree[1], point, ranks)
    if kind == "fn":
        try:
            return _check(FUNCTIONS[tree[1]](float(evaluate(tree[2], point, ranks))))
        except (ValueError, OverflowError):
            raise Unevaluable(f"{tree[1]} outside its domain") from None
    if kind == "chain":  # a loop, not recursion, along a+b-c+... and a*b/c...
        value = evaluate(tree[1][0][1], point, ranks)
        for op, operand in tree[1][1:]:
            value = _apply(op, value, evaluate(operand, point, ranks))
        return value
    a = evaluate(tree[1], point, ranks)
    if kind == "fact":
        for _ in range(tree[2]):  # 3!! = (3!)! = 720
            if not (isinstance(a, Fraction) and a.denominator == 1 and 0 <= a <= 300):
                raise Unevaluable("factorial of a non-integer or a large number")
            a = Fraction(math.factorial(int(a)))
        return a
    return _apply(kind, a, evaluate(tree[2], point, ranks))


def _apply(kind: str, a: Value, b: Value) -> Value:
    """a `kind` b for the binary nodes; too large or undefined results raise Unevaluable."""
    try:
        if kind == "add":
            return _check(a + b)
        if kind == "sub":
            return _check(a - b)
        if kind == "mul":
            return _check(a * b)
        if kind == "div":
            return _check(Fraction(a) / Fraction(b) if isinstance(a, Fraction) and isinstance(b, Fraction) else a / b)
        if kind == "pow":
            return _check(_pow(a, b))
        if kind == "root":
            return _check(_root(a, b))
        if kind == "binom":
            if not all(isinstance(v, Fraction) and v.denominator == 1 and v >= 0 for v in (a, b)):
                raise Unevaluable("binomial of non-integers")
            n, k = int(a), int(b)
            if k > n:
                return Fraction(0)
            # log2 C(n, k) from lgamma, before paying for math.comb: C(10000, 5000) has ~10^4 bits
            if (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2) > MAX_BINOM_BITS:
                raise Unevaluable("binomial too large")
            return Fraction(math.comb(n, k))
    except (ZeroDivisionError, OverflowError) as err:
        raise Unevaluable(str(err)) from None
    raise AssertionError(f"unknown node {kind!r}")  # our bug


def parse(text: str) -> tuple[tuple, frozenset[str]]:
    """(tree, variable names) of a normalised expression; raises Unevaluable."""
    p = _Parser(text)
    try:
        tree = p.parse()
    except RecursionError:
        raise Unevaluable("nested too deeply") from None
    return tree, frozenset(p.names)


def close(a: Value, b: Value) -> bool:
    """Exact for two Fractions, else floats within a relative 1e-9 (infinities equal themselves)."""
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a == b
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except OverflowError:  # 10^{400} against a float: beyond any float, so not within 1e-9 of one
        return False


@lru_cache(maxsize=4096)
def values(text: str) -> tuple[frozenset[str], tuple[Value, ...]] | None:
    """(variable names, values at the points) of a text, None when it does not evaluate. Cached:
    matching two unordered lists compares each element with many others."""
    try:
        tree, names = parse(text)
        ranks = {name: k for k, name in enumerate(sorted(names))}  # the same names -> the same values
        return names, tuple(evaluate(tree, p, ranks) for p in ((0, 1) if names else (0,)))
    except (Unevaluable, ArithmeticError, RecursionError):  # ArithmeticError: an overflow we did not foresee
        return None


def same_value(a: str, b: str) -> bool | None:
    """True/False when both texts evaluate (with the same variables), None when either does not."""
    va, vb = values(a), values(b)
    if va is None or vb is None:
        return None
    return va[0] == vb[0] and all(close(x, y) for x, y in zip(va[1], vb[1]))
