"""Model loading: each pipeline loaded once per (model, device, dtype); the specs are :mod:`accel.model_specs`
(re-exported here for callers).

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

import os
import socket
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import torch

from accel.errors import ENV_HINT, DependencyError, failed_import, one_line, root_cause
from accel.model_specs import (  # the specs, re-exported for callers of accel.models
    ALIASES,
    FAMILY_PIPELINES,
    REGISTRY,
    SIZE_PRESETS,
    ModelLoadError,
    ModelSpec,
    resolve,
    size_preset,
)

if TYPE_CHECKING:
    from accel.config import RunConfig

__all__ = ["ALIASES", "REGISTRY", "SIZE_PRESETS", "ModelLoadError", "ModelSpec", "clear_cache", "load_pipeline",
           "pipeline_call", "resolve", "run_pipeline", "size_preset"]  # fmt: skip


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
    except ValueError:  # not a valid repo id, so nothing of it is cached
        return None
    except OSError as exc:  # said, not taken for "not cached": that would send the user to download it again
        why = exc.strerror or one_line(exc)
        raise ModelLoadError(f"the hub cache {cache_dir} cannot be read for {repo_id}: {why}") from None
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
