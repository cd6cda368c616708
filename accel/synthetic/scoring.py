"""Score a video against a procedural prompt (:mod:`accel.synthetic.procedural`) without ground-truth positions.

A generated video has no ground truth beyond its prompt, so the checks read the prompt only:

* colour: every named object colour is found as a blob (pixels classified to the nearest palette
  colour in CIE Lab, morphological open/close, connected components of plausible area and
  solidity) in enough frames; the background colour is never an object;
* direction: the centroid of each object's blob, tracked frame by frame (largest blob of its colour)
  and fitted with a straight line over time, moves at least :data:`MIN_DISPLACEMENT_FRAC` of the
  frame side within :data:`ANGLE_TOLERANCE_DEG` of the named direction;
* speed (extra): the fitted displacement is above or below :data:`SPEED_SPLIT_FRAC` for fast/slow;
* count: the median over frames of the number of object blobs (all non-background colours) equals
  the number of objects in the prompt; a blob whose colour is the mixture of a touching blob's colour
  and the background (an orange rim between a red shape and a yellow background, say) is an edge
  fringe and is dropped before counting and tracking;
* background (extra): at least :data:`MIN_BACKGROUND_FRAC` of the pixels are the named background colour;
* flicker: :func:`accel.metrics.flicker` over the whole video and the mean absolute frame-to-frame
  change over pixels away from every detected blob (``bg_flicker``; a camera pan over a gradient or
  texture shows up here as well, so compare it between videos of the same prompt).

Usage: ``score_video(frames, prompt)`` for one video, ``score_many(videos, prompts)`` for a table and
``aggregate(table)`` for accuracy per criterion.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
import pandas as pd

from accel.metrics import flicker
from accel.synthetic.procedural import COLOURS, DIRECTIONS, PALETTE, SPEEDS, parse_prompt

__all__ = [
    "CRITERIA",
    "ObjectScore",
    "VideoScore",
    "aggregate",
    "classify_pixels",
    "score_many",
    "score_video",
]

# A pixel farther than this CIE Lab distance (Delta E76) from every palette colour is left unclassified
# (anti-aliased edges, greys, noise). The closest palette pairs are about 48 apart.
MAX_PALETTE_DIST = 30.0
# Morphological open then close with an elliptical kernel of this size (fraction of the shorter side,
# rounded to an odd number of pixels, at least 3): removes speckle and thin colour fringes at edges.
MORPH_KERNEL_FRAC = 0.03
# An object blob covers this fraction of the frame area (the smallest procedural object, a triangle
# of radius 12 % of the side, covers about 3.2 %, and keeps about a third of that as a clean blob after
# 8x downscaling and upscaling; the largest, a square of radius 18 %, covers about 10.5 %).
MIN_BLOB_AREA_FRAC = 0.006
MAX_BLOB_AREA_FRAC = 0.25
# Blob area over its convex hull area: rejects rings and arcs of fringe colour around other objects.
MIN_SOLIDITY = 0.6
# An object counts as found when its blob is present in at least this fraction of the frames.
MIN_PRESENT_FRAC = 0.5
# Direction: net fitted displacement over the clip (fraction of the shorter side) and angular tolerance.
MIN_DISPLACEMENT_FRAC = 0.08
ANGLE_TOLERANCE_DEG = 45.0
# Speed: displacement above this fraction of the side is "fast", below "slow" (midway between the
# procedural speeds; a slow camera pan changes on-screen displacement by up to 0.06).
SPEED_SPLIT_FRAC = 0.5 * (SPEEDS["slow"] + SPEEDS["fast"])
# Edge fringes: a blob whose colour is a mixture of a touching object blob's colour and the background
# colour (background lightness within this many L* units) is an edge artefact, not an object. Blobs
# "touch" when they come within one morphology kernel of each other.
FRINGE_BG_L_SHIFT = 12.0
# Background: at least this fraction of all pixels is classified as the named background colour.
MIN_BACKGROUND_FRAC = 0.4
# bg_flicker ignores pixels within this distance (fraction of the side) of any detected blob.
FLICKER_MASK_DILATE_FRAC = 0.04

CRITERIA: tuple[str, ...] = ("colour_ok", "direction_ok", "count_ok", "speed_ok", "background_ok", "all_ok")


def _palette_lab() -> np.ndarray:
    rgb = np.array([[PALETTE[c] for c in COLOURS]], np.float32) / 255.0
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)[0]


_PALETTE_LAB = _palette_lab()


def _fringe_table() -> np.ndarray:
    """``table[o, c, b]``: colour ``c`` appears on the edge between an object of colour ``o`` and background ``b``.

    Edge pixels of a blurred or downscaled video are sRGB mixtures of the two colours; the table
    classifies such mixtures (background lightness shifted by up to FRINGE_BG_L_SHIFT as well).
    """
    n = len(COLOURS)
    rgb = np.array([PALETTE[c] for c in COLOURS], np.float32) / 255.0
    shades = []
    for shift in (-FRINGE_BG_L_SHIFT, 0.0, FRINGE_BG_L_SHIFT):
        lab = _PALETTE_LAB.copy()
        lab[:, 0] = np.clip(lab[:, 0] + shift, 0.0, 100.0)
        shades.append(np.clip(cv2.cvtColor(lab[None], cv2.COLOR_Lab2RGB)[0], 0.0, 1.0))
    alpha = np.linspace(0.05, 0.95, 19, dtype=np.float32)[None, None, None, :, None]
    bgs = np.stack(shades, axis=1)  # (b, shade, 3)
    mix = alpha * rgb[:, None, None, None, :] + (1.0 - alpha) * bgs[None, :, :, None, :]  # (o, b, shade, alpha, 3)
    labels = classify_pixels(np.round(mix * 255.0).astype(np.uint8).reshape(1, n * n, -1, 3)).reshape(n, n, -1)
    table = np.zeros((n, n, n), bool)
    for o in range(n):
        for b in range(n):
            for c in set(labels[o, b].ravel().tolist()) - {-1, o, b}:
                table[o, c, b] = True
    return table


@dataclass
class ObjectScore:
    """Score of one prompt object: where its colour was found and how its blob moved."""

    colour: str
    shape: str
    direction: str
    speed: str
    present_frac: float
    colour_ok: bool
    dx: float = math.nan
    dy: float = math.nan
    angle_error: float = math.nan
    direction_ok: bool = False
    speed_ok: bool = False
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)


@dataclass
class VideoScore:
    """Score of one video against its prompt; the ``*_ok`` fields are the pass/fail criteria."""

    prompt: str
    n_expected: int
    n_detected: int
    colour_frac: float
    direction_frac: float
    colour_ok: bool
    direction_ok: bool
    count_ok: bool
    speed_ok: bool
    background_ok: bool
    background_frac: float
    flicker: float
    bg_flicker: float
    objects: list[ObjectScore] = field(default_factory=list, repr=False)

    @property
    def all_ok(self) -> bool:
        """Colour, direction and count all correct."""
        return self.colour_ok and self.direction_ok and self.count_ok

    def as_row(self) -> dict[str, Any]:
        """Flat dict for a table row (per-object details left out)."""
        row = {k: v for k, v in asdict(self).items() if k != "objects"}
        row["all_ok"] = self.all_ok
        return row


def _kernel(height: int, width: int, frac: float) -> np.ndarray:
    k = max(3, round(min(height, width) * frac))
    k += 1 - k % 2
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def classify_pixels(frames: np.ndarray) -> np.ndarray:
    """Nearest palette colour index per pixel, (F, H, W) int8, -1 where no colour is within MAX_PALETTE_DIST."""
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 of shape (F, H, W, 3), got {arr.dtype} {arr.shape}")
    n_frames, height, width, _ = arr.shape
    flat = arr.reshape(n_frames * height, width, 3).astype(np.float32) / 255.0
    lab = cv2.cvtColor(flat, cv2.COLOR_RGB2Lab)
    chans = [np.ascontiguousarray(lab[..., c]) for c in range(3)]
    best = np.full(chans[0].shape, MAX_PALETTE_DIST**2, np.float32)
    out = np.full(chans[0].shape, -1, np.int8)
    for k, ref in enumerate(_PALETTE_LAB):
        d2 = (chans[0] - ref[0]) ** 2
        d2 += (chans[1] - ref[1]) ** 2
        d2 += (chans[2] - ref[2]) ** 2
        closer = d2 <= best
        best[closer] = d2[closer]
        out[closer] = k
    return out.reshape(n_frames, height, width)


@dataclass
class _Blob:
    area: int
    centroid: tuple[float, float]
    mask: np.ndarray


def _blobs(mask: np.ndarray, kernel: np.ndarray) -> list[_Blob]:
    """Object-like blobs of a binary mask after morphological cleanup, largest first."""
    clean = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    clean = cv2.morphologyEx(clean, cv2.MORPH_CLOSE, kernel)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(clean, connectivity=8)
    total = mask.size
    out = []
    for i in range(1, n):
        area = int(stats[i, cv2.CC_STAT_AREA])
        if not MIN_BLOB_AREA_FRAC * total <= area <= MAX_BLOB_AREA_FRAC * total:
            continue
        comp = (labels == i).astype(np.uint8)
        contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull = cv2.convexHull(np.concatenate(contours))
        hull_area = max(float(cv2.contourArea(hull)), 1.0)
        if area / hull_area < MIN_SOLIDITY:
            continue
        out.append(_Blob(area, (float(cents[i, 0]), float(cents[i, 1])), comp.astype(bool)))
    out.sort(key=lambda b: -b.area)
    return out


def _drop_fringes(blobs: dict[int, list[list[_Blob]]], bg_idx: int, kernel: np.ndarray) -> None:
    """Remove, in place, blobs that are edge fringes between a touching object blob and the background."""
    n_frames = len(next(iter(blobs.values()), []))
    for f in range(n_frames):
        drop: list[tuple[int, int]] = []
        for c, per_frame in blobs.items():
            for i, blob in enumerate(per_frame[f]):
                near = cv2.dilate(blob.mask.astype(np.uint8), kernel).astype(bool)
                if any(
                    _FRINGE[o, c, bg_idx] and (near & other.mask).any()
                    for o, other_frames in blobs.items()
                    if o != c
                    for other in other_frames[f]
                ):
                    drop.append((c, i))
        for c, i in sorted(drop, reverse=True):
            del blobs[c][f][i]


def _angle_between(v: np.ndarray, u: np.ndarray) -> float:
    cos = float(v @ u) / max(float(np.linalg.norm(v) * np.linalg.norm(u)), 1e-12)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


_FRINGE = _fringe_table()


def score_video(frames: np.ndarray, prompt: str) -> VideoScore:
    """Score one uint8 (F, H, W, 3) RGB video against a prompt in the procedural grammar."""
    scene = parse_prompt(prompt)
    labels = classify_pixels(frames)
    n_frames, height, width = labels.shape
    side = min(height, width)
    kernel = _kernel(height, width, MORPH_KERNEL_FRAC)
    bg_idx = COLOURS.index(scene.bg_colour)
    # Blobs of every non-background colour, per frame.
    # Pixel count per frame and colour: skip colours too rare to hold a blob.
    hist = np.stack([np.bincount(labels[f].ravel() + 1, minlength=len(COLOURS) + 1)[1:] for f in range(n_frames)])
    min_area = MIN_BLOB_AREA_FRAC * height * width
    blobs: dict[int, list[list[_Blob]]] = {
        k: [_blobs(labels[f] == k, kernel) if hist[f, k] >= min_area else [] for f in range(n_frames)]
        for k in range(len(COLOURS))
        if k != bg_idx
    }
    _drop_fringes(blobs, bg_idx, kernel)
    counts = [sum(len(blobs[k][f]) for k in blobs) for f in range(n_frames)]
    n_detected = int(np.round(np.median(counts)))
    t = np.arange(n_frames, dtype=np.float64)
    objects = []
    for obj in scene.objects:
        per_frame = blobs[COLOURS.index(obj.colour)]
        cents = np.full((n_frames, 2), np.nan)
        for f, bl in enumerate(per_frame):
            if bl:
                cents[f] = bl[0].centroid
        present = ~np.isnan(cents[:, 0])
        score = ObjectScore(obj.colour, obj.shape, obj.direction, obj.speed, float(present.mean()), False)
        score.centroids = cents
        score.colour_ok = score.present_frac >= MIN_PRESENT_FRAC
        if present.sum() >= 2:
            slope_x = np.polyfit(t[present], cents[present, 0], 1)[0]
            slope_y = np.polyfit(t[present], cents[present, 1], 1)[0]
            disp = np.array([slope_x, slope_y]) * (n_frames - 1)
            score.dx, score.dy = float(disp[0]), float(disp[1])
            score.angle_error = _angle_between(disp, np.asarray(DIRECTIONS[obj.direction]))
            moved = float(np.linalg.norm(disp)) / side
            score.direction_ok = (
                score.colour_ok and moved >= MIN_DISPLACEMENT_FRAC and score.angle_error <= ANGLE_TOLERANCE_DEG
            )
            fast = moved >= SPEED_SPLIT_FRAC
            score.speed_ok = score.direction_ok and fast == (obj.speed == "fast")
        objects.append(score)
    # Flicker away from every blob (dilated), over consecutive frame pairs.
    near = np.zeros((n_frames, height, width), np.uint8)
    for per_colour in blobs.values():
        for f, bl in enumerate(per_colour):
            for b in bl:
                near[f] |= b.mask
    dilate = _kernel(height, width, 2 * FLICKER_MASK_DILATE_FRAC)
    near = np.stack([cv2.dilate(m, dilate) for m in near]).astype(bool)
    arr = np.asarray(frames, np.float64)
    static = ~(near[1:] | near[:-1])
    diffs = np.abs(np.diff(arr, axis=0)).mean(-1)
    bg_flicker = float(diffs[static].mean()) if static.any() else math.nan
    background_frac = float((labels == bg_idx).mean())
    n_obj = len(objects)
    return VideoScore(
        prompt=prompt,
        n_expected=n_obj,
        n_detected=n_detected,
        colour_frac=sum(o.colour_ok for o in objects) / n_obj,
        direction_frac=sum(o.direction_ok for o in objects) / n_obj,
        colour_ok=all(o.colour_ok for o in objects),
        direction_ok=all(o.direction_ok for o in objects),
        count_ok=n_detected == n_obj,
        speed_ok=all(o.speed_ok for o in objects),
        background_ok=background_frac >= MIN_BACKGROUND_FRAC,
        background_frac=background_frac,
        flicker=flicker(frames),
        bg_flicker=bg_flicker,
        objects=objects,
    )


def score_many(videos: Iterable[np.ndarray], prompts: Sequence[str]) -> pd.DataFrame:
    """Score videos against their prompts; one row per video (see :meth:`VideoScore.as_row`)."""
    rows = []
    for i, (video, prompt) in enumerate(zip(videos, prompts, strict=True)):
        row = score_video(video, prompt).as_row()
        rows.append({"index": i, **row})
    return pd.DataFrame(rows)


def aggregate(table: pd.DataFrame) -> dict[str, float]:
    """Accuracy (fraction of videos passing) per criterion, plus mean per-object rates and flicker."""
    out = {f"{c.removesuffix('_ok')}_acc": float(table[c].mean()) for c in CRITERIA}
    out["colour_object_acc"] = float(table["colour_frac"].mean())
    out["direction_object_acc"] = float(table["direction_frac"].mean())
    out["flicker"] = float(table["flicker"].mean())
    out["bg_flicker"] = float(table["bg_flicker"].mean())
    out["n"] = float(len(table))
    return out
