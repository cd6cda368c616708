"""Sparsity views: per-head block masks of one step and layer, and density over step x layer per head."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from accel.runs import DamagedRunError, Run
from accel.schema import MASK_KINDS, Event, find_arrays, load_mask, read_array, read_index
from viz.common import SEQUENTIAL, RunLike, as_run, empty_figure, events, title

DENSITY_META = "accel-density"  # layout.meta of the density heatmaps
MAX_MASK_PIXELS = 192  # cluster masks are drawn at token scale, downsampled to at most this many pixels a side


def mask_index(run: RunLike) -> pd.DataFrame:
    """One row per recorded mask: ``key, step, branch, layer, chunk, heads, nq, nk, q_offsets, k_offsets``."""
    index = read_index(as_run(run).arrays)
    rows = [
        {
            "key": key,
            "step": m["step"],
            "branch": m["branch"],
            "layer": m["layer"],
            "chunk": m.get("chunk"),
            "heads": m["shape"][0],
            "nq": m["shape"][1],
            "nk": m["shape"][2],
            "q_offsets": m.get("q_offsets"),
            "k_offsets": m.get("k_offsets"),
        }
        for key, m in ((key, index[key]) for key in find_arrays(index, MASK_KINDS))
    ]
    if not rows:
        return pd.DataFrame(columns=["key", "step", "branch", "layer", "chunk", "heads", "nq", "nk"])
    return pd.DataFrame(rows).sort_values(["step", "branch", "layer"]).reset_index(drop=True)


def mask_image(run: RunLike, key: str, head: int) -> np.ndarray:
    """Head ``head`` of mask ``key`` as a float image (1 = computed).

    Fixed blocks give the ``(nq, nk)`` block mask; cluster masks (SVG2, with offsets) are drawn at token
    scale in the permuted order, so a large cluster takes a large share of the picture.
    """
    r = as_run(run)
    mask = load_mask(r.arrays, key)[head]
    meta = read_index(r.arrays)[key]
    if "q_offsets" not in meta:
        return mask.astype(np.float32)
    rows = _cluster_of_pixels(_offsets(r, meta, "q_offsets", mask.shape[0]), head)
    cols = _cluster_of_pixels(_offsets(r, meta, "k_offsets", mask.shape[1]), head)
    return mask[np.ix_(rows, cols)].astype(np.float32)


def _offsets(run: Run, meta: dict, name: str, clusters: int) -> np.ndarray:
    """A cluster mask's ``q_offsets`` / ``k_offsets``: ``(..., heads, clusters + 1)`` integers, else a
    :class:`DamagedRunError` naming arrays.npz."""
    off = read_array(run.arrays, meta.get(name, ""), {})
    heads = meta["shape"][0]
    if off.ndim < 2 or off.shape[-2:] != (heads, clusters + 1) or not np.issubdtype(off.dtype, np.integer):
        raise DamagedRunError(run.run_id, "arrays.npz", f"{name} of a mask of {heads} heads and {clusters} clusters "
                              f"is {off.dtype} {list(off.shape)}")  # fmt: skip
    return off


def _cluster_of_pixels(offsets: np.ndarray, head: int) -> np.ndarray:
    """Cluster index of evenly spaced tokens (one per pixel) for the head's offsets ``(..., H, n + 1)``."""
    off = offsets.reshape(-1, offsets.shape[-2], offsets.shape[-1])[0, head]
    length = int(off[-1])
    tokens = np.linspace(0, length - 1, min(length, MAX_MASK_PIXELS)).round().astype(np.int64)
    return np.searchsorted(off[1:], tokens, side="right")


MASK_COLOURS = [[0, "#f4f4f4"], [1, "#1f4e9c"]]  # skipped, computed
MASK_LEGEND = {"tickvals": [0, 1], "ticktext": ["skipped", "computed"], "len": 0.5, "thickness": 12}


def mask_heatmap(z: np.ndarray, name: str, legend: bool) -> go.Heatmap:
    """One head's binary mask as a heatmap (computed blue, skipped light), with the two-colour legend if asked."""
    return go.Heatmap(z=z, colorscale=MASK_COLOURS, zmin=0, zmax=1, showscale=legend, colorbar=MASK_LEGEND,
                      hovertemplate="query %{y} · key %{x}: %{z}<extra>" + name + "</extra>")  # fmt: skip


