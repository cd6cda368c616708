"""Checks of a run on disk before anything reads, serves or copies it: is it a complete run, do its config.json
and metrics.json hold what :mod:`accel.schema` says, and may each of its files be read (no symbolic links,
nothing over :func:`~accel.runs.layout.size_limit`, zip directories and parquet footers intact)."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from accel.errors import one_line
from accel.runs.errors import DamagedRunError, RunNotFoundError
from accel.runs.jsonio import _read_json
from accel.runs.layout import COMPLETE_MARKER, SIZE_LIMITS, _parse_run_id, size_limit
from accel.schema import CONFIG_FIELDS, METRIC_FIELDS, NUMERIC_METRICS, Check

# what reading a truncated or garbage file raises (numpy's zip reader, zlib, pyarrow, ffmpeg's reader)
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, RuntimeError, zipfile.BadZipFile, zlib.error)


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
        except _READ_ERRORS as exc:  # not swallowed: the reason, naming the file, is what this returns
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
        # a parser's error becomes a DamagedRunError naming the run, the file and the reason (its first 200
        # characters); `from None`: the reader sees that one line, never the parser's traceback
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
