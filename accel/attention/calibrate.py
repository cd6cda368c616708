"""Error-guided Budgeted Calibration (METHODS 1.4): per-head thresholds under a global sparsity budget.

1. Dense trajectories: run the dense pipeline on calibration prompts and keep, at sampled steps
   (one per quarter of the sparse part of the schedule), each transformer call's input latents,
   timestep, text context and dense output, per CFG branch.
2. Single-head probes: for every (layer, head, candidate) sparsify that one head, everything else
   dense, and record the output error and the head's sparsity. Probes of one layer run as one
   batch (batch element = one (head, candidate)); blocks before the layer are skipped by replaying
   their dense outputs (they are unchanged by a later head), the rest runs through the real model.
3. Error: ``eps = y_sparse - y_dense``; orthonormal 3-D FFT over (T, H, W); four bands (temporal
   low/high x spatial low/high, "low" = |fftfreq| < 0.25, spatial-low needs both spatial axes low);
   ``r_q = sum_band |F eps|^2 / (sum |F y_dense|^2 + 1e-12)``; ``e = sum_q w_q r_q`` with
   ``(LL, LH, HL, HH) = (1, 0.5, 0.01, 0.01)`` (secondhand; settings).
4. ``scipy.optimize.milp``: minimise ``sum e_hk x_hk`` with one candidate per head and mean sparsity
   ``>= S_min``, the mean sparsity of the uniform reference threshold (0.9), per CFG branch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from diffusers.hooks import HookRegistry, ModelHook

from accel import models
from accel.attention import AttentionMethod, installed
from accel.attention.headwise import HeadwiseSparse
from accel.attention.thresholds import write_table
from accel.config import ConfigError, RunConfig
from accel.kernels import dispatch
from accel.methods import build_attention, calibratable
from accel.models import pipeline_call

# Calibration prompts for real checkpoints: natural captions like the seeds' evaluation prompts.
DEFAULT_PROMPTS = (
    "a red circle moves quickly left over a blue background",
    "a small boat drifts on a calm lake at sunset",
    "a dog runs across a green field",
    "clouds move slowly over snowy mountains",
)
# For the embedded models: their word-level tokenizer only knows the procedural grammar, so natural captions
# would be mostly unknown words. The app's default prompt plus training-split clips 0, 5 and 9 of
# accel.synthetic.procedural (no held-out combination, so bench-quality's prompts stay unseen).
GRAMMAR_PROMPTS = (
    "a red circle moves quickly left over a blue background",
    "a yellow circle and a blue star move slowly left over a horizontal gradient purple background",
    "a white triangle moves slowly down over a vertical gradient yellow background while the camera pans down",
    "a green square moves quickly down and a purple diamond moves slowly to the upper left over a vertical "
    "gradient blue background",
)
BAND_NAMES = ("LL", "LH", "HL", "HH")  # temporal x spatial
REPLAY_HOOK = "accel_calibration_replay"
Progress = Callable[[str], None]


def default_prompts(model: str) -> tuple[str, ...]:
    """The calibration prompts used when none are given: the grammar's for embedded models, else captions."""
    from accel import models

    return GRAMMAR_PROMPTS if models.resolve(model).embedded else DEFAULT_PROMPTS


def _default_base() -> RunConfig:
    return RunConfig(prompt=DEFAULT_PROMPTS[0], method="xattention")


