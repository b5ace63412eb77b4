"""Reward functions from your own code: `reward.functions` in the config.

    reward:
      functions:
        keyword: my_rewards.py:mentions_keyword      # a file (relative to where you start train.py)
        exact: mypackage.rewards:exact_match          # or an importable module
      weights: {format: 0.1, keyword: 0.5, exact: 1.0}
      correct: exact                                   # the one that decides accuracy

Each named function is then used exactly like a built-in (data/rewards.py): weighted by
reward.weights, logged as its own part, summed. It is called as `fn(completion, **kwargs)` with the
keyword arguments it names: `answer` (the row's gold answer), `question`, `tags` and any other field
of the dataset row (all of them if it takes **kwargs), and returns a number. A complete example is
examples/own_task/ (docs/own_task.md).

Loading is checked before training starts: a file or module that does not exist, a missing
function, a name taken by a built-in, or a function asking for a field the rows do not have is one
line naming the function and what to do. Every process (each torchrun rank, a --resume, the
evaluation script) loads the same specs from the run's config, so they all score alike.

Simplifications: a file is imported as a module of its own (its imports of sibling files work when
that folder is on sys.path or the working directory); nothing is sandboxed: a reward function is
code you chose to run, like train.py itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Iterable

from qwen2.errors import InputError

from .rewards import REWARD_FUNCTIONS, RewardFn, missing_arguments

SPEC_HELP = "write it as path/to/file.py:function or package.module:function"


def load_reward_function(name: str, spec: str) -> RewardFn:
    """The function `spec` names ("file.py:fn" or "package.module:fn"), for reward.functions.`name`."""
    setting = f"reward.functions.{name} = {spec!r}"
    if name in REWARD_FUNCTIONS:
        raise InputError(f"{setting}: {name!r} is a built-in reward's name; give your function another name")
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise InputError(f"{setting}: not a function reference; {SPEC_HELP}")
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _import_file(Path(target), setting)
    else:
        module = _import_module(target, setting)
    fn = getattr(module, attr, None)
    if fn is None:
        public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))[:8]
        raise InputError(f"{setting}: {target} has no function {attr!r} (it has: {', '.join(public) or 'none'})")
    if not callable(fn):
        raise InputError(f"{setting}: {attr!r} in {target} is a {type(fn).__name__}, not a function")
    return fn


def _import_file(path: Path, setting: str):
    if not path.is_file():
        raise InputError(f"{setting}: file {path} not found (relative paths start at {Path.cwd()}); check the path")
    module_name = f"reward_functions_{abs(hash(str(path.resolve()))):x}"
    if module_name in sys.modules:  # the same file named by two functions: import it once
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)  # an error in the user's file keeps its traceback
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _import_module(target: str, setting: str):
    if os.getcwd() not in sys.path:  # like `python -m`: modules beside where you started are found
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        if err.name and (target == err.name or target.startswith(err.name + ".")):  # it, not one it imports
            raise InputError(f"{setting}: module {err.name!r} not found; install it, or give a file "
                             f"instead ({SPEC_HELP})") from None
        raise


def load_reward_functions(specs: dict[str, str]) -> dict[str, RewardFn]:
    """Every function of reward.functions, by name."""
    return {name: load_reward_function(name, spec) for name, spec in specs.items()}


def check_arguments(functions: dict[str, RewardFn], fields: Iterable[str], where: str) -> None:
    """One line when a function requires a keyword the rows cannot give (`fields`: a row's fields,
    named in `where`), or cannot take the completion first."""
    available = {"answer", "question", "tags", *fields}
    for name, fn in functions.items():
        missing = missing_arguments(fn, available)
        if missing == ["completion"]:
            raise InputError(f"reward function {name!r} cannot take the completion text as its first argument: "
                             f"define it as def {getattr(fn, '__name__', name)}(completion, answer, **fields)")
        if missing:
            raise InputError(f"reward function {name!r} requires {', '.join(map(repr, missing))}, which the rows of "
                             f"{where} do not have (they have: {', '.join(sorted(available))}); give it a default "
                             "or add the field to the data")
