"""Procedural text-to-video data with known ground truth (issue 8, part 1).

Clips are generated on the fly from a seed (no downloads): one to three coloured shapes move in
straight lines over a plain, gradient or textured background, sometimes under a slow camera pan.
Each clip carries a text prompt and its ground truth, so a generated video can later be scored
against the prompt alone (see :mod:`accel.synthetic.scoring`).

Prompt grammar (canonical form written by :meth:`Scene.prompt`, read by :func:`parse_prompt`)::

    prompt     := groups " over " background [" while the camera pans " PAN]
    groups     := group | group " and " group | group ", " group " and " group
    group      := object " moves " SPEED " " DIRPHRASE            (one object)
                | objects " move " SPEED " " DIRPHRASE            (objects sharing one motion)
    objects    := object " and " object | object ", " object " and " object
    object     := ("a" | "an") " " COLOUR " " SHAPE
    background := ("a" | "an") " " [KIND " "] COLOUR " background"  (KIND omitted for "plain")
    COLOUR     := red | orange | yellow | green | blue | purple | white | black
    SHAPE      := circle | square | triangle | star | diamond
    SPEED      := slowly | quickly                                 (speeds "slow", "fast")
    DIRPHRASE  := left | right | up | down | to the upper left | to the upper right
                | to the lower left | to the lower right           (directions "up-left", ...)
    KIND       := vertical gradient | horizontal gradient | textured
    PAN        := left | right | up | down

Example: ``"a red circle and a blue square move slowly left, a white star moves quickly up and
an orange triangle moves slowly down over a textured green background while the camera pans
right"`` (a clip has at most three objects; this one only shows every construct). Consecutive
objects with the same direction and speed are grouped; the parser ignores the separators and
gives each object the motion of the next verb phrase.

Conventions:

* Object colours within a clip are distinct and differ from the background colour, so a colour
  names one object.
* Directions are in image space (up = towards row 0) and relative to the background. A camera
  panning left moves the whole picture (background and shapes) right. The pan is slow
  (:data:`PAN_TRAVEL` of the frame side over the clip, under a quarter of the slow speed), so
  on-screen motion stays within about 14 degrees of the named direction.
* Positions are centres in pixel-index coordinates ``(x, y)`` = (column, row): the mean of the
  indices of the pixels a shape covers. Sizes are in pixels: ``size`` is the radius of a circle;
  the other shapes are scaled to a similar area (see :data:`SHAPE_GEOMETRY`).
* Held-out split: a (colour, shape, direction) combination is held out when
  ``(3 * colour_index + 5 * shape_index + direction_index) % 7 == 2`` with the indices into
  :data:`COLOURS`, :data:`SHAPES` and :data:`DIRECTIONS` (see :func:`is_held_out`). Training clips
  never contain a held-out combination; every held-out clip (:func:`held_out_prompts`,
  ``dataset(..., split="held_out")``) has at least one, so the two sets of prompts are disjoint.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = [
    "BACKGROUNDS",
    "BASIC_DIRECTIONS",
    "BASIC_SHAPES",
    "COLOURS",
    "DIRECTIONS",
    "PALETTE",
    "SHAPES",
    "SPEEDS",
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
]

# Palette: sRGB values chosen far apart in CIE Lab (every pair >= 49 Delta E76; the closest
# pairs are red/orange, orange/yellow and blue/purple), so they remain recognisable after a lossy VAE.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 30),
    "orange": (255, 145, 0),
    "yellow": (250, 230, 40),
    "green": (30, 170, 50),
    "blue": (10, 80, 245),
    "purple": (165, 35, 160),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
BASIC_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Unit direction vectors in image coordinates (x right, y down).
_D = 1.0 / math.sqrt(2.0)
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-_D, -_D),
    "up-right": (_D, -_D),
    "down-left": (-_D, _D),
    "down-right": (_D, _D),
}
BASIC_DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
PAN_DIRECTIONS: tuple[str, ...] = BASIC_DIRECTIONS
DIRECTION_PHRASES: dict[str, str] = {
    "left": "left",
    "right": "right",
    "up": "up",
    "down": "down",
    "up-left": "to the upper left",
    "up-right": "to the upper right",
    "down-left": "to the lower left",
    "down-right": "to the lower right",
}
# Net displacement over the whole clip, as a fraction of the frame side.
SPEEDS: dict[str, float] = {"slow": 0.25, "fast": 0.45}
SPEED_WORDS: dict[str, str] = {"slow": "slowly", "fast": "quickly"}
BACKGROUNDS: tuple[str, ...] = ("plain", "vertical gradient", "horizontal gradient", "textured")
# Content shift over the clip caused by a camera pan, as a fraction of the frame side.
PAN_TRAVEL = 0.06
PAN_PROBABILITY = 0.25
SHARED_MOTION_PROBABILITY = 0.5
OBJECT_COUNT_PROBS: dict[int, float] = {1: 0.4, 2: 0.35, 3: 0.25}
# Object size (circle radius) as a fraction of the shorter frame side, by number of objects.
SIZE_RANGE: dict[int, tuple[float, float]] = {1: (0.14, 0.18), 2: (0.13, 0.15), 3: (0.12, 0.13)}
# Background lightness modulation (CIE L*, 0..100) of gradients and textures around the named colour;
# small enough that every background pixel stays nearest to its own palette colour.
BG_L_AMPLITUDE = 12.0
TEXTURE_CELLS = 6  # smooth-noise control points across the frame side
# Placement: keep shapes this far (fraction of side) from the border and from each other.
BORDER_MARGIN = 0.02
GAP_MARGIN = 0.03
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
HELD_OUT_MODULUS = 7
HELD_OUT_RESIDUE = 2
DEFAULT_HEIGHT = 128
DEFAULT_WIDTH = 128
DEFAULT_FRAMES = 17  # 4k+1 frames, as Wan-style causal video VAEs expect


@dataclass(frozen=True)
class ObjectDesc:
    """What the prompt says about one object."""

    colour: str
    shape: str
    direction: str
    speed: str


@dataclass(frozen=True)
class Scene:
    """Everything a prompt states: objects, background kind and colour, camera pan (or None)."""

    objects: tuple[ObjectDesc, ...]
    background: str
    bg_colour: str
    pan: str | None = None

    def prompt(self) -> str:
        """Canonical prompt in the module's grammar."""
        groups: list[list[ObjectDesc]] = []
        for obj in self.objects:
            if groups and (groups[-1][-1].direction, groups[-1][-1].speed) == (obj.direction, obj.speed):
                groups[-1].append(obj)
            else:
                groups.append([obj])
        parts = []
        for grp in groups:
            nouns = _join([f"{_article(o.colour)} {o.colour} {o.shape}" for o in grp])
            verb = "moves" if len(grp) == 1 else "move"
            parts.append(f"{nouns} {verb} {SPEED_WORDS[grp[0].speed]} {DIRECTION_PHRASES[grp[0].direction]}")
        kind = "" if self.background == "plain" else f"{self.background} "
        text = f"{_join(parts)} over {_article(kind or self.bg_colour)} {kind}{self.bg_colour} background"
        if self.pan is not None:
            text += f" while the camera pans {self.pan}"
        return text


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


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def is_held_out(colour: str, shape: str, direction: str) -> bool:
    """Whether a (colour, shape, direction) combination belongs to the held-out split."""
    key = 3 * COLOURS.index(colour) + 5 * SHAPES.index(shape) + list(DIRECTIONS).index(direction)
    return key % HELD_OUT_MODULUS == HELD_OUT_RESIDUE


