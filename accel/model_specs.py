"""The models the bench knows: a :class:`ModelSpec` per embedded model and real checkpoint, aliases, and
:func:`resolve` (a registered name or alias, a local diffusers folder holding ``model_index.json``, or a hub id).
Torch-free; loading is :mod:`accel.models`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accel.errors import ConfigError, UserError, one_line
from accel.paths import ASSETS


class ModelLoadError(UserError, RuntimeError):
    """The model could not be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """What the bench needs to know about a model besides its weights."""

    name: str
    source: str
    family: str = "wan"
    embedded: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    # the size class each method keys its per-model defaults by (accel.methods.<name>.MODEL_DEFAULTS): tiny, pocket,
    # 1.3b or 14b; a local folder or an unregistered hub id takes 1.3b's
    size: str = "1.3b"
    # prompt embeddings are padded to this many tokens (the pipelines' max_sequence_length; 512 for Wan2.1)
    text_tokens: int = 512
    # scheduler shift to sample with; None = the checkpoint's own scheduler config
    flow_shift: float | None = None
    description: str = ""
    # named sampling sizes beside the defaults, e.g. "bench": a size where attention dominates (see size_preset)
    presets: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_dir()


# The pocket models were trained with prompts padded to 32 tokens (the grammar's prompts are shorter).
POCKET_TEXT_TOKENS = 32
WAN_480P = {"height": 480, "width": 832, "frames": 81, "steps": 50, "guidance": 5.0}
# SkyReels-V2 DF text-to-video. Beyond the RunConfig sizes, the diffusion-forcing arguments of the
# pipeline call: ``causal_block_size`` latent frames per chunk, chunk g starts ``ar_step`` steps after
# chunk g-1 (0 = synchronous), ``base_num_frames`` (pixel frames) is the window of one pass, and
# ``overlap_history`` / ``addnoise_condition`` only act on long videos (frames > base_num_frames).
# The latent frame count (frames - 1) // 4 + 1 must be a multiple of causal_block_size: the pipeline
# never denoises trailing frames past the last whole chunk.
SKYREELS_540P = {
    "height": 544,
    "width": 960,
    "frames": 97,
    "steps": 50,
    "guidance": 6.0,
    "ar_step": 5,
    "causal_block_size": 5,
    "base_num_frames": 97,
    "overlap_history": 17,
    "addnoise_condition": 0,
}
# 121 frames (the documented 720P base) are 31 latent frames, not a multiple of 5: 117 gives 6 whole chunks.
SKYREELS_720P = {**SKYREELS_540P, "height": 720, "width": 1280, "frames": 117, "base_num_frames": 117}
SKYREELS_T2V_SHIFT = 8.0  # the diffusers docs set flow_shift 8.0 for T2V (5.0 for I2V) over the shipped config

# The embedded SkyReels models' sampling: 21 frames = 6 latent frames = 3 chunks of 2 (their transformers'
# num_frame_per_block), each chunk starting 2 steps after the previous one.
EMBEDDED_DF = {
    "frames": 21,
    "steps": 20,
    "guidance": 5.0,
    "ar_step": 2,
    "causal_block_size": 2,
    "base_num_frames": 21,
    "overlap_history": None,
    "addnoise_condition": 0,
}

SIZE_PRESETS = ("default", "bench")
# pocket "bench" sizes: over 2,000 tokens per transformer call, where attention is most of a step and sparse
# attention can pay off on a CPU (256x256x33: 9 latent frames of 16x16 = 2,304; 304x304x21: 6 x 19 x 19 = 2,166)
POCKET_BENCH = {"wan": {"height": 256, "width": 256, "frames": 33}, "skyreels": {"height": 304, "width": 304}}


def size_preset(spec: ModelSpec, name: str) -> dict[str, int]:
    """The sampling sizes of the size preset ``name``: ``default`` is the model's defaults (nothing to fill in),
    others come from the model's ``presets``; an unknown name or one the model lacks is a one-line error."""
    if name not in SIZE_PRESETS:
        raise ConfigError(f"size preset must be one of {', '.join(SIZE_PRESETS)}, got {name!r}")
    if name == "default":
        return {}
    if name not in spec.presets:
        raise ConfigError(f"{spec.name} has no {name!r} size preset (the pocket models have one)")
    return dict(spec.presets[name])


def _embedded(name: str, family: str, defaults: dict[str, Any], description: str, pocket: bool) -> ModelSpec:
    """An embedded model under assets/: the methods' tiny or pocket defaults and (pocket models) the 32-token prompts
    they were trained with and the bench size preset."""
    return ModelSpec(
        name=name,
        source=str(ASSETS / name),
        family=family,
        embedded=True,
        defaults=defaults,
        size="pocket" if pocket else "tiny",
        text_tokens=POCKET_TEXT_TOKENS if pocket else 512,
        description=description,
        presets={"bench": POCKET_BENCH[family]} if pocket else {},
    )


def _checkpoint(name: str, **fields: Any) -> ModelSpec:
    """A real checkpoint on the hub (or in its local cache): its id is both name and source."""
    return ModelSpec(name=name, source=name, **fields)


