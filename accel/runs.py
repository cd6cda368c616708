"""Run store: one folder per experiment run, committed atomically.

Layout::

    <root>/                        default ./runs, or $ACCEL_RUNS_DIR
        .tmp-<run_id>/             run being written (never listed; removed on error or by recover)
        <run_id>/                  complete run
            COMPLETE               marker, written last before the atomic rename
            config.json            required
            metrics.json           required
            video.mp4, frames.npz, telemetry.parquet, arrays.npz, trace.json.gz, tb/ ...   optional

Commit: every file and the folder are fsynced, ``COMPLETE`` is written (and fsynced) last, then the folder
is renamed into place. Opening a store (:meth:`RunStore.recover`, once per process and root) finishes the
rename of a temporary folder that already holds ``COMPLETE`` (its writer was killed in between) and removes
temporary folders whose writer process is gone. A run whose files cannot be read is *damaged*:
:meth:`RunStore.list` skips it (``damaged=True`` lists it with the reason), and reading a damaged file
raises :class:`DamagedRunError` naming the run and the file, never a parser's traceback. Symbolic links
are never runs, nor files of a run; a video.mp4 or frames.npz over its :func:`size_limit` is refused before
anything serves, copies or reads it.

JSON policy: files are strict JSON (``allow_nan=False``) so browsers can parse them. Non-finite floats
are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"``; ``float()`` turns them back into floats.
NumPy scalars/arrays, tuples, sets, paths, datetimes, enums and dataclasses are converted as well.

This module (like ``accel.video`` and ``accel.metrics``) never imports torch.
"""

from __future__ import annotations

import contextlib
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
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from accel.errors import UserError, one_line
from accel.schema import CONFIG_FIELDS, METRIC_FIELDS, NUMERIC_METRICS, Check
from accel.tempdirs import process_gone
from accel.video import read_video, write_h264

__all__ = [
    "ENV_RUNS_DIR",
    "DamagedRunError",
    "IncompleteRunError",
    "InvalidRunIdError",
    "Run",
    "RunInfo",
    "RunNotFoundError",
    "RunStore",
    "RunWriter",
    "StoreError",
    "sanitize_label",
    "to_jsonable",
]

ENV_RUNS_DIR = "ACCEL_RUNS_DIR"
DEFAULT_ROOT = "runs"
COMPLETE_MARKER = "COMPLETE"
TMP_PREFIX = ".tmp-"
OWNER_FILE = ".owner"
REQUIRED_FILES = ("config.json", "metrics.json")
AMENDMENTS = ("retimed.json",)  # files added to a complete run later (RunStore.amend): accel.retime's timings
MAX_LABEL_LEN = 80
LOSSLESS_MAX_BYTES = 64 * 2**20
# the largest video.mp4 / frames.npz (on disk, and frames.npz's frames unpacked) served, copied, read or embedded;
# a bigger file is refused. The environment variables override them (bytes).
MAX_VIDEO_BYTES = 2 * 2**30
MAX_FRAMES_BYTES = 2**30  # the writer keeps frames.npz to LOSSLESS_MAX_BYTES
SIZE_LIMITS = {"video.mp4": ("ACCEL_MAX_VIDEO_BYTES", MAX_VIDEO_BYTES),
               "frames.npz": ("ACCEL_MAX_FRAMES_BYTES", MAX_FRAMES_BYTES)}  # fmt: skip
_TIME_FMT = "%Y%m%d-%H%M%S"
_LABEL_BAD_CHARS = re.compile(r"[^A-Za-z0-9._=+-]")
_VALID_NAME = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9._=+-]{0,254}")
_RUN_ID_PARTS = re.compile(r"(\d{8}-\d{6})-(.*)-([0-9a-f]{6})")


class RunNotFoundError(UserError, FileNotFoundError):
    """The requested run does not exist or is incomplete/corrupt."""


class DamagedRunError(RunNotFoundError):
    """A complete run with a file that cannot be read (truncated, garbage, wrong types): names both."""

    def __init__(self, run_id: str, file: str, reason: str) -> None:
        self.run_id, self.file, self.reason = run_id, file, reason
        super().__init__(f"run {run_id} is damaged: {file}: {reason}")


class InvalidRunIdError(UserError, ValueError):
    """A run id that is not a plain folder name (path separators, ``..``, hidden names)."""


