"""Dense trajectories and single-head probes: the per-(layer, head, candidate) output errors and sparsities."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from diffusers.hooks import HookRegistry, ModelHook

from accel import models
from accel.attention import AttentionMethod, installed
from accel.attention.headwise import HeadwiseSparse
from accel.ebc.spec import CalibrationSpec, Progress
from accel.errors import ConfigError
from accel.methods import build_attention
from accel.models import pipeline_call

BAND_NAMES = ("LL", "LH", "HL", "HH")  # temporal x spatial
REPLAY_HOOK = "accel_calibration_replay"


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
