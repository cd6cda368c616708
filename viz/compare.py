"""Compare runs of one prompt and seed: side-by-side and difference videos, per-frame quality, Pareto."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from accel.errors import UserError
from accel.metrics import compare_videos
from accel.runs import DamagedRunError, Run, RunInfo, RunStore
from viz.common import RunLike, as_run, empty_figure, method_colour
from viz.images import captioned, coloured, enlarged, with_colour_bar

# config keys that must agree for two runs to show the same video (method and its settings may differ)
SAME_VIDEO_KEYS = (
    "model", "prompt", "negative_prompt", "seed", "height", "width", "frames", "steps", "guidance", "ar_step",
    "causal_block_size", "base_num_frames", "overlap_history", "addnoise_condition",
)  # fmt: skip
PSNR_CAP = 100.0  # identical frames have infinite PSNR; plotted and tabled at this value
# a run, or a store's summary of one (its config and metrics as checked when the store listed it)
Stored = RunLike | RunInfo


class FramesDifferError(UserError):
    """Two runs compared frame by frame whose frames differ in shape; names both runs and their shapes."""

    def __init__(self, runs: Sequence[Run], shapes: Sequence[tuple[int, ...]]) -> None:
        self.run_ids = [r.run_id for r in runs]
        sizes = ", ".join(f"{r} has {s}" for r, s in zip(self.run_ids, shapes, strict=True))
        super().__init__(f"frame shapes differ: {sizes} (F, H, W, C); compare runs of the same size and frame count")


def _stored(run: Stored) -> Run | RunInfo:
    """``run`` itself if it is a run or a summary, else the run at that path."""
    return run if isinstance(run, RunInfo) else as_run(run)


def skipped(exc: DamagedRunError | FramesDifferError) -> str:
    """One line for a peer run a scan left out, naming it and why."""
    if isinstance(exc, DamagedRunError):
        return f"skipped run {exc.run_id}: {exc.file}: {exc.reason}"
    return f"skipped: {exc}"


def video_key(config: dict) -> tuple:
    """What makes two runs comparable frame by frame."""
    return tuple(str(config.get(k)) for k in SAME_VIDEO_KEYS)


def comparable_runs(store: RunStore, run: Stored) -> list[RunInfo]:
    """Runs of the store (newest first) with the same prompt, seed, model and sampling as ``run``; runs that
    cannot be read are not listed (:meth:`RunStore.list`)."""
    key = video_key(_stored(run).config)
    return [info for info in store.list() if video_key(info.config) == key]


def dense_reference(store: RunStore, run: Stored) -> RunInfo | None:
    """The newest dense run comparable to ``run`` (None if there is none, or ``run`` is itself dense), preferring
    one with the same context-parallel layout (``--parallel``), so a speedup does not mix in the ranks."""
    r = _stored(run)
    dense = [i for i in comparable_runs(store, r) if i.config.get("method") == "dense" and i.run_id != r.run_id]
    same = [i for i in dense if i.config.get("parallel") == r.config.get("parallel")]
    return (same or dense or [None])[0]


def speed_samples(run: Stored, stage: str = "wall") -> list[float]:
    """The timed passes' seconds of ``wall`` (whole run) or ``denoise`` (the transformer loop); one value for a
    run timed once (or stored before timing repeats)."""
    m = _stored(run).metrics
    samples = (m.get("timing") or {}).get(f"{stage}_s") or []
    if samples:
        return [float(v) for v in samples]
    one = m.get("wall_s") if stage == "wall" else m.get("stages", {}).get("denoise_s")
    return [float(one)] if one else []


def seconds(run: Stored, stage: str = "wall") -> float | None:
    """The run's time for ``stage``: the median of its timed passes."""
    samples = speed_samples(run, stage)
    return float(np.median(samples)) if samples else None


def speedup(reference: Stored, run: Stored, stage: str = "wall") -> float | None:
    """``reference`` time / ``run`` time for ``wall`` (whole run) or ``denoise`` (the transformer loop), medians."""
    a, b = seconds(reference, stage), seconds(run, stage)
    return a / b if a and b else None