def square_axes(fig: go.Figure, panels: int, kind: str) -> None:
    """Mask panels as squares, queries top to bottom, axes named after ``kind`` (blocks or permuted clusters)."""
    for i in range(1, panels + 1):
        suffix = "" if i == 1 else str(i)
        y = {"scaleanchor": f"x{suffix}", "autorange": "reversed", "constrain": "domain"}
        fig.update_layout({f"yaxis{suffix}": y, f"xaxis{suffix}": {"constrain": "domain"}})
    unit = "cluster (permuted)" if kind == "clusters" else "block"
    fig.update_xaxes(title_text=f"key {unit}", title_standoff=2)
    fig.update_yaxes(title_text=f"query {unit}", title_standoff=2)


def head_masks(run: RunLike, step: int, layer: int, branch: str = "cond") -> go.Figure:
    """A grid of every head's mask at ``(step, layer, branch)``, titled with each head's density."""
    idx = mask_index(run)
    sel = idx[(idx["step"] == step) & (idx["layer"] == layer) & (idx["branch"] == branch)]
    if sel.empty:
        return empty_figure(f"no mask recorded at step {step}, layer {layer}, {branch}")
    row = sel.iloc[0]
    heads = int(row["heads"])
    dens = events(run, Event.DENSITY)
    dens = dens[(dens["step"] == step) & (dens["layer"] == layer) & (dens["branch"] == branch)]
    by_head = dict(zip(dens["head"].astype(int), dens["density"], strict=False))
    cols = min(heads, 6)
    nrows = math.ceil(heads / cols)
    fig = make_subplots(
        nrows,
        cols,
        subplot_titles=[f"head {h} · {by_head.get(h, float('nan')):.2f}" for h in range(heads)],
        horizontal_spacing=0.04,
        vertical_spacing=0.12 / max(1, nrows - 1) if nrows > 1 else 0.0,
    )
    for h in range(heads):
        fig.add_trace(mask_heatmap(mask_image(run, row["key"], h), f"head {h}", h == 0), h // cols + 1, h % cols + 1)
    kind = "clusters" if row["q_offsets"] else "blocks"
    square_axes(fig, heads, kind)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(
        title=title(run, f"masks at step {step}, layer {layer}, {branch} ({kind}; head · density)"),
        height=max(280, 230 * nrows + 90),
        margin={"l": 30, "r": 10, "t": 70, "b": 30},
    )
    return fig


def warmup_structure(run: RunLike, branch: str | None = None) -> tuple[list[int], list[int]]:
    """Warm-up as the methods define it: the steps where every layer ran dense (XAttention's ``warmup_steps``,
    SVG2's first steps), and the layers that ran dense at every step (SVG2's dense first layers)."""
    rows = events(run, Event.DENSE_WARMUP)
    every = events(run, Event.DENSE_WARMUP, Event.DENSITY)  # every (step, layer) attention ran at
    if branch is not None:
        rows, every = rows[rows["branch"] == branch], every[every["branch"] == branch]
    if rows.empty:
        return [], []
    cells = rows[["step", "layer"]].dropna().astype(int).drop_duplicates()
    layers, steps = every["layer"].dropna().astype(int).nunique(), every["step"].dropna().astype(int).nunique()
    per_step, per_layer = cells.groupby("step")["layer"].nunique(), cells.groupby("layer")["step"].nunique()
    warm_steps = sorted(int(s) for s, n in per_step.items() if n >= layers)
    warm_layers = sorted(int(layer) for layer, n in per_layer.items() if n >= steps and steps > len(warm_steps))
    return warm_steps, warm_layers


def warmup_note(run: RunLike, branch: str | None = None) -> str:
    """One line on dense warm-up: steps at every layer, layers at every step."""
    steps, layers = warmup_structure(run, branch)
    parts = [f"step{'s' if len(steps) > 1 else ''} {step_ranges(steps)} (every layer)"] if steps else []
    parts += [f"layer{'s' if len(layers) > 1 else ''} {step_ranges(layers)} (every step)"] if layers else []
    return "dense warm-up: " + "; ".join(parts) if parts else ""


def density_table(run: RunLike, branch: str = "cond") -> pd.DataFrame:
    """Mean density per ``(head, layer, step)`` of one branch."""
    rows = events(run, Event.DENSITY)
    rows = rows[(rows["branch"] == branch) & rows["head"].notna()]
    return rows.groupby(["head", "layer", "step"], as_index=False)["density"].mean()


def density_heatmaps(run: RunLike, branch: str = "cond", mark: tuple[int, int] | None = None) -> go.Figure:
    """Density over step x layer, one panel per head; dense warm-up steps are shaded; ``mark`` = ``(step, layer)``
    outlined in every panel (the masks shown beside)."""
    table = density_table(run, branch)
    if table.empty:
        return empty_figure("no attention densities recorded (a dense or cache-only run)")
    heads = sorted(table["head"].astype(int).unique())
    steps = sorted(table["step"].astype(int).unique())
    layers = sorted(table["layer"].astype(int).unique())
    cols = min(len(heads), 4)
    nrows = math.ceil(len(heads) / cols)
    fig = make_subplots(nrows, cols, subplot_titles=[f"head {h}" for h in heads], shared_xaxes=True, shared_yaxes=True)
    warm, warm_layers = warmup_structure(run, branch)
    for i, h in enumerate(heads):
        grid = table[table["head"] == h].pivot(index="layer", columns="step", values="density")
        grid = grid.reindex(index=layers, columns=steps)
        fig.add_trace(
            go.Heatmap(
                z=grid.to_numpy(),
                x=steps,
                y=layers,
                zmin=0,
                zmax=1,
                colorscale=SEQUENTIAL,
                showscale=i == 0,
                colorbar={"title": "density"},
                hovertemplate="step %{x} · layer %{y}: %{z:.3f}<extra>head " + str(h) + "</extra>",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    shapes = []  # built directly: add_vrect(row="all") is quadratic in the number of panels
    shade = {"fillcolor": "white", "opacity": 0.3, "line": {"width": 0}}
    for i in range(len(heads)):
        axis = "" if i == 0 else str(i + 1)
        for a, b in _spans(warm):  # warm-up steps: columns
            shapes.append({"type": "rect", "xref": f"x{axis}", "yref": f"y{axis} domain", "x0": a - 0.5,
                           "x1": b + 0.5, "y0": 0, "y1": 1, **shade})  # fmt: skip
        for a, b in _spans(warm_layers):  # dense layers: rows
            shapes.append({"type": "rect", "xref": f"x{axis} domain", "yref": f"y{axis}", "x0": 0, "x1": 1,
                           "y0": a - 0.5, "y1": b + 0.5, **shade})  # fmt: skip
        if mark is not None:
            shapes.append({"type": "rect", "xref": f"x{axis}", "yref": f"y{axis}", "x0": mark[0] - 0.5,
                           "x1": mark[0] + 0.5, "y0": mark[1] - 0.5, "y1": mark[1] + 0.5,
                           "line": {"color": "#ff2d55", "width": 2}})  # fmt: skip
    fig.update_layout(shapes=shapes)
    note = warmup_note(run, branch)
    note = f" · {note} (shaded)" if note else ""
    fig.update_xaxes(title_text="step", row=nrows)
    fig.update_yaxes(title_text="layer", col=1)
    fig.update_layout(
        meta=DENSITY_META,  # the app's page script finds this figure by it (click a cell: that step and layer)
        title=title(run, f"density per head, {branch}{note}"),
        height=max(300, 220 * nrows + 90),
        margin={"l": 50, "r": 20, "t": 80, "b": 40},
    )
    return fig


def _spans(values: list[int]) -> list[tuple[int, int]]:
    """Sorted integers as contiguous ``(first, last)`` spans: ``[0, 1, 2, 5]`` -> ``[(0, 2), (5, 5)]``."""
    spans: list[tuple[int, int]] = []
    for v in values:
        if spans and spans[-1][1] == v - 1:
            spans[-1] = (spans[-1][0], v)
        else:
            spans.append((v, v))
    return spans


def step_ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in _spans(values))
