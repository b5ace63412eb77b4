"""YAML -> typed dataclasses, the machinery behind grpo/config.py: the type of every value is
checked against its annotation (int -> float allowed), unknown keys are rejected with the valid
ones, every key's declared range is checked where the key is declared, and YAML syntax errors and
`--set section.key=value` overrides become one-line `ConfigError`s.

A key is declared with its default and its check, in one line of its section's dataclass:

    lr: float = key(1e-6, above(0))                          # a finite float > 0
    template: str = key("think", one_of("think", "reasoning", "chinese"))

Floats must always be finite (no nan, no inf); a check adds the range. A check that needs a list
that changes at run time (the registered reward functions) takes a function returning it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from qwen2.errors import InputError


class ConfigError(InputError):
    """A bad configuration key or value; the message lists the valid choices or the valid range."""


@dataclass(frozen=True)
class Check:
    """What a key's value must satisfy: `ok(value)`, described by `text` ("> 0", "one of a, b"; a
    function when the choices are only known when checking)."""

    ok: Callable[[Any], bool]
    text: str | Callable[[Any], str]  # or a function of the value checked

    def describe(self, value: Any = None) -> str:
        return self.text(value) if callable(self.text) else self.text


def key(default: Any = dataclasses.MISSING, check: Check | None = None, *, factory: Callable[[], Any] | None = None) -> Any:
    """A config key: its default (or a `factory` for lists and mappings) and the check its value must pass."""
    if factory is not None:
        return field(default_factory=factory, metadata={"check": check})
    return field(default=default, metadata={"check": check})


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _number_range(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> Check:
    def ok(x: Any) -> bool:
        return ((lo is None or (x > lo if lo_open else x >= lo)) and (hi is None or (x < hi if hi_open else x <= hi)))
    if lo is not None and hi is not None:
        text = f"in {'(' if lo_open else '['}{_number(lo)}, {_number(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        text = f"{'>' if lo_open else '>='} {_number(lo)}"
    else:
        text = f"{'<' if hi_open else '<='} {_number(hi)}"
    return Check(ok, text)


def above(lo: float, hi: float | None = None) -> Check:
    """> lo (and <= hi)."""
    return _number_range(lo, hi, True, False)


def at_least(lo: float, hi: float | None = None) -> Check:
    """>= lo (and <= hi)."""
    return _number_range(lo, hi, False, False)


def between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    return _number_range(lo, hi, lo_open, hi_open)


def one_of(*choices: str) -> Check:
    return Check(lambda x: x in choices, f"one of {', '.join(choices)}")


def subset_of(choices: Callable[[], Iterable[str]], allow_empty: bool = False) -> Check:
    """A list or mapping (non-empty unless `allow_empty`) whose entries (keys) are all among
    `choices()` (read when checked)."""
    def text(x: Any) -> str:
        unknown = sorted(set(x or ()) - set(choices()))
        return (f"a {'' if allow_empty else 'non-empty '}selection of {', '.join(choices())}"
                + (f" (unknown: {', '.join(unknown)})" if unknown else ""))

    return Check(lambda x: (allow_empty or bool(x)) and set(x) <= set(choices()), text)


def non_empty() -> Check:
    return Check(lambda x: bool(x.strip()), "a non-empty string")


def check_value(value: Any, check: Check | None, path: str) -> None:
    """Raise a one-line ConfigError naming the key, the value and the valid range."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path} must be a finite number{f' {check.describe(value)}' if check else ''}, got {value!r}")
    if isinstance(value, dict):  # mapping values (reward weights) are numbers too: finite
        for k, v in value.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{path}.{k} must be a finite number, got {v!r}")
    if check is not None and value is not None and not check.ok(value):
        raise ConfigError(f"{path} must be {check.describe(value)}, got {value!r}")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotated type, allowing int -> float."""
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [coerce(v, typing.get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        ktp, vtp = typing.get_args(tp)
        return {coerce(k, ktp, where): coerce(v, vtp, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce(value, option, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where} = {value!r} has the wrong type (expected {tp})")
    if tp is type(None):
        if value is None:
            return None
    elif tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where} = {value!r} has the wrong type (expected {getattr(tp, '__name__', tp)})")


def build(cls: type, raw: dict[str, Any], where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}; valid keys{' in ' + where if where else ''}: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value or {}, path)
        else:
            kwargs[key] = coerce(value, tp, path)
            check_value(kwargs[key], fields[key].metadata.get("check"), path)
    return cls(**kwargs)


def _yaml_error(e: yaml.YAMLError, source: str, text: str) -> ConfigError:
    """One line: where (file:line:column), what YAML expected, and the offending line."""
    mark, context_mark = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if mark is None:
        return ConfigError(f"{source} is not valid YAML: {problem}")
    context = getattr(e, "context", None)
    if context and context_mark is not None:  # e.g. where an unclosed '[' was opened
        context = f"{context} that starts at line {context_mark.line + 1}, column {context_mark.column + 1}"
    lines = text.splitlines()
    line = lines[mark.line].strip() if mark.line < len(lines) else "(end of file)"
    return ConfigError(f"{source}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}"
                       f"{f' ({context})' if context else ''}; the line: {line!r}")


class _Loader(yaml.SafeLoader):
    """yaml.safe_load, with numbers read as YAML 1.2 and people write them: YAML 1.1 (PyYAML) reads
    3e-6 (no dot) and inf/nan (no leading dot) as strings, which would then be reported as the wrong
    type instead of as what they are: a float, and for inf/nan one outside the key's range."""


_Loader.add_implicit_resolver(  # tried after YAML 1.1's own int and float patterns
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?|[-+]?(?:inf|infinity)|nan)$",
               re.IGNORECASE),
    list("-+0123456789.iInN"))


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only
    except yaml.YAMLError as e:
        raise _yaml_error(e, source, text) from None
    except ValueError as e:  # a scalar PyYAML recognised but cannot convert (a date like 2024-13-45)
        raise ConfigError(f"{source} is not valid YAML: {e}") from None


def parse_override(text: str, cls: type | None = None) -> tuple[list[str], Any]:
    """'optim.lr=3e-6' -> (['optim', 'lr'], 3e-06); the value is parsed as YAML. With the config's
    class `cls`, a text key given text that YAML reads as a mapping or list (a prompt such as
    `Question: {question}`) keeps the text as typed."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    key, value = text.split("=", 1)
    parsed = parse_yaml(value, "--set value") if value.strip() else ""
    # YAML needs a space after ':' in a mapping, so {format:0.1,correctness:1.0} (as people type it
    # on a command line) reads as keys "format:0.1" with no values. Read it the way it was meant.
    if isinstance(parsed, dict) and any(isinstance(k, str) and ":" in k and v is None for k, v in parsed.items()):
        parsed = parse_yaml(re.sub(r":(?=\S)", ": ", value), "--set value")
    keys = key.strip().split(".")
    if cls is not None and isinstance(parsed, (dict, list)) and _declared(cls, keys) in (str, str | None):
        return keys, value.strip()
    return keys, parsed


def _declared(cls: type, keys: list[str]) -> Any:
    """The annotated type of the dotted key `keys` in the dataclass `cls` (None if there is none)."""
    tp: Any = cls
    for k in keys:
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(k)
    return tp