def speedup_range(reference: Stored, run: Stored, stage: str = "wall") -> tuple[float, float] | None:
    """The slowest and fastest speedup ``run``'s timed passes show against ``reference``'s median time."""
    ref, samples = seconds(reference, stage), speed_samples(run, stage)
    return (ref / max(samples), ref / min(samples)) if ref and samples else None


def noise_band(store: RunStore, reference: Stored, stage: str = "wall") -> tuple[float, float, int] | None:
    """How far dense runs of ``reference``'s video stray from it: the lowest and highest speedup over
    ``reference`` of every timed pass of every comparable dense run (its own repeats included), and how many
    passes that is; None with fewer than two. A method inside the band is not measurably faster than dense."""
    ref = _stored(reference)
    dense = [i for i in comparable_runs(store, ref) if i.config.get("method") == "dense"]
    samples = [v for info in dense for v in speed_samples(info, stage)]
    base = seconds(ref, stage)
    if len(samples) < 2 or not base:
        return None
    return base / max(samples), base / min(samples), len(samples)


PANEL_MIN_PX = 256  # panels narrower than this are enlarged (nearest neighbour) so captions stay legible


def _same_shape(runs: Sequence[Run]) -> list[np.ndarray]:
    videos = [r.frames() for r in runs]
    shapes = [v.shape for v in videos]
    if len(set(shapes)) > 1:
        raise FramesDifferError(runs, shapes)
    return videos


def run_name(run: Run) -> str:
    """How a run is named in comparisons: its label (method and settings), else its method."""
    return str(run.config.get("label") or run.config.get("method", "") or run.run_id)


def side_by_side(runs: Sequence[RunLike]) -> np.ndarray:
    """Frames of all runs next to each other, enlarged to at least :data:`PANEL_MIN_PX` wide, each captioned with
    its name underneath: ``(F, k H + CAPTION_PX, k W n, 3)``."""
    rs = [as_run(r) for r in runs]
    if len(rs) < 2:
        raise UserError("pick at least two runs to compare")
    videos = _same_shape(rs)
    panels = [captioned(enlarged(v, PANEL_MIN_PX), run_name(r)) for r, v in zip(rs, videos, strict=True)]
    return np.concatenate(panels, axis=2)


