"""Writing a run: :class:`RunWriter` fills ``<root>/.tmp-<run_id>/`` (its ``.owner`` file names the writing
process) and commits it atomically: every file fsynced, ``COMPLETE`` written last, the folder renamed into place."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from accel.runs.durable import _finish, _fsync, _sync_tree
from accel.runs.errors import IncompleteRunError
from accel.runs.jsonio import _dump_json, _read_json
from accel.runs.layout import (
    COMPLETE_MARKER,
    LOSSLESS_MAX_BYTES,
    OWNER_FILE,
    REQUIRED_FILES,
    TMP_PREFIX,
    _validate_run_id,
)
from accel.video import write_h264

__all__ = ["RunWriter"]


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
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep to parse
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
