"""Motion views: per-pixel motion heatmaps over the output frames, and MotionCache's per-token update counts.

Two sources of motion: the run's own MotionCache weights (per token, upsampled to pixels; present in
MotionCache runs) and dense optical flow of the output video (opencv Farneback; any run).
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import cv2
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from accel.runs import DamagedRunError
from accel.schema import ArrayKind, find_arrays, read_array, read_index
from viz.common import RunLike, as_run, empty_figure, title
from viz.images import captioned, coloured, enlarged, with_colour_bar

SOURCES = ("method", "flow")
TOKEN_MAPS = {"weights": ArrayKind.MOTION_WEIGHTS, "updates": ArrayKind.TOKEN_COUNTS}


def latent_frame(frame: int, temporal: int = 4) -> int:
    """Latent frame of video frame ``frame`` under Wan's causal VAE (first frame alone, then ``temporal`` each)."""
    return 0 if frame == 0 else (frame - 1) // temporal + 1


def token_maps(run: RunLike, kind: str = "weights", branch: str = "cond") -> np.ndarray | None:
    """MotionCache ``weights`` (last value) or ``updates`` per latent frame as ``(F, h, w)``; None if absent. A map
    that does not match its index entry or the run's token grid is a :class:`DamagedRunError` naming arrays.npz."""
    r = as_run(run)
    index = read_index(r.arrays)
    keys = sorted(find_arrays(index, TOKEN_MAPS[kind], branch=branch), key=lambda k: index[k]["group"])
    if not keys:
        return None
    grid = r.metrics.get("grid")
    if grid is None:
        raise DamagedRunError(r.run_id, "metrics.json", "grid is missing (the token grid of the motion maps)")
    _, h, w = grid
    maps = []
    for key in keys:
        a = read_array(r.arrays, key, index).astype(np.float32)  # shape as its index entry says
        if a.size == 0 or a.shape[-1] != h * w:
            raise DamagedRunError(r.run_id, "arrays.npz", f"{key!r} has shape {list(a.shape)}: not {h}x{w} tokens")
        maps.append(a[-1] if kind == "weights" else a)  # weights: (history, frames, tokens) -> the last
    return np.concatenate(maps, axis=0).reshape(-1, h, w)


@lru_cache(maxsize=8)
def _flow_magnitudes(path: str) -> np.ndarray:
    frames = as_run(path).frames()
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    mags = [np.zeros(gray[0].shape, np.float32)]
    for a, b in itertools.pairwise(gray):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mags.append(np.linalg.norm(flow, axis=-1))
    return np.stack(mags)


def _motion(run: RunLike, frame: int, source: str, branch: str) -> np.ndarray | None:
    """Raw motion of video frame ``frame`` at pixel size (MotionCache weight, or flow in px/frame); None if absent."""
    r = as_run(run)
    frames = r.frames()
    if not 0 <= frame < len(frames):
        raise ValueError(f"frame must be in [0, {len(frames) - 1}], got {frame}")
    height, width = frames.shape[1:3]
    if source == "flow":
        m = _flow_magnitudes(str(r.path))[frame]
    elif source == "method":
        maps = token_maps(r, "weights", branch)
        if maps is None:
            return None
        m = maps[min(latent_frame(frame), len(maps) - 1)]
    else:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    return cv2.resize(np.asarray(m, np.float32), (width, height), interpolation=cv2.INTER_CUBIC)


def motion_map(run: RunLike, frame: int, source: str = "method", branch: str = "cond") -> np.ndarray | None:
    """Motion of video frame ``frame`` as float ``(H, W)`` in [0, 1] (min to max of the frame), or None when the
    source is absent."""
    m = _motion(run, frame, source, branch)
    return None if m is None else _unit(m)[0]


def _unit(m: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``m`` scaled from its min to its max onto [0, 1] (zeros if flat), with that min and max."""
    lo, hi = float(m.min()), float(m.max())
    return ((m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)), lo, hi


UNITS = {"method": "MotionCache weight", "flow": "flow, px/frame"}
OVERLAY_MIN_PX = 384  # small frames are enlarged to at least this width, so the heatmap fills its box


def motion_overlay(
    run: RunLike, frame: int, source: str = "method", alpha: float = 0.5, branch: str = "cond"
) -> np.ndarray:
    """RGB uint8 frame with the motion heatmap (opencv TURBO colormap, the frame's min to max) blended over it,
    enlarged to at least :data:`OVERLAY_MIN_PX` wide, with a colour bar in the source's units and a caption."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = as_run(run).frames()[frame]
    if source == "flow" and frame == 0:  # flow is from the previous frame: frame 0 has none (not a zero motion)
        return captioned(enlarged(rgb, OVERLAY_MIN_PX), "frame 0: optical flow starts at frame 1 (from frame 0)")
    raw = _motion(run, frame, source, branch)
    if raw is None:
        return captioned(enlarged(rgb, OVERLAY_MIN_PX), f"frame {frame}: no {source} motion in this run")
    m, lo, hi = _unit(raw)
    heat = coloured((m * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    shown = with_colour_bar(enlarged(cv2.addWeighted(rgb, 1 - alpha, heat, alpha, 0), OVERLAY_MIN_PX), lo, hi,
                            cv2.COLORMAP_TURBO)  # fmt: skip
    return captioned(shown, f"frame {frame} · motion: {UNITS[source]} (this frame's min to max)")


def update_counts(run: RunLike, branch: str = "cond") -> go.Figure:
    """How often MotionCache recomputed each token, one panel per latent frame."""
    counts = token_maps(run, "updates", branch)
    if counts is None:
        return empty_figure("no per-token update counts (a MotionCache run has them)")
    n = len(counts)
    lo, hi = int(counts.min()), int(counts.max())  # the range the counts span, not 0 to max: 7 and 8 must differ
    hi = max(hi, lo + 1)
    ticks = sorted({lo, (lo + hi) // 2, hi})
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    fig = make_subplots(rows, cols, subplot_titles=[f"latent frame {i}" for i in range(n)])
    for i, c in enumerate(counts):
        fig.add_trace(
            go.Heatmap(
                z=c,
                zmin=lo,
                zmax=hi,
                colorscale="Turbo",
                showscale=i == 0,
                colorbar={
                    "title": "updates",
                    "tickmode": "array",
                    "tickvals": ticks,
                    "ticktext": [str(t) for t in ticks],
                },
                hovertemplate="row %{y} · col %{x}: %{z:.0f} updates<extra></extra>",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    fig.update_yaxes(autorange="reversed", showticklabels=False, scaleanchor="x", constrain="domain")
    fig.update_xaxes(showticklabels=False, constrain="domain")
    fig.update_xaxes(title_text="token column", row=rows)
    fig.update_yaxes(title_text="token row", col=1)
    fig.update_layout(
        title=title(run, f"token updates per latent frame, {branch}"),
        height=220 * rows + 80,
        margin={"l": 10, "r": 10, "t": 80, "b": 10},
    )
    return fig
