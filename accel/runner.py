"""One run: ``RunConfig`` -> pipeline -> method installed -> generation -> run folder.

The app, the CLI and the tests all go through :func:`generate`. Stage wall times (text
encoding, denoising, VAE decode) are measured by wrapping the pipeline's own ``encode_prompt`` and
``vae.decode`` for the duration of the call (synchronising CUDA at stage boundaries only).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from accel import budget, methods, models, parallel, tempdirs
from accel.config import RunConfig
from accel.errors import ConfigError, UserError, one_line
from accel.kernels import dispatch, flex
from accel.load import LoadMeter
from accel.runs import Run, RunStore
from accel.schema import Event
from accel.target import ProgressFn, Target
from accel.telemetry import Recorder, RecordPolicy
from profiling.profiler import RunProfiler
from profiling.ranges import named_range

LOG = logging.getLogger("accel.runner")


class RunError(UserError, RuntimeError):
    """The generation failed in a way the user can act on (e.g. out of memory)."""


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA; a no-op elsewhere), so a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _stage_timers(pipe, device: torch.device, times: dict[str, float]) -> Iterator[None]:
    """Accumulate wall time of ``encode_prompt`` and ``vae.decode`` into ``times``."""

    def wrap(obj, attr: str, key: str, range_name: str):
        original = getattr(obj, attr)

        def timed(*args, **kwargs):
            sync(device)
            t0 = time.perf_counter()
            try:
                with named_range(range_name):
                    return original(*args, **kwargs)
            finally:
                sync(device)
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
    dense_heads = table[table["event"] == Event.DENSE_HEAD]
    if not dense_heads.empty:  # density-aware execution: the share of sparse-step heads run on dense SDPA
        out["dense_head_frac"] = float(dense_heads["value"].mean())
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


def profile_wait(cfg: RunConfig) -> int:
    """Transformer calls the profiler skips so that it records a steady sparse step: the method's dense
    warm-up and its first sparse step (mask prediction from scratch) are skipped, and the profiler's one
    warm-up call is the last call before the recorded step. Short runs record their last calls instead."""
    calls = 2 if (cfg.guidance or 0) > 1.0 else 1  # diffusers runs cond and uncond as separate calls
    total = cfg.steps * calls
    wait = (cfg.settings.dense_steps(cfg.steps) + 1) * calls - 1
    return max(0, min(wait, total - 3))


def _is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError ("can't allocate memory")."""
    text = str(exc).lower()
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)
    )


def _prompt_tokens(pipe, prompt: str) -> int:
    """Tokens of ``prompt`` in the pipeline's text tokenizer (special tokens included)."""
    return len(pipe.tokenizer(prompt, add_special_tokens=True).input_ids)


def _kernel_backend(requested: str | None, device_name: str) -> str:
    """The kernel backend block-sparse attention resolves to on ``device_name``; a forced backend that cannot run
    there (no Triton, no compiler for FlexAttention) is one clear error before anything loads."""
    try:
        return dispatch.resolve(torch.device(device_name), requested)
    except ValueError as exc:  # an unknown backend name ($ACCEL_KERNELS=foo)
        raise ConfigError(one_line(exc)) from None
    except RuntimeError as exc:
        raise ConfigError(f"kernels={requested or dispatch.requested_backend()}: {one_line(exc)}") from None


def _table_warnings(cfg: RunConfig) -> list[str]:
    """Warnings about the run's per-head threshold table, if it has one (a bad table is a ConfigError here)."""
    from accel.attention.thresholds import table_warnings

    table = getattr(cfg.settings.attention_settings(), "threshold_table", None)
    return table_warnings(table, cfg.guidance) if table else []


def _check_forcing(cfg: RunConfig, spec: models.ModelSpec) -> None:
    """Refuse diffusion-forcing settings for a model that is not diffusion forcing (they would be ignored but
    stored as if they had applied)."""
    given = cfg.forcing_given()
    if given and spec.family != "skyreels":
        one = len(given) == 1
        raise ConfigError(
            f"{', '.join(given)} {'applies' if one else 'apply'} to diffusion-forcing models (SkyReels-V2) only; "
            f"{spec.name} is a {spec.family} model: leave {'it' if one else 'them'} unset"
        )


