"""The calculator a model can call in rollouts: arithmetic with its own small parser, never `eval`.

    calculate("(48 / 2) * 3")   -> "72"
    calculate("12.5% * 80")      -> "10"
    calculate("1 / 0")           -> "error: division by zero"

Grammar (usual precedence, `**` right-associative and above unary minus, as in Python):
    sum     := product (("+" | "-") product)*
    product := unary (("*" | "/") unary)*
    unary   := ("-" | "+") unary | power
    power   := postfix ("**" unary)?
    postfix := atom "%"*                     # a percent: 20% = 0.2
    atom    := number | "(" sum ")"          # number: digits with an optional decimal point, "," as a
                                             # thousands separator allowed ("1,200")
Arithmetic is exact (fractions), the result printed as an integer when it is one, else as a decimal
rounded to 6 places. Whatever the model sends, the answer is a short text it can read, never an
exception: bad syntax, names or attributes ("x", "abs(2)", "2 .real"), division by zero, an exponent
above MAX_EXPONENT, a result over MAX_DIGITS digits, an input over MAX_CHARS characters or nested
deeper than MAX_DEPTH. Every check runs in time linear in the input (a 1 MB input is refused by its
length before anything else).

Simplification: "%" is a percent, not a modulo (GSM8K asks for percentages, never remainders).
"""

from __future__ import annotations

from fractions import Fraction

MAX_CHARS = 200
DIGITS = frozenset("0123456789")  # ASCII only: str.isdigit() also takes "²" and "①", which are no numbers here
MAX_DEPTH = 32
MAX_EXPONENT = 64
MAX_DIGITS = 30

_SINGLE = set("+-*/%()")


class CalculatorError(ValueError):
    """What the calculator answers instead of a result (the message is the text the model sees)."""


def calculate(expression: str) -> str:
    """The value of `expression`, or a line starting with "error:"; never raises."""
    try:
        return _format(_Parser(_tokens(expression)).parse())
    except CalculatorError as e:
        return f"error: {e}"


def _tokens(text: str) -> list[str]:
    """Numbers, operators and parentheses, left to right, in one pass."""
    if not isinstance(text, str):
        raise CalculatorError("the expression must be a string")
    if len(text) > MAX_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_CHARS} characters")
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "*" and text[i + 1:i + 2] == "*":
            out.append("**")
            i += 2
        elif c in _SINGLE:
            out.append(c)
            i += 1
        elif c in DIGITS or c == ".":
            j = i
            while j < len(text) and (text[j] in DIGITS or text[j] in ".,"):
                j += 1
            out.append(text[i:j].replace(",", ""))
            i = j
        else:
            raise CalculatorError(f"unexpected {c!r}: only numbers and + - * / ** % ( ) are allowed")
    if not out:
        raise CalculatorError("the expression is empty")
    return out


class _Parser:
    """Recursive descent over the tokens; each method reads one rule of the grammar above."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.i, self.depth = tokens, 0, 0

    def parse(self) -> Fraction:
        value = self.sum()
        if self.i < len(self.tokens):
            raise CalculatorError(f"unexpected {self.tokens[self.i]!r}")
        return value

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise CalculatorError("the expression ends too early")
        self.i += 1
        return token

    def sum(self) -> Fraction:
        value = self.product()
        while self.peek() in ("+", "-"):
            value = value + self.product() if self.take() == "+" else value - self.product()
        return _bounded(value)

    def product(self) -> Fraction:
        value = self.unary()
        while self.peek() in ("*", "/"):
            if self.take() == "*":
                value = value * self.unary()
            else:
                divisor = self.unary()
                if divisor == 0:
                    raise CalculatorError("division by zero")
                value = value / divisor
            value = _bounded(value)
        return value

    def unary(self) -> Fraction:
        if self.peek() in ("+", "-"):
            self._enter()
            sign = -1 if self.take() == "-" else 1
            value = sign * self.unary()
            self.depth -= 1
            return value
        return self.power()

    def power(self) -> Fraction:
        base = self.postfix()
        if self.peek() != "**":
            return base
        self.take()
        self._enter()
        exponent = self.unary()
        self.depth -= 1
        if exponent.denominator != 1:
            raise CalculatorError("only whole-number exponents are allowed")
        if abs(exponent) > MAX_EXPONENT:
            raise CalculatorError(f"the exponent is larger than {MAX_EXPONENT}")
        if base == 0 and exponent < 0:
            raise CalculatorError("division by zero")
        if base != 0 and abs(exponent) * _digits(base) > 4 * MAX_DIGITS:  # bound the work before doing it
            raise CalculatorError(f"the result has more than {MAX_DIGITS} digits")
        return _bounded(base ** int(exponent))

    def postfix(self) -> Fraction:
        value = self.atom()
        while self.peek() == "%":
            self.take()
            value = value / 100
        return value

    def atom(self) -> Fraction:
        token = self.take()
        if token == "(":
            self._enter()
            value = self.sum()
            if self.take() != ")":
                raise CalculatorError("a parenthesis is not closed")
            self.depth -= 1
            return value
        if token[0] in DIGITS or token[0] == ".":
            if token.count(".") > 1 or token == ".":
                raise CalculatorError(f"{token!r} is not a number")
            return Fraction(token)
        raise CalculatorError(f"unexpected {token!r}")

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise CalculatorError(f"the expression is nested deeper than {MAX_DEPTH}")


def _digits(x: Fraction) -> int:
    """Decimal digits of the larger of numerator and denominator (at least 1)."""
    return max(len(str(abs(x.numerator))), len(str(x.denominator)))


def _bounded(x: Fraction) -> Fraction:
    if abs(x.numerator) >= 10 ** (2 * MAX_DIGITS) or x.denominator >= 10 ** (2 * MAX_DIGITS):
        raise CalculatorError(f"the result has more than {MAX_DIGITS} digits")
    return x


def _format(x: Fraction) -> str:
    x = round(x, 6)  # exact (a Fraction, half to even): no float on the way, however large the number
    if x.denominator == 1:
        text = str(x.numerator)
    else:
        millionths = abs(x.numerator) * 10**6 // x.denominator  # exact: x is a whole number of millionths
        sign = "-" if x < 0 else ""
        text = f"{sign}{millionths // 10**6}.{millionths % 10**6:06d}".rstrip("0")
    if len(text.lstrip("-").replace(".", "")) > MAX_DIGITS:
        return f"error: the result has more than {MAX_DIGITS} digits"
    return text
