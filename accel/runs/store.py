"""The run store: :class:`RunStore` lists, loads, deletes and amends the runs under its root, and recovers the
temporary folders of writers that were killed (finishing the commit of a marked run, removing the rest), using
the ``.owner`` file that names each writer's process."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from accel.errors import one_line
from accel.runs.checks import _created, _read_complete_run, _unreadable_file
from accel.runs.durable import _finish, _fsync
from accel.runs.errors import DamagedRunError, InvalidRunIdError, RunNotFoundError, StoreError
from accel.runs.jsonio import _dump_json, _read_json
from accel.runs.layout import (
    _TIME_FMT,
    _VALID_NAME,
    AMENDMENTS,
    COMPLETE_MARKER,
    DEFAULT_ROOT,
    ENV_RUNS_DIR,
    OWNER_FILE,
    TMP_PREFIX,
    _parse_run_id,
    _validate_run_id,
    sanitize_label,
)
from accel.runs.reader import Run, RunInfo
from accel.runs.writer import RunWriter
from accel.tempdirs import process_gone

__all__ = ["RunStore"]


def _newest_mtime(path: Path) -> float:
    """Newest mtime of ``path`` and everything below it (symlinks not followed)."""
    newest = path.lstat().st_mtime
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except OSError:  # gone since the walk listed it (its writer or a delete is still at work): no age
                continue
    return newest


def _owner_state(path: Path) -> str:
    """Whether the writer named in the ``.owner`` file is ``alive`` or ``dead`` (a process of this host), or
    ``unknown`` (no readable owner file, another host, or not POSIX)."""
    if os.name != "posix":
        return "unknown"
    try:
        info = json.loads((path / OWNER_FILE).read_text(encoding="utf-8"))
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        # no owner file (a writer killed before writing it, or one of an older version) or a torn/garbage one:
        # nothing says who writes here, so recover() falls back to the folder's age
        return "unknown"
    if host != socket.gethostname() or pid <= 0:
        return "unknown"
    return "dead" if process_gone(pid) else "alive"


def _marked_complete(path: Path) -> bool:
    """True if ``path`` holds a readable COMPLETE marker naming the run it is the temporary folder of."""
    try:
        marker = _read_json(path / COMPLETE_MARKER)
    except (OSError, ValueError, RecursionError):
        # no marker, or a torn one: the writer died before COMPLETE was on disk (it is fsynced before the
        # rename), so the run was never committed and the folder is a left-over, not a run to finish
        return False
    return isinstance(marker, dict) and marker.get("run_id") == path.name[len(TMP_PREFIX) :]


class RunStore:
    """Folder-per-run store under ``root`` (default ``$ACCEL_RUNS_DIR`` or ``./runs``).

    The first store opened on a root in a process runs :meth:`recover` on it.
    """

    _recovered: ClassVar[set[Path]] = set()

    def __init__(self, root: str | Path | None = None) -> None:
        if root is None:
            root = os.environ.get(ENV_RUNS_DIR) or DEFAULT_ROOT
        if not str(root).strip():  # Path("") is the current folder: runs would land among the user's files
            raise StoreError("run store folder is empty: pass a folder (--out-dir ROOT), or leave it unset for ./runs")
        self.root = Path(root).expanduser().absolute()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"run store {self.root} is a file, not a folder: pass a folder")
        if self.root not in RunStore._recovered:
            RunStore._recovered.add(self.root)
            # a read-only (or otherwise unwritable) store: reading still works and writing says why
            # (check_writable, RunWriter); what recover could not tidy now is tidied by the next process
            with contextlib.suppress(OSError):
                self.recover()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    @staticmethod
    def new_run_id(label: str) -> str:
        """``YYYYmmdd-HHMMSS-<sanitised label>-<6 random hex>``."""
        return f"{datetime.now().strftime(_TIME_FMT)}-{sanitize_label(label)}-{secrets.token_hex(3)}"

    def writer(self, label: str) -> RunWriter:
        """A :class:`RunWriter` for a new run; use it as a context manager."""
        return RunWriter(self.root, self.new_run_id(label))

    def check_writable(self, needed_bytes: int = 0) -> None:
        """Raise a one-line :class:`StoreError` unless a run of ``needed_bytes`` can be written here now:
        the folder exists or can be made, a file can be written in it, and the disk has that much room."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{TMP_PREFIX}probe-{os.getpid()}-{secrets.token_hex(3)}"
            probe.write_bytes(b"x")
            probe.unlink()
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            raise StoreError(f"run store {self.root} is not writable: {exc.strerror or one_line(exc)}") from None
        if free < needed_bytes:
            raise StoreError(
                f"run store {self.root} has {free / 2**20:.0f} MiB free; this run needs about "
                f"{needed_bytes / 2**20:.0f} MiB: free some space or pass another --out-dir"
            )

    def list(self, damaged: bool = False) -> list[RunInfo]:
        """Complete runs, newest first. Hidden/temporary, unmarked, symlinked and unparsable folders are skipped;
        with ``damaged`` runs whose config.json or metrics.json cannot be read are listed too, with the reason, and
        the data files of every run are checked cheaply (a truncated .npz or .parquet marks its run damaged)."""
        if not self.root.is_dir():
            return []
        found: list[tuple[datetime, int, RunInfo]] = []
        for entry in os.scandir(self.root):
            if entry.name.startswith(".") or _VALID_NAME.fullmatch(entry.name) is None:
                continue
            if not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            why = None
            try:
                marker_ns = (path / COMPLETE_MARKER).stat().st_mtime_ns
                label, created = _created(path, entry.name)
                config, metrics = _read_complete_run(path)
                why = _unreadable_file(path) if damaged else None
            except DamagedRunError as exc:
                if not damaged:
                    continue
                config, metrics, why = {}, {}, f"{exc.file}: {exc.reason}"
            except (RunNotFoundError, FileNotFoundError):
                # not a complete run (no COMPLETE marker: a user's folder or one being deleted), or gone since the
                # scan listed it: this lists complete runs only
                continue
            except OSError as exc:  # a folder or marker that cannot be read (permissions, I/O): damaged, not gone
                if not damaged:
                    continue
                label, created = _parse_run_id(entry.name)
                created, marker_ns = created or datetime.min, 0
                config, metrics, why = {}, {}, f"cannot be read: {exc.strerror or one_line(exc)}"
            found.append((created, marker_ns, RunInfo(entry.name, path, label, created, config, metrics, why)))
        found.sort(key=lambda item: (item[0], item[1], item[2].run_id), reverse=True)
        return [info for _, _, info in found]

    def _resolve(self, run_id_or_path: str | Path) -> Path:
        """Folder for a run id (validated) or an absolute path to a run folder."""
        if isinstance(run_id_or_path, Path) or os.path.isabs(run_id_or_path):
            p = Path(run_id_or_path)
            if p.is_absolute():
                return p
            run_id_or_path = str(p)
        return self.root / _validate_run_id(run_id_or_path)

    def load(self, run_id_or_path: str | Path) -> Run:
        """Load a complete run by id (``root/<id>``) or absolute folder path.

        Raises InvalidRunIdError for ids that are not plain folder names, RunNotFoundError for missing,
        incomplete or symlinked runs, and DamagedRunError for a run whose config or metrics cannot be read.
        """
        return Run(self._resolve(run_id_or_path))

    def _complete_folder(self, run_id: str, action: str) -> Path:
        """The folder of the complete run ``run_id`` of this store; paths and symbolic links are refused."""
        if not isinstance(run_id, str) or os.path.isabs(run_id):
            raise InvalidRunIdError(f"refusing to {action} {run_id}: give the id of a run of store {self.root}")
        path = self.root / _validate_run_id(run_id)
        if path.is_symlink() or not path.is_dir() or not (path / COMPLETE_MARKER).is_file():
            raise RunNotFoundError(f"no run {run_id} in store {self.root}")
        return path

    def delete(self, run_id: str) -> None:
        """Delete a complete run of this store by id, damaged or not (it first disappears atomically from
        :meth:`list`). Paths and symbolic links are refused."""
        path = self._complete_folder(run_id, "delete")
        trash = self.root / f"{TMP_PREFIX}deleted-{path.name}-{secrets.token_hex(3)}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)  # the run is gone already; recover() removes what is left

    def amend(self, run_id: str, name: str, obj: Any) -> Path:
        """Add (or replace) one of the :data:`AMENDMENTS` of a complete run as strict JSON, atomically: a
        temporary file in the run's folder, fsynced, renamed over the old one. A reader sees the old file or the
        new one, never half of one; the run's own files are never touched."""
        if name not in AMENDMENTS:
            raise ValueError(f"{name!r} is not a file a stored run may gain: {', '.join(AMENDMENTS)}")
        path = self._complete_folder(run_id, f"add {name} to")
        tmp = path / f".{name}.{os.getpid()}-{secrets.token_hex(3)}"
        try:
            _dump_json(obj, tmp)
            _fsync(tmp)
            os.replace(tmp, path / name)
            _fsync(path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"could not add {name} to run {run_id}: {exc.strerror or one_line(exc)}") from None
        return path / name

    def recover(self, stale_s: float = 3600) -> tuple[int, int]:
        """Tidy the temporary folders; return (runs recovered, folders removed).

        A folder marked ``COMPLETE`` whose writer is gone is renamed into place (the writer was killed between
        its last two steps); the rest of a writer that is gone (a process of this host that no longer exists)
        and left-overs of a delete are removed. Folders whose writer cannot be checked (no owner file, another
        host) are removed once untouched for ``stale_s`` seconds; folders of a live writer are kept.
        """
        if stale_s < 0:
            raise ValueError(f"stale_s must be >= 0, got {stale_s}")
        if not self.root.is_dir():
            return 0, 0
        recovered = removed = 0
        for entry in os.scandir(self.root):
            if not entry.name.startswith(TMP_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            state = _owner_state(path)
            if state == "alive":
                continue
            final = self.root / entry.name[len(TMP_PREFIX) :]
            if state == "dead" and _marked_complete(path) and not final.exists():
                _finish(path, final)
                recovered += 1
                continue
            if state == "unknown" and not entry.name.startswith(f"{TMP_PREFIX}deleted-"):
                try:
                    if time.time() - _newest_mtime(path) <= stale_s:
                        continue
                except OSError:  # gone, or its age cannot be read: keep it rather than remove a live writer's run
                    continue
            shutil.rmtree(path, ignore_errors=True)
            removed += not path.exists()
        return recovered, removed
