"""Why is it not faster: where a profiled run's time went, beside its dense reference, with Amdahl's law.

Phases from the named ranges of the profiled transformer calls (per call, so runs with different
numbers of calls compare): mask prediction (``mask.predict`` + ``mask.reuse_check``), sparse attention
(``attn.sparse``), dense attention (``attn.dense``), cache bookkeeping (``cache.decide`` minus its
``cache.recompute``, plus ``kv.compress``), and the rest of the transformer call; VAE decode and text
encoding come from the run's stage timings. The Amdahl view: with attention a fraction ``f`` of the
reference's transformer time and an attention speedup ``s``, the end-to-end bound is ``1 / ((1-f) + f/s)``.
"""

from __future__ import annotations

import pandas as pd

from accel.errors import UserError
from accel.runs import DamagedRunError, Run


def _ranges(run: Run) -> pd.DataFrame:
    path = run.path / "profile_ranges.parquet"
    if not path.is_file():
        raise UserError(f"run {run.run_id} was not profiled: generate it with --profile")
    table = run.table(path.name)
    if "name" not in table.columns:
        raise DamagedRunError(run.run_id, path.name, "no name column")
    return table.set_index("name")


def phases(run: Run) -> dict[str, float]:
    """Milliseconds per transformer call in each phase, plus the stage timings (seconds) of the run."""
    df = _ranges(run)
    r = df["total_ms"]
    calls = max(1, int(df.loc["denoise.step", "calls"]))

    def get(name: str) -> float:
        return float(r.get(name, 0.0)) / calls

    predict = get("mask.predict") + get("mask.reuse_check")
    cache = max(0.0, get("cache.decide") - get("cache.recompute")) + get("kv.compress")
    step = get("denoise.step")
    attn_sparse, attn_dense = get("attn.sparse"), get("attn.dense")
    stages = run.metrics.get("stages", {})
    return {
        "mask_predict_ms": predict,
        "attn_sparse_ms": attn_sparse,
        "attn_dense_ms": attn_dense,
        "cache_bookkeeping_ms": cache,
        "other_ms": max(0.0, step - predict - attn_sparse - attn_dense - cache),
        "transformer_call_ms": step,
        "vae_decode_s": float(stages.get("vae_decode_s", 0.0)),
        "text_encode_s": float(stages.get("text_encode_s", 0.0)),
        "wall_s": float(run.metrics.get("wall_s", 0.0)),
    }


def compare(run: Run, reference: Run) -> tuple[pd.DataFrame, dict[str, float]]:
    """Phase table (run vs reference) and the Amdahl numbers."""
    a, ref = phases(run), phases(reference)
    table = pd.DataFrame({"reference": ref, "run": a})
    attn_ref = ref["attn_dense_ms"] + ref["attn_sparse_ms"]
    attn_run = a["attn_dense_ms"] + a["attn_sparse_ms"] + a["mask_predict_ms"]
    f = attn_ref / ref["transformer_call_ms"] if ref["transformer_call_ms"] else 0.0
    s = attn_ref / attn_run if attn_run else float("inf")
    amdahl = {
        "attention_fraction": f,
        "attention_speedup": s,
        "transformer_speedup_bound": 1.0 / ((1 - f) + f / s) if s else 0.0,
        "transformer_speedup": ref["transformer_call_ms"] / a["transformer_call_ms"]
        if a["transformer_call_ms"]
        else 0.0,
        "end_to_end_speedup": _ratio(ref["wall_s"], a["wall_s"]),
    }
    return table, amdahl


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0