class StoreError(UserError, OSError):
    """The run store cannot take a run now (not writable, disk full); nothing was written."""


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


def _number(value: Any) -> float | int | None:
    """``value`` as a JSON number (the strings "inf", "-inf" and "nan" included), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return None


def _checked(run_id: str, file: str, data: Any, fields: Mapping[str, Check]) -> dict[str, Any]:
    """``data`` if it is an object whose non-null ``fields`` pass their checks, else :class:`DamagedRunError`."""
    if not isinstance(data, dict):
        raise DamagedRunError(run_id, file, "not a JSON object")
    for key, check in fields.items():
        if data.get(key) is not None and (why := check(data[key])) is not None:
            raise DamagedRunError(run_id, file, f"{key}{why}")
    return data


def _checked_config(run_id: str, config: Any) -> dict[str, Any]:
    """``config`` checked against :data:`accel.schema.CONFIG_FIELDS`."""
    return _checked(run_id, "config.json", config, CONFIG_FIELDS)


def _checked_metrics(run_id: str, metrics: Any) -> dict[str, Any]:
    """``metrics`` checked against :data:`accel.schema.METRIC_FIELDS` (non-finite strings of numbers become
    floats; a null ``stages`` is dropped)."""
    out = dict(_checked(run_id, "metrics.json", metrics, METRIC_FIELDS))
    for key in NUMERIC_METRICS:
        if out.get(key) is not None:
            out[key] = _number(out[key])
    stages = out.pop("stages", None)
    if stages is not None:
        out["stages"] = {k: _number(v) for k, v in stages.items()}
    return out


def size_limit(name: str) -> int | None:
    """The most bytes a run's file ``name`` may have to be served or read (:data:`SIZE_LIMITS`), None: no limit."""
    if name not in SIZE_LIMITS:
        return None
    env, default = SIZE_LIMITS[name]
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise UserError(f"${env} must be a number of bytes, got {raw!r}")
    return int(raw)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB ({n:,} bytes)"


def _refused(path: Path, unpacked: bool = False) -> str | None:
    """Why a run's file must not be served or read, else None: a symbolic link (it may point anywhere), or more
    bytes than :func:`size_limit` (with ``unpacked``, an .npz also by what its arrays take once read: its zip
    directory is read, and a broken one raises as reading it would)."""
    if path.is_symlink():
        return "a symbolic link, refused (a run's files live in its folder)"
    if path.exists() and not (path.is_file() or path.is_dir()):
        return "not a regular file, refused"
    limit = size_limit(path.name)
    if limit is None or not path.is_file():
        return None
    on_disk = path.stat().st_size
    inside = _unpacked_bytes(path) if unpacked and on_disk <= limit else 0
    if max(on_disk, inside) <= limit:
        return None
    env = SIZE_LIMITS[path.name][0]
    what = f"unpacks to {_gib(inside)}" if inside > on_disk else f"is {_gib(on_disk)}"
    return f"{what}, over the {_gib(limit)} limit: refused (${env} raises it)"


def _unpacked_bytes(npz: Path) -> int:
    """Bytes the arrays of an .npz take once read (from its zip directory)."""
    with zipfile.ZipFile(npz) as z:
        return sum(i.file_size for i in z.infolist())


def _unreadable_file(path: Path) -> str | None:
    """A cheap check of a complete run's data files (zip directories, parquet footers; symbolic links and sizes
    over :func:`size_limit`): the first that cannot be opened, as ``"<file>: <why>"``, else None. Contents are only
    read when a view needs them."""
    import pyarrow.parquet as pq

    for f in sorted(path.iterdir()):
        try:
            if (why := _refused(f, unpacked=f.name == "frames.npz")) is not None:
                return f"{f.name}: {why}"
            if f.suffix == ".npz":
                zipfile.ZipFile(f).close()
            elif f.suffix == ".parquet":
                pq.read_metadata(f)
        except _READ_ERRORS as exc:
            return f"{f.name}: unreadable ({one_line(exc)})"
    return None


