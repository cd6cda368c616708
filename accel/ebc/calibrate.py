"""The budgeted choice (a MILP per CFG branch) and :func:`calibrate`, which writes the threshold table."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from accel import models
from accel.attention.thresholds import write_table
from accel.ebc.probe import BAND_NAMES, collect_trajectories, probe_errors, sample_steps, save_trajectories
from accel.ebc.spec import CalibrationSpec, Progress
from accel.kernels import dispatch
from accel.methods import calibratable


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
