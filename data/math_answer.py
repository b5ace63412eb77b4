"""The final answer of a math completion (\\boxed{...} or <answer>) and whether it equals the gold answer.

MATH, AMC, AIME and OlympiadBench answers are LaTeX ("\\frac{1}{2}", "(-\\infty, 3]", "\\text{(C)}"),
and Qwen2.5-Math / Qwen3 write theirs in \\boxed{}. Three steps:

    extract_math_answer   the text after the last </think> (when there is one); in it the last
                          <answer>...</answer> (when there is one); in that the last \\boxed{...}
                          (nested braces; also \\fbox{...} and \\boxed 5), else the answer content.
    normalise             one spelling per meaning: \\dfrac/\\tfrac -> \\frac, no $ or \\left/\\right,
                          \\text{} unwrapped (dropped when it is a unit after a number: 5\\text{ cm}),
                          "5 cm" -> 5 (words of 2+ letters: "2 x" stays 2x), ^\\circ and \\% dropped,
                          1,000 -> 1000, "1 and 2" -> 1,2, x² -> x^2, 10001_{2} -> 10001_2.
    math_equal            the normalised texts split into structures (tuple or interval (1,2],
                          set \\{1,2\\}, union, matrix, unbracketed list "1, 2"; sets and lists in
                          any order; named items "a=1, b=2" matched by name; \\pm 3 is the set {3, -3}),
                          "x = 3" / "f(x) = 3" / "(a,b) = (1,2)" -> the right side, a choice "(D) 7"
                          equals D and 7, then each scalar compared by value with
                          data.math_expr: exact Fractions when both are rational (0.5 == \\frac12 ==
                          1/2), 1e-9 relative for closed forms (\\frac{\\sqrt3}{2} == \\sqrt{3}/2),
                          expressions in variables at two fixed points (x^2+2x+1 == (x+1)^2); what
                          does not evaluate (words, relations) is compared as normalised text.

`math_reward(completion, answer, tags)` is 1.0 or 0.0: the built-in reward `math` (data/rewards.py).

Safety: completions come from a model and can be huge or adversarial; math_reward never raises on
one (a bug of ours scores 0.0 with a RuntimeWarning, which the tests make an error). Tags and boxes are found
with str.rfind / str.find (linear), a box's closing brace is looked for at most MAX_ANSWER_CHARS
characters on, and an answer longer than MAX_ANSWER_CHARS is wrong without being read. Normalising
is one regex pass over \\commands, a fixed list of str.replace calls and single left-to-right
scans; no regex has nested quantifiers; the evaluator caps nesting, exponents and number sizes (data/math_expr.py). A 1 MB
hostile completion scores in milliseconds (tests/test_math_answer.py).

What it does not judge (each is wrong or right by these rules, not by meaning):
- percent against fraction: 50\\% equals 50, not 0.5 (the sign is dropped); degrees against
  radians: 30^\\circ equals 30, not \\frac{\\pi}{6};
- decimals are exact against rational golds: 0.333 is not \\frac13 (no rounding); against an
  irrational gold the 1e-9 relative tolerance applies: 3.14159265358979 is \\pi, 3.14159 is not;
  repeating decimals (0.\\overline{3}) are not read;
- complex numbers and e: i and e are variables ((1+i)^2 is not 2i, e^{i\\pi} is not -1);
- relations beyond a leading "x =": y = 2x + 1 and 2x - y = -1 differ (compared as text; same for
  \\le, \\ge); unit conversions (100 cm is not 1 m); plain-word units only after a number ("5 cm");
- answers given in words ("three"); a lone choice letter against the option's value (D is not 7);
  a word after a number is a unit (12\\text{th} equals 12, as 5 cm does); a one-letter word is a
  variable (5 m is 5m, not 5);
- an expression in variables never equals one without them (\\sin^2 x + \\cos^2 x is not 1);
- a number directly before an integer \\frac is a mixed number (2\\frac12 = 5/2), \\log is ln;
- anything longer than MAX_ANSWER_CHARS, and text after the last </think> only.
"""

