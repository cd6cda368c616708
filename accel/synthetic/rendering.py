"""Rendering of procedural clips: a :class:`ClipSpec` (scene plus layout) drawn into RGB frames with their ground
truth (:class:`ClipTruth`), at any resolution. Specs are sampled and streamed by :mod:`accel.synthetic.procedural`.

Conventions:

* Directions are in image space (up = towards row 0) and relative to the background. A camera
  panning left moves the whole picture (background and shapes) right. The pan is slow
  (:data:`PAN_TRAVEL` of the frame side over the clip, under a quarter of the slow speed), so
  on-screen motion stays within about 14 degrees of the named direction.
* Positions are centres in pixel-index coordinates ``(x, y)`` = (column, row): the mean of the
  indices of the pixels a shape covers. Sizes are in pixels: ``size`` is the radius of a circle;
  the other shapes are scaled to a similar area (see :data:`SHAPE_GEOMETRY`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from accel.synthetic.grammar import DIRECTIONS, PALETTE, SPEEDS, Scene

__all__ = [
    "BG_L_AMPLITUDE",
    "DEFAULT_FRAMES",
    "DEFAULT_HEIGHT",
    "DEFAULT_WIDTH",
    "PAN_TRAVEL",
    "SHAPE_GEOMETRY",
    "Clip",
    "ClipSpec",
    "ClipTruth",
    "ObjectTruth",
    "pan_vector",
    "render",
]

# Content shift over the clip caused by a camera pan, as a fraction of the frame side.
PAN_TRAVEL = 0.06
# Background lightness modulation (CIE L*, 0..100) of gradients and textures around the named colour;
# small enough that every background pixel stays nearest to its own palette colour.
BG_L_AMPLITUDE = 12.0
TEXTURE_CELLS = 6  # smooth-noise control points across the frame side
# Extent (circumradius) of each shape relative to ``size`` (the circle radius). The square's half side is
# 0.9 size, the diamond's half diagonal 1.2 size, the triangle's and star's circumradius 1.3 size; areas
# relative to the circle: square 1.03, diamond 0.92, triangle 0.70, star 0.87 (inner/outer radius 0.55).
SHAPE_GEOMETRY: dict[str, float] = {
    "circle": 1.0,
    "square": 0.9 * math.sqrt(2.0),
    "diamond": 1.2,
    "triangle": 1.3,
    "star": 1.3,
}
SQUARE_HALF_SIDE = 0.9
STAR_INNER_RATIO = 0.55
DEFAULT_HEIGHT = 128
DEFAULT_WIDTH = 128
DEFAULT_FRAMES = 17  # 4k+1 frames, as Wan-style causal video VAEs expect


@dataclass(frozen=True)
class ClipSpec:
    """A scene plus its layout, enough to render the clip at any resolution.

    ``starts`` are normalised start centres (x / width, y / height), ``sizes`` normalised circle radii
    (fraction of the shorter side); ``texture_seed`` seeds the textured background.
    """

    scene: Scene
    starts: tuple[tuple[float, float], ...]
    sizes: tuple[float, ...]
    texture_seed: int = 0

    @property
    def prompt(self) -> str:
        """The scene's canonical prompt."""
        return self.scene.prompt()


@dataclass
class ObjectTruth:
    """Ground truth of one rendered object; ``centers`` is (F, 2) pixel (x, y) per frame."""

    colour: str
    shape: str
    direction: str
    speed: str
    size: float
    extent: float
    centers: np.ndarray


@dataclass
class ClipTruth:
    """Ground truth of a rendered clip; ``pan_offsets`` is the (F, 2) pixel content shift per frame."""

    objects: list[ObjectTruth]
    background: str
    bg_colour: str
    pan: str | None
    pan_offsets: np.ndarray


@dataclass
class Clip:
    """A rendered clip: prompt, uint8 frames (F, H, W, 3) RGB, ground truth and the spec it came from."""

    prompt: str
    frames: np.ndarray
    truth: ClipTruth
    spec: ClipSpec = field(repr=False)


def pan_vector(pan: str | None) -> np.ndarray:
    """Normalised content shift over the clip for a camera pan (the picture moves opposite to the camera)."""
    if pan is None:
        return np.zeros(2)
    return -PAN_TRAVEL * np.asarray(DIRECTIONS[pan])


# ---------------------------------------------------------------------------------------------- rendering


def _lab(rgb: tuple[int, int, int]) -> np.ndarray:
    return cv2.cvtColor(np.array([[rgb]], np.float32) / 255.0, cv2.COLOR_RGB2Lab)[0, 0]


