"""Per-frame video quality metrics (PSNR, SSIM) and a simple temporal flicker measure.

All functions take frame stacks of shape (F, H, W, C) (uint8 or float) and compute in float64.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

__all__ = ["compare_videos", "flicker", "psnr", "ssim"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate two frame stacks of identical (F, H, W, C) shape and return them as float64."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"videos must have the same shape, got a.shape={a.shape} and b.shape={b.shape}")
    if a.ndim != 4:
        raise ValueError(f"videos must have shape (F, H, W, C), got {a.shape}")
    if a.size == 0:
        raise ValueError(f"videos must be non-empty, got shape {a.shape}")
    return a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-frame PSNR in dB, shape (F,); ``inf`` where frames are identical."""
    fa, fb = _pair(a, b)
    mse = np.mean((fa - fb) ** 2, axis=(1, 2, 3))
    out = np.full(mse.shape, np.inf)
    nonzero = mse != 0  # NaN inputs stay NaN
    out[nonzero] = 10.0 * np.log10(float(data_range) ** 2 / mse[nonzero])
    return out


def _blur(img: np.ndarray) -> np.ndarray:
    """Gaussian-weighted local mean (11x11, sigma 1.5, reflect-101 border) of a 2-D float64 image."""
    return cv2.GaussianBlur(
        img, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, sigmaY=SSIM_SIGMA, borderType=cv2.BORDER_REFLECT_101
    )


def _ssim_plane(x: np.ndarray, y: np.ndarray, c1: float, c2: float) -> float:
    """Mean SSIM of two 2-D float64 planes."""
    mu_x, mu_y = _blur(x), _blur(y)
    var_x = _blur(x * x) - mu_x * mu_x
    var_y = _blur(y * y) - mu_y * mu_y
    cov = _blur(x * y) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return float(np.mean(num / den))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-frame SSIM (Wang et al. 2004), shape (F,).

    Gaussian window 11x11 with sigma 1.5, K1=0.01, K2=0.03, computed per channel and averaged. The
    SSIM map keeps the full image size: local statistics near the border use OpenCV's
    ``BORDER_REFLECT_101`` padding (``dcb|abcd|cba``) instead of discarding a 5-pixel 'valid' margin,
    so values can differ slightly from implementations that crop.
    """
    fa, fb = _pair(a, b)
    c1 = (SSIM_K1 * float(data_range)) ** 2
    c2 = (SSIM_K2 * float(data_range)) ** 2
    n_frames, _, _, n_chan = fa.shape
    out = np.empty(n_frames)
    for f in range(n_frames):
        out[f] = np.mean([_ssim_plane(fa[f, ..., c], fb[f, ..., c], c1, c2) for c in range(n_chan)])
    return out


def flicker(frames: np.ndarray) -> float:
    """Temporal flicker: mean absolute difference between consecutive frames.

    Averaged over all pixels, channels and the F-1 frame pairs, in the input's units (0..255 for
    uint8). Higher means more frame-to-frame change; it does not separate flicker from real motion,
    so compare it between videos of the same content. Returns 0.0 for fewer than two frames.
    """
    arr = np.asarray(frames)
    if arr.ndim not in (3, 4):
        raise ValueError(f"frames must have shape (F, H, W) or (F, H, W, C), got {arr.shape}")
    if arr.shape[0] < 2:
        return 0.0
    arr = arr.astype(np.float64, copy=False)
    return float(np.mean(np.abs(np.diff(arr, axis=0))))


def compare_videos(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> dict[str, Any]:
    """Compare two videos frame by frame.

    Returns ``{"psnr": [...], "ssim": [...], "psnr_mean": float, "ssim_mean": float}``. Per-frame PSNR
    may be ``inf`` (identical frames); ``psnr_mean`` averages finite values only and is ``inf`` when all
    frames are identical.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare videos of different shapes: a.shape={a.shape}, b.shape={b.shape}")
    p = psnr(a, b, data_range)
    s = ssim(a, b, data_range)
    finite = p[np.isfinite(p)]
    psnr_mean = float(np.mean(finite)) if finite.size else math.inf
    return {
        "psnr": [float(v) for v in p],
        "ssim": [float(v) for v in s],
        "psnr_mean": psnr_mean,
        "ssim_mean": float(np.mean(s)),
    }