def held_out_combos(
    shapes: Sequence[str] = SHAPES, directions: Sequence[str] = tuple(DIRECTIONS)
) -> list[tuple[str, str, str]]:
    """All held-out (colour, shape, direction) combinations among the given shapes and directions."""
    return [(c, s, d) for c in COLOURS for s in shapes for d in directions if is_held_out(c, s, d)]


# ---------------------------------------------------------------------------------------------- parsing

_COLOUR_RE = "|".join(COLOURS)
_SHAPE_RE = "|".join(SHAPES)
_DIR_BY_PHRASE = {v: k for k, v in DIRECTION_PHRASES.items()}
_DIR_RE = "|".join(sorted((re.escape(p) for p in _DIR_BY_PHRASE), key=len, reverse=True))
_SPEED_BY_WORD = {v: k for k, v in SPEED_WORDS.items()}
_TOKEN_RE = re.compile(
    rf"\ban? (?P<colour>{_COLOUR_RE}) (?P<shape>{_SHAPE_RE})\b"
    rf"|\bmoves? (?P<speed>{'|'.join(_SPEED_BY_WORD)}) (?P<dir>{_DIR_RE})(?=,| and |$)"
)
_SEP_RE = re.compile(r"^(?:,? and |, | |)$")
_PROMPT_RE = re.compile(
    rf"^(?P<objects>.+?) over an? (?:(?P<kind>{'|'.join(BACKGROUNDS)}) )?(?P<bg>{_COLOUR_RE}) background"
    rf"(?: while the camera pans (?P<pan>{'|'.join(PAN_DIRECTIONS)}))?\.?$"
)


def parse_prompt(prompt: str) -> Scene:
    """Parse a prompt written in the module's grammar into a :class:`Scene` (``ValueError`` if it is not)."""
    text = " ".join(prompt.strip().lower().split())
    m = _PROMPT_RE.match(text)
    if m is None:
        raise ValueError(f"prompt does not follow the grammar: {prompt!r}")
    part = m.group("objects")
    objects: list[ObjectDesc] = []
    pending: list[tuple[str, str]] = []
    pos = 0
    for tok in _TOKEN_RE.finditer(part):
        if not _SEP_RE.match(part[pos : tok.start()]):
            raise ValueError(f"unexpected text {part[pos : tok.start()]!r} in prompt {prompt!r}")
        pos = tok.end()
        if tok.group("colour"):
            pending.append((tok.group("colour"), tok.group("shape")))
            continue
        if not pending:
            raise ValueError(f"verb without an object in prompt {prompt!r}")
        speed, direction = _SPEED_BY_WORD[tok.group("speed")], _DIR_BY_PHRASE[tok.group("dir")]
        objects.extend(ObjectDesc(c, s, direction, speed) for c, s in pending)
        pending = []
    if pending or pos != len(part) or not objects:
        raise ValueError(f"objects without motion or trailing text in prompt {prompt!r}")
    return Scene(tuple(objects), m.group("kind") or "plain", m.group("bg"), m.group("pan"))


# ---------------------------------------------------------------------------------------------- sampling


def _pan_vector(pan: str | None) -> np.ndarray:
    """Normalised content shift over the clip for a camera pan (the picture moves opposite to the camera)."""
    if pan is None:
        return np.zeros(2)
    return -PAN_TRAVEL * np.asarray(DIRECTIONS[pan])


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
    shift = _pan_vector(pan)
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
    pan = _pan_vector(scene.pan) * side
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
