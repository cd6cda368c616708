"""The one exception base for genuine input errors: :class:`UserError`.

A ``UserError`` message is meant for the user as is, in one line: the CLI prints ``error: <message>`` and
exits 2, the app shows it in a message box. Every other exception is a bug or an environment failure and
keeps its traceback (the CLI re-raises it, the app logs it). Subclasses also derive from the builtin
exception they used to be (``ValueError``, ``FileNotFoundError``, ``RuntimeError``) so callers that catch
those keep working. This module imports nothing heavy: the run store and viz use it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.machinery import EXTENSION_SUFFIXES
from typing import NoReturn

EXIT_USAGE = 2  # the exit status of a usage error or a UserError on the command line


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are a single ``error: ...`` line (exit 2): the CLI's and app.py's."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see '{self.prog} --help')\n")


class UserError(Exception):
    """Bad input the user can fix: a setting, a path, a run id, a model that is not there."""


class ConfigError(UserError, ValueError):
    """A setting is out of range or inconsistent; the message is meant for the user as is."""


def one_line(exc: BaseException) -> str:
    """The first non-empty line of the exception's message (its type name if it has none)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


ENV_HINT = "an installed package is broken or incompatible: `python -m accel env` prints the versions for a bug report"


class DependencyError(RuntimeError):
    """An installed package failed (an import error or an exception inside it), not the user's input: shown with its
    root cause (:func:`root_cause`) and logged with its traceback; never a :class:`UserError`."""


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions behind it (``raise ... from``, or raised while handling), outermost first."""
    seen: list[BaseException] = []
    while exc is not None and all(exc is not s for s in seen):
        seen.append(exc)
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    return seen


def root_cause(exc: BaseException) -> str:
    """``Type: message`` of the innermost exception behind ``exc``, its last non-empty line: for diffusers' lazy
    imports ("Failed to import ... (look up to see its traceback):") the ``cannot import name ...`` line itself."""
    inner = _chain(exc)[-1]
    lines = [line.strip() for line in str(inner).strip().splitlines() if line.strip()]
    return f"{type(inner).__name__}: {lines[-1]}" if lines else type(inner).__name__


def failed_import(exc: BaseException) -> bool:
    """True when an import failed somewhere behind ``exc`` (a missing or broken package)."""
    return any(isinstance(e, ImportError) for e in _chain(exc))


@contextmanager
def imports_undone_on_failure() -> Iterator[None]:
    """When the block fails on an import (:func:`failed_import`), forget the half-imported state it left, so a
    long-lived process (the app) imports afresh on the next attempt, once the package is installed or fixed:

    - the module an import failed on (``cannot import name X from M``: ``M``, e.g. a wrong ``kernels``), and
    - what is left of a package whose own ``__init__`` failed (submodules that cached "X is not available").

    Only modules first imported inside the block are forgotten, and never a compiled extension: its init cannot run
    twice in one process.
    """
    before = set(sys.modules)
    try:
        yield
    except BaseException as exc:
        if failed_import(exc):
            _forget(set(sys.modules) - before, exc)
        raise


def _forget(new: set[str], exc: BaseException) -> None:
    culprits = {e.name for e in _chain(exc) if isinstance(e, ImportError) and e.name}
    failed_packages = {name.split(".")[0] for name in new} - set(sys.modules)
    for name in new:
        module = sys.modules.get(name)
        origin = getattr(getattr(module, "__spec__", None), "origin", None) or ""
        stale = name.split(".")[0] in failed_packages or any(name == c or name.startswith(c + ".") for c in culprits)
        if stale and not origin.endswith(tuple(EXTENSION_SUFFIXES)):
            sys.modules.pop(name, None)
