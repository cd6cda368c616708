"""Tests for accel.video (H.264 encode/decode through imageio-ffmpeg's ffmpeg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from accel.video import pad_to_even, read_video, video_codec, write_h264


def smooth_pattern(n_frames: int, height: int, width: int) -> np.ndarray:
    """A smooth, slowly moving colour pattern that H.264 can reproduce closely."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = []
    for t in range(n_frames):
        r = 128 + 90 * np.sin(x / 17.0 + t / 4.0)
        g = 128 + 90 * np.cos(y / 13.0 - t / 5.0)
        b = 128 + 90 * np.sin((x + y) / 23.0 + t / 6.0)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.round(np.stack(frames)), 0, 255).astype(np.uint8)


def test_roundtrip_is_h264_and_close(tmp_path: Path) -> None:
    frames = smooth_pattern(9, 48, 80)
    path = tmp_path / "sub" / "video.mp4"
    write_h264(frames, path, fps=16)
    assert video_codec(path) == "h264"
    decoded = read_video(path)
    assert decoded.dtype == np.uint8
    assert decoded.shape == frames.shape
    mae = np.abs(decoded.astype(np.int16) - frames.astype(np.int16)).mean()
    assert mae < 2.0, mae
    # Frames must stay in order: each decoded frame is closest to its own source frame.
    errs = np.abs(decoded[:, None].astype(np.int16) - frames[None].astype(np.int16)).mean(axis=(2, 3, 4))
    assert np.array_equal(errs.argmin(axis=1), np.arange(len(frames)))


def test_faststart_and_yuv420p(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    write_h264(smooth_pattern(3, 32, 32), path)
    data = path.read_bytes()
    assert b"avc1" in data
    # +faststart moves the moov atom in front of the media data.
    assert 0 <= data.find(b"moov") < data.find(b"mdat")


def test_odd_sizes_are_padded_not_cropped(tmp_path: Path) -> None:
    frames = smooth_pattern(4, 33, 47)
    path = tmp_path / "odd.mp4"
    write_h264(frames, path)
    decoded = read_video(path)
    assert decoded.shape == (4, 34, 48, 3)
    assert video_codec(path) == "h264"
    inner = decoded[:, :33, :47].astype(np.int16)
    assert np.abs(inner - frames).mean() < 2.5
    # Padding replicates the last row/column of the source.
    assert np.abs(decoded[:, 33, :47].astype(np.int16) - frames[:, 32]).mean() < 4.0
    assert np.abs(decoded[:, :33, 47].astype(np.int16) - frames[:, :, 46]).mean() < 4.0


def test_pad_to_even_replicates_edges() -> None:
    frames = np.arange(2 * 3 * 5 * 3, dtype=np.uint8).reshape(2, 3, 5, 3)
    padded = pad_to_even(frames)
    assert padded.shape == (2, 4, 6, 3)
    np.testing.assert_array_equal(padded[:, :3, :5], frames)
    np.testing.assert_array_equal(padded[:, 3, :5], frames[:, 2])
    np.testing.assert_array_equal(padded[:, :3, 5], frames[:, :, 4])
    even = np.zeros((1, 4, 6, 3), np.uint8)
    assert pad_to_even(even) is even


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.zeros((2, 8, 8, 3), np.float32), "dtype uint8"),
        (np.zeros((8, 8, 3), np.uint8), "shape"),
        (np.zeros((2, 8, 8, 4), np.uint8), "shape"),
        (np.zeros((0, 8, 8, 3), np.uint8), "non-empty"),
        (np.zeros((2, 0, 8, 3), np.uint8), "non-empty"),
        ([[[[0, 0, 0]]]], "numpy array"),
    ],
)
def test_write_rejects_bad_input(tmp_path: Path, frames: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_h264(frames, tmp_path / "bad.mp4")  # type: ignore[arg-type]
    assert not (tmp_path / "bad.mp4").exists()


def test_write_rejects_bad_fps(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fps"):
        write_h264(np.zeros((1, 8, 8, 3), np.uint8), tmp_path / "x.mp4", fps=0)


def test_missing_and_non_video_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError):
        video_codec(tmp_path / "missing.mp4")
    text = tmp_path / "not_a_video.mp4"
    text.write_text("hello")
    with pytest.raises(ValueError, match="no video stream"):
        video_codec(text)