def checked(
    cfg: RunConfig, limits: budget.Limits | None = None, policy: RecordPolicy | None = None
) -> tuple[RunConfig, models.ModelSpec, str, str, list[str]]:
    """``cfg`` checked before anything loads, each refusal one line: the model, the method on it, the device, the
    kernel backend, the threshold table, the size ``limits`` and the device's free memory (with the masks
    ``policy`` records; None: no recording). Returns the config with the model's defaults filled in, the model,
    the device, the kernel backend and the table's warnings."""
    spec = models.resolve(cfg.model)
    _check_forcing(cfg, spec)
    cfg = cfg.resolve(spec.defaults)
    method = methods.get(cfg.method)
    method.check_model(spec, cfg.settings)
    method.check_parallel(cfg, spec)
    device_name = models.check_device(cfg.device or models.default_device())
    if cfg.parallel:  # before anything loads: one process per rank, and heads and tokens that split evenly
        device_name = parallel.init(cfg.parallel, cfg.device)
        arch = budget.transformer_config(spec)
        tokens = budget.latent_tokens(cfg, tuple(arch.get("patch_size") or (1, 2, 2)))
        parallel.check_divisible(cfg.parallel, int(arch["num_attention_heads"]), tokens)
    dtype = models.parse_dtype(cfg.dtype, device_name)
    models.check_available(spec)
    backend = _kernel_backend(cfg.kernels, device_name)
    warnings_ = _table_warnings(cfg)  # before loading: a bad table is refused at once
    loaded = models.is_loaded(cfg.model, device_name, dtype)
    mask_bytes = budget.most_mask_bytes(cfg, spec, policy.mask_budget_mb) if policy is not None and policy.masks else 0
    budget.check(cfg, spec, device_name, dtype.itemsize, limits, weights_loaded=loaded, mask_bytes=mask_bytes)
    return cfg, spec, device_name, backend, warnings_


def timed_pass(
    pipe,
    cfg: RunConfig,
    spec: models.ModelSpec,
    recorder: Recorder,
    progress: ProgressFn | None = None,
    profiler: RunProfiler | None = None,
) -> tuple[Any, dict[str, float]]:
    """One generation of ``cfg`` on the loaded ``pipe`` with its method installed (and ``profiler`` attached):
    the method's output and the pass's wall and :data:`STAGES` seconds (CUDA synchronised at both ends)."""
    device = pipe.transformer.device
    times: dict[str, float] = {}
    sync(device)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if cfg.kernels is not None:
            stack.enter_context(dispatch.use_backend(cfg.kernels))
        if profiler is not None:
            stack.enter_context(profiler).attach(pipe.transformer)
        target = Target(pipe, cfg, spec, recorder)
        with _stage_timers(pipe, device, times), methods.get(cfg.method).install(target) as run:
            output = run(progress)
        sync(device)
    return output, _pass_times(time.perf_counter() - t0, times)


