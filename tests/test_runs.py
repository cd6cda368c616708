"""Tests for accel.runs (atomic folder-per-run store)."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from accel.runs import (
    COMPLETE_MARKER,
    ENV_RUNS_DIR,
    IncompleteRunError,
    InvalidRunIdError,
    RunNotFoundError,
    RunStore,
    sanitize_label,
)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs")


def _frames() -> np.ndarray:
    y, x = np.mgrid[0:16, 0:24]
    return np.stack([np.stack([x * 10, y * 15, (x + y) * 6 + t], -1) for t in range(3)]).astype(np.uint8)


def _write_minimal(store: RunStore, label: str = "m") -> Path:
    with store.writer(label) as w:
        w.write_json("config.json", {"label": label})
        w.write_json("metrics.json", {})
    assert w.final_path is not None
    return w.final_path


def test_round_trip(store: RunStore) -> None:
    frames = _frames()
    telemetry = pd.DataFrame({"step": [0, 1, 2], "ms": [1.5, 2.5, float("nan")]})
    with store.writer("wan 1.3B/teacache") as w:
        assert w.path.name.startswith(".tmp-") and w.path.is_dir()
        w.write_json("config.json", {"steps": np.int64(30), "shape": (1, 2), "thresholds": np.array([0.1, 0.2])})
        w.write_json("metrics.json", {"psnr_mean": math.inf, "lpips": math.nan, "psnr": [30.5, -math.inf]})
        w.write_table("telemetry.parquet", telemetry)
        w.write_arrays("arrays.npz", {"residual": np.arange(6.0).reshape(2, 3), "mask": np.array([True, False])})
        w.write_video(frames, fps=8)
        assert store.list() == []  # not visible before commit

    final = w.final_path
    assert final == store.root / w.run_id and final.is_dir()
    assert not w.path.exists()
    assert (final / COMPLETE_MARKER).is_file()
    assert [p.name for p in store.root.iterdir()] == [w.run_id]

    # Strict JSON on disk: no bare NaN/Infinity tokens.
    text = (final / "metrics.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict constant {c}"))

    (info,) = store.list()
    assert info.run_id == w.run_id and info.path == final
    assert info.label == "wan_1.3B_teacache"
    assert info.config == {"steps": 30, "shape": [1, 2], "thresholds": [0.1, 0.2]}
    assert info.metrics["psnr_mean"] == "inf" and float(info.metrics["psnr_mean"]) == math.inf
    assert info.metrics["lpips"] == "nan" and info.metrics["psnr"] == [30.5, "-inf"]
    assert abs((info.created - datetime.now()).total_seconds()) < 120

    for key in (w.run_id, final, str(final)):
        with store.load(key) as run:
            assert run.run_id == w.run_id and run.config == info.config and run.metrics == info.metrics
            pd.testing.assert_frame_equal(run.telemetry, telemetry)
            np.testing.assert_array_equal(run.arrays["residual"], np.arange(6.0).reshape(2, 3))
            np.testing.assert_array_equal(run.arrays["mask"], [True, False])
            assert run.video_path == final / "video.mp4"
            np.testing.assert_array_equal(run.frames(), frames)  # lossless copy


def test_frames_decoded_from_video_without_lossless_copy(store: RunStore) -> None:
    frames = _frames()
    with store.writer("lossy") as w:
        w.write_json("config.json", {})
        w.write_json("metrics.json", {})
        w.write_video(frames, lossless=False)
    run = store.load(w.run_id)
    assert not (run.path / "frames.npz").exists()
    decoded = run.frames()
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frames).mean() < 6.0
    assert run.frames() is decoded and not decoded.flags.writeable  # decoded once, shared read-only


def test_optional_artifacts_absent(store: RunStore) -> None:
    run = store.load(_write_minimal(store).name)
    assert isinstance(run.telemetry, pd.DataFrame) and run.telemetry.empty
    assert dict(run.arrays) == {}
    assert run.video_path is None
    with pytest.raises(FileNotFoundError):
        run.frames()


def test_run_id_format_and_sanitising(store: RunStore) -> None:
    run_id = store.new_run_id("a b/c\\d..e=f+g")
    assert re.fullmatch(r"\d{8}-\d{6}-a_b_c_d\.\.e=f\+g-[0-9a-f]{6}", run_id), run_id
    assert store.new_run_id("x") != store.new_run_id("x")
    assert len(sanitize_label("y" * 200)) == 80
    assert sanitize_label("") == "run"
    assert sanitize_label("ok-._=+9") == "ok-._=+9"


def test_exception_leaves_nothing(store: RunStore) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.writer("fail") as w:
        w.write_json("config.json", {})
        w.write_json("metrics.json", {})
        raise RuntimeError("boom")
    assert not w.path.exists() and w.final_path is None
    assert store.list() == []
    assert list(store.root.iterdir()) == []


def test_missing_required_files_not_committed(store: RunStore) -> None:
    with pytest.raises(IncompleteRunError, match=r"metrics\.json"), store.writer("nometrics") as w:
        w.write_json("config.json", {})
    assert list(store.root.iterdir()) == []
    with pytest.raises(IncompleteRunError, match="object"), store.writer("badcfg") as w:
        w.write_json("config.json", [1, 2])
        w.write_json("metrics.json", {})
    assert list(store.root.iterdir()) == []


def test_partial_and_corrupt_folders_not_listed(store: RunStore) -> None:
    good = _write_minimal(store, "good")
    leftover = store.root / ".tmp-x"
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    (leftover / "metrics.json").write_text("{}")
    (leftover / COMPLETE_MARKER).write_text("{}")
    no_marker = store.root / "20240101-000000-nomarker-abcdef"
    no_marker.mkdir()
    (no_marker / "config.json").write_text("{}")
    (no_marker / "metrics.json").write_text("{}")
    bad_config = store.root / "20240101-000000-badcfg-abcdef"
    bad_config.mkdir()
    (bad_config / "config.json").write_text("{not json")
    (bad_config / COMPLETE_MARKER).write_text("{}")
    (store.root / "stray-file.txt").write_text("x")

    assert [info.path for info in store.list()] == [good]
    for name in (no_marker.name, bad_config.name, "20990101-000000-missing-000000"):
        with pytest.raises(RunNotFoundError):
            store.load(name)
    with pytest.raises(FileNotFoundError, match="incomplete"):
        store.load(no_marker)


def test_list_newest_first(store: RunStore) -> None:
    first = _write_minimal(store, "first")
    second = _write_minimal(store, "second")
    old = time.time() - 100
    os.utime(first / COMPLETE_MARKER, (old, old))
    assert [i.label for i in store.list()] == ["second", "first"]
    assert [i.path for i in store.list()] == [second, first]


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".", "", ".tmp-x", "x/../../x", "..\\x", "/"])
def test_path_traversal_refused(tmp_path: Path, store: RunStore, bad: str) -> None:
    # A complete run outside the store that "../x" would reach if not validated.
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (outside / "metrics.json").write_text("{}")
    (outside / COMPLETE_MARKER).write_text("{}")
    store.root.mkdir()
    expected = RunNotFoundError if bad == "/" else InvalidRunIdError
    with pytest.raises(expected):
        store.load(bad)
    with pytest.raises((InvalidRunIdError, RunNotFoundError)):
        store.delete(bad)
    assert outside.is_dir()


def test_delete(tmp_path: Path, store: RunStore) -> None:
    keep = _write_minimal(store, "keep")
    gone = _write_minimal(store, "gone")
    store.delete(gone.name)
    assert not gone.exists()
    assert [i.path for i in store.list()] == [keep]
    assert [p.name for p in store.root.iterdir()] == [keep.name]
    with pytest.raises(RunNotFoundError):
        store.delete(gone.name)
    # An absolute path to a complete run outside this store is loadable but not deletable.
    other = RunStore(tmp_path / "other")
    foreign = _write_minimal(other, "foreign")
    assert store.load(foreign).run_id == foreign.name
    with pytest.raises(InvalidRunIdError):
        store.delete(foreign)
    assert foreign.is_dir()


def test_recover(store: RunStore) -> None:
    old_dir = store.root / ".tmp-killed"
    (old_dir / "tb").mkdir(parents=True)
    (old_dir / "tb" / "events").write_text("x")
    fresh_dir = store.root / ".tmp-fresh"
    fresh_dir.mkdir()
    dead = store.root / ".tmp-dead-writer"
    dead.mkdir()
    (dead / ".owner").write_text(json.dumps({"pid": 2**22 + 1, "host": socket.gethostname()}))  # above pid_max
    trash = store.root / ".tmp-deleted-x-abc123"
    trash.mkdir()
    old = time.time() - 7200
    for p in (old_dir / "tb" / "events", old_dir / "tb", old_dir):
        os.utime(p, (old, old))
    good = _write_minimal(store)
    os.utime(good, (old, old))

    with store.writer("alive") as w:
        w.write_json("config.json", {})
        w.write_json("metrics.json", {})
        for p in (*w.path.iterdir(), w.path):
            os.utime(p, (old, old))
        # the old folder without an owner, the dead writer's and the delete's left-over go; the live writer stays
        assert store.recover(stale_s=3600) == (0, 3)
        assert w.path.is_dir()
    assert not old_dir.exists() and not dead.exists() and not trash.exists() and fresh_dir.is_dir()
    assert w.final_path is not None and w.final_path.is_dir() and not (w.final_path / ".owner").exists()
    recent = time.time() - 60
    os.utime(fresh_dir, (recent, recent))
    assert store.recover(stale_s=30) == (0, 1)  # the fresh leftover, once older than stale_s
    assert not fresh_dir.exists()
    assert {i.run_id for i in store.list()} == {good.name, w.run_id}


def test_writer_file_names_cannot_escape(store: RunStore) -> None:
    with pytest.raises(ValueError, match="relative path"), store.writer("esc") as w:
        w.write_json("../evil.json", {})
    assert not (store.root / "evil.json").exists()
    assert list(store.root.iterdir()) == []


def test_root_from_env_and_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_RUNS_DIR, str(tmp_path / "envroot"))
    assert RunStore().root == tmp_path / "envroot"
    monkeypatch.delenv(ENV_RUNS_DIR)
    monkeypatch.chdir(tmp_path)
    assert RunStore().root == tmp_path / "runs"
    assert RunStore().list() == []
    assert RunStore().recover() == (0, 0)


KILL_SCRIPT = """
import os, signal, socket, sys
import numpy as np
from accel import runs
from accel.runs import writer  # the commit steps are looked up where RunWriter calls them

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def rename_then_die(tmp, final):
    os.replace(tmp, final)
    die()