@dataclass(frozen=True)
class CalibrationSpec:
    """What to calibrate and how; the defaults follow METHODS 1.4.

    ``base`` gives the model, the sparse base method with its settings, and the sampling (sizes, steps,
    guidance, seed, device); its prompt is replaced by each calibration prompt in turn.
    """

    base: RunConfig = field(default_factory=_default_base)
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    samples_per_prompt: int = 4
    candidates: tuple[float, ...] = (0.85, 0.90, 0.95)
    reference: float = 0.90
    band_weights: tuple[float, float, float, float] = (1.0, 0.5, 0.01, 0.01)
    low_freq: float = 0.25
    max_probe_batch: int = 16

    @property
    def model(self) -> str:
        return self.base.model

    @property
    def method(self) -> str:
        return self.base.method

    def __post_init__(self) -> None:
        if self.method not in calibratable():
            raise ConfigError(
                f"calibration needs a sparse base method ({', '.join(calibratable())}), got {self.method!r}"
            )
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise ConfigError("calibration needs at least one non-empty prompt")
        cands = tuple(float(c) for c in self.candidates)
        if len(cands) < 2 or len(set(cands)) != len(cands) or not all(0 < c <= 1 for c in cands):
            raise ConfigError(f"candidates must be at least two distinct values in (0, 1], got {self.candidates}")
        if not any(math.isclose(self.reference, c) for c in cands):
            raise ConfigError(f"the reference threshold {self.reference} must be one of the candidates {cands}")
        weights = self.band_weights
        if len(weights) != 4 or not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights) > 0:
            raise ConfigError(
                f"band_weights must be four finite numbers >= 0, not all 0 (LL, LH, HL, HH), got {weights}"
            )
        family = models.resolve(self.model).family
        if family != "wan":  # the probes patch plain self-attention; diffusion forcing attends over chunks
            raise ConfigError(
                f"calibration runs on Wan2.1 models; {self.model} is a {family} (diffusion-forcing) model: calibrate "
                "the Wan2.1 model it is based on, or use the method's shared threshold"
            )
        if not 0 < self.low_freq < 0.5:
            raise ConfigError(f"low_freq must be in (0, 0.5), got {self.low_freq}")
        for name in ("samples_per_prompt", "max_probe_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        object.__setattr__(self, "candidates", cands)

    def run_config(self, prompt: str | None = None) -> RunConfig:
        """The base run for one prompt, with the method's own shared thresholds (no TMR, no table)."""
        settings = dataclasses.replace(self.base.settings, tmr=False, threshold_table=None)
        return dataclasses.replace(self.base, prompt=prompt or self.prompts[0], settings=settings)


@dataclass
class Sample:
    """One transformer call of a dense trajectory."""

    prompt: int
    step: int
    branch: str
    latents: torch.Tensor
    timestep: torch.Tensor
    context: torch.Tensor
    output: torch.Tensor


def sample_steps(num_steps: int, first_sparse: int, count: int) -> list[int]:
    """``count`` steps, one at the middle of each equal part of ``[first_sparse, num_steps)``."""
    span = num_steps - first_sparse
    if span <= 0:
        raise ConfigError(f"no sparse steps to calibrate: all {num_steps} steps are dense warm-up")
    count = min(count, span)
    return sorted({first_sparse + int((i + 0.5) * span / count) for i in range(count)})


def collect_trajectories(
    pipe, spec: CalibrationSpec, steps: list[int], progress: Progress | None = None
) -> list[Sample]:
    """Dense runs of every prompt; keep the transformer calls at ``steps`` (both CFG branches)."""
    samples: list[Sample] = []
    keep = set(steps)
    mspec = models.resolve(spec.model)
    for p_idx, prompt in enumerate(spec.prompts):
        cfg = spec.run_config(prompt).resolve(mspec.defaults)
        dense = AttentionMethod()
        with installed(pipe.transformer, dense, cfg.steps) as info:

            def grab(module, args, kwargs, output, p_idx=p_idx, info=info):
                if info.step in keep:
                    out = output[0] if isinstance(output, tuple) else output.sample
                    samples.append(
                        Sample(
                            p_idx,
                            info.step,
                            info.branch,
                            kwargs["hidden_states"].detach().clone(),
                            kwargs["timestep"].detach().clone(),
                            kwargs["encoder_hidden_states"].detach().clone(),
                            out.detach().float().clone(),
                        )
                    )

            handle = pipe.transformer.register_forward_hook(grab, with_kwargs=True)
            try:
                with torch.inference_mode():
                    pipe(**{**pipeline_call(cfg, mspec), "output_type": "latent"})
            finally:
                handle.remove()
        if progress:
            progress(f"dense trajectory {p_idx + 1}/{len(spec.prompts)}")
    return samples


def save_trajectories(samples: list[Sample], path: Path) -> None:
    """The dense trajectory samples as safetensors (tensors per sample, indices in the metadata)."""
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for i, s in enumerate(samples):
        for name in ("latents", "timestep", "context", "output"):
            tensors[f"{i}/{name}"] = getattr(s, name).detach().cpu().contiguous()
        meta[str(i)] = f"{s.prompt},{s.step},{s.branch}"
    save_file(tensors, str(path), metadata=meta)


def band_masks(shape: tuple[int, int, int], low: float, device) -> list[torch.Tensor]:
    """Bool masks over an (T, H, W) spectrum for the LL, LH, HL, HH bands (temporal x spatial)."""
    t, h, w = shape
    ft = torch.fft.fftfreq(t, device=device).abs()[:, None, None] < low
    fs = (torch.fft.fftfreq(h, device=device).abs()[None, :, None] < low) & (
        torch.fft.fftfreq(w, device=device).abs()[None, None, :] < low
    )
    ft, fs = ft.expand(t, h, w), fs.expand(t, h, w)
    return [ft & fs, ft & ~fs, ~ft & fs, ~ft & ~fs]


def spectral_error(
    y: torch.Tensor, y_dense: torch.Tensor, weights: tuple[float, ...] = (1.0, 0.5, 0.01, 0.01), low: float = 0.25
) -> torch.Tensor:
    """Band-weighted relative spectral error of ``y`` ``(B, C, T, H, W)`` against ``y_dense`` ``(C, T, H, W)``."""
    eps = y.float() - y_dense.float()
    f_err = torch.fft.fftn(eps, dim=(-3, -2, -1), norm="ortho").abs().pow(2).sum(1)  # (B, T, H, W)
    f_ref = torch.fft.fftn(y_dense.float(), dim=(-3, -2, -1), norm="ortho").abs().pow(2).sum()
    total = torch.zeros(y.shape[0], device=y.device)
    for w, band in zip(weights, band_masks(tuple(y.shape[-3:]), low, y.device), strict=True):
        total = total + w * (f_err * band).sum((-3, -2, -1)) / (f_ref + 1e-12)
    return total


class _Probe(AttentionMethod):
    """Dense attention everywhere except ``layer``, where batch element ``p`` has head ``heads[p]``
    sparse at ``thresholds[p]``. At ``layer`` every batch element has the same Q/K/V (the prefix is
    dense and shared), so the probes run as the heads of one sparse call on element 0."""

    def __init__(
        self, sparse: HeadwiseSparse, layer: int, heads: list[int], thresholds: list[float], memory: dict | None = None
    ):
        super().__init__()
        self.sparse = sparse
        self.layer = layer
        self.heads = heads
        self.thr = torch.tensor(thresholds, dtype=torch.float32)
        self.memory = memory if memory is not None else {"before": {}, "now": {}}
        self.density: torch.Tensor | None = None

    def attend(self, q, k, v, layer, info):
        if layer != self.layer:
            return self.dense(q, k, v)
        p = len(self.heads)
        q0, k0, v0 = q[:1], k[:1], v[:1]
        out = self.dense(q0, k0, v0).expand(p, -1, -1, -1).clone()
        heads = torch.tensor(self.heads, device=q.device)
        qs, ks, vs = q0[:, :, heads], k0[:, :, heads], v0[:, :, heads]  # probes as the heads of one batch
        thr = self.thr.to(q.device)
        state = self.sparse.probe_state(q0, k0, layer, info.branch, self.heads, thr, self.memory)
        sparse_out = self.sparse.apply(qs, ks, vs, state, layer, thr, None)  # (1, L, P, D)
        self.density = self.sparse.state_density(state, qs, ks).reshape(-1)
        out[torch.arange(p, device=q.device), :, heads] = sparse_out[0].transpose(0, 1).to(out.dtype)
        return out


class _Replay(ModelHook):
    """A block before the probed layer, as a diffusers hook: the last one returns its recorded dense output
    (repeated ``batch`` times), the earlier ones pass their input through; none of them computes."""

    def __init__(self, output: torch.Tensor | None, batch: int) -> None:
        super().__init__()
        self.output, self.batch = output, batch

    def new_forward(self, module: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        if self.output is None:
            return kwargs.get("hidden_states", args[0] if args else None)
        return self.output.expand(self.batch, *self.output.shape[1:])


@contextmanager
def _skip_prefix(transformer, layer: int, cached: list[torch.Tensor], batch: int) -> Iterator[None]:
    """Blocks before ``layer`` replay their recorded dense output instead of computing it."""
    registries = [HookRegistry.check_if_exists_or_initialize(b) for b in transformer.blocks[:layer]]
    for j, registry in enumerate(registries):
        registry.register_hook(_Replay(cached[j] if j == layer - 1 else None, batch), REPLAY_HOOK)
    try:
        yield
    finally:
        for registry in registries:
            registry.remove_hook(REPLAY_HOOK, recurse=False)


def _dense_block_outputs(transformer, sample: Sample, num_steps: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the sample densely once: every block's output and the transformer output."""
    outputs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, a, o: outputs.append(o.detach())) for b in transformer.blocks]
    try:
        y = _call(transformer, sample, num_steps, batch=1)
    finally:
        for h in handles:
            h.remove()
    return outputs, y[0]


def _call(transformer, sample: Sample, num_steps: int, batch: int) -> torch.Tensor:
    """The transformer on a sample, repeated ``batch`` times, inside the pipeline's cache context."""
    with (
        torch.inference_mode(),
        transformer.cache_context(sample.branch, step_index=sample.step, num_inference_steps=num_steps),
    ):
        return transformer(
            hidden_states=sample.latents.expand(batch, *sample.latents.shape[1:]),
            timestep=sample.timestep.expand(batch),
            encoder_hidden_states=sample.context.expand(batch, *sample.context.shape[1:]),
            return_dict=False,
        )[0]


def probe_errors(pipe, spec: CalibrationSpec, samples: list[Sample], progress: Progress | None = None) -> pd.DataFrame:
    """Single-head probes: one row per (sample, layer, head, candidate) with the error and the sparsity.

    Probes measure each candidate's mask: density-aware execution (XAttention's ``dense_above``, which runs a
    dense-enough head as exact SDPA) is off here, else every probe of such a head would report no error.
    """
    mspec = models.resolve(spec.model)
    cfg = spec.run_config().resolve(mspec.defaults)
    if hasattr(cfg.settings, "dense_above"):
        cfg = dataclasses.replace(cfg, settings=dataclasses.replace(cfg.settings, dense_above=1.0))
    transformer = pipe.transformer
    n_layers, n_heads = len(transformer.blocks), transformer.config.num_attention_heads
    probes = [(h, c) for h in range(n_heads) for c in spec.candidates]
    rows: list[dict[str, Any]] = []
    before: dict[tuple, dict] = {}  # (prompt, branch, layer) -> the method's probe state of the previous sample
    for s_idx, sample in enumerate(samples):
        with installed(transformer, AttentionMethod(), cfg.steps):
            cached, y_dense = _dense_block_outputs(transformer, sample, cfg.steps)
        for layer in range(n_layers):
            key = (sample.prompt, sample.branch, layer)
            memory = {"before": before.get(key, {}), "now": {}}  # SVG2: one clustering per head, warm-started
            for start in range(0, len(probes), spec.max_probe_batch):
                chunk = probes[start : start + spec.max_probe_batch]
                sparse = build_attention(cfg.settings, mspec, seed=cfg.seed)
                sparse.num_layers, sparse.num_heads = n_layers, len(chunk)  # probes act as the heads
                method = _Probe(sparse, layer, [h for h, _ in chunk], [c for _, c in chunk], memory)
                with installed(transformer, method, cfg.steps), _skip_prefix(transformer, layer, cached, len(chunk)):
                    y = _call(transformer, sample, cfg.steps, batch=len(chunk))
                err = spectral_error(y, y_dense, spec.band_weights, spec.low_freq).cpu()
                dens = method.density.cpu()
                for p, (head, cand) in enumerate(chunk):
                    rows.append(
                        {
                            "sample": s_idx, "prompt": sample.prompt, "step": sample.step, "branch": sample.branch,
                            "layer": layer, "head": head, "candidate": cand,
                            "error": float(err[p]), "sparsity": 1.0 - float(dens[p]),
                        }
                    )  # fmt: skip
            before[key] = memory["now"]
        if progress:
            progress(f"probes {s_idx + 1}/{len(samples)}")
    return pd.DataFrame(rows)


def solve_budget(errors: np.ndarray, sparsity: np.ndarray, min_sparsity: float) -> np.ndarray:
    """MILP: one candidate per head minimising total error with mean sparsity >= ``min_sparsity``.

    ``errors`` and ``sparsity`` are ``(heads, candidates)``; returns the chosen candidate per head.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    n, k = errors.shape
    one_each = np.kron(np.eye(n), np.ones((1, k)))
    budget = sparsity.reshape(1, -1) / n
    # errors can be ~1e-7: rescale so the solver's absolute tolerances do not swamp them (same argmin)
    scale = float(np.abs(errors).max()) or 1.0
    res = milp(
        c=errors.reshape(-1) / scale,
        options={"mip_rel_gap": 1e-9},
        constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(budget, min_sparsity - 1e-9, np.inf)],
        integrality=np.ones(n * k),
        bounds=Bounds(0, 1),
    )
    if not res.success:
        raise RuntimeError(f"calibration MILP failed: {res.message}")
    return np.round(res.x).reshape(n, k).argmax(1)


def assign(probes: pd.DataFrame, spec: CalibrationSpec, layers: int, heads: int) -> dict[str, dict[str, Any]]:
    """Per branch: mean error and sparsity per (layer, head, candidate) and the MILP assignment."""
    ref = min(range(len(spec.candidates)), key=lambda i: abs(spec.candidates[i] - spec.reference))
    out: dict[str, dict[str, Any]] = {}
    for branch, df in probes.groupby("branch", sort=False):
        mean = df.groupby(["layer", "head", "candidate"])[["error", "sparsity"]].mean()
        grid = mean.reindex(
            pd.MultiIndex.from_product([range(layers), range(heads), spec.candidates]), fill_value=np.nan
        )
        err = grid["error"].to_numpy().reshape(layers * heads, -1)
        spa = grid["sparsity"].to_numpy().reshape(layers * heads, -1)
        if np.isnan(err).any():
            raise RuntimeError(f"missing probes for branch {branch!r}")
        s_min = float(spa[:, ref].mean())
        choice = solve_budget(err, spa, s_min)
        rows = np.arange(layers * heads)
        chosen = np.asarray(spec.candidates)[choice]
        out[str(branch)] = {
            calibratable()[spec.method]: chosen.reshape(layers, heads).tolist(),
            "error": err.reshape(layers, heads, -1).tolist(),
            "sparsity": spa.reshape(layers, heads, -1).tolist(),
            "min_sparsity": s_min,
            "mean_sparsity": float(spa[rows, choice].mean()),
            "objective": float(err[rows, choice].sum()),
            "uniform_objective": float(err[:, ref].sum()),
        }
    return out


def calibrate(spec: CalibrationSpec, out_dir: str | Path, progress: Progress | None = None) -> Path:
    """Run the whole calibration; writes ``table.json``, ``probes.parquet``, ``trajectories.safetensors``."""
    t0 = time.perf_counter()
    mspec = models.resolve(spec.model)
    cfg = spec.run_config().resolve(mspec.defaults)
    pipe = models.load_pipeline(spec.model, cfg.device or models.default_device(), cfg.dtype)
    transformer = pipe.transformer
    layers, heads = len(transformer.blocks), transformer.config.num_attention_heads
    steps = sample_steps(cfg.steps, cfg.settings.dense_steps(cfg.steps), spec.samples_per_prompt)
    with dispatch.use_backend(cfg.kernels or dispatch.requested_backend()):
        samples = collect_trajectories(pipe, spec, steps, progress)
        probes = probe_errors(pipe, spec, samples, progress)
    branches = assign(probes, spec, layers, heads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probes.to_parquet(out / "probes.parquet")
    save_trajectories(samples, out / "trajectories.safetensors")
    table = {
        "model": mspec.name,
        "method": spec.method,
        "parameter": calibratable()[spec.method],
        "layers": layers,
        "heads": heads,
        "candidates": list(spec.candidates),
        "reference": spec.reference,
        "band_weights": dict(zip(BAND_NAMES, spec.band_weights, strict=True)),
        "low_freq": spec.low_freq,
        "base_settings": cfg.settings.to_dict(),
        "calibration": {
            "prompts": list(spec.prompts),
            "steps": steps,
            "size": [cfg.width, cfg.height, cfg.frames],
            "num_steps": cfg.steps,
            "seed": spec.base.seed,
            "seconds": time.perf_counter() - t0,
        },
        "created": datetime.now().isoformat(timespec="seconds"),
        "branches": branches,
    }
    return write_table(out / "table.json", table)