from __future__ import annotations

import re
import warnings
from typing import Sequence

from .math_expr import MAX_DEPTH, same_value

MAX_ANSWER_CHARS = 1000  # a final answer longer than this is not one (and is never read)
MAX_ITEMS = 64  # elements of a tuple, set or list; more: compared as text

# Spellings with one meaning. Whole commands by one regex pass (a command is replaced only whole:
# \big is not the start of \bigcup, \cdot of \cdots, \pm of \pmod), then symbols in order.
_COMMANDS = {
    "dfrac": "\\frac", "tfrac": "\\frac", "cfrac": "\\frac", "bigcup": "\\cup", "cdots": "\\dots", "ldots": "\\dots",
    **dict.fromkeys("displaystyle left right bigl bigr Bigl Bigr big Big biggl biggr Biggl Biggr bigg Bigg".split(), ""),
    "qquad": " ", "quad": " ", "circ": "", "degree": "", "cdot": "*", "times": "*", "ast": "*", "div": "/",
    "infty": "∞", "infinity": "∞", "lbrace": "\\{", "rbrace": "\\}", "leqslant": "\\le", "geqslant": "\\ge",
    "leq": "\\le", "geq": "\\ge", "neq": "\\ne", "emptyset": "∅", "varnothing": "∅", "pm": "±",
}
_COMMAND_RE = re.compile(r"\\([A-Za-z]+)")
_BEFORE_COMMANDS = (("\\\\", "⏎"), ("^{\\circ}", ""), ("^\\circ", ""))  # a matrix row break, kept apart from "\\ "
_REPLACEMENTS = (
    ("\\!", ""), ("\\,", " "), ("\\;", " "), ("\\:", " "), ("\\ ", " "), ("~", " "), ("°", ""),
    ("\\%", ""), ("%", ""), ("\\$", ""), ("$", ""), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""),
    ("{,}", ","), ("×", "*"), ("÷", "/"), ("·", "*"), ("−", "-"), ("–", "-"), ("≤", "\\le"), ("≥", "\\ge"),
    ("≠", "\\ne"), ("\\{\\}", "∅"), ("π", "\\pi"), ("√", "\\sqrt"), ("²", "^2"), ("³", "^3"),
)
# Commands whose braced argument is text: unwrapped, or dropped as a unit after a number.
_TEXT_COMMANDS = frozenset({"text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf", "mathit",
                            "mbox", "operatorname", "textsf", "mathsf"})
# 1,000 or -12,345.5: thousands separators (each ",ddd" group starts with its comma: one way to match).
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", re.ASCII)
# The left side "x =" (x, a_1, y_{2}, \theta) dropped before comparing: x = 3 is 3.
# Also f(x) = and (a,b) = (a tuple of names).
_LHS_RE = re.compile(r"[a-zA-Z](?:_[a-zA-Z0-9]|_\{[a-zA-Z0-9]{1,8}\})?(?:\([a-z]\))?|\\[a-z]{2,8}|\((?:[a-z],)+[a-z]\)")
# A one-character subscript in braces, 10001_{2} -> 10001_2 (one spelling for base-n numbers).
_SUBSCRIPT_RE = re.compile(r"_\{([A-Za-z0-9])\}")
_UNORDERED = ("set", "list", "union")


# ---------------------------------------------------------------- extraction


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """(content, index after the closing brace) of the group opening at text[start] == "{".

    Scans at most MAX_ANSWER_CHARS characters: a longer group is no answer, and the scan of a
    hostile '{' * 10**6 stays short.
    """
    depth = 0
    for i in range(start, min(len(text), start + MAX_ANSWER_CHARS + 2)):
        c = text[i]
        if c == "{" and text[i - 1:i] != "\\":
            depth += 1
        elif c == "}" and text[i - 1:i] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    return None


