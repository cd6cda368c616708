"""One run: ``RunConfig`` -> pipeline -> method installed -> generation -> run folder.

The app, the CLI and the tests all go through :func:`generate`. Stage wall times (text
encoding, denoising, VAE decode) are measured by wrapping the pipeline's own ``encode_prompt`` and
``vae.decode`` for the duration of the call (synchronising CUDA at stage boundaries only).
"""

from __future__ import annotations

import contextlib
import math
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from accel import models
from accel.attention import build_method, installed
from accel.config import (
    BaselineSettings,
    ConfigError,
    DenseSettings,
    FlowCacheSettings,
    HeadwiseSettings,
    MethodSettings,
    MotionCacheSettings,
    RunConfig,
    SVG2Settings,
    XAttentionSettings,
    settings_for,
)
from accel.errors import UserError
from accel.runs import Run, RunStore
from accel.schema import Event
from accel.telemetry import Recorder, RecordPolicy
from profiling.profiler import RunProfiler
from profiling.ranges import named_range

if TYPE_CHECKING:
    from accel.cache.chunked import GroupCache
    from accel.models import ModelSpec

ProgressFn = Callable[[int, int], None]


class RunError(UserError, RuntimeError):
    """The generation failed in a way the user can act on (e.g. out of memory)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _stage_timers(pipe, device: torch.device, times: dict[str, float]) -> Iterator[None]:
    """Accumulate wall time of ``encode_prompt`` and ``vae.decode`` into ``times``."""

    def wrap(obj, attr: str, key: str, range_name: str):
        original = getattr(obj, attr)

        def timed(*args, **kwargs):
            _sync(device)
            t0 = time.perf_counter()
            try:
                with named_range(range_name):
                    return original(*args, **kwargs)
            finally:
                _sync(device)
                times[key] = times.get(key, 0.0) + time.perf_counter() - t0

        setattr(obj, attr, timed)
        return original

    originals = [
        (pipe, "encode_prompt", wrap(pipe, "encode_prompt", "text_encode_s", "text.encode")),
        (pipe.vae, "decode", wrap(pipe.vae, "decode", "vae_decode_s", "vae.decode")),
    ]
    try:
        yield
    finally:
        for obj, attr, _ in originals:
            # the wrappers are instance attributes: deleting them restores the class methods
            obj.__dict__.pop(attr, None)


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Headline numbers from a run's telemetry: densities, attention calls, mask-prediction time."""
    out: dict[str, Any] = {}
    if table.empty:
        return out
    dens = table[table["event"] == Event.DENSITY]
    if not dens.empty:
        out["density_mean"] = float(dens["density"].mean())
        warm = table[table["event"] == Event.DENSE_WARMUP][["step", "branch", "layer"]].drop_duplicates()
        sparse = dens.merge(warm, on=["step", "branch", "layer"], how="left", indicator=True)
        sparse = sparse[sparse["_merge"] == "left_only"]
        out["density_mean_sparse"] = float(sparse["density"].mean()) if not sparse.empty else 1.0
        per_call = dens.groupby(["step", "branch", "layer"]).size()
        out["attn_calls"] = len(per_call)
        out["attn_calls_dense"] = len(warm)
    pred = table[table["event"] == Event.MASK_PREDICT]
    out["mask_predict_s"] = float(pred["seconds"].sum()) if not pred.empty else 0.0
    out["mask_predictions"] = len(pred)
    out["mask_predicted_heads"] = int(pred["value"].sum()) if not pred.empty else 0
    check = table[table["event"] == Event.REUSE_CHECK]
    if not check.empty:
        refresh = table[table["event"] == Event.MASK_REFRESH]["value"]
        out["reuse_check_s"] = float(check["seconds"].sum())
        out["mask_skip_frac"] = float(1.0 - refresh.mean()) if len(refresh) else 0.0
    return out


def _run_wan(pipe, cfg: RunConfig, spec, recorder: Recorder, progress: ProgressFn | None):
    """Wan2.1 text-to-video through diffusers' own pipeline with the attention method installed."""
    method = build_method(cfg.settings, spec, recorder, seed=cfg.seed)
    with installed(pipe.transformer, method, cfg.steps) as info, torch.inference_mode():
        out = pipe(**pipeline_call(cfg, spec, progress))
    return out.frames[0], {"transformer_calls": info.call + 1}


def pipeline_call(cfg: RunConfig, spec, progress: ProgressFn | None = None) -> dict:
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


