"""Pixel helpers shared by the image and video views: enlarging small frames, captions, colour bars."""

from __future__ import annotations

import math

import cv2
import numpy as np

CAPTION_PX = 22  # height of a caption band (under the picture, clear of the player's label badge)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def enlarged(video: np.ndarray, min_width: int) -> np.ndarray:
    """``(..., H, W, C)`` pixels repeated by a whole factor so that ``W >= min_width`` (they stay sharp)."""
    k = max(1, math.ceil(min_width / video.shape[-2]))
    return video.repeat(k, axis=-3).repeat(k, axis=-2) if k > 1 else video


def fitted(text: str, width: int) -> tuple[str, float]:
    """``text`` and an opencv font scale at which it fits ``width`` px (shortened with '..' if it cannot)."""
    for scale in (0.5, 0.45, 0.4, 0.35):
        if cv2.getTextSize(text, FONT, scale, 1)[0][0] <= width - 8:
            return text, scale
    while len(text) > 3 and cv2.getTextSize(text + "..", FONT, 0.35, 1)[0][0] > width - 8:
        text = text[:-1]
    return text + "..", 0.35


def captioned(video: np.ndarray, text: str) -> np.ndarray:
    """``(..., H, W, 3)`` with a dark band underneath holding ``text`` (fitted to the width), on every frame."""
    band = np.full((CAPTION_PX, video.shape[-2], 3), 32, np.uint8)
    shown, scale = fitted(text, video.shape[-2])
    cv2.putText(band, shown, (4, CAPTION_PX - 7), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([video, np.broadcast_to(band, (*video.shape[:-3], *band.shape))], axis=-3)


def coloured(values: np.ndarray, colormap: int) -> np.ndarray:
    """uint8 ``values`` (any shape ``(..., H, W)``) through an opencv colormap, as RGB."""
    flat = values.reshape(-1, values.shape[-1])
    rgb = cv2.cvtColor(cv2.applyColorMap(flat, colormap), cv2.COLOR_BGR2RGB)
    return rgb.reshape(*values.shape, 3)


def colour_bar(height: int, lo: float, hi: float, colormap: int, width: int = 64) -> np.ndarray:
    """A vertical scale for pictures coloured with ``colormap``: bright end at the top labelled ``hi``, the
    other at the bottom labelled ``lo``, the middle between."""
    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None].repeat(14, axis=1)
    bar = np.full((height, width, 3), 32, np.uint8)
    bar[:, 4:18] = coloured(ramp, colormap)
    span = abs(hi - lo)
    digits = 0 if span >= 10 else 1 if span >= 1 else 2 if span >= 0.1 else 3
    for frac in (0.0, 0.5, 1.0):
        y = round((1 - frac) * (height - 1))
        text = f"{lo + frac * (hi - lo):.{digits}f}"
        cv2.putText(bar, text, (21, min(max(y + 4, 10), height - 2)), FONT, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return bar


def with_colour_bar(video: np.ndarray, lo: float, hi: float, colormap: int) -> np.ndarray:
    """``(..., H, W, 3)`` with :func:`colour_bar` to its right, on every frame."""
    bar = colour_bar(video.shape[-3], lo, hi, colormap)
    return np.concatenate([video, np.broadcast_to(bar, (*video.shape[:-3], *bar.shape))], axis=-2)
