"""The prompt grammar of the procedural clips (:mod:`accel.synthetic.procedural`): its vocabulary, the
:class:`Scene` a prompt states, the parser and the held-out split.

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
* Held-out split: a (colour, shape, direction) combination is held out when
  ``(3 * colour_index + 5 * shape_index + direction_index) % 7 == 2`` with the indices into
  :data:`COLOURS`, :data:`SHAPES` and :data:`DIRECTIONS` (see :func:`is_held_out`). Training clips
  never contain a held-out combination; every held-out clip (``held_out_prompts``,
  ``dataset(..., split="held_out")`` of :mod:`accel.synthetic.procedural`) has at least one, so the two sets of
  prompts are disjoint.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BACKGROUNDS",
    "BASIC_DIRECTIONS",
    "BASIC_SHAPES",
    "COLOURS",
    "DIRECTIONS",
    "DIRECTION_PHRASES",
    "PALETTE",
    "PAN_DIRECTIONS",
    "SHAPES",
    "SPEEDS",
    "SPEED_WORDS",
    "ObjectDesc",
    "Scene",
    "held_out_combos",
    "is_held_out",
    "parse_prompt",
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
HELD_OUT_MODULUS = 7
HELD_OUT_RESIDUE = 2


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
