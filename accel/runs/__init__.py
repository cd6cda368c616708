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

This package (like ``accel.video`` and ``accel.metrics``) never imports torch.

Modules, lowest first (each imports only those before it): :mod:`~accel.runs.errors`, :mod:`~accel.runs.layout`
(names, run ids, size limits), :mod:`~accel.runs.jsonio`, :mod:`~accel.runs.durable` (fsync, the final rename),
:mod:`~accel.runs.checks` (is a folder a complete, readable run), :mod:`~accel.runs.reader` (:class:`Run`),
:mod:`~accel.runs.writer` (:class:`RunWriter`), :mod:`~accel.runs.store` (:class:`RunStore`, recovery).
"""

from __future__ import annotations

from accel.runs.errors import DamagedRunError, IncompleteRunError, InvalidRunIdError, RunNotFoundError, StoreError
from accel.runs.jsonio import to_jsonable
from accel.runs.layout import (
    AMENDMENTS,
    COMPLETE_MARKER,
    DEFAULT_ROOT,
    ENV_RUNS_DIR,
    LOSSLESS_MAX_BYTES,
    MAX_FRAMES_BYTES,
    MAX_LABEL_LEN,
    MAX_VIDEO_BYTES,
    OWNER_FILE,
    REQUIRED_FILES,
    SIZE_LIMITS,
    TMP_PREFIX,
    sanitize_label,
    size_limit,
)
from accel.runs.reader import Run, RunInfo
from accel.runs.store import RunStore
from accel.runs.writer import RunWriter

__all__ = [
    "AMENDMENTS",
    "COMPLETE_MARKER",
    "DEFAULT_ROOT",
    "ENV_RUNS_DIR",
    "LOSSLESS_MAX_BYTES",
    "MAX_FRAMES_BYTES",
    "MAX_LABEL_LEN",
    "MAX_VIDEO_BYTES",
    "OWNER_FILE",
    "REQUIRED_FILES",
    "SIZE_LIMITS",
    "TMP_PREFIX",
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
    "size_limit",
    "to_jsonable",
]