def _run_baseline(pipe, cfg: RunConfig, spec, recorder: Recorder, progress: ProgressFn | None):
    """A diffusers cache hook on diffusers' own pipeline (Wan or SkyReels), counting the blocks it skipped."""
    from accel.cache.baselines import baseline_installed, calibrate_mag_ratios

    s = cfg.settings
    overrides: dict = {} if s.threshold is None else {"threshold": s.threshold}
    extra: dict = {"baseline": s.cache}
    if s.cache == "magcache":  # MagCache needs per-model ratios: one dense calibration pass first
        t0 = time.perf_counter()
        with torch.inference_mode():
            ratios = calibrate_mag_ratios(pipe, **{**pipeline_call(cfg, spec), "output_type": "latent"})
        overrides.update(mag_ratios=ratios, num_inference_steps=len(ratios))
        extra["magcache_calibration_s"] = time.perf_counter() - t0
    with baseline_installed(pipe, s.cache, recorder, **overrides) as counter, torch.inference_mode():
        out = pipe(**pipeline_call(cfg, spec, progress))
    return out.frames[0], {**extra, **counter.summary()}


def chunk_cache(s: MethodSettings, spec: ModelSpec) -> GroupCache:
    """The group cache a chunked run uses: FlowCache / MotionCache with the model's defaults filled in, else none."""
    from accel.cache.chunked import GroupCache
    from accel.cache.flowcache import FlowCache
    from accel.cache.motioncache import MotionCache

    fc = spec.flowcache
    if isinstance(s, FlowCacheSettings):
        thresh = s.thresh if s.thresh is not None else fc[s.preset]
        return FlowCache(thresh, s.ret_steps, s.coefficients or fc["coefficients"], s.use_ret_steps)
    if isinstance(s, MotionCacheSettings):
        thresh = s.thresh if s.thresh is not None else fc["motion"]
        phase1 = s.phase1_updates if s.phase1_updates is not None else fc["phase1_updates"]
        return MotionCache(thresh, s.warmup, phase1, s.floor, s.min_update_ratio, s.vote,
                           s.coefficients or fc["coefficients"])  # fmt: skip
    if isinstance(s, (DenseSettings, HeadwiseSettings)):
        return GroupCache()
    raise ConfigError(f"method {s.method!r} does not run on diffusion-forcing models")


def _run_chunked(pipe, cfg: RunConfig, spec, recorder: Recorder, progress: ProgressFn | None):
    """SkyReels-V2 diffusion forcing through the chunked runner, with a chunk cache if the method is one."""
    from accel.cache.chunked import ChunkedRunner
    from accel.cache.kv import KVCompression

    s = cfg.settings
    cache = chunk_cache(s, spec)
    attention = None
    if isinstance(s, HeadwiseSettings):
        attention = build_method(s, spec, recorder, seed=cfg.seed)
    elif getattr(s, "attention", "dense") != "dense":
        sparse = settings_for(s.attention, {"tmr": s.attention_tmr})
        attention = build_method(sparse, spec, recorder, seed=cfg.seed)
    kv = None
    if getattr(s, "kv_compress", False):
        kv = KVCompression(s.kv_budget_chunks, s.kv_lambda, s.kv_granularity)
    runner = ChunkedRunner(pipe, cache=cache, recorder=recorder, kv=kv, attention=attention)
    with torch.inference_mode():
        video = runner.generate(
            cfg.prompt, cfg.negative_prompt, cfg.height, cfg.width, cfg.frames, cfg.steps, cfg.guidance, cfg.seed,
            cfg.ar_step, cfg.causal_block_size, progress=progress, base_num_frames=cfg.base_num_frames,
            overlap_history=cfg.overlap_history, addnoise_condition=cfg.addnoise_condition or 0,
            text_tokens=spec.text_tokens,
        )  # fmt: skip
    stats = runner.stats
    layers = len(pipe.transformer.blocks)
    uncached = stats["group_steps"] * (2 if cfg.guidance > 1.0 else 1)
    # token-weighted: a partial recompute of a quarter of a chunk's tokens counts a quarter
    executed = (stats.get("tokens_recomputed", 0) / runner.chunk_tokens + stats["commit_passes"]) * layers
    possible = (uncached + stats["commit_passes"]) * layers
    extra = {
        "group_steps": stats["group_steps"],
        "chunk_computes": stats.get("chunk_compute", 0),
        "chunk_reuses": stats.get("chunk_reuse", 0),
        "chunk_partials": stats.get("chunk_partial", 0),
        "chunk_defers": stats.get("chunk_defer", 0),
        "commit_passes": stats["commit_passes"],
        "block_executions": round(executed, 2),
        "block_executions_uncached": possible,
        "tokens_recomputed": stats.get("tokens_recomputed", 0),
        "schedule_rows": runner.schedule.rows,
        "kv_compressions": stats.get("kv_compressions", 0),
        "linear_flops_saved_frac": 1.0 - executed / possible,  # per-token work; attention grows faster
        "kv_bytes_final": runner.buffer.nbytes(),
    }
    return video[0], extra


def first_sparse_step(cfg: RunConfig) -> int:
    """First denoising step a sparse method computes sparsely (0 for methods without dense warm-up)."""
    s = cfg.settings
    if isinstance(s, XAttentionSettings):
        return s.warmup_steps
    if isinstance(s, SVG2Settings):
        return math.ceil(s.first_times_fp * cfg.steps - 1e-9)
    return 0