@contextmanager
def out_of_memory_as_run_error(device: torch.device, cfg: RunConfig) -> Iterator[None]:
    """Running out of memory in the block becomes a one-line :class:`RunError` naming the size (CUDA's cache is
    emptied first); other errors pass through."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc) or isinstance(exc, UserError):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise RunError(
            f"out of memory on {device} at {cfg.width}x{cfg.height}x{cfg.frames}: lower the size or frames "
            f"({one_line(exc)})"
        ) from None


def generate(
    cfg: RunConfig,
    store: RunStore | None = None,
    policy: RecordPolicy | None = None,
    progress: ProgressFn | None = None,
    profile: bool = False,
    record: bool = True,
    limits: budget.Limits | None = None,
) -> Run | None:
    """Run one generation and write its folder; returns the stored :class:`Run` (under ``cfg.parallel``, on rank 0;
    the other ranks return None).

    Before the model loads, the request is checked against ``limits`` (default: :meth:`budget.Limits.from_env`)
    and the device's free memory, and the store must be writable with room for the run; each refusal is one
    line (a :class:`~accel.errors.UserError`). A prompt longer than the text encoder takes is cut by the
    pipeline: the run's metrics record the tokens used and a warning. With ``profile`` a
    :class:`profiling.profiler.RunProfiler` records a few transformer calls and the folder also gets
    ``trace.json.gz``, ``tb/`` and the ``profile_*`` tables.
    """
    store = store or RunStore()
    policy = policy or RecordPolicy()
    cfg, spec, device_name, backend, warnings_ = checked(cfg, limits, policy if record else None)
    store.check_writable(budget.run_bytes(cfg))
    t_start = time.perf_counter()
    pipe = models.load_pipeline(cfg.model, device_name, cfg.dtype, cfg.parallel)
    load_s = time.perf_counter() - t_start
    prompt_tokens = _prompt_tokens(pipe, cfg.prompt)
    if prompt_tokens > spec.text_tokens:
        warnings_.append(
            f"the prompt is {prompt_tokens} tokens; the text encoder takes {spec.text_tokens}: the rest was cut"
        )
        LOG.warning(warnings_[-1])
    work = tempdirs.work_dir("profile", profile)  # sweeps the folders of killed processes first
    try:
        passes = _passes(pipe, cfg, spec, policy, record, progress, profile, work)
        frames = _frames(passes.video, cfg)
        t_rec = time.perf_counter()
        table, arrays = passes.recorder.finish()
        if cfg.parallel:  # rank 0 gathers every rank's telemetry and alone writes the run
            gathered = parallel.gather_run(table, arrays)
            if gathered is None:
                return None
            table, arrays = gathered
        record_s = time.perf_counter() - t_rec
        if passes.load.warning():
            warnings_.append(passes.load.warning())
            LOG.warning(warnings_[-1])
        metrics = {
            **_timing(cfg, passes, load_s),
            "record_s": record_s,
            "record_loop_s": passes.recorder.loop_s,
            **_run_facts(pipe, cfg, backend),
            "kernel_calls": passes.kernel_calls,  # which backend ran each kernel call (dispatch counters of this run)
            "kernel_compile_s": passes.compile_s,  # FlexAttention's first calls
            "prompt_tokens": min(prompt_tokens, spec.text_tokens),
            "parallel": parallel.describe(cfg.parallel) if cfg.parallel else None,
            "warnings": warnings_,
            "frames_sha256": hashlib.sha256(frames.tobytes()).hexdigest(),  # equal hashes: the same video
            **passes.extra,
            **summarize(table),
        }
        return _save(store, cfg, spec, frames, table, arrays, metrics, passes)
    finally:
        if work is not None:
            work.cleanup()


@dataclass
class Passes:
    """What the timed passes of one generation left: the first pass's video, method metrics and recorder, every
    pass's seconds, the kernel calls and compile time of the first, its profiler, and the load meter."""

    video: np.ndarray
    extra: dict[str, Any]
    recorder: Recorder
    samples: list[dict[str, float]]  # one per pass: wall, text encode, VAE decode, denoise seconds
    kernel_calls: dict[str, int]
    compile_s: float
    profiler: RunProfiler | None
    load: LoadMeter

    @property
    def timed(self) -> list[dict[str, float]]:
        """The passes whose times count: a profiled first pass of several is left out (it runs slower)."""
        return self.samples[1:] if self.profiler is not None and len(self.samples) > 1 else self.samples


def _passes(pipe, cfg, spec, policy, record, progress, profile, work) -> Passes:
    """``cfg.repeats`` timed passes under one load meter; the first is kept (video, telemetry, profile)."""
    samples: list[dict[str, float]] = []
    calls_before, compile_before = Counter(dispatch.calls), sum(flex.compile_seconds.values())
    profiler = None
    with (
        out_of_memory_as_run_error(pipe.transformer.device, cfg),
        LoadMeter(combine=parallel.total if cfg.parallel else None) as load,
    ):
        for i in range(cfg.repeats):
            recording = Recorder(policy, enabled=record)  # record=False: for measuring what recording costs
            if profile and i == 0:
                profiler = RunProfiler(work.name, wait=profile_wait(cfg), run_name=cfg.label())
            output, seconds = timed_pass(pipe, cfg, spec, recording, progress, profiler if i == 0 else None)
            samples.append(seconds)
            if i == 0:
                (video, extra), recorder = output, recording
                kernel_calls = {f"{op}/{b}": n for (op, b), n in (dispatch.calls - calls_before).items()}
    compile_s = sum(flex.compile_seconds.values()) - compile_before
    return Passes(video, extra, recorder, samples, kernel_calls, compile_s, profiler, load)


