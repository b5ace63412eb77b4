"""The final answer of a math completion (\\boxed{...} or <answer>) and whether it equals the gold answer.

MATH, AMC, AIME and OlympiadBench answers are LaTeX ("\\frac{1}{2}", "(-\\infty, 3]", "\\text{(C)}"),
and Qwen2.5-Math / Qwen3 write theirs in \\boxed{}. Three steps:

    extract_math_answer   the text after the last </think> (when there is one); in it the last
                          <answer>...</answer> (when there is one); in that the last \\boxed{...}
                          (nested braces; also \\fbox{...} and \\boxed 5), else the answer content.
    normalise             one spelling per meaning: \\dfrac/\\tfrac -> \\frac, no $ or \\left/\\right,
                          \\text{} unwrapped (dropped when it is a unit after a number: 5\\text{ cm}),
                          "5 cm" -> 5, ^\\circ and \\% dropped, 1,000 -> 1000, "1 and 2" -> 1,2.
    math_equal            the normalised texts split into structures (tuple or interval (1,2],
                          set \\{1,2\\}, union, matrix, unbracketed list "1, 2"; sets and lists in
                          any order), "x = 3" -> 3, then each scalar compared by value with
                          data.math_expr: exact Fractions when both are rational (0.5 == \\frac12 ==
                          1/2), 1e-9 relative for closed forms (\\frac{\\sqrt3}{2} == \\sqrt{3}/2),
                          expressions in variables at two fixed points (x^2+2x+1 == (x+1)^2); what
                          does not evaluate (words, relations) is compared as normalised text.

`math_reward(completion, answer, tags)` is 1.0 or 0.0: the built-in reward `math` (data/rewards.py).

Safety: completions come from a model and can be huge or adversarial. Tags and boxes are found
with str.rfind / str.find (linear), a box's closing brace is looked for at most MAX_ANSWER_CHARS
characters on, and an answer longer than MAX_ANSWER_CHARS is wrong without being read. Normalising
is a fixed list of str.replace calls and single left-to-right scans; the one regex has no nested
quantifiers; the evaluator caps nesting, exponents and number sizes (data/math_expr.py). A 1 MB
hostile completion scores in milliseconds (tests/test_math_answer.py).

What it does not judge (each is wrong or right by these rules, not by meaning):
- percent against fraction: 50\\% equals 50, not 0.5 (the sign is dropped); degrees against
  radians: 30^\\circ equals 30, not \\frac{\\pi}{6};
- decimals are exact: 0.333 is not \\frac13, 3.14 is not \\pi (no rounding tolerance);
- complex numbers and e: i and e are variables ((1+i)^2 is not 2i, e^{i\\pi} is not -1);
- relations beyond a leading "x =": y = 2x + 1 and 2x - y = -1 differ (compared as text; same for
  \\le, \\ge); unit conversions (100 cm is not 1 m); plain-word units only after a number ("5 cm");
- answers given in words ("three") and multiple-choice letters against the option's value;
- a number directly before an integer \\frac is a mixed number (2\\frac12 = 5/2), \\log is ln;
- anything longer than MAX_ANSWER_CHARS, and text after the last </think> only.
"""

from __future__ import annotations

import re
from typing import Sequence

from .math_expr import MAX_DEPTH, same_value

MAX_ANSWER_CHARS = 1000  # a final answer longer than this is not one (and is never read)
MAX_ITEMS = 64  # elements of a tuple, set or list; more: compared as text