def _read_complete_run(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (config, metrics) of a complete run folder; RunNotFoundError if there is none, DamagedRunError if
    its config.json or metrics.json cannot be read or hold values of the wrong type."""
    if path.is_symlink():
        raise RunNotFoundError(f"not a run: {path} is a symbolic link")
    if not path.is_dir():
        raise RunNotFoundError(f"run not found: {path}")
    if not (path / COMPLETE_MARKER).is_file():
        raise RunNotFoundError(f"run is incomplete (no {COMPLETE_MARKER} marker): {path}")
    found = []
    for name, check in (("config.json", _checked_config), ("metrics.json", _checked_metrics)):
        if (why := _refused(path / name)) is not None:  # a link to /dev/zero would never end
            raise DamagedRunError(path.name, name, why)
        try:
            data = _read_json(path / name)
        except FileNotFoundError:
            raise DamagedRunError(path.name, name, "missing") from None
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep to parse
            raise DamagedRunError(path.name, name, f"unreadable ({one_line(exc)[:200]})") from None
        found.append(check(path.name, data))
    return found[0], found[1]


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


def _owner_state(path: Path) -> str:
    """Whether the writer named in the ``.owner`` file is ``alive`` or ``dead`` (a process of this host), or
    ``unknown`` (no readable owner file, another host, or not POSIX)."""
    if os.name != "posix":
        return "unknown"
    try:
        info = json.loads((path / OWNER_FILE).read_text(encoding="utf-8"))
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return "unknown"
    if host != socket.gethostname() or pid <= 0:
        return "unknown"
    return "dead" if process_gone(pid) else "alive"


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
    """fsync every file and folder below ``path`` (symlinks not followed)."""
    for dirpath, _, filenames in os.walk(path):
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


def _marked_complete(path: Path) -> bool:
    """True if ``path`` holds a readable COMPLETE marker naming the run it is the temporary folder of."""
    try:
        marker = _read_json(path / COMPLETE_MARKER)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(marker, dict) and marker.get("run_id") == path.name[len(TMP_PREFIX) :]


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Summary of a complete run, as returned by :meth:`RunStore.list`; ``damaged`` says why a run that
    cannot be read is listed (its config and metrics are then empty)."""

    run_id: str
    path: Path
    label: str
    created: datetime
    config: dict[str, Any]
    metrics: dict[str, Any]
    damaged: str | None = None


# what reading a truncated or garbage file raises (numpy's zip reader, zlib, pyarrow, ffmpeg's reader)
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, RuntimeError, zipfile.BadZipFile, zlib.error)