def _background(spec: ClipSpec, height: int, width: int) -> np.ndarray:
    """Background canvas (float32 RGB in [0, 1]) of the given size in the named colour and kind."""
    kind = spec.scene.background
    if kind == "plain":
        mod = np.zeros((height, width), np.float32)
    elif kind == "vertical gradient":  # lightness changes from top to bottom
        mod = np.repeat(np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None], width, axis=1)
    elif kind == "horizontal gradient":
        mod = np.repeat(np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :], height, axis=0)
    elif kind == "textured":
        rng = np.random.default_rng(spec.texture_seed)
        cells = max(2, round(TEXTURE_CELLS * max(height, width) / min(height, width)))
        grid = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
        big = cv2.resize(
            grid, (width * (cells + 3) // cells, height * (cells + 3) // cells), interpolation=cv2.INTER_CUBIC
        )
        mod = big[:height, :width]
        mod = mod / max(float(np.abs(mod).max()), 1e-6)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    lab = np.empty((height, width, 3), np.float32)
    lab[:] = _lab(PALETTE[spec.scene.bg_colour])
    lab[..., 0] = np.clip(lab[..., 0] + BG_L_AMPLITUDE * mod, 0.0, 100.0)
    return np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0.0, 1.0)


def _polygon(shape: str, size: float) -> np.ndarray | None:
    """Vertices (N, 2) of a shape centred on the origin, or None for a circle."""
    if shape == "circle":
        return None
    if shape == "square":
        h = SQUARE_HALF_SIDE * size
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if shape == "diamond":
        h = SHAPE_GEOMETRY["diamond"] * size
        return np.array([[0.0, -h], [h, 0.0], [0.0, h], [-h, 0.0]])
    if shape == "triangle":
        r = SHAPE_GEOMETRY["triangle"] * size
        ang = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)
    if shape == "star":
        r = SHAPE_GEOMETRY["star"] * size * np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER_RATIO)
        ang = -math.pi / 2 + np.arange(10) * math.pi / 5
        return np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)
    raise ValueError(f"unknown shape {shape!r}")


_SUBPIXEL_BITS = 4


def _draw(img: np.ndarray, shape: str, center: np.ndarray, size: float, rgb: tuple[int, int, int]) -> None:
    """Draw a filled, anti-aliased shape on a uint8 image in place (centre in pixel-index coordinates)."""
    scale = 1 << _SUBPIXEL_BITS
    poly = _polygon(shape, size)
    if poly is None:
        c = (round(center[0] * scale), round(center[1] * scale))
        cv2.circle(img, c, round(size * scale), rgb, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
    else:
        pts = np.round((poly + center) * scale).astype(np.int32)
        cv2.fillPoly(img, [pts], rgb, cv2.LINE_AA, _SUBPIXEL_BITS)


def render(
    spec: ClipSpec, height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH, frames: int = DEFAULT_FRAMES
) -> Clip:
    """Render a spec into a clip of ``frames`` RGB uint8 frames of ``height`` x ``width``."""
    if frames < 2 or height < 8 or width < 8:
        raise ValueError(f"need at least 2 frames and 8x8 pixels, got {frames} frames of {height}x{width}")
    scene = spec.scene
    side = min(height, width)
    t = np.linspace(0.0, 1.0, frames)[:, None]
    scale = np.array([width, height], np.float64)
    pan = pan_vector(scene.pan) * side
    pan_offsets = t * pan
    margin = math.ceil(float(np.abs(pan).max())) + 2
    canvas = _background(spec, height + 2 * margin, width + 2 * margin)
    truths = []
    for obj, start, size in zip(scene.objects, spec.starts, spec.sizes, strict=True):
        vel = SPEEDS[obj.speed] * np.asarray(DIRECTIONS[obj.direction]) * side
        centers = np.asarray(start) * scale - 0.5 + t * vel + pan_offsets
        truths.append(
            ObjectTruth(
                obj.colour,
                obj.shape,
                obj.direction,
                obj.speed,
                size * side,
                SHAPE_GEOMETRY[obj.shape] * size * side,
                centers,
            )
        )
    out = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        dx, dy = pan_offsets[f]
        m = np.array([[1.0, 0.0, margin - dx], [0.0, 1.0, margin - dy]], np.float32)
        bg = cv2.warpAffine(canvas, m, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        img = np.round(bg * 255.0).astype(np.uint8)
        for ot in truths:
            _draw(img, ot.shape, ot.centers[f], ot.size, PALETTE[ot.colour])
        out[f] = img
    truth = ClipTruth(truths, scene.background, scene.bg_colour, scene.pan, pan_offsets)
    return Clip(scene.prompt(), out, truth, spec)
