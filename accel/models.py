"""Model registry: the embedded default and real checkpoints, each loaded once per (model, device, dtype).

Models are diffusers pipelines in folder format loaded with ``from_pretrained`` and
``use_safetensors=True`` (never pickle, never remote code). Two families: ``wan`` (``WanPipeline``)
and ``skyreels`` (``SkyReelsV2DiffusionForcingPipeline``, diffusion forcing over chunks of latent
frames). A name resolves to a :class:`ModelSpec`: a registered name or alias (``tiny-wan``,
``tiny-skyreels``, ``wan2.1-1.3b``, ``skyreels-v2-df-1.3b`` ...), a hub id, or a local folder holding
``model_index.json`` (its pipeline class gives the family). Hub ids are first looked up in the local cache
(``HF_HUB_CACHE`` / ``HF_HOME``); one that is not cached fails at once, before any ``from_pretrained``, when the
hub is switched off (``HF_HUB_OFFLINE``) or unreachable (a quick TCP connect to the hub's host). Otherwise a
download is tried only when the hub is not switched off, and any failure becomes a :class:`ModelLoadError`
that says how to provide the model.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import torch

from accel.config import ConfigError
from accel.errors import ENV_HINT, DependencyError, UserError, failed_import, one_line, root_cause
from accel.paths import ASSETS

if TYPE_CHECKING:
    from accel.config import RunConfig


class ModelLoadError(UserError, RuntimeError):
    """The model could not be found or loaded; the message says what to do."""


# FlowCache rescale polynomial, thresholds (slow, fast, MotionCache) and MotionCache phase-1 length per model size
# (None: the VBench setup's 6 updating steps of 50, scaled to the run like the warm-ups)
FLOWCACHE_13B = {"coefficients": "1.3b", "slow": 0.1, "fast": 0.15, "motion": 0.1, "phase1_updates": None}
FLOWCACHE_14B = {**FLOWCACHE_13B, "coefficients": "14b"}


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
    # prompt embeddings are padded to this many tokens (the pipelines' max_sequence_length; 512 for Wan2.1)
    text_tokens: int = 512
    # scheduler shift to sample with; None = the checkpoint's own scheduler config
    flow_shift: float | None = None
    # FlowCache rescale polynomial and threshold presets (fitted on SkyReels-V2 1.3B / 14B)
    flowcache: dict[str, Any] = field(default_factory=lambda: dict(FLOWCACHE_13B))
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
# No fitted polynomial for the embedded models: the raw relative L1 of e0 (a degree-4 fit of the residual's
# change on 2,872 step pairs, R^2 0.82, gave the same work-PSNR front). Thresholds measured in the seeds'
# setting (bench.chunked --preset seeds: 50 steps, 3 windows; docs/measurements/bench_chunked_seeds.txt): on
# the bench prompt slow 0.1 did 0.32 of the uncached block work at 29 dB, fast 0.16 0.26 at 27 dB on the
# pocket-skyreels they were chosen on (0.30 / 0.24 at 21 / 18 dB on the one fine-tuned since). At the default
# 20 steps they do about 0.50 / 0.40: a short schedule leaves less to skip.
EMBEDDED_FLOWCACHE = {"coefficients": "none", "slow": 0.1, "fast": 0.16, "motion": 0.1, "phase1_updates": None}
# Measured step-to-step drift of a head on tiny-wan is ~1.4 (0.9-2.1): refresh the masks after about two steps.
EMBEDDED_TMR_DELTA = {"xattention": 3.0, "svg2": 3.0}


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


# FBC's default threshold on the embedded models: 0.05 (ParaAttention's video setting) never skipped there. Measured
# on the app's default prompt at the models' defaults (docs/measurements/fbc_embedded.txt): 0.1 skips 15% of
# blocks on pocket-wan at 39 dB and 23% on pocket-skyreels at 36 dB against dense.
EMBEDDED_FBC_THRESHOLD = 0.1


def defaults_text(spec: ModelSpec) -> str:
    """Markdown of what "empty = the model's default" means for ``spec``: sampling, sparse-attention and cache
    settings that depend on the model (the form shows it beside the model picker)."""
    d = spec.defaults
    size = f"{d.get('width')}x{d.get('height')} px, {d.get('frames')} frames, {d.get('steps')} steps, " \
        f"guidance {d.get('guidance')}"  # fmt: skip
    lines = [f"**{spec.name}** defaults: {size}"]
    delta = ", ".join(f"{m} {v:g}" for m, v in spec.tmr_delta.items())
    qc, kc = spec.svg2_clusters
    lines.append(f"XAttention block {spec.block_size} · SVG2 clusters {qc}/{kc} · TMR delta {delta}")
    if spec.family == "skyreels":
        fc = spec.flowcache
        poly = fc["coefficients"] or "none (raw relative L1)"
        lines.append(f"FlowCache thresholds slow {fc['slow']:g} / fast {fc['fast']:g}, polynomial {poly} · "
                     f"MotionCache threshold {fc['motion']:g}")  # fmt: skip
    fbc = EMBEDDED_FBC_THRESHOLD if spec.embedded else 0.05
    lines.append(f"FirstBlockCache threshold {fbc:g}")
    return "  \n".join(lines)


def _embedded(name: str, family: str, defaults: dict[str, Any], description: str, pocket: bool) -> ModelSpec:
    """An embedded model under assets/: small blocks and clusters, the embedded TMR deltas, FlowCache thresholds
    and (pocket models) the 32-token prompts they were trained with and the bench size preset."""
    return ModelSpec(
        name=name,
        source=str(ASSETS / name),
        family=family,
        embedded=True,
        defaults=defaults,
        block_size=16 if pocket else 64,
        svg2_clusters=(10, 20) if pocket else (20, 40),
        tmr_delta=EMBEDDED_TMR_DELTA,
        text_tokens=POCKET_TEXT_TOKENS if pocket else 512,
        flowcache=dict(EMBEDDED_FLOWCACHE if family == "skyreels" else FLOWCACHE_13B),
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
        flowcache=FLOWCACHE_14B,
        description="SkyReels-V2 diffusion forcing 14B, 540P (40 layers x 40 heads)",
    ),
    "Skywork/SkyReels-V2-DF-14B-720P-Diffusers": _checkpoint(
        "Skywork/SkyReels-V2-DF-14B-720P-Diffusers",
        family="skyreels",
        defaults=SKYREELS_720P,
        flow_shift=SKYREELS_T2V_SHIFT,
        flowcache=FLOWCACHE_14B,
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


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(name: str) -> str:
    """``name`` if torch can run on that device here, else one :class:`ModelLoadError` saying why (unknown
    device string, a CUDA device on a torch without CUDA or without that GPU index)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ModelLoadError(f"device {name!r} requested but {why}; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ModelLoadError(f"device {name!r} requested but only {count} CUDA GPU(s) are visible (cuda:0 ..)")
    elif device.type not in ("cpu", "mps"):
        raise ModelLoadError(f"device {name!r} is not supported: use cpu, cuda or cuda:N")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {name!r} requested but MPS is not available; use --device cpu")
    return name


def default_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def parse_dtype(name: str | None, device: str) -> torch.dtype:
    if name is None:
        return default_dtype(device)
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


_CACHE: dict[tuple, Any] = {}  # (source, device, dtype[, parallel]) -> pipeline
_LOCK = threading.Lock()


# seconds to wait for a TCP connection to the hub before calling it unreachable
HUB_CONNECT_TIMEOUT_S = 3.0


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_cache_dir() -> Path:
    """The hub cache as huggingface_hub resolves it, read now: ``HF_HUB_CACHE``, else ``HF_HOME``/hub."""
    from huggingface_hub import constants

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE).expanduser()


