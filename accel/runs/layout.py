"""The store's layout on disk: file and folder names, run ids and labels, and the size limits of a run's files."""

from __future__ import annotations

import os
import re
from datetime import datetime

from accel.errors import UserError
from accel.runs.errors import InvalidRunIdError

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


def sanitize_label(label: str) -> str:
    """Map ``label`` onto ``[A-Za-z0-9._=+-]`` (others become ``_``), max 80 chars; empty -> ``"run"``."""
    clean = _LABEL_BAD_CHARS.sub("_", str(label))[:MAX_LABEL_LEN]
    return clean or "run"


def _parse_run_id(run_id: str) -> tuple[str, datetime | None]:
    """Split ``YYYYmmdd-HHMMSS-<label>-<hex6>`` into (label, created); non-matching ids give (run_id, None)."""
    m = _RUN_ID_PARTS.fullmatch(run_id)
    if m is None:
        return run_id, None
    try:
        return m.group(2), datetime.strptime(m.group(1), _TIME_FMT)
    except ValueError:
        # digits of the right shape that are no date (month 13, 25 o'clock): a run id need not hold a timestamp,
        # so the run is still valid; the caller dates it by its COMPLETE marker instead
        return m.group(2), None


def _validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a plain, non-hidden folder name; raise InvalidRunIdError otherwise."""
    if not isinstance(run_id, str) or _VALID_NAME.fullmatch(run_id) is None:
        raise InvalidRunIdError(
            f"invalid run id {run_id!r}: expected a single folder name of [A-Za-z0-9._=+-] not starting "
            "with '.' (path separators and '..' are not allowed)"
        )
    return run_id


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
