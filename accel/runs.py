"""Run store: one folder per experiment run, committed atomically.

Layout::

    <root>/                        default ./runs, or $ACCEL_RUNS_DIR
        .tmp-<run_id>/             run being written (never listed; removed on error or by clean_stale)
        <run_id>/                  complete run
            COMPLETE               marker, written last before the atomic rename
            config.json            required
            metrics.json           required
            video.mp4, frames.npz, telemetry.parquet, arrays.npz, trace.json.gz, tb/ ...   optional

JSON policy: files are strict JSON (``allow_nan=False``) so browsers can parse them. Non-finite floats
are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"``; ``float()`` turns them back into floats.
NumPy scalars/arrays, tuples, sets, paths, datetimes, enums and dataclasses are converted as well.

This module (like ``accel.video`` and ``accel.metrics``) never imports torch.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Mapping
from datetime import date, datetime
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from accel.errors import UserError
from accel.video import read_video, write_h264

__all__ = [
    "ENV_RUNS_DIR",
    "IncompleteRunError",
    "InvalidRunIdError",
    "Run",
    "RunInfo",
    "RunNotFoundError",
    "RunStore",
    "RunWriter",
    "sanitize_label",
    "to_jsonable",
]

ENV_RUNS_DIR = "ACCEL_RUNS_DIR"
DEFAULT_ROOT = "runs"
COMPLETE_MARKER = "COMPLETE"
TMP_PREFIX = ".tmp-"
OWNER_FILE = ".owner"
REQUIRED_FILES = ("config.json", "metrics.json")
MAX_LABEL_LEN = 80
LOSSLESS_MAX_BYTES = 64 * 2**20
_TIME_FMT = "%Y%m%d-%H%M%S"
_LABEL_BAD_CHARS = re.compile(r"[^A-Za-z0-9._=+-]")
_VALID_NAME = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9._=+-]{0,254}")
_RUN_ID_PARTS = re.compile(r"(\d{8}-\d{6})-(.*)-([0-9a-f]{6})")


class RunNotFoundError(UserError, FileNotFoundError):
    """The requested run does not exist or is incomplete/corrupt."""


class InvalidRunIdError(UserError, ValueError):
    """A run id that is not a plain folder name (path separators, ``..``, hidden names)."""


class IncompleteRunError(ValueError):
    """A run writer finished without the required files; nothing was committed."""


def sanitize_label(label: str) -> str:
    """Map ``label`` onto ``[A-Za-z0-9._=+-]`` (others become ``_``), max 80 chars; empty -> ``"run"``."""
    clean = _LABEL_BAD_CHARS.sub("_", str(label))[:MAX_LABEL_LEN]
    return clean or "run"


def to_jsonable(obj: Any) -> Any:
    """Recursively convert ``obj`` into strict-JSON-serialisable values (see module docstring)."""
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, Mapping):
        return {k if isinstance(k, str) else str(to_jsonable(k)): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=repr)
    if isinstance(obj, (np.ndarray, np.generic)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):  # e.g. tensors, without importing their library
        return to_jsonable(obj.tolist())
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable: {obj!r}")


def _dump_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as strict, indented JSON."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    """Parse a JSON file (also tolerates bare NaN/Infinity written by other tools)."""
    return json.loads(path.read_text(encoding="utf-8"))


def _parse_run_id(run_id: str) -> tuple[str, datetime | None]:
    """Split ``YYYYmmdd-HHMMSS-<label>-<hex6>`` into (label, created); non-matching ids give (run_id, None)."""
    m = _RUN_ID_PARTS.fullmatch(run_id)
    if m is None:
        return run_id, None
    try:
        return m.group(2), datetime.strptime(m.group(1), _TIME_FMT)
    except ValueError:
        return m.group(2), None


def _validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a plain, non-hidden folder name; raise InvalidRunIdError otherwise."""
    if not isinstance(run_id, str) or _VALID_NAME.fullmatch(run_id) is None:
        raise InvalidRunIdError(
            f"invalid run id {run_id!r}: expected a single folder name of [A-Za-z0-9._=+-] not starting "
            "with '.' (path separators and '..' are not allowed)"
        )
    return run_id


