"""Errors that mean "the input is wrong", not "the code is wrong": the entry points print them as one line (the
file, the line, what was expected) and exit 2, instead of a traceback."""
from __future__ import annotations

import sys


class InputError(ValueError):
    """A config value, list line, data file or checkpoint that cannot be used as given."""


def per_input_exit_code(results: list[dict]) -> int:
    """The exit code of a tool that answers input by input (predict, visualize): 0 when every input was handled,
    1 when some could not be read (each has its own ``error`` entry; one summary line goes to stderr)."""
    failed = sum("error" in r for r in results)
    if failed:
        print(f"{failed} of {len(results)} inputs could not be read (exit code 1)", file=sys.stderr)
        return 1
    return 0