def profile_wait(cfg: RunConfig) -> int:
    """Transformer calls the profiler skips so that it records a steady sparse step: the method's dense
    warm-up and its first sparse step (mask prediction from scratch) are skipped, and the profiler's one
    warm-up call is the last call before the recorded step. Short runs record their last calls instead."""
    calls = 2 if (cfg.guidance or 0) > 1.0 else 1  # diffusers runs cond and uncond as separate calls
    total = cfg.steps * calls
    wait = (first_sparse_step(cfg) + 1) * calls - 1
    return max(0, min(wait, total - 3))


def generate(
    cfg: RunConfig,
    store: RunStore | None = None,
    policy: RecordPolicy | None = None,
    progress: ProgressFn | None = None,
    profile: bool = False,
    record: bool = True,
) -> Run:
    """Run one generation and write its folder; returns the stored :class:`Run`.

    With ``profile`` a :class:`profiling.profiler.RunProfiler` records a few transformer calls and the
    folder also gets ``trace.json.gz``, ``tb/`` and the ``profile_*`` tables.
    """
    spec = models.resolve(cfg.model)
    cfg = cfg.resolve(spec.defaults)
    if spec.family != "skyreels" and isinstance(cfg.settings, (FlowCacheSettings, MotionCacheSettings)):
        raise ConfigError(f"{cfg.method} is for diffusion-forcing (SkyReels-V2) models, not {spec.name}")
    store = store or RunStore()
    device_name = cfg.device or models.default_device()
    t_start = time.perf_counter()
    pipe = models.load_pipeline(cfg.model, device_name, cfg.dtype)
    load_s = time.perf_counter() - t_start
    device = pipe.transformer.device
    recorder = Recorder(policy, enabled=record)  # record=False: for measuring what recording costs
    times: dict[str, float] = {}
    if isinstance(cfg.settings, BaselineSettings):
        run = _run_baseline
    else:
        run = _run_chunked if spec.family == "skyreels" else _run_wan
    _sync(device)
    t0 = time.perf_counter()
    profiler = None
    work = tempfile.TemporaryDirectory(prefix="accel-profile-") if profile else None
    try:
        with contextlib.ExitStack() as stack:
            if profile:
                wait = profile_wait(cfg)
                profiler = stack.enter_context(RunProfiler(work.name, wait=wait, run_name=cfg.label()))
                profiler.attach(pipe.transformer)
            with _stage_timers(pipe, device, times):
                video, extra = run(pipe, cfg, spec, recorder, progress)
            _sync(device)
    except torch.OutOfMemoryError as exc:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise RunError(
            f"out of memory on {device} at {cfg.width}x{cfg.height}x{cfg.frames}: lower the size or frames "
            f"({str(exc).splitlines()[0]})"
        ) from None
    generate_s = time.perf_counter() - t0
    frames = (np.clip(video, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    t_rec = time.perf_counter()
    table, arrays = recorder.finish()
    record_s = time.perf_counter() - t_rec

    stages = {
        "load_s": load_s,
        "text_encode_s": times.get("text_encode_s", 0.0),
        "vae_decode_s": times.get("vae_decode_s", 0.0),
    }
    stages["denoise_s"] = generate_s - stages["text_encode_s"] - stages["vae_decode_s"]
    grid = (
        (cfg.frames - 1) // pipe.vae_scale_factor_temporal + 1,
        cfg.height // pipe.vae_scale_factor_spatial // spec_patch(pipe, 1),
        cfg.width // pipe.vae_scale_factor_spatial // spec_patch(pipe, 2),
    )
    metrics = {
        "wall_s": generate_s,
        "stages": stages,
        "record_s": record_s,
        "record_loop_s": recorder.loop_s,
        "tokens": int(np.prod(grid)),
        "grid": list(grid),
        "layers": len(pipe.transformer.blocks),
        "heads": int(pipe.transformer.config.num_attention_heads),
        "device": str(device),
        "dtype": str(pipe.transformer.dtype).replace("torch.", ""),
        "versions": _versions(),
        **extra,
        **summarize(table),
    }
    t_save = time.perf_counter()
    with store.writer(cfg.label()) as w:
        w.write_json("config.json", {**cfg.to_dict(), "model_source": spec.source, "label": cfg.label()})
        w.write_video(frames, fps=cfg.fps)
        w.write_table("telemetry.parquet", table)
        if arrays:
            w.write_arrays("arrays.npz", arrays)
        if profiler is not None:
            metrics["profile"] = profiler.save(w.path, generate_s)
            work.cleanup()
        metrics["save_s"] = time.perf_counter() - t_save
        w.write_json("metrics.json", metrics)
    return store.load(w.final_path)


def spec_patch(pipe, axis: int) -> int:
    return int(pipe.transformer.config.patch_size[axis])


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