def _last_box(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} / \\boxed 5 in `text`, None when there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = after = start + (6 if text.startswith("\\boxed", start) else 5)
    while i < len(text) and text[i] == " ":
        i += 1
    if text[i:i + 1] == "{":
        found = _braced(text, i)
        return None if found is None else found[0]
    if i >= len(text) or i == after and text[i].isalpha():
        return None  # a bare \boxed at the end, or \boxedx: no argument
    end = i
    while end < len(text) and end - i < MAX_ANSWER_CHARS and not text[end].isspace() and text[end] not in "$.,":
        end += 1  # "\boxed 5" (TeX's one-token argument, as Qwen sometimes writes it)
    return text[i:end] or None


def _check_tags(tags: Sequence[str]) -> tuple[str, str]:
    if len(tags) != 2 or not all(isinstance(t, str) and t and not set(t) & set("<>/ ") for t in tags):
        raise ValueError(f"tags must be two bare tag names like ('think', 'answer'), got {tags!r}")
    return tags[0], tags[1]


def extract_math_answer(completion: str, tags: Sequence[str] = ("think", "answer")) -> str | None:
    """The final answer of `completion` as written (not normalised), or None when it gives none."""
    reasoning, answer = _check_tags(tags)
    close = completion.rfind(f"</{reasoning}>")
    text = completion[close + len(reasoning) + 3:] if close >= 0 else completion
    content = None
    start = text.rfind(f"<{answer}>")
    if start >= 0:
        end = text.find(f"</{answer}>", start)
        if end >= 0:
            content = text = text[start + len(answer) + 2:end]
    boxed = _last_box(text)
    if boxed is not None:
        return boxed
    return None if content is None else content.strip()


# ---------------------------------------------------------------- normalisation


def _unwrap_text(s: str, depth: int = 0) -> str:
    """\\text{Monday} -> Monday; 5\\text{ cm}^2 -> 5 (a unit at the end, after something); \\text{ and } -> ,."""
    out, pos = [], 0
    while True:
        i = s.find("\\", pos)
        if i < 0:
            break
        j = i + 1
        while j < len(s) and s[j].isalpha():
            j += 1
        name = s[i + 1:j]
        k = j
        while k < len(s) and s[k] == " ":
            k += 1
        found = _braced(s, k) if name in _TEXT_COMMANDS and s[k:k + 1] == "{" else None
        if found is None:
            out.append(s[pos:max(j, i + 2)])  # not a text command: copy it (and a '\{' whole)
            pos = max(j, i + 2)
            continue
        content, after = found
        rest = s[after:].strip()
        out.append(s[pos:i])
        if content.strip() in ("and", "or", ","):
            out.append(",")
        elif "".join(out).strip() and rest in ("", ".", "^2", "^3", "^{2}", "^{3}"):
            after = len(s)  # a unit after a number: dropped with its exponent
        else:
            out.append(_unwrap_text(content, depth + 1) if depth < MAX_DEPTH else content)
        pos = after
    out.append(s[pos:])
    return "".join(out)


def _drop_plain_units(s: str) -> str:
    """'5 cm' -> '5', '12 square units' -> '12': words after a space after a number-only head.

    Each word must have two letters or more: '2 x' is 2x and '3 + 4 i' is 3+4i, not a number and a
    unit; and the head must be one number, not a sum ('3 + 4 ab' keeps its ab)."""
    body = s.removesuffix("^2").removesuffix("^3").rstrip()
    k = len(body)
    while k > 0 and (body[k - 1].isalpha() or body[k - 1] == " "):
        k -= 1
    head, tail = body[:k].rstrip(), body[k:]
    if not tail.strip() or not tail.startswith(" ") or not head or not (head[-1] in "0123456789}") \
            or any(len(word) < 2 for word in tail.split()) or "+" in head[1:] or "-" in head[1:]:
        return s
    bare = head.replace("\\frac", "").replace("\\sqrt", "").replace("\\pi", "")
    return s if any(c.isalpha() for c in bare) else head


