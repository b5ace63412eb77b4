"""The one exception family for bad input: what the user gave is wrong, not our code.

A config value, a data file, a model, tokenizer or checkpoint directory, a device name: when one
of them cannot work, the code raises an `InputError` whose message is one line with the cause and
what to do. `train.py` and the scripts print exactly that line (exit code 2) and no traceback.
Every other exception is a bug in this project (or in a library) and keeps its full traceback, so
it is never mistaken for bad input.

`run_command(main)` is that rule for a script's entry point, written once.

Both subclass the built-in they refine (ValueError, FileNotFoundError), so existing callers that
catch those still work.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class InputError(ValueError):
    """Bad input: the message says, in one line, what is wrong and what to do."""


class MissingInput(InputError, FileNotFoundError):
    """A file or directory the user pointed to does not exist."""


def run_command(main: Callable[[], int | None]) -> int:
    """Run a command-line `main`: bad input becomes its one line on stderr and exit code 2; any other
    exception propagates with its traceback. Returns main's exit code (anything but an int counts as 0)."""
    try:
        code = main()
        return code if isinstance(code, int) else 0
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
