"""Profile views of a profiled run: time per named range, top kernels, memory, and the phase breakdown
beside the dense reference with Amdahl's bound."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from accel.runs import DamagedRunError
from profiling import breakdown
from viz.common import RunLike, as_run, empty_figure, lay_out, title

BOUND_SLACK = 0.10  # default: a measured speedup more than 10% above its bound is timing noise (viz.speed)


def above_bound(measured: float, bound: float) -> bool:
    """Whether a measured speedup is further above its bound than :data:`BOUND_SLACK` allows (timing noise)."""
    return measured > bound * (1 + BOUND_SLACK)


PHASES = ("mask_predict_ms", "attn_sparse_ms", "attn_dense_ms", "cache_bookkeeping_ms", "other_ms")


def is_profiled(run: RunLike) -> bool:
    return (as_run(run).path / "profile_ranges.parquet").is_file()


def profile_tables(run: RunLike) -> dict[str, pd.DataFrame]:
    """``ranges``, ``kernels`` and ``memory`` tables of a profiled run (empty tables if not profiled)."""
    r = as_run(run)
    if not is_profiled(r):
        return {"ranges": pd.DataFrame(), "kernels": pd.DataFrame(), "memory": pd.DataFrame()}
    memory = r.read_json("profile_memory.json")
    if not isinstance(memory, dict) or not all(isinstance(v, (int, float)) for v in memory.values()):
        raise DamagedRunError(r.run_id, "profile_memory.json", "not a map of names to bytes")
    return {
        "ranges": r.table("profile_ranges.parquet"),
        "kernels": r.table("profile_kernels.parquet"),
        "memory": pd.DataFrame(
            [{"what": k.removesuffix("_bytes").replace("_", " "), "MB": v / 2**20} for k, v in memory.items()]
        ),
    }


def range_chart(run: RunLike) -> go.Figure:
    """Total milliseconds per named range over the profiled calls."""
    ranges = profile_tables(run)["ranges"]
    if ranges.empty:
        return empty_figure("this run was not profiled: tick 'profile' (or --profile) and generate again")
    ranges = ranges.sort_values("total_ms")
    fig = go.Figure(
        go.Bar(
            x=ranges["total_ms"],
            y=ranges["name"],
            orientation="h",
            customdata=ranges[["calls"]],
            hovertemplate="%{y}: %{x:.1f} ms in %{customdata[0]} calls<extra></extra>",
        )
    )
    return lay_out(
        fig,
        title(run, "time per named range (profiled calls)"),
        140 + 28 * len(ranges),
        x="total ms (device time where present, else CPU)",
        left=130,
    )


def backends_ran(run: RunLike) -> str:
    """Which kernel backend ran the run's block-sparse attention calls, e.g. ``"torch x110, dense x10 (compile
    3.6 s)"``; empty for a run without sparse attention."""
    m = as_run(run).metrics
    calls = (m.get("kernel_calls") or {}).items()  # "<op>/<backend>": calls
    ran = {k.partition("/")[2] or "?": v for k, v in calls if k.startswith("block_sparse")}
    if not ran:
        return ""
    compile_s = m.get("kernel_compile_s") or 0
    text = ", ".join(f"{backend} x{n}" for backend, n in sorted(ran.items()))
    return text + (f" (compile {compile_s:.1f} s)" if compile_s else "")


def kernel_chart(run: RunLike, top: int = 15) -> go.Figure:
    """The ``top`` kernels (GPU) or operators (CPU) by self time."""
    kernels = profile_tables(run)["kernels"]
    if kernels.empty:
        return empty_figure("this run was not profiled")
    time_col = "self_device_ms" if kernels["self_device_ms"].sum() > 0 else "self_cpu_ms"
    k = kernels.nlargest(top, time_col).iloc[::-1]
    fig = go.Figure(
        go.Bar(
            x=k[time_col],
            y=[n if len(n) <= 60 else n[:57] + "..." for n in k["name"]],
            orientation="h",
            customdata=k[["calls", "share"]],
            hovertemplate="%{y}: %{x:.2f} ms, %{customdata[0]} calls, %{customdata[1]:.1%}<extra></extra>",
        )
    )
    what = f"top {len(k)} {'kernels' if time_col == 'self_device_ms' else 'operators'} by self time"
    ran = backends_ran(run)
    return lay_out(
        fig,
        title(run, f"{what} · sparse attention on {ran}" if ran else what),
        140 + 26 * len(k),
        x=time_col.replace("_", " "),
        left=330,
    )


def times(ratio: float) -> str:
    """A speed ratio with three significant digits: ``1.23x``, ``0.00412x`` (never ``0.00x``)."""
    return f"{ratio:.3g}x"


def breakdown_chart(run: RunLike, reference: RunLike) -> tuple[go.Figure, pd.DataFrame, dict[str, float]]:
    """Stacked phases per transformer call of ``run`` beside ``reference`` (dense), with the Amdahl numbers."""
    r, ref = as_run(run), as_run(reference)
    table, amdahl = breakdown.compare(r, ref)
    fig = go.Figure()
    for phase in PHASES:
        fig.add_trace(
            go.Bar(
                x=["dense reference", r.config.get("label") or r.run_id],
                y=[table.loc[phase, "reference"], table.loc[phase, "run"]],
                name=phase.removesuffix("_ms").replace("_", " "),
            )
        )
    heading = (
        f"per transformer call: attention {times(amdahl['attention_speedup'])} as fast, "
        f"{amdahl['attention_fraction']:.0%} of the dense call → bound "
        f"{times(amdahl['transformer_speedup_bound'])}, measured {times(amdahl['transformer_speedup'])} "
        f"(end to end {times(amdahl['end_to_end_speedup'])})"
    )
    if above_bound(amdahl["transformer_speedup"], amdahl["transformer_speedup_bound"]):
        heading += " · ⚠ measured above the bound: timing noise (the two runs were timed apart)"
    fig.update_layout(barmode="stack", yaxis_title="ms per transformer call")
    lay_out(fig, heading, 420)
    return fig, table.reset_index(names="phase"), amdahl