def _squeeze(s: str) -> str:
    """Spaces removed, except one between a \\command and a letter: '2\\pi r' -> '2\\pi r', not '\\pir'."""
    out = []
    for word in s.split():
        if out and word[0].isalpha():
            tail = out[-1].rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
            if tail.endswith("\\") and len(tail) < len(out[-1]):
                out.append(" ")
        out.append(word)
    return "".join(out)


def normalise(text: str) -> str | None:
    """One spelling of an answer (module docstring); None when it is longer than MAX_ANSWER_CHARS."""
    s = text.strip()
    if len(s) > MAX_ANSWER_CHARS:
        return None
    if s.startswith(("\\boxed", "\\fbox")):  # a gold answer written boxed
        s = _last_box(s) or s
    for old, new in _BEFORE_COMMANDS:
        s = s.replace(old, new)
    s = _COMMAND_RE.sub(lambda m: _COMMANDS.get(m.group(1), m.group(0)), s)
    for old, new in _REPLACEMENTS:
        s = s.replace(old, new)
    s = _SUBSCRIPT_RE.sub(r"_\1", s)
    s = " ".join(_unwrap_text(s).split())
    s = s.replace(", and ", ",").replace(" and ", ",").replace(" or ", ",")
    s = _drop_plain_units(s)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return _squeeze(s).rstrip(".").rstrip("\\")


# ---------------------------------------------------------------- structure and comparison


def _split_top(s: str, sep: str) -> list[str]:
    """`s` split at `sep` outside any brackets ((, [, {: an interval's (1,2] counts as one group)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _spans(s: str) -> bool:
    """True when the bracket opening at s[0] closes at s[-1] ((1,2)(3,4) is two groups)."""
    depth = 0
    for i, c in enumerate(s):
        depth += (c in "([{") - (c in ")]}")
        if depth == 0 and i < len(s) - 1:
            return False
    return depth == 0


def _structure(s: str) -> tuple[str, list[str]]:
    """(kind, items): 'scalar', ordered '()' '[]' '(]' '[)' and 'matrixRxC', or unordered ones."""
    if s == "∅":
        return "set", []
    if s.startswith("\\begin{") and "}" in s:
        env = s[7:s.index("}")]
        if s.endswith(f"\\end{{{env}}}") and env.endswith("matrix"):
            rows = [_split_top(row, "&") for row in _split_top(s[8 + len(env):-6 - len(env)], "⏎") if row]
            if rows and all(len(r) == len(rows[0]) for r in rows):
                return f"matrix{len(rows)}x{len(rows[0])}", [x for r in rows for x in r]
    pieces = _split_top(s, "\\cup")
    if len(pieces) > 1:
        return "union", pieces
    if s.startswith("\\{") and s.endswith("\\}") and _spans(s[1:]):
        return "set", _split_top(s[2:-2], ",") if s[2:-2] else []
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _spans(s):
        items = _split_top(s[1:-1], ",")
        if len(items) >= 2:
            return s[0] + s[-1], items
    items = _split_top(s, ",")
    if len(items) == 1 and s.count("±") == 1:  # \pm 3 is the set {3, -3}; \frac{1\pm\sqrt5}{2} two roots
        return "set", [s.replace("±", "+"), s.replace("±", "-")]
    return ("list", items) if len(items) >= 2 else ("scalar", [s])


def _has_word(s: str) -> bool:
    """True when s holds a run of 3+ letters that is not a \\command (Monday, not \\sqrt or xy)."""
    run, command = 0, False
    for c in s:
        if c.isalpha():
            run += 1
            if run >= 3 and not command:
                return True
        else:
            run, command = 0, c == "\\"
    return False


def _name(s: str) -> str | None:
    """The name of an item 'a = 1' (a), None for an item without one."""
    lhs, eq, rhs = s.partition("=")
    return lhs if eq and rhs and _LHS_RE.fullmatch(lhs) else None


def _names_agree(x: str, y: str) -> bool:
    """Two items may be equal: a=1 is not b=1 (a list 'a=1, b=2' is matched name by name)."""
    nx, ny = _name(x), _name(y)
    return nx is None or ny is None or nx == ny


def _choice(s: str) -> tuple[str, str] | None:
    """'(D)7' -> ('D', '7'): a multiple-choice letter in parentheses before the option's value."""
    if len(s) > 3 and s[0] == "(" and s[2] == ")" and "A" <= s[1] <= "Z":
        return s[1], s[3:]
    return None


