"""Temporary folders of the app and the runner: ``accel-<kind>-<pid>-<random>`` in the system temp folder.

The pid in the name says which process owns a folder, so folders left by a process that was killed are found
again: :func:`sweep` (at app start and at the start of a generation) removes those whose process no longer
exists on this host. The app keeps one folder per kind (:func:`latest`): making a new one removes the previous
one, whose files Gradio has copied into its own cache when it served them. Everything this process made is
removed when it exits.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

_NAME = re.compile(r"accel-([a-z]+)-(\d{1,10})-[A-Za-z0-9_]+")
_KIND = re.compile(r"[a-z]+")
_latest: dict[str, Path] = {}
_lock = threading.Lock()
_exit_registered = False


def prefix(kind: str) -> str:
    """Name prefix of this process's folders of ``kind`` (lowercase letters)."""
    if _KIND.fullmatch(kind) is None:
        raise ValueError(f"a temporary folder kind is lowercase letters, got {kind!r}")
    return f"accel-{kind}-{os.getpid()}-"


def _remove_at_exit() -> None:
    global _exit_registered
    with _lock:
        if not _exit_registered:
            atexit.register(remove_own)
            _exit_registered = True


def make(kind: str) -> Path:
    """A new folder of ``kind``; removed when this process exits."""
    _remove_at_exit()
    return Path(tempfile.mkdtemp(prefix=prefix(kind)))


def latest(kind: str) -> Path:
    """A new folder of ``kind`` that replaces this process's previous one of that kind (which is removed)."""
    path = make(kind)
    with _lock:
        previous, _latest[kind] = _latest.get(kind), path
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    return path


def work_dir(kind: str, wanted: bool = True) -> tempfile.TemporaryDirectory | None:
    """After a :func:`sweep`, a self-removing folder of ``kind`` if ``wanted``, else None."""
    sweep()
    if not wanted:
        return None
    _remove_at_exit()
    return tempfile.TemporaryDirectory(prefix=prefix(kind))


def process_gone(pid: int) -> bool:
    """True if no process ``pid`` exists on this host (POSIX; elsewhere nothing is known to be gone). The run store
    asks it of a run writer's pid, :func:`sweep` of a folder's."""
    if os.name != "posix" or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # PermissionError: another user's live process
        return False
    return False


def _folders(root: str | Path | None) -> list[tuple[Path, int]]:
    """This user's folders ``accel-<kind>-<pid>-*`` directly in ``root`` (the system temp folder), with their pid."""
    found = []
    try:
        entries = list(os.scandir(root or tempfile.gettempdir()))
    except OSError:
        return []
    for entry in entries:
        m = _NAME.fullmatch(entry.name)
        try:
            mine = m is not None and entry.is_dir(follow_symlinks=False)
            mine = mine and (os.name != "posix" or entry.stat(follow_symlinks=False).st_uid == os.getuid())
        except OSError:
            continue
        if mine:
            found.append((Path(entry.path), int(m.group(2))))
    return found


def sweep(root: str | Path | None = None) -> list[Path]:
    """Remove the folders of ``root`` (the system temp folder) whose owner process is gone; returns them."""
    removed = []
    for path, pid in _folders(root):
        if process_gone(pid):
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.lexists(path):
                removed.append(path)
    return removed


def remove_own(root: str | Path | None = None) -> None:
    """Remove every folder of this process in ``root`` (the system temp folder); run at exit."""
    for path, pid in _folders(root):
        if pid == os.getpid():
            shutil.rmtree(path, ignore_errors=True)
    with _lock:
        for kind in [k for k, path in _latest.items() if not path.exists()]:
            del _latest[kind]