def _cached_snapshot(repo_id: str, cache_dir: Path) -> Path | None:
    """The repo's snapshot folder in the local hub cache if its ``model_index.json`` is there (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        index = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=cache_dir)
    except (OSError, ValueError):  # an invalid repo id or an unreadable cache: not usable offline
        return None
    return Path(index).parent if isinstance(index, str) else None


def _hub_unreachable() -> str | None:
    """Why the hub endpoint (or the proxy to it) takes no TCP connection, or None when it does."""
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):  # requests go through the proxy: test that instead
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = via.hostname or host, via.port or (443 if via.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:  # DNS failure, refused, timed out, no route ...
        return f"{host}:{port}: {exc.strerror or str(exc) or type(exc).__name__}"


def local_folder(spec: ModelSpec) -> Path | None:
    """The checkpoint's folder on disk: the local one, or its snapshot in the hub cache (None if not there)."""
    return Path(spec.source) if spec.is_local else _cached_snapshot(spec.source, _hub_cache_dir())


def check_available(spec: ModelSpec) -> None:
    """Raise :class:`ModelLoadError` at once (no ``from_pretrained``, no torch work) for a hub checkpoint that
    is not in the local cache while the hub is offline or unreachable; local folders and embedded models pass.

    :func:`load_pipeline` runs it before loading; a caller can run it earlier to fail before heavy imports."""
    if not (spec.is_local or spec.embedded):
        _require_hub_or_cache(spec, _hub_cache_dir())


