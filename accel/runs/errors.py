"""The errors of the run store: a missing, damaged or misnamed run, a store that cannot take a run, an
incomplete writer."""

from __future__ import annotations

from accel.errors import UserError

__all__ = ["DamagedRunError", "IncompleteRunError", "InvalidRunIdError", "RunNotFoundError", "StoreError"]


class RunNotFoundError(UserError, FileNotFoundError):
    """The requested run does not exist or is incomplete/corrupt."""


class DamagedRunError(RunNotFoundError):
    """A complete run with a file that cannot be read (truncated, garbage, wrong types): names both."""

    def __init__(self, run_id: str, file: str, reason: str) -> None:
        self.run_id, self.file, self.reason = run_id, file, reason
        super().__init__(f"run {run_id} is damaged: {file}: {reason}")

    def __reduce__(self) -> tuple:  # picklable (e.g. across the ranks of a parallel run) with its three parts
        return type(self), (self.run_id, self.file, self.reason)


class InvalidRunIdError(UserError, ValueError):
    """A run id that is not a plain folder name (path separators, ``..``, hidden names)."""


class StoreError(UserError, OSError):
    """The run store cannot take a run now (not writable, disk full); nothing was written."""


class IncompleteRunError(ValueError):
    """A run writer finished without the required files; nothing was committed."""
