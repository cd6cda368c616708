"""Model registry: the embedded default and real checkpoints, each loaded once per (model, device, dtype).

Models are diffusers pipelines in folder format loaded with ``from_pretrained`` and
``use_safetensors=True`` (never pickle, never remote code). A name resolves to a
:class:`ModelSpec`: a registered name or alias (``tiny-wan``, ``wan2.1-1.3b`` ...), a hub id, or
a local folder holding ``model_index.json``. Hub ids are first looked up in the local cache; a
download is tried only when the hub is not switched off (``HF_HUB_OFFLINE``), and any failure
becomes a :class:`ModelLoadError` that says how to provide the model.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ASSETS = Path(__file__).resolve().parent.parent / "assets"


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """What the bench needs to know about a model besides its weights."""

    name: str
    source: str
    family: str = "wan"
    embedded: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    block_size: int = 128
    svg2_clusters: tuple[int, int] = (300, 1000)
    # TMR refresh thresholds on raw pooled-Q/K drift (model-scale dependent); Wan2.1 values are secondhand.
    tmr_delta: dict[str, float] = field(default_factory=lambda: {"xattention": 30.0, "svg2": 8.0})
    description: str = ""

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_dir()


WAN_480P = {"height": 480, "width": 832, "frames": 81, "steps": 50, "guidance": 5.0}

REGISTRY: dict[str, ModelSpec] = {
    "tiny-wan": ModelSpec(
        name="tiny-wan",
        source=str(ASSETS / "tiny-wan"),
        embedded=True,
        defaults={"height": 256, "width": 256, "frames": 17, "steps": 20, "guidance": 5.0},
        block_size=64,
        svg2_clusters=(20, 40),
        # measured step-to-step drift of a head here is ~1.4 (0.9-2.1): refresh after about two steps
        tmr_delta={"xattention": 3.0, "svg2": 3.0},
        description="embedded random-weight Wan2.1-style model (6 heads x 32, 4 layers); runs anywhere",
    ),
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": ModelSpec(
        name="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        source="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        defaults=WAN_480P,
        description="Wan2.1 T2V 1.3B (30 layers x 12 heads)",
    ),
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": ModelSpec(
        name="Wan-AI/Wan2.1-T2V-14B-Diffusers",
        source="Wan-AI/Wan2.1-T2V-14B-Diffusers",
        defaults=WAN_480P,
        description="Wan2.1 T2V 14B (40 layers x 40 heads)",
    ),
}
ALIASES = {
    "wan2.1-1.3b": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "wan2.1-14b": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
}
PIPELINE_FAMILIES = {"WanPipeline": "wan"}


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
            cls = json.loads(index.read_text())["_class_name"]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{name}: unreadable model_index.json ({exc})") from None
        if cls not in PIPELINE_FAMILIES:
            raise ModelLoadError(f"{name}: pipeline {cls} is not supported; supported: {', '.join(PIPELINE_FAMILIES)}")
        return ModelSpec(
            name=str(path.resolve()),
            source=str(path.resolve()),
            family=PIPELINE_FAMILIES[cls],
            defaults=dict(WAN_480P),
            description=f"local {cls}",
        )
    if _looks_like_hub_id(name):
        return ModelSpec(name=name, source=name, defaults=dict(WAN_480P), description="hub checkpoint")
    known = ", ".join([*REGISTRY, *ALIASES])
    raise ModelLoadError(
        f"unknown model {name!r}: not a registered name ({known}), a local folder, or an org/name hub id"
    )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def parse_dtype(name: str | None, device: str) -> torch.dtype:
    if name is None:
        return default_dtype(device)
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


_CACHE: dict[tuple[str, str, torch.dtype], Any] = {}
_LOCK = threading.Lock()


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _from_pretrained(spec: ModelSpec, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan, WanPipeline

    common = {"use_safetensors": True}
    if spec.is_local:
        common["local_files_only"] = True
        # Wan's VAE is numerically sensitive: keep it in fp32 as the Wan model cards recommend.
        vae = AutoencoderKLWan.from_pretrained(spec.source, subfolder="vae", torch_dtype=torch.float32, **common)
        return WanPipeline.from_pretrained(spec.source, vae=vae, torch_dtype=dtype, **common)
    attempts = [True] if _hub_offline() else [True, False]
    last: Exception | None = None
    for local_only in attempts:
        try:
            kw = {**common, "local_files_only": local_only}
            vae = AutoencoderKLWan.from_pretrained(spec.source, subfolder="vae", torch_dtype=torch.float32, **kw)
            return WanPipeline.from_pretrained(spec.source, vae=vae, torch_dtype=dtype, **kw)
        except (OSError, ValueError) as exc:  # missing files, no network, gated repo ...
            last = exc
    reason = str(last).strip().splitlines()[0] if last else "unknown error"
    raise ModelLoadError(
        f"model {spec.source!r} is not available locally{' and the hub is offline' if _hub_offline() else ''} "
        f"({reason}). Download it first (`hf download {spec.source}`) or pass a local diffusers folder "
        f"with --model PATH."
    )


def load_pipeline(name: str, device: str | None = None, dtype: str | torch.dtype | None = None):
    """The diffusers pipeline for ``name`` on ``device``/``dtype``, loaded once and reused."""
    spec = resolve(name)
    device = device or default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' requested but CUDA is not available; use --device cpu")
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else parse_dtype(dtype, device)
    key = (spec.source, device, torch_dtype)
    with _LOCK:
        if key not in _CACHE:
            if spec.embedded and not Path(spec.source, "model_index.json").is_file():
                raise ModelLoadError(
                    f"embedded model {spec.name!r} is missing from {spec.source}; "
                    "rebuild it with `python -m accel.embedded`"
                )
            try:
                with warnings.catch_warnings():
                    # newer diffusers rename torch_dtype to dtype; the old name works across versions
                    warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                    pipe = _from_pretrained(spec, torch_dtype)
            except ModelLoadError:
                raise
            except (OSError, ValueError, RuntimeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelLoadError(f"could not load model {spec.name!r} from {spec.source}: {first}") from exc
            pipe.set_progress_bar_config(disable=True)
            _CACHE[key] = pipe.to(device)
        return _CACHE[key]


def clear_cache() -> None:
    """Drop every loaded pipeline (frees memory)."""
    with _LOCK:
        _CACHE.clear()