def _read_complete_run(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (config, metrics) of a complete run folder, or raise RunNotFoundError."""
    if not path.is_dir():
        raise RunNotFoundError(f"run not found: {path}")
    if not (path / COMPLETE_MARKER).is_file():
        raise RunNotFoundError(f"run is incomplete (no {COMPLETE_MARKER} marker): {path}")
    try:
        config = _read_json(path / "config.json")
    except (OSError, ValueError) as exc:
        raise RunNotFoundError(f"run has a missing or unreadable config.json: {path} ({exc})") from exc
    if not isinstance(config, dict):
        raise RunNotFoundError(f"run config.json is not a JSON object: {path}")
    try:
        metrics = _read_json(path / "metrics.json")
    except (OSError, ValueError):
        metrics = {}
    return config, metrics if isinstance(metrics, dict) else {}


def _created(path: Path, run_id: str) -> tuple[str, datetime]:
    """Label and creation time of a run (from its id, else the COMPLETE marker's mtime)."""
    label, created = _parse_run_id(run_id)
    if created is None:
        created = datetime.fromtimestamp((path / COMPLETE_MARKER).stat().st_mtime)
    return label, created


def _newest_mtime(path: Path) -> float:
    """Newest mtime of ``path`` and everything below it (symlinks not followed)."""
    newest = path.lstat().st_mtime
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except OSError:
                continue
    return newest


def _owner_alive(path: Path) -> bool:
    """True if the ``.owner`` file names a live process on this host (POSIX only)."""
    if os.name != "posix":
        return False
    try:
        info = json.loads((path / OWNER_FILE).read_text(encoding="utf-8"))
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Summary of a complete run, as returned by :meth:`RunStore.list`."""

    run_id: str
    path: Path
    label: str
    created: datetime
    config: dict[str, Any]
    metrics: dict[str, Any]


class Run:
    """A complete run loaded from disk; heavy artefacts are loaded lazily. Needs no model or torch."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.run_id = self.path.name
        self.config, self.metrics = _read_complete_run(self.path)
        self.label, self.created = _created(self.path, self.run_id)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @cached_property
    def telemetry(self) -> pd.DataFrame:
        """Contents of telemetry.parquet (empty DataFrame if absent)."""
        p = self.path / "telemetry.parquet"
        return pd.read_parquet(p) if p.is_file() else pd.DataFrame()

    @cached_property
    def arrays(self) -> Mapping[str, np.ndarray]:
        """Lazily opened arrays.npz (``allow_pickle=False``), or an empty dict if absent."""
        p = self.path / "arrays.npz"
        return np.load(p, allow_pickle=False) if p.is_file() else {}

    @property
    def video_path(self) -> Path | None:
        """Path of video.mp4, or None if the run has no video."""
        p = self.path / "video.mp4"
        return p if p.is_file() else None

    def frames(self) -> np.ndarray:
        """uint8 (F, H, W, 3) frames: lossless frames.npz if stored, else decoded from video.mp4.

        Loaded once per Run and returned read-only (views call it several times per update); copy to modify.
        """
        return self._frames

    @cached_property
    def _frames(self) -> np.ndarray:
        lossless = self.path / "frames.npz"
        if lossless.is_file():
            with np.load(lossless, allow_pickle=False) as data:
                frames = np.asarray(data["frames"], dtype=np.uint8)
        elif self.video_path is not None:
            frames = read_video(self.video_path)
        else:
            raise RunNotFoundError(f"run {self.run_id} has neither frames.npz nor video.mp4")
        frames.flags.writeable = False
        return frames

    def info(self) -> RunInfo:
        """This run as a :class:`RunInfo`."""
        return RunInfo(self.run_id, self.path, self.label, self.created, self.config, self.metrics)

    def close(self) -> None:
        """Close the arrays.npz handle if it was opened."""
        arrays = self.__dict__.pop("arrays", None)
        if arrays is not None and hasattr(arrays, "close"):
            arrays.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunWriter:
    """Context manager writing one run into ``root/.tmp-<run_id>`` and committing it atomically on success.

    On normal exit it checks that config.json and metrics.json exist (config must be a JSON object),
    writes the ``COMPLETE`` marker and renames the folder to ``root/<run_id>``. On an exception (or a
    failed check) the temporary folder is removed and the exception propagates.
    """

    def __init__(self, root: Path, run_id: str) -> None:
        self.root = root
        self.run_id = _validate_run_id(run_id)
        self.path = root / f"{TMP_PREFIX}{run_id}"
        self.final_path: Path | None = None
        self._open = False

    def __enter__(self) -> RunWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        self.path.mkdir()
        self._open = True
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        (self.path / OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open = False
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        try:
            self._commit()
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def _commit(self) -> None:
        missing = [name for name in REQUIRED_FILES if not (self.path / name).is_file()]
        if missing:
            raise IncompleteRunError(f"run {self.run_id} is missing required file(s) {missing}; nothing was saved")
        try:
            config = _read_json(self.path / "config.json")
        except ValueError as exc:
            raise IncompleteRunError(f"run {self.run_id}: config.json is not valid JSON ({exc})") from exc
        if not isinstance(config, dict):
            raise IncompleteRunError(f"run {self.run_id}: config.json must hold a JSON object")
        (self.path / OWNER_FILE).unlink(missing_ok=True)
        _dump_json({"run_id": self.run_id, "completed": datetime.now().isoformat()}, self.path / COMPLETE_MARKER)
        final = self.root / self.run_id
        if final.exists():
            raise FileExistsError(f"run folder already exists: {final}")
        os.replace(self.path, final)
        self.final_path = final

    def file(self, name: str) -> Path:
        """Path for ``name`` inside the run folder (sub-folders are created; no escaping the folder)."""
        if not self._open:
            raise RuntimeError("RunWriter is not open; use it as a context manager (with store.writer(...) as w)")
        rel = Path(name)
        if not name or rel.is_absolute() or any(part in ("", ".", "..") for part in rel.parts):
            raise ValueError(f"invalid file name {name!r}: must be a relative path inside the run folder")
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as strict JSON (non-finite floats become "inf"/"-inf"/"nan" strings)."""
        target = self.file(name)
        _dump_json(obj, target)
        return target

    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        """Write a DataFrame as parquet."""
        target = self.file(name)
        df.to_parquet(target)
        return target

    def write_arrays(self, name: str, arrays: Mapping[str, np.ndarray]) -> Path:
        """Write arrays with ``np.savez_compressed`` (``name`` should end in .npz)."""
        target = self.file(name)
        with open(target, "wb") as fh:
            np.savez_compressed(fh, **{k: np.asarray(v) for k, v in arrays.items()})
        return target

    def write_video(self, frames: np.ndarray, fps: int = 16, lossless: bool | None = None) -> Path:
        """Write video.mp4 (H.264) and, if ``lossless`` (default: frames <= 64 MiB), a frames.npz copy."""
        target = self.file("video.mp4")
        write_h264(frames, target, fps=fps)
        if lossless is None:
            lossless = frames.nbytes <= LOSSLESS_MAX_BYTES
        if lossless:
            self.write_arrays("frames.npz", {"frames": frames})
        return target


class RunStore:
    """Folder-per-run store under ``root`` (default ``$ACCEL_RUNS_DIR`` or ``./runs``)."""

    def __init__(self, root: str | Path | None = None) -> None:
        if root is None:
            root = os.environ.get(ENV_RUNS_DIR) or DEFAULT_ROOT
        self.root = Path(root).expanduser().absolute()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    @staticmethod
    def new_run_id(label: str) -> str:
        """``YYYYmmdd-HHMMSS-<sanitised label>-<6 random hex>``."""
        return f"{datetime.now().strftime(_TIME_FMT)}-{sanitize_label(label)}-{secrets.token_hex(3)}"

    def writer(self, label: str) -> RunWriter:
        """A :class:`RunWriter` for a new run; use it as a context manager."""
        return RunWriter(self.root, self.new_run_id(label))

    def list(self) -> list[RunInfo]:
        """Complete runs, newest first. Hidden/temporary, unmarked or unparsable folders are skipped."""
        if not self.root.is_dir():
            return []
        found: list[tuple[datetime, int, RunInfo]] = []
        for entry in os.scandir(self.root):
            if entry.name.startswith(".") or _VALID_NAME.fullmatch(entry.name) is None or not entry.is_dir():
                continue
            path = Path(entry.path)
            try:
                config, metrics = _read_complete_run(path)
                label, created = _created(path, entry.name)
                marker_ns = (path / COMPLETE_MARKER).stat().st_mtime_ns
            except (RunNotFoundError, OSError):
                continue
            found.append((created, marker_ns, RunInfo(entry.name, path, label, created, config, metrics)))
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

        Raises InvalidRunIdError for ids that are not plain folder names and RunNotFoundError for
        missing or incomplete runs.
        """
        return Run(self._resolve(run_id_or_path))

    def delete(self, run_id_or_path: str | Path) -> None:
        """Delete a complete run of this store (it first disappears atomically from :meth:`list`)."""
        path = self._resolve(run_id_or_path)
        if path.parent.resolve() != self.root.resolve() or _VALID_NAME.fullmatch(path.name) is None:
            raise InvalidRunIdError(f"refusing to delete {path}: not a run folder of store {self.root}")
        _read_complete_run(path)
        trash = self.root / f"{TMP_PREFIX}deleted-{path.name}-{secrets.token_hex(3)}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def clean_stale(self, max_age_s: float = 3600) -> int:
        """Remove ``.tmp-*`` folders untouched for more than ``max_age_s`` seconds; return how many.

        Age is measured from the newest mtime inside the folder. Folders whose writer process is still
        alive on this host are kept regardless of age.
        """
        if max_age_s < 0:
            raise ValueError(f"max_age_s must be >= 0, got {max_age_s}")
        if not self.root.is_dir():
            return 0
        now = time.time()
        removed = 0
        for entry in os.scandir(self.root):
            if not entry.name.startswith(TMP_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            try:
                age = now - _newest_mtime(path)
            except OSError:
                continue
            if age <= max_age_s or _owner_alive(path):
                continue
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed += 1
        return removed
