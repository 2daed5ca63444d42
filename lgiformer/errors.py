"""Errors that mean "the input is wrong", not "the code is wrong": the entry points print them as one line (the
file, the line, what was expected) and exit 2, instead of a traceback."""
from __future__ import annotations


class InputError(ValueError):
    """A config value, list line, data file or checkpoint that cannot be used as given."""