REGISTRY: dict[str, ModelSpec] = {
    "tiny-wan": _embedded(
        "tiny-wan",
        "wan",
        {"height": 256, "width": 256, "frames": 17, "steps": 20, "guidance": 5.0},
        "embedded random-weight Wan2.1-style model (6 heads x 32, 4 layers); runs anywhere",
        pocket=False,
    ),
    "tiny-skyreels": _embedded(
        "tiny-skyreels",
        "skyreels",
        {**EMBEDDED_DF, "height": 256, "width": 256},  # 1536 tokens
        "embedded random-weight SkyReels-V2 diffusion-forcing model (6 heads x 32, 4 layers, chunks of 2 latent "
        "frames; shares tiny-wan's VAE and text encoder); runs anywhere",
        pocket=False,
    ),
    "pocket-wan": _embedded(
        "pocket-wan",
        "wan",
        # the training size: 17 frames = 5 latent frames of 8x8 patches, 320 tokens
        {"height": 128, "width": 128, "frames": 17, "steps": 20, "guidance": 5.0},
        "embedded pocket Wan2.1-style T2V model trained on procedural clips of moving shapes "
        "(python -m accel.training.wan; 6 heads x 32, 4 layers); the default",
        pocket=True,
    ),
    "pocket-skyreels": _embedded(
        "pocket-skyreels",
        "skyreels",
        {**EMBEDDED_DF, "height": 128, "width": 128},  # 320 tokens per window, as trained
        "embedded pocket SkyReels-V2 diffusion-forcing model fine-tuned from pocket-wan with a noise level per chunk "
        "of 2 latent frames; shares pocket-wan's VAE and text encoder",
        pocket=True,
    ),
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": _checkpoint(
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        defaults=WAN_480P,
        description="Wan2.1 T2V 1.3B (30 layers x 12 heads)",
    ),
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": _checkpoint(
        "Wan-AI/Wan2.1-T2V-14B-Diffusers",
        defaults=WAN_480P,
        size="14b",
        description="Wan2.1 T2V 14B (40 layers x 40 heads)",
    ),
    "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers": _checkpoint(
        "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers",
        family="skyreels",
        defaults=SKYREELS_540P,
        flow_shift=SKYREELS_T2V_SHIFT,
        description="SkyReels-V2 diffusion forcing 1.3B, 540P (Wan2.1-1.3B based: 30 layers x 12 heads)",
    ),
    "Skywork/SkyReels-V2-DF-14B-540P-Diffusers": _checkpoint(
        "Skywork/SkyReels-V2-DF-14B-540P-Diffusers",
        family="skyreels",
        defaults=SKYREELS_540P,
        flow_shift=SKYREELS_T2V_SHIFT,
        size="14b",
        description="SkyReels-V2 diffusion forcing 14B, 540P (40 layers x 40 heads)",
    ),
    "Skywork/SkyReels-V2-DF-14B-720P-Diffusers": _checkpoint(
        "Skywork/SkyReels-V2-DF-14B-720P-Diffusers",
        family="skyreels",
        defaults=SKYREELS_720P,
        flow_shift=SKYREELS_T2V_SHIFT,
        size="14b",
        description="SkyReels-V2 diffusion forcing 14B, 720P (40 layers x 40 heads)",
    ),
}
ALIASES = {
    "wan2.1-1.3b": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "wan2.1-14b": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    "skyreels-v2-df-1.3b": "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers",
    "skyreels-v2-df-14b": "Skywork/SkyReels-V2-DF-14B-540P-Diffusers",
    "skyreels-v2-df-14b-720p": "Skywork/SkyReels-V2-DF-14B-720P-Diffusers",
}
PIPELINE_FAMILIES = {"WanPipeline": "wan", "SkyReelsV2DiffusionForcingPipeline": "skyreels"}
FAMILY_PIPELINES = {family: cls for cls, family in PIPELINE_FAMILIES.items()}
FAMILY_DEFAULTS = {"wan": WAN_480P, "skyreels": SKYREELS_540P}


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~")) and ".." not in name


def resolve(name: str) -> ModelSpec:
    """The spec for a registered name/alias, a local diffusers folder, or a hub id."""
    name = ALIASES.get(name, name)
    if name in REGISTRY:
        return REGISTRY[name]
    path = Path(name).expanduser()
    if path.exists():
        index = path / "model_index.json"
        if not path.is_dir() or not index.is_file():
            raise ModelLoadError(f"{name}: not a diffusers pipeline folder (no model_index.json)")
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise ModelLoadError(f"{name}: unreadable model_index.json ({one_line(exc)})") from None
        cls = data.get("_class_name") if isinstance(data, dict) else None
        if not isinstance(cls, str):
            raise ModelLoadError(f"{name}: model_index.json has no pipeline class name (_class_name string)")
        if cls not in PIPELINE_FAMILIES:
            raise ModelLoadError(f"{name}: pipeline {cls} is not supported; supported: {', '.join(PIPELINE_FAMILIES)}")
        family = PIPELINE_FAMILIES[cls]
        return ModelSpec(
            name=str(path.resolve()),
            source=str(path.resolve()),
            family=family,
            defaults=dict(FAMILY_DEFAULTS[family]),
            description=f"local {cls}",
        )
    if _looks_like_hub_id(name):
        # an unregistered hub id: SkyReels-V2 diffusion-forcing repos by name, anything else as Wan
        family = "skyreels" if "skyreels-v2-df" in name.lower() else "wan"
        return ModelSpec(
            name=name,
            source=name,
            family=family,
            defaults=dict(FAMILY_DEFAULTS[family]),
            flow_shift=SKYREELS_T2V_SHIFT if family == "skyreels" else None,
            description="hub checkpoint",
        )
    known = ", ".join([*REGISTRY, *ALIASES])
    raise ModelLoadError(
        f"unknown model {name!r}: not a registered name ({known}), a local folder, or an org/name hub id"
    )