# Spellings with one meaning, replaced in this order (longer first where one contains another).
_REPLACEMENTS = (
    ("\\\\", "⏎"),  # a matrix row break, kept apart from "\\ " (a space) below
    ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"),
    ("\\displaystyle", ""), ("\\left", ""), ("\\right", ""), ("\\bigl", ""), ("\\bigr", ""),
    ("\\Bigl", ""), ("\\Bigr", ""), ("\\big", ""), ("\\Big", ""),
    ("\\!", ""), ("\\,", " "), ("\\;", " "), ("\\:", " "), ("\\qquad", " "), ("\\quad", " "), ("\\ ", " "), ("~", " "),
    ("^{\\circ}", ""), ("^\\circ", ""), ("\\circ", ""), ("°", ""), ("\\degree", ""),
    ("\\%", ""), ("%", ""), ("\\$", ""), ("$", ""), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""),
    ("{,}", ","), ("\\cdot", "*"), ("\\times", "*"), ("\\ast", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/"),
    ("·", "*"), ("−", "-"), ("–", "-"), ("\\infty", "∞"), ("\\infinity", "∞"), ("\\lbrace", "\\{"),
    ("\\rbrace", "\\}"), ("\\leqslant", "\\le"), ("\\geqslant", "\\ge"), ("\\leq", "\\le"), ("\\geq", "\\ge"),
    ("≤", "\\le"), ("≥", "\\ge"), ("\\neq", "\\ne"), ("≠", "\\ne"), ("\\emptyset", "∅"), ("\\varnothing", "∅"),
    ("\\{\\}", "∅"), ("π", "\\pi"), ("√", "\\sqrt"), ("\\sqrt ", "\\sqrt"), ("\\pm", "±"),
)
# Commands whose braced argument is text: unwrapped, or dropped as a unit after a number.
_TEXT_COMMANDS = frozenset({"text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf", "mathit",
                            "mbox", "operatorname", "textsf", "mathsf"})
# 1,000 or -12,345.5: thousands separators (each ",ddd" group starts with its comma: one way to match).
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# The left side "x =" (x, a_1, y_{2}, \theta) dropped before comparing: x = 3 is 3.
_LHS_RE = re.compile(r"[a-zA-Z](?:_[a-zA-Z0-9]|_\{[a-zA-Z0-9]{1,8}\})?|\\[a-z]{2,8}")
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
    """'5 cm' -> '5', '12 square units' -> '12': words after a space after a number-only head."""
    body = s.removesuffix("^2").removesuffix("^3").rstrip()
    k = len(body)
    while k > 0 and (body[k - 1].isalpha() or body[k - 1] == " "):
        k -= 1
    head, tail = body[:k].rstrip(), body[k:]
    if not tail.strip() or not tail.startswith(" ") or not head or not (head[-1].isdigit() or head[-1] == "}"):
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
    for old, new in _REPLACEMENTS:
        s = s.replace(old, new)
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


def _scalar(s: str) -> str:
    """x = 3 -> 3, x\\in[1,2] -> [1,2], (C) -> C."""
    lhs, eq, rhs = s.partition("=")
    variable = _LHS_RE.match(s)
    if eq and _LHS_RE.fullmatch(lhs) and rhs:
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
    (ka, ia), (kb, ib) = _structure(a), _structure(b)
    if len(ia) > MAX_ITEMS or len(ib) > MAX_ITEMS:
        return False
    if ka in _UNORDERED or kb in _UNORDERED:  # {1, 2} == 2, 1; a lone answer is a list of one
        ka, kb = ka if ka != "scalar" else "list", kb if kb != "scalar" else "list"
        if ka not in _UNORDERED or kb not in _UNORDERED or len(ia) != len(ib):
            return False
        unused = list(ib)
        for x in ia:
            match = next((k for k, y in enumerate(unused) if _equal(x, y, depth + 1)), None)
            if match is None:
                return False
            unused.pop(match)
        return True
    if ka != kb or len(ia) != len(ib):
        return False
    if ka != "scalar":
        return all(_equal(x, y, depth + 1) for x, y in zip(ia, ib))
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
    """1.0 when the completion's final answer (extract_math_answer) equals the gold `answer`, else 0.0."""
    predicted = extract_math_answer(completion, tags)
    return 1.0 if predicted is not None and math_equal(predicted, answer) else 0.0
