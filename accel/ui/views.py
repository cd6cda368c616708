"""Handlers of the views of a stored run (no model loads): headline, sparsity, reuse, chunks, motion, compare,
profile, TensorBoard and the HTML report."""

from __future__ import annotations

from typing import Any

import gradio as gr

from accel import tempdirs
from accel.errors import UserError
from accel.ui.common import event_handler, open_run, picker, run_store
from profiling import tensorboard
from viz import panels
from viz.common import empty_figure
from viz.report import write_report

CLICK_A_CELL = "click a cell of the grid: the mask that head used at that step shows here"
DIFF_LABEL = "Difference of the second run (colour bar in pixel levels)"
TENSORBOARD_NOTE = (
    "TensorBoard's profiler plugin draws with Google Charts, loaded from the internet: offline its views stay blank. "
    "Everything on this tab works offline, and the trace file opens offline in chrome://tracing (or in Perfetto)."
)


@event_handler
def shown_run(run_id: str | None) -> tuple[str | None, str]:
    """The picked run's video (it loops) and headline numbers; empty for no run."""
    if not run_id:
        return None, ""
    run = open_run(run_id)
    video = run.video_path
    return (str(video) if video is not None else None), panels.headline(run_store(), run)


@event_handler
def sparsity_view(run_id: str | None, branch: str | None = None, step: Any = None, layer: Any = None):
    """Masks of one step and layer, density heatmaps and the dense warm-up steps."""
    branch, step, layer, masks, density, note = panels.sparsity_panel(open_run(run_id), branch, step, layer)
    return picker(branch), picker(step), picker(layer), masks, density, note


def density_cell(cell: str | None) -> tuple[int, int]:
    """The ``(step, layer)`` of a clicked density-heatmap cell, from the page script's ``"step,layer"``."""
    try:
        step, layer = (int(float(v)) for v in (cell or "").split(","))
    except (ValueError, OverflowError):  # not two finite numbers: say so, and the view stays as it is
        raise UserError(f"could not read the clicked density cell {cell!r} (expected 'step,layer'): pick the step "
                        "and layer above instead") from None  # fmt: skip
    return step, layer


@event_handler
def density_click(run_id: str | None, branch: str | None, cell: str):
    """The Sparsity view at the step and layer of a clicked density-heatmap cell (``"step,layer"``, written by the
    page script; the nearest step with recorded masks)."""
    step, layer = density_cell(cell)
    return sparsity_view(run_id, branch, step, layer)


@event_handler
def reuse_view(run_id: str | None, branch: str | None = None, heads: list[str] | None = None):
    """Refresh/reuse grid (clickable image) and drift curves of the chosen heads."""
    branch, grid, heads, drift, note = panels.reuse_panel(open_run(run_id), branch, heads)
    return picker(branch), grid, picker(heads), drift, note, empty_figure(CLICK_A_CELL), ""


@event_handler
def reuse_pick(run_id: str | None, branch: str, evt: gr.SelectData):
    """The mask a clicked head used at that step."""
    x, y = evt.index
    return panels.reuse_cell(open_run(run_id), branch, int(x), int(y))


@event_handler
def chunks_view(run_id: str | None, branch: str | None = None):
    """Chunk timeline, accumulators and KV buffer."""
    branch, timeline, acc, kv = panels.chunks_panel(open_run(run_id), branch)
    return picker(branch), timeline, acc, kv


@event_handler
def motion_view(run_id: str | None, frame: Any = 0, source: str = "method"):
    """Motion heatmap over a frame, and token update counts."""
    n, frame, source, overlay, counts = panels.motion_panel(open_run(run_id), frame, source)
    return gr.update(maximum=n - 1, value=frame), gr.update(value=source), overlay, counts


@event_handler
def compare_choices(run_id: str | None):
    """Comparable runs (same prompt, seed, model and sampling), the dense one first, and the Pareto plot."""
    runs, pareto, note = panels.compare_panel(run_store(), open_run(run_id))
    return picker(runs), pareto, note, *no_comparison()


def no_comparison() -> tuple:
    """The Compare results (side by side, difference, curves, table) before Compare is pressed for the runs picked."""
    why = "press Compare to compare the runs picked"
    return None, gr.update(value=None, label=DIFF_LABEL), empty_figure(why), panels.note_table(why)


@event_handler
def compare_runs(run_ids: list[str] | None):
    """Side-by-side and difference videos, per-frame quality and the table; the first run is the reference."""
    runs = [open_run(r) for r in run_ids or []]
    side, diff, gain, curves, table = panels.compare_runs_panel(runs)
    return str(side), gr.update(value=str(diff), label=f"|second - first| x{gain:.0f}"), curves, table


@event_handler
def profile_view(run_id: str | None):
    """Profiler tables and charts, the breakdown beside the dense reference, the trace file; TensorBoard only for
    a profiled run."""
    *shown, profiled = panels.profile_panel(run_store(), open_run(run_id))
    return *shown, gr.update(interactive=profiled)


@event_handler
def open_tensorboard(run_id: str | None) -> str:
    """Start TensorBoard (torch-tb-profiler) on 127.0.0.1 for the run's logdir; one process per app."""
    run = open_run(run_id)
    try:
        port = tensorboard.start(run.path / "tb")
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:  # no logdir, no plugin, no answer: a message
        raise UserError(str(exc)) from None
    url = f"http://127.0.0.1:{port}/#pytorch_profiler"
    return f"TensorBoard serves this run's profile on port {port}: [{url}]({url})"


@event_handler
def export_report(run_id: str | None):
    """The run's HTML report (opens offline), shown as a file to download."""
    run = open_run(run_id)
    out = tempdirs.latest("report") / f"{run.run_id}.html"  # replaces the previous export (served from the cache)
    return gr.update(value=str(write_report(run, out, run_store())), visible=True)