def _require_hub_or_cache(spec: ModelSpec, cache_dir: Path) -> None:
    """Fail at once, in one line, for a hub id that is not cached while the hub is off or unreachable."""
    if _cached_snapshot(spec.source, cache_dir) is not None:
        return
    if _hub_offline():
        why = "the hub is offline (HF_HUB_OFFLINE is set)"
    else:
        reason = _hub_unreachable()
        if reason is None:
            return
        why = f"the hub is unreachable ({reason})"
    raise ModelLoadError(
        f"model {spec.source!r} is not in the local Hugging Face cache ({cache_dir}) and {why}, so it cannot be "
        f"downloaded: run `hf download {spec.source}` on a machine with network and copy its cache to "
        f"{cache_dir} (or point HF_HUB_CACHE at it), or pass a local diffusers folder with --model PATH."
    )


def _pipeline_class(family: str) -> type:
    import diffusers

    if family not in FAMILY_PIPELINES:
        raise ModelLoadError(f"unknown model family {family!r}; known: {', '.join(FAMILY_PIPELINES)}")
    return getattr(diffusers, FAMILY_PIPELINES[family])


def _load(spec: ModelSpec, dtype: torch.dtype, **kw: Any):
    from diffusers import AutoencoderKLWan

    pipe_cls = _pipeline_class(spec.family)
    # Wan's VAE (shared by SkyReels-V2) is numerically sensitive: keep it in fp32 as the model cards recommend.
    vae = AutoencoderKLWan.from_pretrained(spec.source, subfolder="vae", dtype=torch.float32, **kw)
    pipe = pipe_cls.from_pretrained(spec.source, vae=vae, dtype=dtype, **kw)
    if spec.flow_shift is not None and pipe.scheduler.config.get("flow_shift") != spec.flow_shift:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, flow_shift=spec.flow_shift)
    return pipe


def _from_pretrained(spec: ModelSpec, dtype: torch.dtype):
    common: dict[str, Any] = {"use_safetensors": True}
    if spec.is_local:
        return _load(spec, dtype, **common, local_files_only=True)
    cache_dir = _hub_cache_dir()
    _require_hub_or_cache(spec, cache_dir)
    common["cache_dir"] = cache_dir
    attempts = [True] if _hub_offline() else [True, False]
    last: Exception | None = None
    for local_only in attempts:
        try:
            return _load(spec, dtype, **common, local_files_only=local_only)
        except (OSError, ValueError) as exc:  # missing files, no network, gated repo ...
            last = exc
    reason = str(last).strip().splitlines()[0] if last else "unknown error"
    raise ModelLoadError(
        f"model {spec.source!r} is not available locally{' and the hub is offline' if _hub_offline() else ''} "
        f"({reason}). Download it first (`hf download {spec.source}`) or pass a local diffusers folder "
        f"with --model PATH."
    )


