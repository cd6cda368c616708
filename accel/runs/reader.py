"""Reading a complete run: :class:`Run` (files loaded lazily, a damaged one raises :class:`DamagedRunError`
naming the run and the file), :class:`RunInfo` (a listed run's summary) and arrays.npz read member by member."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from accel.errors import one_line
from accel.runs.checks import _READ_ERRORS, _created, _read_complete_run, _refused
from accel.runs.errors import DamagedRunError
from accel.runs.jsonio import _read_json
from accel.runs.layout import size_limit
from accel.video import read_video

__all__ = ["Run", "RunInfo"]


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