def _scalar(s: str) -> str:
    """x = 3 -> 3, x\\in[1,2] -> [1,2], (C) -> C; not a=1,b=2 (a list of named items, matched by name)."""
    lhs, eq, rhs = s.partition("=")
    variable = _LHS_RE.match(s)
    if eq and _LHS_RE.fullmatch(lhs) and rhs and "=" not in rhs:
        s = rhs
    elif variable and s.startswith("\\in", variable.end()) and len(s) > variable.end() + 3:
        s = s[variable.end() + 3:]
    if len(s) == 3 and s[0] == "(" and s[2] == ")" and s[1].isupper():
        s = s[1]
    return s


def _equal(a: str, b: str, depth: int = 0) -> bool:
    a, b = _scalar(a), _scalar(b)
    if a == b:
        return True
    if depth > 4:
        return False
    ca, cb = _choice(a), _choice(b)
    if ca and cb:
        return ca[0] == cb[0]
    if ca or cb:  # '(D) 7' against 'D' (the letter) or against '7' (the option's value)
        (letter, value), other = (ca, b) if ca else (cb, a)
        return other == letter or _equal(value, other, depth + 1)
    (ka, ia), (kb, ib) = _structure(a), _structure(b)
    if len(ia) > MAX_ITEMS or len(ib) > MAX_ITEMS:
        return False
    if ka in _UNORDERED or kb in _UNORDERED:  # {1, 2} == 2, 1; a lone answer is a list of one
        ka, kb = ka if ka != "scalar" else "list", kb if kb != "scalar" else "list"
        if ka not in _UNORDERED or kb not in _UNORDERED or len(ia) != len(ib):
            return False
        unused = list(ib)
        for x in ia:
            match = next((k for k, y in enumerate(unused) if _names_agree(x, y) and _equal(x, y, depth + 1)), None)
            if match is None:
                return False
            unused.pop(match)
        return True
    if ka != kb or len(ia) != len(ib):
        return False
    if ka != "scalar":
        return all(_names_agree(x, y) and _equal(x, y, depth + 1) for x, y in zip(ia, ib))
    if not (_has_word(a) or _has_word(b)):
        same = same_value(a, b)
        if same is not None:
            return same
    return a.casefold() == b.casefold() if _has_word(a) and _has_word(b) else False


def math_equal(predicted: str, gold: str) -> bool:
    """True when the answer `predicted` means `gold` by the rules of the module docstring."""
    a, b = normalise(predicted), normalise(gold)
    if not a or not b:
        return False
    return _equal(a, b)


def math_reward(completion: str, answer: str, tags: Sequence[str] = ("think", "answer")) -> float:
    """1.0 when the completion's final answer (extract_math_answer) equals the gold `answer`, else 0.0.

    Never raises on a completion: an exception would stop training. Our own bug on some text scores
    0.0 with a RuntimeWarning naming it (tests turn warnings into errors: tests/test_math_answer.py).
    Bad `tags` still raise (they are the caller's input, not the model's)."""
    _check_tags(tags)
    try:
        predicted = extract_math_answer(completion, tags)
        return 1.0 if predicted is not None and math_equal(predicted, answer) else 0.0
    except Exception as err:  # noqa: BLE001 - the backstop: a model's text must never stop a run
        warnings.warn(f"math_reward: {type(err).__name__}: {err} (a bug of data/math_answer.py; scored 0.0) "
                      f"on {completion[-200:]!r}", RuntimeWarning, stacklevel=2)
        return 0.0
