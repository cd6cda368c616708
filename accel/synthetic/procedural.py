"""Procedural text-to-video data with known ground truth (issue 8, part 1).

Clips are generated on the fly from a seed (no downloads): one to three coloured shapes move in
straight lines over a plain, gradient or textured background, sometimes under a slow camera pan.
Each clip carries a text prompt and its ground truth, so a generated video can later be scored
against the prompt alone (see :mod:`accel.synthetic.scoring`).

Three modules: :mod:`accel.synthetic.grammar` (the prompt grammar, its vocabulary, :class:`Scene`,
:func:`parse_prompt` and the held-out split), :mod:`accel.synthetic.rendering` (a :class:`ClipSpec` drawn into frames
with their ground truth) and this one, which samples clip specs and streams datasets of rendered clips. The names
callers use from the other two are re-exported here (:data:`__all__`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from accel.synthetic.grammar import (
    BACKGROUNDS,
    BASIC_DIRECTIONS,
    BASIC_SHAPES,
    COLOURS,
    DIRECTION_PHRASES,
    DIRECTIONS,
    PALETTE,
    PAN_DIRECTIONS,
    SHAPES,
    SPEED_WORDS,
    SPEEDS,
    ObjectDesc,
    Scene,
    held_out_combos,
    is_held_out,
    parse_prompt,
)
from accel.synthetic.rendering import (
    BG_L_AMPLITUDE,
    DEFAULT_FRAMES,
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    SHAPE_GEOMETRY,
    Clip,
    ClipSpec,
    ClipTruth,
    ObjectTruth,
    pan_vector,
    render,
)

__all__ = [
    "BACKGROUNDS",
    "BASIC_DIRECTIONS",
    "BASIC_SHAPES",
    "BG_L_AMPLITUDE",
    "COLOURS",
    "DIRECTIONS",
    "DIRECTION_PHRASES",
    "PALETTE",
    "SHAPES",
    "SPEEDS",
    "SPEED_WORDS",
    "Clip",
    "ClipSpec",
    "ClipTruth",
    "ObjectDesc",
    "ObjectTruth",
    "Scene",
    "dataset",
    "held_out_combos",
    "held_out_prompts",
    "is_held_out",
    "parse_prompt",
    "render",
    "sample_spec",
    "spec_at",
]

PAN_PROBABILITY = 0.25
SHARED_MOTION_PROBABILITY = 0.5
OBJECT_COUNT_PROBS: dict[int, float] = {1: 0.4, 2: 0.35, 3: 0.25}
# Object size (circle radius) as a fraction of the shorter frame side, by number of objects.
SIZE_RANGE: dict[int, tuple[float, float]] = {1: (0.14, 0.18), 2: (0.13, 0.15), 3: (0.12, 0.13)}
# Placement: keep shapes this far (fraction of side) from the border and from each other.
BORDER_MARGIN = 0.02
GAP_MARGIN = 0.03


# ---------------------------------------------------------------------------------------------- sampling


def _min_gap(dp: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """Smallest distance over t in [0, 1] of ``dp + t dv``; ``dp`` (N, 2) start offsets, ``dv`` (2,) velocity."""
    denom = float(dv @ dv)
    t = np.zeros(len(dp)) if denom == 0.0 else np.clip(-(dp @ dv) / denom, 0.0, 1.0)
    return np.linalg.norm(dp + t[:, None] * dv, axis=1)


def _place(
    rng: np.random.Generator, objects: Sequence[ObjectDesc], sizes: Sequence[float], pan: str | None, tries: int = 256
) -> list[tuple[float, float]] | None:
    """Random start centres keeping every shape inside the frame and apart from the others, or None.

    Draws ``tries`` candidate layouts at once and keeps the first valid one.
    """
    shift = pan_vector(pan)
    vels = np.array([SPEEDS[o.speed] * np.asarray(DIRECTIONS[o.direction]) + shift for o in objects])
    ext = np.array([SHAPE_GEOMETRY[o.shape] * s for o, s in zip(objects, sizes, strict=True)])
    lo = ext[:, None] + BORDER_MARGIN - np.minimum(vels, 0.0)
    hi = 1.0 - ext[:, None] - BORDER_MARGIN - np.maximum(vels, 0.0)
    if np.any(hi < lo):
        return None
    starts = rng.uniform(lo, hi, size=(tries, *lo.shape))  # (tries, n, 2)
    ok = np.ones(tries, bool)
    for i in range(len(objects)):
        for j in range(i):
            gap = _min_gap(starts[:, j] - starts[:, i], vels[j] - vels[i])
            ok &= gap >= ext[i] + ext[j] + GAP_MARGIN
    if not ok.any():
        return None
    best = starts[int(np.argmax(ok))]
    return [(float(x), float(y)) for x, y in best]


def _sample_object(
    rng: np.random.Generator, colours: Sequence[str], shapes: Sequence[str], directions: Sequence[str], allow_held: bool
) -> ObjectDesc:
    while True:
        obj = ObjectDesc(
            str(rng.choice(colours)),
            str(rng.choice(shapes)),
            str(rng.choice(directions)),
            str(rng.choice(list(SPEEDS))),
        )
        if allow_held or not is_held_out(obj.colour, obj.shape, obj.direction):
            return obj


def sample_spec(
    rng: np.random.Generator,
    *,
    split: str = "train",
    shapes: Sequence[str] = SHAPES,
    directions: Sequence[str] = tuple(DIRECTIONS),
    max_objects: int = 3,
) -> ClipSpec:
    """Draw a random clip spec.

    ``split="train"`` never uses a held-out (colour, shape, direction) combination; ``"held_out"`` makes
    the first object a held-out combination (the others are unrestricted); ``"any"`` ignores the split.
    """
    if split not in ("train", "held_out", "any"):
        raise ValueError(f"split must be 'train', 'held_out' or 'any', got {split!r}")
    held = held_out_combos(shapes, directions)
    if split == "held_out" and not held:
        raise ValueError("no held-out combination among the given shapes and directions")
    counts = [k for k in OBJECT_COUNT_PROBS if k <= max_objects]
    probs = np.array([OBJECT_COUNT_PROBS[k] for k in counts])
    n = int(rng.choice(counts, p=probs / probs.sum()))
    for _ in range(1000):
        objs: list[ObjectDesc] = []
        if split == "held_out":
            c, s, d = held[int(rng.integers(len(held)))]
            objs.append(ObjectDesc(c, s, d, str(rng.choice(list(SPEEDS)))))
        shared = n > 1 and rng.random() < SHARED_MOTION_PROBABILITY
        while len(objs) < n:
            free = [c for c in COLOURS if c not in {o.colour for o in objs}]
            obj = _sample_object(rng, free, shapes, directions, split != "train")
            if shared and objs:
                obj = ObjectDesc(obj.colour, obj.shape, objs[0].direction, objs[0].speed)
                if split == "train" and is_held_out(obj.colour, obj.shape, obj.direction):
                    continue
            objs.append(obj)
        bg_colour = str(rng.choice([c for c in COLOURS if c not in {o.colour for o in objs}]))
        background = str(rng.choice(BACKGROUNDS))
        pan = str(rng.choice(PAN_DIRECTIONS)) if rng.random() < PAN_PROBABILITY else None
        lo, hi = SIZE_RANGE[n]
        sizes = [float(rng.uniform(lo, hi)) for _ in range(n)]
        starts = _place(rng, objs, sizes, pan)
        if starts is not None:
            scene = Scene(tuple(objs), background, bg_colour, pan)
            return ClipSpec(scene, tuple(starts), tuple(sizes), int(rng.integers(2**31)))
    raise RuntimeError("could not place the objects of a clip")  # pragma: no cover - never seen in practice


def dataset(
    n: int,
    seed: int = 0,
    *,
    height: int = DEFAULT_HEIGHT,
    width: int = DEFAULT_WIDTH,
    frames: int = DEFAULT_FRAMES,
    split: str = "train",
    shapes: Sequence[str] = SHAPES,
    directions: Sequence[str] = tuple(DIRECTIONS),
    start: int = 0,
) -> Iterator[Clip]:
    """Yield clips ``start .. start + n``; clip ``i`` depends only on ``(seed, i, split)``, not on ``n``."""
    for i in range(start, start + n):
        yield render(spec_at(i, seed, split, shapes=shapes, directions=directions), height, width, frames)


def spec_at(
    i: int,
    seed: int = 0,
    split: str = "train",
    *,
    shapes: Sequence[str] = SHAPES,
    directions: Sequence[str] = tuple(DIRECTIONS),
) -> ClipSpec:
    """The spec of clip ``i`` of :func:`dataset` (without rendering it)."""
    tag = {"train": 0, "held_out": 1, "any": 2}[split]
    return sample_spec(np.random.default_rng([seed, i, tag]), split=split, shapes=shapes, directions=directions)


def held_out_prompts(
    n: int, seed: int = 0, *, shapes: Sequence[str] = SHAPES, directions: Sequence[str] = tuple(DIRECTIONS)
) -> list[str]:
    """A fixed list of ``n`` prompts each containing a held-out (colour, shape, direction) combination."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 1])
        out.append(sample_spec(rng, split="held_out", shapes=shapes, directions=directions).prompt)
    return out