def difference_video(reference: RunLike, run: RunLike, gain: float | None = None) -> tuple[np.ndarray, float]:
    """``|run - reference|`` per pixel (max over RGB), times ``gain``, coloured with opencv INFERNO, enlarged like
    :func:`side_by_side`'s panels, with a colour bar (in 0-255 pixel units) and a caption.

    ``gain=None`` picks one for the whole video so that its 99.9th-percentile difference is bright (at most 64x,
    at least 1x); returns the frames and the gain used.
    """
    ref, r = as_run(reference), as_run(run)
    a, b = _same_shape([ref, r])
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1).astype(np.float32)
    if gain is None:
        gain = float(np.clip(200.0 / max(float(np.percentile(diff, 99.9)), 1.0), 1.0, 64.0))
    frames = enlarged(coloured(np.clip(diff * gain, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO), PANEL_MIN_PX)
    frames = with_colour_bar(frames, 0.0, 255.0 / gain, cv2.COLORMAP_INFERNO)  # in 0-255 pixel levels
    return captioned(frames, f"|{run_name(r)} - {run_name(ref)}| x{gain:.0f}"), gain


@lru_cache(maxsize=64)
def _compared(reference: str, run: str) -> dict:
    """Per-frame PSNR/SSIM of the run folder ``run`` against ``reference``; a run folder never changes once
    complete, so the table, the curves and the Pareto plot of one comparison share a single computation."""
    a, b = _same_shape([Run(reference), Run(run)])
    return compare_videos(a, b)


def frame_quality(reference: RunLike, run: RunLike) -> dict:
    """Per-frame and mean PSNR/SSIM of ``run`` against ``reference`` (:func:`accel.metrics.compare_videos`);
    runs of different sizes are a :class:`UserError`."""
    return _compared(str(as_run(reference).path), str(as_run(run).path))


def versus(reference: RunLike, run: RunLike) -> dict:
    """``run`` against ``reference`` (usually the dense run of the same prompt and seed): method, label, wall and
    denoise time, speedups, mean PSNR (capped at :data:`PSNR_CAP`) and SSIM. Every comparison reads this."""
    ref, r = as_run(reference), as_run(run)
    q = frame_quality(ref, r)
    return {
        "run": r.run_id,
        "method": r.config.get("method"),
        "label": r.config.get("label"),
        "wall_s": seconds(r, "wall"),
        "denoise_s": seconds(r, "denoise"),
        "repeats": len(speed_samples(r, "wall")),
        "speedup_wall": speedup(ref, r, "wall"),
        "speedup_denoise": speedup(ref, r, "denoise"),
        "psnr_db": min(q["psnr_mean"], PSNR_CAP),
        "ssim": q["ssim_mean"],
    }


def quality(reference: RunLike, runs: Sequence[RunLike]) -> pd.DataFrame:
    """One :func:`versus` row per run."""
    return pd.DataFrame([versus(reference, r) for r in runs])


def quality_curves(reference: RunLike, runs: Sequence[RunLike]) -> go.Figure:
    """Per-frame PSNR and SSIM of each run against ``reference``."""
    ref = as_run(reference)
    others = [r for r in map(as_run, runs) if r.run_id != ref.run_id]
    if not others:
        return empty_figure("pick a second run to compare against the reference")
    fig = make_subplots(1, 2, subplot_titles=["PSNR (dB)", "SSIM"])
    seen: dict[str, int] = {}  # runs of one method share its colour; the second and later are dashed
    lowest = 1.0
    for r in others:
        q = frame_quality(ref, r)
        method = str(r.config.get("method"))
        dash = ("solid", "dash", "dot", "dashdot")[seen.get(method, 0) % 4]
        seen[method] = seen.get(method, 0) + 1
        psnr = [min(v, PSNR_CAP) for v in q["psnr"]]
        line = {"color": method_colour(method), "dash": dash}
        common = {"mode": "lines+markers", "name": run_name(r), "legendgroup": r.run_id, "line": line}
        fig.add_trace(go.Scatter(y=psnr, **common), row=1, col=1)
        fig.add_trace(go.Scatter(y=q["ssim"], showlegend=False, **common), row=1, col=2)
        lowest = min([lowest, *q["ssim"]])
    fig.update_yaxes(range=[min(lowest - 0.01, 0.95), 1.005], row=1, col=2)  # never 0-2 when every frame is 1
    fig.update_xaxes(title_text="frame")
    fig.update_layout(
        title=f"per-frame quality against {run_name(ref)}",
        height=360,
        margin={"l": 50, "r": 20, "t": 70, "b": 40},
    )
    return fig


def pareto(store: RunStore, run: RunLike) -> go.Figure:
    """Speedup vs PSNR of every stored run comparable to ``run``, against their dense reference; the frontier
    (no other run both faster and better) is drawn as a line."""
    ref = dense_reference(store, run)
    r = as_run(run)
    if ref is None and r.config.get("method") == "dense":
        ref = r.info()
    if ref is None:
        return empty_figure("no dense reference for this prompt and seed yet: run one")
    peers = [info for info in comparable_runs(store, r) if info.run_id != ref.run_id]
    if not peers:
        return empty_figure("only the dense reference exists: generate with a method to compare")
    try:
        rows, by_id, notes = _versus_all(ref, peers)
    except DamagedRunError as exc:
        return empty_figure(f"the dense reference cannot be read: {exc}")
    if not rows:
        return empty_figure(f"no run to compare can be read: {short_notes(notes)}")
    table = pd.DataFrame(rows).dropna(subset=["speedup_wall"])
    stages = (("wall", "wall time"), ("denoise", "denoise only (transformer loop)"))
    fig = make_subplots(1, 2, shared_yaxes=True, subplot_titles=[t for _, t in stages], horizontal_spacing=0.06)
    bands = []
    for col, (stage, _) in enumerate(stages, start=1):
        x = f"speedup_{stage}"
        for method, sel in table.dropna(subset=[x]).groupby("method"):
            below, above = _error_bars(ref, [by_id[r] for r in sel["run"]], list(sel[x]), stage)
            fig.add_trace(
                go.Scatter(
                    x=sel[x], y=sel["psnr_db"], mode="markers", name=method, legendgroup=method, showlegend=col == 1,
                    marker={"size": 11, "color": method_colour(method)},
                    error_x={"type": "data", "symmetric": False, "array": above, "arrayminus": below, "thickness": 1},
                    customdata=np.stack([sel["label"].astype(str), sel["ssim"], sel["repeats"]], axis=-1),
                    hovertemplate="%{customdata[0]}<br>speedup %{x:.2f}x (median of %{customdata[2]}) · "
                    "PSNR %{y:.1f} dB · SSIM %{customdata[1]:.3f}",
                ),
                row=1, col=col,
            )  # fmt: skip
        front = _frontier(table.dropna(subset=[x]), x)
        fig.add_trace(
            go.Scatter(x=front[x], y=front["psnr_db"], mode="lines", name="Pareto front", legendgroup="front",
                       showlegend=col == 1, line={"dash": "dot", "color": "#555555"}),
            row=1, col=col,
        )  # fmt: skip
        band = noise_band(store, ref, stage)
        if band is not None:
            fig.add_vrect(x0=band[0], x1=band[1], fillcolor="#888888", opacity=0.25, line_width=0, row=1, col=col)
            bands.append(band)
        fig.add_vline(x=1.0, line_color="#999999", row=1, col=col)
        fig.update_xaxes(title_text=f"speedup over dense ({stage})", row=1, col=col)
    if bands:  # a legend entry for the shaded band
        swatch = {"symbol": "square", "size": 14, "color": "rgba(136,136,136,0.4)"}
        name = f"dense noise band ({bands[0][2]} passes)"
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, marker=swatch))
    noise = "" if bands else "; time dense twice (or with repeats >= 2) to see its noise band"
    fig.update_yaxes(title_text=f"PSNR vs dense (dB, identical = {PSNR_CAP:g})", row=1, col=1)
    fig.update_layout(
        title=f"speed vs quality over {len(table)} runs of this prompt and seed (dense = 1x; bars: min-max of "
        f"repeats){noise}" + (f"<br>{short_notes(notes)}" if notes else ""),
        height=440, margin={"l": 50, "r": 20, "t": 100 if notes else 80, "b": 40},
    )  # fmt: skip
    return fig


