"""Durable commit steps shared by the writer and recovery: fsync files and folders, and the final rename of a
marked temporary folder into place."""

from __future__ import annotations

import os
from pathlib import Path

from accel.runs.layout import OWNER_FILE


def _fsync(path: Path) -> None:
    """Flush a file or a folder entry to disk (folders: POSIX only)."""
    if path.is_dir() and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(path: Path) -> None:
    """fsync every file and folder below ``path`` (symlinks not followed); a folder that cannot be listed raises
    (the commit must not claim a folder is on disk that was never synced)."""

    def unlistable(exc: OSError) -> None:
        raise exc

    for dirpath, _, filenames in os.walk(path, onerror=unlistable):
        for name in filenames:
            if not os.path.islink(os.path.join(dirpath, name)):
                _fsync(Path(dirpath, name))
        _fsync(Path(dirpath))


def _finish(tmp: Path, final: Path) -> None:
    """The last commit step: rename a marked temporary folder into place, make the rename durable, drop the
    owner file."""
    os.replace(tmp, final)
    _fsync(final.parent)
    (final / OWNER_FILE).unlink(missing_ok=True)
