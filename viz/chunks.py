"""Chunk cache views of autoregressive runs: the iteration x chunk timeline, accumulators, the KV buffer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from accel.schema import Event
from viz.common import RunLike, empty_figure, events, lay_out, title

# state codes of the timeline, in legend order
STATES = ("waiting", "compute", "partial", "reuse", "done")
COLORS = ("#eeeeee", "#d6604d", "#f4a582", "#4393c3", "#7fbf7b")
EVENT_STATE = {
    Event.CHUNK_COMPUTE: "compute",
    Event.CHUNK_PARTIAL: "partial",
    Event.CHUNK_REUSE: "reuse",
    Event.CHUNK_DEFER: "reuse",
}


def chunk_states(run: RunLike, branch: str = "cond") -> pd.DataFrame:
    """State of every chunk at every iteration (schedule row) of one branch: a row x chunk table of names.

    A chunk with a decision in a row is ``compute``, ``partial`` or ``reuse`` (a MotionCache deferral is
    a reuse: nothing is computed); before its first decision it is ``waiting``, after its last ``done``.
    """
    rows = events(run, *EVENT_STATE)
    rows = rows[rows["branch"] == branch]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(state=rows["event"].map(EVENT_STATE), step=rows["step"].astype(int))
    rows = rows.assign(chunk=rows["chunk"].astype(int))
    iters = range(int(rows["step"].max()) + 1)
    chunks = range(int(rows["chunk"].max()) + 1)
    table = rows.pivot_table(index="step", columns="chunk", values="state", aggfunc="first")
    table = table.reindex(index=iters, columns=chunks)
    first = rows.groupby("chunk")["step"].min()
    last = rows.groupby("chunk")["step"].max()
    for c in chunks:
        col = table[c]
        idle = col.isna()
        table.loc[idle & (table.index < first.get(c, 0)), c] = "waiting"
        table.loc[idle & (table.index > last.get(c, -1)), c] = "done"
    return table.fillna("waiting")


def chunk_timeline(run: RunLike, branch: str = "cond") -> go.Figure:
    """Iteration x chunk timeline coloured by state (compute / partial / reuse / done / waiting)."""
    table = chunk_states(run, branch)
    if table.empty:
        return empty_figure("no chunk cache decisions in this run (a SkyReels-V2 chunked run has them)")
    code = table.replace({s: i for i, s in enumerate(STATES)}).astype(float).to_numpy().T
    n = len(STATES)
    scale = []
    for i, c in enumerate(COLORS):
        scale += [[i / n, c], [(i + 1) / n, c]]
    fig = go.Figure(
        go.Heatmap(
            z=code,
            x=table.index.tolist(),
            y=[f"chunk {c}" for c in table.columns],
            zmin=-0.5,
            zmax=n - 0.5,
            colorscale=scale,
            customdata=table.to_numpy().T,
            hovertemplate="iteration %{x} · %{y}: %{customdata}<extra></extra>",
            colorbar={"tickvals": list(range(n)), "ticktext": list(STATES)},
            xgap=1,
            ygap=2,
        )
    )
    counts = table.stack().value_counts()
    active = sum(int(counts.get(s, 0)) for s in ("compute", "partial", "reuse"))
    reuse = int(counts.get("reuse", 0)) / active if active else 0.0
    return lay_out(
        fig,
        title(run, f"chunk timeline, {branch} · {reuse:.0%} of chunk steps reused"),
        160 + 40 * len(table.columns),
        x="iteration (schedule row)",
        left=70,
    )


def accumulators(run: RunLike, branch: str = "cond") -> go.Figure:
    """Each chunk's reuse accumulator per iteration against its threshold (reuse while below)."""
    rows = events(run, *EVENT_STATE)
    rows = rows[(rows["branch"] == branch) & rows["value"].notna()]
    if rows.empty:
        return empty_figure("no accumulator values logged (dense chunked run, or no decisions yet)")
    fig = go.Figure()
    for c, sel in rows.groupby("chunk"):
        sel = sel.sort_values("step")
        fig.add_trace(
            go.Scatter(
                x=sel["step"],
                y=sel["value"],
                mode="lines+markers",
                name=f"chunk {int(c)}",
                customdata=sel["event"].str.removeprefix("chunk_"),
                hovertemplate="iteration %{x}: %{y:.4f} (%{customdata})",
            )
        )
    thr = rows["threshold"].dropna()
    if len(thr):
        fig.add_hline(y=float(thr.iloc[0]), line_dash="dash", annotation_text=f"threshold {float(thr.iloc[0]):g}")
    return lay_out(
        fig, title(run, f"reuse accumulators, {branch}"), 360, x="iteration (schedule row)", y="accumulated change"
    )


def kv_buffer(run: RunLike) -> go.Figure:
    """Tokens (and MB) held in the clean-chunk KV buffer per iteration, with compressions marked."""
    rows = events(run, Event.KV_TOKENS).sort_values("step")
    if rows.empty:
        return empty_figure("no KV buffer in this run")
    fig = go.Figure(
        go.Scatter(
            x=rows["step"],
            y=rows["value"],
            mode="lines+markers",
            name="tokens",
            customdata=np.asarray(rows["threshold"], dtype=float) / 2**20,
            hovertemplate="iteration %{x}: %{y:.0f} tokens, %{customdata:.1f} MB<extra></extra>",
        )
    )
    comp = events(run, Event.KV_COMPRESS)
    for _, r in comp.iterrows():
        fig.add_vline(x=int(r["step"]), line_dash="dot", line_color="#7f7f7f")
    note = f" · {len(comp)} compressions (dotted)" if len(comp) else ""
    return lay_out(fig, title(run, f"KV buffer size{note}"), 320, x="iteration (schedule row)", y="tokens per layer")