stage = sys.argv[2]
store = runs.RunStore(sys.argv[1])
if stage == "after mkdir":
    socket.gethostname = die  # the owner file is written next
elif stage == "files written":
    writer._sync_tree = die  # the commit starts with the fsync
elif stage == "marked complete":
    writer._finish = die  # COMPLETE is on disk; the rename is next
elif stage == "renamed":
    writer._finish = rename_then_die
with store.writer("killed") as w:
    w.write_json("config.json", {"label": "killed"})
    w.write_video(np.full((3, 16, 16, 3), 128, np.uint8))
    w.write_json("metrics.json", {"wall_s": 1.0})
print("not killed")
"""


@pytest.mark.parametrize(
    ("stage", "kept"),
    [("after mkdir", False), ("files written", False), ("marked complete", True), ("renamed", True), ("none", True)],
)
def test_killed_at_each_commit_stage(tmp_path: Path, stage: str, kept: bool) -> None:
    import subprocess
    import sys

    root = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(root), stage], capture_output=True, text=True)
    assert (proc.returncode == -9) == (stage != "none"), proc.stderr
    store = RunStore(root)  # opening the store recovers a marked run whose writer died
    store.recover(stale_s=0)  # and a folder without an owner file is removed once stale (here: at once)
    listed = store.list(damaged=True)
    assert [i.label for i in listed] == (["killed"] if kept else [])
    if kept:
        run = store.load(listed[0].run_id)
        assert run.frames().shape == (3, 16, 16, 3) and run.metrics["wall_s"] == 1.0
        assert not (run.path / ".owner").exists() or stage == "renamed"
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


def test_a_failure_right_after_mkdir_leaves_nothing(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> str:
        raise OSError("no hostname")

    monkeypatch.setattr(socket, "gethostname", broken)
    with pytest.raises(OSError, match="no hostname"), store.writer("x"):
        pass
    assert list(store.root.iterdir()) == []