class _Arrays(Mapping[str, np.ndarray]):
    """arrays.npz, read lazily: a member that cannot be read is a :class:`DamagedRunError`."""

    def __init__(self, run_id: str, path: Path) -> None:
        self._run_id = run_id
        try:
            self._npz = np.load(path, allow_pickle=False)
        except _READ_ERRORS as exc:
            raise DamagedRunError(run_id, path.name, f"unreadable ({one_line(exc)})") from None

    def damaged(self, reason: str) -> DamagedRunError:
        """The error for an index or array of this file that is not what the recorder writes (accel.schema)."""
        return DamagedRunError(self._run_id, "arrays.npz", reason)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._npz.files:
            raise KeyError(key)
        try:
            return self._npz[key]
        except _READ_ERRORS as exc:
            raise DamagedRunError(self._run_id, "arrays.npz", f"array {key!r} unreadable ({one_line(exc)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._npz.files)

    def __len__(self) -> int:
        return len(self._npz.files)

    def close(self) -> None:
        self._npz.close()


class Run:
    """A complete run loaded from disk; heavy artefacts are loaded lazily. Needs no model or torch.

    A file that cannot be read raises :class:`DamagedRunError` (naming the run and the file) when it is read.
    """

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
        return self.table("telemetry.parquet")

    def data_file(self, name: str, unpacked: bool = False) -> Path | None:
        """Path of the run's file ``name``, None if it has none. A symbolic link, or a file over its
        :func:`size_limit` (with ``unpacked``, an .npz whose arrays take more once read), is refused with a
        :class:`DamagedRunError` naming the run, the file and its size: nothing of it is served, copied or read."""
        p = self.path / name
        try:
            why = _refused(p, unpacked)
        except _READ_ERRORS as exc:  # the zip directory of an .npz whose unpacked size was asked for
            why = f"unreadable ({one_line(exc)})"
        if why is not None:
            raise DamagedRunError(self.run_id, name, why)
        return p if p.is_file() else None

    def table(self, name: str) -> pd.DataFrame:
        """A parquet file of the run (empty DataFrame if absent); unreadable: :class:`DamagedRunError`."""
        p = self.data_file(name)
        if p is None:
            return pd.DataFrame()
        try:
            return pd.read_parquet(p)
        except _READ_ERRORS as exc:
            raise DamagedRunError(self.run_id, name, f"unreadable ({one_line(exc)})") from None

    def read_json(self, name: str) -> Any:
        """A JSON file of the run; missing or unreadable (nested too deep included): :class:`DamagedRunError`."""
        path = self.data_file(name) or self.path / name
        try:
            return _read_json(path)
        except _READ_ERRORS as exc:  # RecursionError (nested too deep) is a RuntimeError
            raise DamagedRunError(self.run_id, name, f"unreadable ({one_line(exc)})") from None

    @cached_property
    def arrays(self) -> Mapping[str, np.ndarray]:
        """Lazily opened arrays.npz (``allow_pickle=False``), or an empty dict if absent."""
        p = self.data_file("arrays.npz")
        return _Arrays(self.run_id, p) if p is not None else {}

    @property
    def video_path(self) -> Path | None:
        """Path of video.mp4, or None if the run has no video; a symbolic link or a video over
        :data:`MAX_VIDEO_BYTES` is refused (:meth:`data_file`)."""
        return self.data_file("video.mp4")

    def frames(self) -> np.ndarray:
        """uint8 (F, H, W, 3) frames: lossless frames.npz if stored, else decoded from video.mp4.

        Loaded once per Run and returned read-only (views call it several times per update); copy to modify.
        """
        return self._frames

    @cached_property
    def _frames(self) -> np.ndarray:
        lossless = self.data_file("frames.npz", unpacked=True)
        source = lossless or self.video_path
        if source is None:
            raise DamagedRunError(self.run_id, "video.mp4", "the run has neither frames.npz nor video.mp4")
        try:
            if source == lossless:
                with np.load(lossless, allow_pickle=False) as data:
                    frames = np.asarray(data["frames"], dtype=np.uint8)
            else:
                frames = read_video(source, max_bytes=size_limit("frames.npz"))  # the limit of frames in memory
        except _READ_ERRORS as exc:
            raise DamagedRunError(self.run_id, source.name, f"unreadable ({one_line(exc)})") from None
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
            raise DamagedRunError(self.run_id, source.name, f"no frames of shape (F, H, W, 3) (got {frames.shape})")
        frames.flags.writeable = False
        return frames

    def info(self) -> RunInfo:
        """This run as a :class:`RunInfo`."""
        return RunInfo(self.run_id, self.path, self.label, self.created, self.config, self.metrics)

    def close(self) -> None:
        """Close the arrays.npz handle if it was opened."""
        arrays = self.__dict__.pop("arrays", None)
        if isinstance(arrays, _Arrays):
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
        try:
            owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
            (self.path / OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")
        except BaseException:
            self._open = False
            shutil.rmtree(self.path, ignore_errors=True)
            raise
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
        """Check the required files, fsync everything, write ``COMPLETE`` last, rename the folder into place.

        The ``.owner`` file stays until after the rename, so :meth:`RunStore.recover` in another process
        never renames a folder whose writer is still committing it.
        """
        missing = [name for name in REQUIRED_FILES if not (self.path / name).is_file()]
        if missing:
            raise IncompleteRunError(f"run {self.run_id} is missing required file(s) {missing}; nothing was saved")
        try:
            config = _read_json(self.path / "config.json")
        except ValueError as exc:
            raise IncompleteRunError(f"run {self.run_id}: config.json is not valid JSON ({exc})") from exc
        if not isinstance(config, dict):
            raise IncompleteRunError(f"run {self.run_id}: config.json must hold a JSON object")
        final = self.root / self.run_id
        if final.exists():
            raise FileExistsError(f"run folder already exists: {final}")
        _sync_tree(self.path)
        marker = self.path / COMPLETE_MARKER
        _dump_json({"run_id": self.run_id, "completed": datetime.now().isoformat()}, marker)
        _fsync(marker)
        _fsync(self.path)
        _finish(self.path, final)
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
            with contextlib.suppress(OSError):  # a read-only store: reading still works, writing says why
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
            except (RunNotFoundError, OSError):
                continue
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
        shutil.rmtree(trash, ignore_errors=True)

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
                except OSError:
                    continue
            shutil.rmtree(path, ignore_errors=True)
            removed += not path.exists()
        return recovered, removed
