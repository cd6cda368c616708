"""One self-contained HTML report of a run: video, headline numbers and every figure that applies.

``python -m accel report RUN`` writes it; plotly.js is embedded once, so the file opens offline.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import cv2
import plotly.graph_objects as go

from accel.runs import DamagedRunError, Run, RunStore
from accel.schema import Event
from viz import chunks, compare, motion, profile, reuse, sparsity
from viz.common import RunLike, as_run, branches, empty_figure
from viz.panels import headline_rows


def all_figures(run: RunLike, store: RunStore | None = None) -> dict[str, go.Figure]:
    """Every figure that has data for this run, by section title (the app's tabs, in order)."""
    r = as_run(run)
    figs: dict[str, go.Figure] = {}
    if sparsity.density_table(r).size:
        figs["Sparsity: density per head"] = sparsity.density_heatmaps(r)
        idx = sparsity.mask_index(r)
        if len(idx):
            first = idx.iloc[0]
            figs["Sparsity: masks"] = sparsity.head_masks(r, int(first["step"]), int(first["layer"]), first["branch"])
    if not reuse.reuse_matrix(r).empty:
        figs["Mask reuse: refresh grid"] = reuse.reuse_grid(r)
        figs["Mask reuse: drift"] = reuse.drift_curves(r)
    if not chunks.chunk_states(r).empty:
        figs["Chunk cache: timeline"] = chunks.chunk_timeline(r)
        figs["Chunk cache: accumulators"] = chunks.accumulators(r)
        figs["Chunk cache: KV buffer"] = chunks.kv_buffer(r)
    if motion.token_maps(r, "updates") is not None:
        figs["Motion: token updates"] = motion.update_counts(r)
    if store is not None:
        figs.update(_against_dense(r, store))
    if profile.is_profiled(r):
        figs["Profile: named ranges"] = profile.range_chart(r)
        figs["Profile: kernels"] = profile.kernel_chart(r)
    return figs


def _against_dense(r: Run, store: RunStore) -> dict[str, go.Figure]:
    """The figures of ``r`` against its dense reference; a reference that cannot be read, or whose frames differ,
    leaves a note naming it in their place (``r``'s own damage is raised)."""
    ref = compare.dense_reference(store, r)
    if ref is None:
        return {}
    figs: dict[str, go.Figure] = {}
    try:
        figs["Compare: quality vs dense"] = compare.quality_curves(ref.path, [r])
        figs["Compare: speed vs quality"] = compare.pareto(store, r)
        if profile.is_profiled(r) and profile.is_profiled(ref.path):
            figs["Profile: breakdown vs dense"] = profile.breakdown_chart(r, ref.path)[0]
    except (DamagedRunError, compare.FramesDifferError) as exc:
        if isinstance(exc, DamagedRunError) and exc.run_id == r.run_id:
            raise
        figs["Compare: skipped"] = empty_figure(compare.skipped(exc))
    return figs


def _png(rgb) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode an image as PNG")
    return base64.b64encode(buf.tobytes()).decode()


def write_report(run: RunLike, out: str | Path, store: RunStore | None = None) -> Path:
    """Write the HTML report of ``run`` to ``out`` (a file path); returns it."""
    r = as_run(run)
    out = Path(out)
    parts = [
        f"<h1>{html.escape(r.config.get('label') or r.run_id)}</h1>",
        f"<p><b>prompt</b>: {html.escape(str(r.config.get('prompt', '')))} · <b>model</b>: "
        f"{html.escape(str(r.config.get('model')))} · <b>run</b>: {html.escape(r.run_id)}</p>",
    ]
    if r.video_path is not None:
        video = base64.b64encode(r.video_path.read_bytes()).decode()
        parts.append(f'<video controls loop autoplay muted src="data:video/mp4;base64,{video}"></video>')
    cells = "".join(f"<tr><th>{_cell(k)}</th><td>{_cell(v)}</td></tr>" for k, v in headline_rows(store, r))
    parts.append(f"<table class='headline'>{cells}</table>")
    parts += [f"<p><b>Warning</b>: {html.escape(w)}</p>" for w in r.metrics.get("warnings") or []]
    if motion.token_maps(r, "weights") is not None or r.video_path is not None:
        frame = len(r.frames()) // 2
        source = "method" if motion.token_maps(r, "weights") is not None else "flow"
        img = _png(motion.motion_overlay(r, frame, source))
        parts.append(f"<h2>Motion ({source}) at frame {frame}</h2><img src='data:image/png;base64,{img}'>")
    first = True
    for name, fig in all_figures(r, store).items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=first))
        first = False
    body = "\n".join(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(r.run_id)}</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}video,img{max-width:100%}"
        "table.headline{border-collapse:collapse}table.headline th,table.headline td{border:1px solid #ccc;"
        "padding:4px 10px;text-align:left}</style>"
        f"</head><body>{body}</body></html>",
        encoding="utf-8",
    )
    return out


def branch_choices(run: RunLike) -> list[str]:
    """Branches with attention decisions, for the app's pickers."""
    return branches(run, Event.DENSITY) or ["cond"]


def _cell(text: str) -> str:
    """A headline cell (the app's Markdown: ``**bold**``, ```code```, ``<br>``) as escaped HTML."""
    out = html.escape(text).replace("&lt;br&gt;", "<br>")
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