def _versus_all(ref: RunInfo, peers: list[RunInfo]) -> tuple[list[dict], dict[str, RunInfo], list[str]]:
    """A :func:`versus` row per peer, the peers compared by run id, and a note on each peer left out (damaged, or
    frames of another shape): one such run never hides the others. A damaged reference raises."""
    rows, by_id, notes = [], {}, []
    for info in peers:
        try:
            rows.append(versus(ref.path, info.path))
            by_id[info.run_id] = info
        except FramesDifferError as exc:
            notes.append(skipped(exc))
        except DamagedRunError as exc:
            if exc.run_id == ref.run_id:
                raise
            notes.append(skipped(exc))
    return rows, by_id, notes


def short_notes(notes: Sequence[str], most: int = 3, width: int = 160) -> str:
    """The first ``most`` notes, each cut to ``width`` characters, and how many more there are."""
    shown = [n if len(n) <= width else n[: width - 3] + "..." for n in notes[:most]]
    more = len(notes) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more else "")


def _error_bars(reference: Stored, runs: list[Stored], speedups: list[float], stage: str) -> tuple[list, list]:
    """How far below and above its median speedup each run's fastest and slowest timed pass lie."""
    below, above = [], []
    for run, value in zip(runs, speedups, strict=True):
        lo, hi = speedup_range(reference, run, stage) or (value, value)
        below.append(value - lo)
        above.append(hi - value)
    return below, above


def _frontier(table: pd.DataFrame, x: str = "speedup_wall") -> pd.DataFrame:
    """Runs not dominated in (speedup ``x``, PSNR), sorted by speedup."""
    rows = table.sort_values([x, "psnr_db"], ascending=[False, False])
    best, keep = -math.inf, []
    for i, row in rows.iterrows():
        if row["psnr_db"] > best:
            keep.append(i)
            best = row["psnr_db"]
    return table.loc[keep].sort_values(x)
