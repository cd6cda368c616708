"""The one exception base for genuine input errors: :class:`UserError`.

A ``UserError`` message is meant for the user as is, in one line: the CLI prints ``error: <message>`` and
exits 2, the app shows it in a message box. Every other exception is a bug or an environment failure and
keeps its traceback (the CLI re-raises it, the app logs it). Subclasses also derive from the builtin
exception they used to be (``ValueError``, ``FileNotFoundError``, ``RuntimeError``) so callers that catch
those keep working. This module imports nothing heavy: the run store and viz use it.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix: a setting, a path, a run id, a model that is not there."""


def one_line(exc: BaseException) -> str:
    """The first non-empty line of the exception's message (its type name if it has none)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
