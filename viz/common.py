"""Shared helpers of the figure modules: opening runs, event rows, empty figures."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from accel import methods
from accel.runs import Run
from accel.schema import COLUMNS, check_events

RunLike = Run | str | Path
SEQUENTIAL = "Viridis"
# one colour per run / head / method where a figure draws several (a run keeps its colour across panels)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def method_colour(method: str | None) -> str:
    """The colour of ``method`` in every figure that tells methods apart (quality curves, Pareto): its record's
    ``colour``, else a palette colour from its name."""
    name = str(method)
    record = methods.REGISTRY.get(name)
    return (record.colour if record is not None else None) or PALETTE[sum(map(ord, name)) % len(PALETTE)]


def as_run(run: RunLike) -> Run:
    """A :class:`Run` from a run or the path of a complete run folder."""
    return run if isinstance(run, Run) else Run(run)


def events(run: RunLike, *names: str) -> pd.DataFrame:
    """Telemetry rows of the given events (all rows if none given); a name that is not an event raises."""
    check_events(names)
    t = as_run(run).telemetry
    if t.empty or "event" not in t:
        return pd.DataFrame(columns=list(COLUMNS))
    return t[t["event"].isin(names)] if names else t


def branches(run: RunLike, *names: str) -> list[str]:
    """CFG branches (``cond``, ``uncond``, or ``cond/g0`` ... inside chunks) that logged these events."""
    rows = events(run, *names)
    return sorted(rows["branch"].dropna().unique().tolist(), key=lambda b: (b.split("/")[0] != "cond", b))


TITLE_CHARS = 90  # a title line longer than this wraps (plotly cuts titles wider than the plot, never wraps)
TITLE_LINE_PX = 22


def wrapped(text: str, width: int = TITLE_CHARS) -> str:
    """``text`` with ``<br>`` between words so that no line is longer than ``width`` characters (existing
    ``<br>`` breaks stay)."""
    return "<br>".join(textwrap.fill(line, width, break_long_words=False).replace("\n", "<br>")
                       for line in text.split("<br>"))  # fmt: skip


def fit_title(fig: go.Figure) -> go.Figure:
    """Wrap the figure's title to :data:`TITLE_CHARS` per line and make room above the plot for the extra lines."""
    text = fig.layout.title.text
    if not text:
        return fig
    lines = wrapped(text)
    extra = lines.count("<br>") - text.count("<br>")
    if extra:
        top = fig.layout.margin.t if fig.layout.margin.t is not None else 80
        fig.update_layout(title_text=lines, margin_t=top + TITLE_LINE_PX * extra)
        if fig.layout.height:
            fig.update_layout(height=fig.layout.height + TITLE_LINE_PX * extra)
    return fig


def empty_figure(message: str, height: int = 240) -> go.Figure:
    """A blank figure that says why there is nothing to plot (the message wraps)."""
    fig = go.Figure()
    note = wrapped(message)
    fig.add_annotation(text=note, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 14})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=height, margin={"l": 20, "r": 20, "t": 20, "b": 20})
    return fig


def lay_out(
    fig: go.Figure, heading: str, height: int, x: str | None = None, y: str | None = None, left: int = 50
) -> go.Figure:
    """The figures' common layout: heading, axis titles, height, margins (``left`` for long tick labels)."""
    fig.update_layout(title=heading, height=height, margin={"l": left, "r": 20, "t": 60, "b": 40})
    if x is not None:
        fig.update_layout(xaxis_title=x)
    if y is not None:
        fig.update_layout(yaxis_title=y)
    return fig


def title(run: RunLike, what: str) -> str:
    r = as_run(run)
    return f"{what} · {r.config.get('method', '?')} · {r.run_id}"