def _frames(video: np.ndarray, cfg: RunConfig) -> np.ndarray:
    """The decoded video as uint8 frames; non-finite values are a :class:`RunError` (nothing is stored)."""
    bad = int(np.size(video) - np.count_nonzero(np.isfinite(video)))
    if bad:  # e.g. a huge guidance scale: the latents overflowed, and a black video would pass for a result
        raise RunError(
            f"the generation produced {bad} non-finite values (NaN or inf) of {np.size(video)} in the decoded video "
            f"(guidance {cfg.guidance:g}, {cfg.steps} steps, {cfg.dtype or 'default'} dtype): nothing was stored"
        )
    return (np.clip(video, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _timing(cfg: RunConfig, passes: Passes, load_s: float) -> dict[str, Any]:
    """The metrics of time: the median wall and stage seconds over the timed passes, and each pass's."""
    timed, samples = passes.timed, passes.samples
    return {
        "wall_s": float(np.median([t["wall_s"] for t in timed])),  # the median over the timed passes
        "stages": {"load_s": load_s, **{k: float(np.median([t[k] for t in timed])) for k in STAGES}},
        "timing": {  # the timed passes' seconds (a profiled first pass of several is left out: it runs slower)
            "repeats": cfg.repeats,
            **{k: [t[k] for t in timed] for k in ("wall_s", "denoise_s")},
            "profiled_pass_wall_s": samples[0]["wall_s"] if len(timed) < len(samples) else None,
            "load": passes.load.result(),
        },
    }


def _run_facts(pipe, cfg: RunConfig, backend: str) -> dict[str, Any]:
    """The run's shape and where it ran: token grid, layers, heads, device, dtype, versions, kernel backend."""
    grid = (
        (cfg.frames - 1) // pipe.vae_scale_factor_temporal + 1,
        cfg.height // pipe.vae_scale_factor_spatial // spec_patch(pipe, 1),
        cfg.width // pipe.vae_scale_factor_spatial // spec_patch(pipe, 2),
    )
    return {
        "tokens": int(np.prod(grid)),
        "grid": list(grid),
        "layers": len(pipe.transformer.blocks),
        "heads": int(pipe.transformer.config.num_attention_heads),
        "device": str(pipe.transformer.device),
        "dtype": str(pipe.transformer.dtype).replace("torch.", ""),
        "versions": _versions(),
        "kernel_backend": backend,  # the backend sparse attention resolves to on this device (accel.kernels.dispatch)
    }


def _save(store: RunStore, cfg: RunConfig, spec, frames, table, arrays, metrics: dict, passes: Passes) -> Run:
    """The run folder, written atomically; a failed write is one :class:`RunError` and stores nothing."""
    t_save = time.perf_counter()
    try:
        with store.writer(cfg.label()) as w:
            w.write_json("config.json", {**cfg.to_dict(), "model_source": spec.source, "label": cfg.label()})
            w.write_video(frames, fps=cfg.fps)
            w.write_table("telemetry.parquet", table)
            if arrays:
                w.write_arrays("arrays.npz", arrays)
            if passes.profiler is not None:  # the profiled (first) pass
                metrics["profile"] = passes.profiler.save(w.path, passes.samples[0]["wall_s"])
            metrics["save_s"] = time.perf_counter() - t_save
            w.write_json("metrics.json", metrics)
    except OSError as exc:
        why = exc.strerror or one_line(exc)
        raise RunError(f"could not save the run in {store.root}: {why}; nothing was stored") from None
    return store.load(w.final_path)


STAGES = ("text_encode_s", "vae_decode_s", "denoise_s")  # parts of a pass's wall time in metrics["stages"]


def _pass_times(wall_s: float, times: dict[str, float]) -> dict[str, float]:
    """One pass's wall and :data:`STAGES` seconds; denoising is what neither text encoding nor VAE decoding took."""
    text, vae = times.get("text_encode_s", 0.0), times.get("vae_decode_s", 0.0)
    return {"wall_s": wall_s, "text_encode_s": text, "vae_decode_s": vae, "denoise_s": wall_s - text - vae}


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
