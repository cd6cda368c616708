"""Temporal Mask Reuse views: the refresh/reuse grid over step x (layer, head) and drift curves with delta."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from accel.schema import Event
from viz.common import PALETTE, RunLike, empty_figure, events, lay_out, title

# grid colours (RGB): refreshed, reused, no decision (dense warm-up or layer without TMR)
REFRESH, REUSE, NONE = (214, 96, 77), (67, 147, 195), (235, 235, 235)


def reuse_matrix(run: RunLike, branch: str = "cond") -> pd.DataFrame:
    """``mask_refresh`` as a step x (layer, head) table: 1 refreshed, 0 reused, NaN no decision."""
    rows = events(run, Event.MASK_REFRESH)
    rows = rows[(rows["branch"] == branch) & rows["head"].notna()]
    if rows.empty:
        return pd.DataFrame()
    dens = events(run, Event.DENSITY)
    steps = sorted(set(dens.loc[dens["branch"] == branch, "step"].astype(int)) | set(rows["step"].astype(int)))
    grid = rows.pivot_table(index="step", columns=["layer", "head"], values="value", aggfunc="mean")
    return grid.reindex(index=steps)


def reuse_rate(grid: pd.DataFrame) -> float:
    """Share of decisions that reused the mask (NaN = no decision, not counted)."""
    z = grid.to_numpy(dtype=float)
    return 1.0 - float(np.nanmean(z)) if np.isfinite(z).any() else 0.0


def reuse_grid(run: RunLike, branch: str = "cond") -> go.Figure:
    """Heatmap of refresh (1) / reuse (0) decisions; grey where no decision was made."""
    grid = reuse_matrix(run, branch)
    if grid.empty:
        return empty_figure("no Temporal Mask Reuse decisions in this run (enable TMR)")
    labels = [f"l{int(layer)}h{int(head)}" for layer, head in grid.columns]
    rate = reuse_rate(grid)
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=labels,
            y=grid.index.tolist(),
            zmin=0,
            zmax=1,
            colorscale=[[0, _hex(REUSE)], [1, _hex(REFRESH)]],
            colorbar={"tickvals": [0, 1], "ticktext": ["reuse", "refresh"]},
            hovertemplate="step %{y} · %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_yaxes(title_text="step", autorange="reversed")
    fig.update_xaxes(title_text="layer · head", tickangle=-90)
    fig.update_layout(
        title=title(run, f"mask refresh / reuse, {branch} · reuse rate {rate:.0%}"),
        height=460,
        plot_bgcolor=_hex(NONE),
        margin={"l": 50, "r": 20, "t": 60, "b": 60},
    )
    return fig


def reuse_grid_image(run: RunLike, branch: str = "cond", cell: int = 8,
                     highlight: tuple[int, int] | None = None) -> np.ndarray:  # fmt: skip
    """The same grid as an RGB image (``cell`` pixels per decision) for click selection (see :func:`cell_at`);
    ``highlight`` = ``(row, column)`` of a cell outlined in yellow (the one clicked)."""
    grid = reuse_matrix(run, branch)
    if grid.empty:
        return np.full((cell, cell, 3), NONE, dtype=np.uint8)
    z = grid.to_numpy()
    img = np.empty((*z.shape, 3), dtype=np.uint8)
    img[:] = NONE
    img[z >= 0.5] = REFRESH
    img[z < 0.5] = REUSE
    img = cv2.resize(img, (z.shape[1] * cell, z.shape[0] * cell), interpolation=cv2.INTER_NEAREST)
    img[::cell] = img[::cell] // 4 * 3  # faint grid lines between steps
    heads = grid.columns.get_level_values("head")
    for x, h in enumerate(heads):
        if h == 0 and x:  # a darker line between layers
            img[:, x * cell] = 90
    if highlight is not None:
        row, col = highlight
        cv2.rectangle(img, (col * cell, row * cell), (col * cell + cell - 1, row * cell + cell - 1), (255, 214, 0), 2)
    return img


def cell_at(run: RunLike, x: int, y: int, branch: str = "cond", cell: int = 8) -> tuple[int, int, int, float] | None:
    """``(step, layer, head, decision)`` under pixel ``(x, y)`` of :func:`reuse_grid_image`, or None off the grid;
    ``decision`` is the :func:`reuse_matrix` cell (1 refreshed, 0 reused, NaN no decision)."""
    grid = reuse_matrix(run, branch)
    row, col = y // cell, x // cell
    if grid.empty or not (0 <= row < len(grid.index) and 0 <= col < len(grid.columns)):
        return None
    layer, head = grid.columns[col]
    return int(grid.index[row]), int(layer), int(head), float(grid.iat[row, col])


def mask_in_effect(run: RunLike, step: int, layer: int, head: int, branch: str = "cond") -> str | None:
    """Key of the mask a head used at ``(step, layer)`` (the one it reused, or a fresh one)."""
    dens = events(run, Event.DENSITY)
    hit = dens[(dens["step"] == step) & (dens["layer"] == layer) & (dens["head"] == head) & (dens["branch"] == branch)]
    refs = hit["mask_ref"].dropna()
    return str(refs.iloc[0]) if len(refs) else None


def drift_curves(run: RunLike, heads: list[tuple[int, int]] | None = None, branch: str = "cond") -> go.Figure:
    """Query-key drift per step for the chosen ``(layer, head)`` pairs, with the delta line and refresh marks."""
    rows = events(run, Event.DRIFT)
    rows = rows[(rows["branch"] == branch) & rows["head"].notna()]
    if rows.empty:
        return empty_figure("no drift recorded in this run (enable TMR)")
    if not heads:
        heads = [(int(rows["layer"].min()), h) for h in sorted(rows["head"].astype(int).unique())[:4]]
    refresh = events(run, Event.MASK_REFRESH)
    refresh = refresh[refresh["branch"] == branch]
    fig = go.Figure()
    for i, (layer, head) in enumerate(heads):
        sel = rows[(rows["layer"] == layer) & (rows["head"] == head)].sort_values("step")
        if sel.empty:
            continue
        name, colour = f"l{layer}h{head}", PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=sel["step"], y=sel["value"], mode="lines+markers", name=name, legendgroup=name,
                                 line={"color": colour}, marker={"color": colour}))  # fmt: skip
        hit = refresh[(refresh["layer"] == layer) & (refresh["head"] == head) & (refresh["value"] > 0.5)]
        marks = sel[sel["step"].isin(hit["step"])]
        fig.add_trace(
            go.Scatter(
                x=marks["step"],
                y=marks["value"],
                mode="markers",
                marker={"symbol": "circle-open", "size": 13, "color": colour, "line": {"width": 2, "color": colour}},
                name=f"{name} refreshed",
                legendgroup=name,
            )
        )
    delta = rows["threshold"].dropna()
    if len(delta):
        fig.add_hline(
            y=float(delta.iloc[0]),
            line_dash="dash",
            line_color="black",
            annotation_text=f"delta {float(delta.iloc[0]):g}",
        )
    return lay_out(
        fig,
        title(run, f"query-key drift, {branch} (open circles: refreshed)"),
        380,
        x="step",
        y="L1 drift of pooled Q/K",
    )


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)