def load_pipeline(
    name: str, device: str | None = None, dtype: str | torch.dtype | None = None, parallel: str | None = None
):
    """The diffusers pipeline for ``name`` on ``device``/``dtype``, loaded once and reused; with ``parallel``
    ("ulysses=N", inside an initialised process group) its transformer runs diffusers' context parallelism
    (a model keeps it for its lifetime, so it is cached apart)."""
    spec = resolve(name)
    device = check_device(device or default_device())
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else parse_dtype(dtype, device)
    key = (spec.source, device, torch_dtype) + ((parallel,) if parallel else ())
    with _LOCK:
        if key not in _CACHE:
            if spec.embedded and not Path(spec.source, "model_index.json").is_file():
                raise ModelLoadError(
                    f"embedded model {spec.name!r} is missing from {spec.source}; "
                    "rebuild it with `python -m accel.training.embedded`"
                )
            try:
                pipe = _from_pretrained(spec, torch_dtype)
            except ModelLoadError:
                raise
            except Exception as exc:
                where = f"could not load model {spec.name!r} from {spec.source}"
                if isinstance(exc, (OSError, ValueError)) and not failed_import(exc):  # missing or unreadable files
                    why, cause = one_line(exc), root_cause(exc)  # diffusers wraps the reader's error: name both
                    why += f" (cause: {cause})" if cause.partition(": ")[2] not in why else ""
                    raise ModelLoadError(f"{where}: {why}") from exc
                # an import or an exception inside diffusers/transformers/torch: the environment, not the input
                raise DependencyError(f"{where}: {root_cause(exc)} ({ENV_HINT})") from exc
            pipe.set_progress_bar_config(disable=True)
            pipe = pipe.to(device)
            if parallel:
                from accel.parallel import enable

                enable(pipe.transformer, parallel)
            _CACHE[key] = pipe
        return _CACHE[key]


def is_loaded(name: str, device: str, dtype: torch.dtype) -> bool:
    """True if :func:`load_pipeline` already holds this model on ``device`` in ``dtype`` (no loading)."""
    return (resolve(name).source, device, dtype) in _CACHE


def clear_cache() -> None:
    """Drop every loaded pipeline (frees memory)."""
    with _LOCK:
        _CACHE.clear()


def run_pipeline(pipe, cfg: RunConfig, spec: ModelSpec, progress: Callable[[int, int], None] | None = None):
    """One generation through diffusers' own pipeline for this run: the frames ``(F, H, W, 3)`` in [0, 1]."""
    with torch.inference_mode():
        return pipe(**pipeline_call(cfg, spec, progress)).frames[0]


def pipeline_call(cfg: RunConfig, spec: ModelSpec, progress: Callable[[int, int], None] | None = None) -> dict:
    """Keyword arguments of one call of diffusers' own pipeline for this run."""

    def on_step_end(pipeline, i, t, kwargs):
        if progress is not None:
            progress(i + 1, cfg.steps)
        return {}

    call = {
        "prompt": cfg.prompt,
        "negative_prompt": cfg.negative_prompt,
        "height": cfg.height,
        "width": cfg.width,
        "num_frames": cfg.frames,
        "num_inference_steps": cfg.steps,
        "guidance_scale": cfg.guidance,
        "generator": torch.Generator(device="cpu").manual_seed(cfg.seed),
        "output_type": "np",
        "callback_on_step_end": on_step_end,
        "max_sequence_length": spec.text_tokens,
    }
    if spec.family == "skyreels":
        call.update(ar_step=cfg.ar_step, causal_block_size=cfg.causal_block_size, base_num_frames=cfg.base_num_frames,
                    overlap_history=cfg.overlap_history, addnoise_condition=cfg.addnoise_condition or 0)  # fmt: skip
    return call
