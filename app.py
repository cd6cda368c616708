"""Gradio app: generate with any method and see why it is fast or ugly, beside the video.

``python app.py`` serves on http://127.0.0.1:7860 (``--host``/``--port``/``--runs-dir`` to change) and
starts on the embedded model with no network. This file is wiring only: one builder per tab connects
widgets to :mod:`viz.panels` (what each tab shows for a run), :mod:`accel.forms` (the Generate form) and
:func:`accel.runner.generate`. Any stored run reopens without loading a model; generations are queued one
at a time while the views stay responsive. A :class:`~accel.errors.UserError` is shown as a message; any
other failure is logged with its traceback and shown in one line, and the app keeps serving.
"""

from __future__ import annotations

import argparse
import errno
import functools
import inspect
import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from accel import budget, forms, methods, models, retime, tempdirs
from accel.config import DEFAULT_MODEL, KERNEL_BACKENDS, MAX_REPEATS
from accel.errors import DependencyError, Parser, UserError, imports_undone_on_failure, root_cause
from accel.fields import MODEL_DEFAULT, FieldSpec, parse_number
from accel.paths import TABLES
from accel.runs import RunStore
from profiling import tensorboard
from viz import motion, panels, profile
from viz.common import empty_figure, fit_title
from viz.report import write_report
from viz.sparsity import DENSITY_META

HIDDEN = "accel-hidden"  # elements the page script hides (wiring, not widgets)
DENSITY_CLICK = "density-click"  # the hidden button a click on the density heatmap presses
# The page script (1) links the density heatmap to the step and layer pickers: gradio's Plot has no click event, so
# it listens for clicks on the figure whose layout.meta is viz.sparsity.DENSITY_META, keeps the hovered cell
# ("step,layer") and presses a hidden button whose event reads it (density_click); (2) redraws plots at their width
# whenever their box changes size: a plot drawn while its tab was hidden comes out 700 px wide, and plotly's own
# "responsive" redraw only listens to window resizes; (3) puts messages at the bottom right, off the buttons.
PAGE_SCRIPT = f"""() => {{
  const style = document.createElement('style');  // messages at the bottom right: never over the top buttons
  style.textContent = '.toast-wrap {{ top: auto !important; bottom: 16px; }}';
  document.head.appendChild(style);
  const box = () => document.querySelector('#{DENSITY_CLICK}');
  const hide = () => document.querySelectorAll('.{HIDDEN}').forEach((e) => {{ e.style.display = 'none'; }});
  let pending = null;
  const redraw = () => {{
    clearTimeout(pending);
    pending = setTimeout(() => window.dispatchEvent(new Event('resize')), 150);
  }};
  const sized = new ResizeObserver(redraw);
  const watched = new WeakSet();
  const watch = () => document.querySelectorAll('.js-plotly-plot').forEach((gd) => {{
    const frame = gd.parentElement;
    if (frame && !watched.has(frame)) {{ watched.add(frame); sized.observe(frame); }}
  }});
  new MutationObserver(() => {{ hide(); watch(); }}).observe(document.body, {{childList: true, subtree: true}});
  hide();
  watch();
  document.addEventListener('click', (e) => {{
    if (e.target.closest && e.target.closest('[role=tab]')) redraw();
    const gd = e.target.closest && e.target.closest('.js-plotly-plot');
    if (!gd || !gd.layout || gd.layout.meta !== '{DENSITY_META}' || !(gd._hoverdata || []).length) return;
    const p = gd._hoverdata[0];
    window.accelDensityCell = p.x + ',' + p.y;
    if (box()) box().click();
  }}, true);
}}"""
PROGRESS = gr.Progress()  # gradio injects a live tracker for a parameter defaulting to one
GENERATE_QUEUE = "generate"  # generations (and dense references) share one queue: one at a time
LOG = logging.getLogger("accel.app")


# -- adapters between panels and widgets ------------------------------------------------------------------
def _store() -> RunStore:
    return RunStore(os.environ.get("ACCEL_RUNS_DIR"))


def _open(run_id: str | None):
    return panels.open_run(_store(), run_id)


def _shown(fn: Callable) -> Callable:
    """``fn`` as an event handler: a UserError becomes a message; anything else is logged, then a message."""

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        try:
            return _fitted(fn(*args, **kwargs))
        except gr.Error:
            raise
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # a bug or a broken package: its root cause here, the traceback in the log
            LOG.exception("%s failed", fn.__name__)
            why = str(exc) if isinstance(exc, DependencyError) else root_cause(exc)
            raise gr.Error(f"{fn.__name__.replace('_', ' ')} failed: {why} (traceback in the server log)") from None

    return handler


def _fitted(result: Any) -> Any:
    """A handler's result with every figure's title wrapped to the plot (plotly cuts a long title, never wraps)."""
    if isinstance(result, tuple):
        return tuple(_fitted(r) for r in result)
    return fit_title(result) if isinstance(result, go.Figure) else result


NO_RUN = "no run selected: generate one, or pick one above or in the Runs tab"


def _blank(component: gr.components.Component, why: str) -> Any:
    """What ``component`` shows while there is nothing of the selected run to show (``why`` where it has room)."""
    if isinstance(component, gr.Plot):
        return empty_figure(why)
    if isinstance(component, gr.Dataframe):
        return panels.note_table(why)
    if isinstance(component, gr.Dropdown):
        return gr.update(choices=[], value=[] if component.multiselect else None)
    if isinstance(component, gr.Markdown):
        return ""
    if isinstance(component, gr.Button):
        return gr.update(interactive=False)
    if isinstance(component, (gr.Slider, gr.Radio)):
        return gr.skip()
    return None  # an image, a video, a file: cleared


def _blanks(outputs: list, why: str) -> Callable[..., Any]:
    """An event handler that blanks ``outputs`` (:func:`_blank`), whatever its inputs."""

    def blank(*_):
        shown = tuple(_blank(c, why) for c in outputs)
        return shown if len(shown) > 1 else shown[0]

    return blank


def _for_run(view: Callable, outputs: list) -> Callable:
    """``view`` for a change of the run shown: with no run (none yet, or it was deleted), every output blank."""

    @functools.wraps(view)
    def update(run_id: str | None, *rest):
        return view(run_id, *rest) if run_id else _blanks(outputs, NO_RUN)()

    return update


def _picker(pick: panels.Pick, **extra: Any):
    return gr.update(choices=pick.options, value=pick.value, **extra)


@_shown
def _run_lists():
    """The run picker's choices and the Runs table, fresh from the store; what is picked or selected stays."""
    store = _store()
    return gr.update(choices=panels.run_choices(store)), panels.runs_table(store)


STOP = threading.Event()  # set by the Stop button; generations run one at a time (GENERATE_QUEUE)


class Stopped(UserError):
    """The user pressed Stop: not an error; nothing was stored and the run shown stays."""


def request_stop() -> None:
    """Ask the running generation to stop at its next step (nothing is stored)."""
    STOP.set()


def _stopped(exc: Stopped, outputs: int) -> tuple:
    """A neutral note for a stopped generation, and no change to its ``outputs`` (the previous run stays shown)."""
    gr.Info(f"Stopped: {exc}")
    return tuple(gr.skip() for _ in range(outputs))


def _steps(model: str, progress) -> Callable[..., None]:
    """A progress callback ``(i, n, what="")`` for gradio's tracker that honours Stop (pressed from now on); it
    counts denoising steps, or for a diffusion-forcing model the rows of its schedule (chunks are denoised
    staggered, so there are more rows than steps)."""
    unit = "diffusion-forcing iteration" if models.resolve(model).family == "skyreels" else "step"
    STOP.clear()

    def step(i: int, n: int, what: str = "") -> None:
        if STOP.is_set():
            raise Stopped(f"at {unit} {i} of {n}{' in ' + what if what else ''}: nothing was stored")
        done = f"{unit} {i}/{n}" if i < n else f"{unit} {n}/{n} · decoding the video (VAE)"
        progress(i / n, desc=f"{what} · {done}" if what else done)

    return step


def _generate(cfg, profile: bool, progress) -> str:
    """Generate ``cfg`` into the store with a progress bar (steps, then the VAE decode) that honours Stop. A failed
    import leaves nothing half-imported behind: the next request imports afresh."""
    from accel.runner import generate  # imported on first use: the views need no torch model

    with imports_undone_on_failure():
        return generate(cfg, _store(), progress=_steps(cfg.model, progress), profile=profile).run_id


# -- event handlers ----------------------------------------------------------------------------------------
def _form_signature() -> inspect.Signature:
    """The Generate form as named parameters (what gradio_client users see): ``model, method, prompt,
    negative``, the sampling names, ``profile``, ``kernels`` and ``<method>_<field>`` per method setting, each
    defaulting to the form's default, then gradio's progress tracker. Gradio names an endpoint's parameters after its
    handler's signature (``param_<N>`` where it cannot, as for ``*args``)."""
    names = ["model", "method", "prompt", "negative", *forms.SAMPLING, *forms.FORCING, "profile", "kernels"]
    names += [re.sub(r"\W", "_", f"{f.method}_{f.name}") for f in forms.FIELDS]
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind, default=d) for n, d in zip(names, forms.form_values(), strict=True)]
    return inspect.Signature([*params, inspect.Parameter("progress", kind, default=PROGRESS)])


GENERATE_FORM = _form_signature()


@_shown
def run_generation(*args, **kwargs):
    """One generation from the form: the video, its headline numbers, and the run picked in the views."""
    values = GENERATE_FORM.bind(*args, **kwargs)
    values.apply_defaults()
    *form, progress = values.arguments.values()
    model, method, prompt, negative = form[:4]
    n = forms.SETTINGS_START
    sampling, (profile_on, kernels), fields = form[4 : n - 2], form[n - 2 : n], form[n:]
    cfg = forms.run_config(model, method, prompt, negative, list(sampling), list(fields), kernels)
    try:
        run = _store().load(_generate(cfg, bool(profile_on), progress))
    except Stopped as exc:
        return _stopped(exc, 3)
    choices = panels.run_choices(_store())
    video = run.video_path  # refused (one line) if a symbolic link or over its size limit
    return str(video) if video else None, panels.headline(_store(), run), gr.update(choices=choices, value=run.run_id)


run_generation.__signature__ = GENERATE_FORM  # what gradio (and inspect) read: one name per form value


@_shown
def run_dense_reference(run_id: str | None, progress=PROGRESS):
    """Generate the dense run matching ``run_id`` (same prompt, seed, model and sampling)."""
    run = _open(run_id)
    try:
        _generate(forms.dense_reference(run.config), profile.is_profiled(run), progress)
    except Stopped as exc:
        return _stopped(exc, 7)
    return compare_choices(run_id)


@_shown
def retime_run(run_id: str | None, rounds: Any = retime.ROUNDS, progress=PROGRESS):
    """Time the shown run and dense alternately in this process (:mod:`accel.retime`); the headline then shows that
    ratio instead of the two runs' own."""
    run = _open(run_id)
    rounds = retime.ROUNDS if rounds is None or str(rounds).strip() == "" else parse_number(rounds, "rounds", True)
    try:
        with imports_undone_on_failure():
            retime.retime(run, rounds, _steps(run.config.get("model"), progress))
    except Stopped as exc:
        return _stopped(exc, 2)
    return shown_run(run_id)


@_shown
def model_defaults(model: str) -> str:
    """What the form's empty fields mean for this model (sizes, blocks, clusters, TMR deltas, cache thresholds)."""
    try:
        return models.defaults_text(models.resolve(model))
    except UserError:  # a folder or hub id that is not registered: its defaults are known once it loads
        return f"**{model}**: defaults come from the checkpoint and the Wan2.1 settings"


@_shown
def preset_sizes(model: str, name: str) -> list[Any]:
    """Height, width and frames of a size preset for the form (empty = the model's defaults)."""
    sizes = models.size_preset(models.resolve(model), name)
    return [sizes.get(k, "") for k in ("height", "width", "frames")]


@_shown
def shown_run(run_id: str | None) -> tuple[str | None, str]:
    """The picked run's video (it loops) and headline numbers; empty for no run."""
    if not run_id:
        return None, ""
    run = _open(run_id)
    video = run.video_path
    return (str(video) if video is not None else None), panels.headline(_store(), run)


@_shown
def sparsity_view(run_id: str | None, branch: str | None = None, step: Any = None, layer: Any = None):
    """Masks of one step and layer, density heatmaps and the dense warm-up steps."""
    branch, step, layer, masks, density, note = panels.sparsity_panel(_open(run_id), branch, step, layer)
    return _picker(branch), _picker(step), _picker(layer), masks, density, note


@_shown
def density_click(run_id: str | None, branch: str | None, cell: str):
    """The Sparsity view at the step and layer of a clicked density-heatmap cell (``"step,layer"``, written by the
    page script; the nearest step with recorded masks)."""
    try:
        step, layer = (int(float(v)) for v in cell.split(","))
    except ValueError:
        return sparsity_view(run_id, branch)
    return sparsity_view(run_id, branch, step, layer)


@_shown
def reuse_view(run_id: str | None, branch: str | None = None, heads: list[str] | None = None):
    """Refresh/reuse grid (clickable image) and drift curves of the chosen heads."""
    branch, grid, heads, drift, note = panels.reuse_panel(_open(run_id), branch, heads)
    return _picker(branch), grid, _picker(heads), drift, note, empty_figure(CLICK_A_CELL), ""


CLICK_A_CELL = "click a cell of the grid: the mask that head used at that step shows here"


@_shown
def reuse_pick(run_id: str | None, branch: str, evt: gr.SelectData):
    """The mask a clicked head used at that step."""
    x, y = evt.index
    return panels.reuse_cell(_open(run_id), branch, int(x), int(y))


@_shown
def chunks_view(run_id: str | None, branch: str | None = None):
    """Chunk timeline, accumulators and KV buffer."""
    branch, timeline, acc, kv = panels.chunks_panel(_open(run_id), branch)
    return _picker(branch), timeline, acc, kv


@_shown
def motion_view(run_id: str | None, frame: Any = 0, source: str = "method"):
    """Motion heatmap over a frame, and token update counts."""
    n, frame, source, overlay, counts = panels.motion_panel(_open(run_id), frame, source)
    return gr.update(maximum=n - 1, value=frame), gr.update(value=source), overlay, counts


@_shown
def compare_choices(run_id: str | None):
    """Comparable runs (same prompt, seed, model and sampling), the dense one first, and the Pareto plot."""
    runs, pareto, note = panels.compare_panel(_store(), _open(run_id))
    return _picker(runs), pareto, note, *_no_comparison()


def _no_comparison() -> tuple:
    """The Compare results (side by side, difference, curves, table) before Compare is pressed for the runs picked."""
    why = "press Compare to compare the runs picked"
    return None, gr.update(value=None, label=DIFF_LABEL), empty_figure(why), panels.note_table(why)


DIFF_LABEL = "Difference of the second run (colour bar in pixel levels)"


@_shown
def compare_runs(run_ids: list[str] | None):
    """Side-by-side and difference videos, per-frame quality and the table; the first run is the reference."""
    runs = [_open(r) for r in run_ids or []]
    side, diff, gain, curves, table = panels.compare_runs_panel(runs)
    return str(side), gr.update(value=str(diff), label=f"|second - first| x{gain:.0f}"), curves, table


TENSORBOARD_NOTE = (
    "TensorBoard's profiler plugin draws with Google Charts, loaded from the internet: offline its views stay blank. "
    "Everything on this tab works offline, and the trace file opens offline in chrome://tracing (or in Perfetto)."
)


@_shown
def profile_view(run_id: str | None):
    """Profiler tables and charts, the breakdown beside the dense reference, the trace file; TensorBoard only for
    a profiled run."""
    *shown, profiled = panels.profile_panel(_store(), _open(run_id))
    return *shown, gr.update(interactive=profiled)


@_shown
def open_tensorboard(run_id: str | None) -> str:
    """Start TensorBoard (torch-tb-profiler) on 127.0.0.1 for the run's logdir; one process per app."""
    run = _open(run_id)
    try:
        port = tensorboard.start(run.path / "tb")
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        raise UserError(str(exc)) from None
    url = f"http://127.0.0.1:{port}/#pytorch_profiler"
    return f"TensorBoard serves this run's profile on port {port}: [{url}]({url})"


def open_selected(run_id: str | None):
    """Show the run selected in the Runs table; with none selected (yet), keep the run shown and say so."""
    if not run_id:
        return gr.update(), "select a run in the table first"
    return gr.update(choices=panels.run_choices(_store()), value=run_id), ""


def runs_select(table, evt: gr.SelectData) -> str:
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return str(table.iloc[int(row)]["run"])


@_shown
def delete_run(run_id: str, confirm: bool, shown: str | None = None):
    """Delete a run once the box is ticked; the lists refresh, and the run ``shown`` in the views stays unless it
    was the one deleted (then every view shows its empty state)."""
    if not run_id:
        raise UserError("select a run in the table first")
    if not confirm:
        raise UserError(f"tick 'confirm delete' to delete {run_id}")
    _store().delete(run_id)
    table, choices = panels.runs_table(_store()), panels.run_choices(_store())
    keep = shown if shown != run_id and shown in {c[1] for c in choices} else None
    return table, "", False, gr.update(choices=choices, value=keep), f"Deleted {run_id}."


@_shown
def export_report(run_id: str | None):
    run = _open(run_id)
    out = tempdirs.latest("report") / f"{run.run_id}.html"  # replaces the previous export (served from the cache)
    return gr.update(value=str(write_report(run, out, _store())), visible=True)


# -- widgets -----------------------------------------------------------------------------------------------
def _component(f: FieldSpec) -> gr.components.Component:
    """The widget of one method setting, with its help and default as the tooltip."""
    label = f.name.replace("_", " ")
    shown = "empty = model default" if f.default is None else str(f.default)
    info = f"{f.help} Default: {shown}."
    if f.kind == "bool":
        return gr.Checkbox(f.default, label=label, info=info)
    if f.kind in ("int", "float"):  # no precision: gradio would round 1.5 to 2; FieldSpec.read refuses fractions
        return gr.Number(f.default, label=label, info=info)
    if f.kind == "choice":
        choices = list(f.choices) + ([MODEL_DEFAULT] if f.default is None else [])
        return gr.Dropdown(choices, value=f.default or MODEL_DEFAULT, label=label, info=info)
    if f.kind == "table":
        tables = ["none", *sorted(str(p) for p in TABLES.glob("*.json"))]  # shipped EBC tables
        return gr.Dropdown(tables, value="none", label=label, info=info, allow_custom_value=True)
    value = "" if f.default is None else f.shown(f.default)
    return gr.Textbox(value, label=label, info=info, placeholder=shown)


CHOICE_INFO = {  # the help of each choice field of the form (forms.CHOICES)
    "kv_commit": "how a finished chunk's K/V is frozen: empty = last-step (the seeds' FlowCache / MotionCache: its "
    "last denoising step's K/V), clean-pass = diffusers' extra pass at timestep 0",
}


def _forcing_input(name: str):
    """A diffusion-forcing field of the form: a choice (:data:`accel.forms.CHOICES`; empty = the run's default) or a
    number (empty = the model's default)."""
    label = name.replace("_", " ")
    if name in forms.CHOICES:
        return gr.Dropdown(["", *forms.CHOICES[name]], value="", label=label, info=CHOICE_INFO[name])
    return _optional_number(label, "empty = model default")


def _optional_number(label: str, info: str) -> gr.Textbox:
    """A number that may be left empty (= the model's default); gr.Number cannot stay empty in the browser."""
    elem_id = "in-" + label.lower().replace(" ", "-")
    return gr.Textbox("", label=label, info=info, placeholder="model default", elem_id=elem_id)


# -- tabs ----------------------------------------------------------------------------------------------------
def generate_tab(run_pick: gr.Dropdown):
    """Model, method and prompt with Generate and Stop at the top; sampling, method settings, forcing and profiling in
    accordions below; the video and its headline numbers. Returns the Output video, the headline and the generation
    event (it adds a run to the store)."""
    names = list(methods.REGISTRY)
    with gr.Tab("Generate", id="generate"), gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(
                [*models.REGISTRY], value=DEFAULT_MODEL, label="Model", allow_custom_value=True,
                info="registered name, hub id (from the local cache), or a local diffusers folder",
            )  # fmt: skip
            model_note = gr.Markdown(model_defaults(DEFAULT_MODEL))
            method = gr.Radio(names, value="xattention", label="Method")
            prompt = gr.Textbox(forms.DEFAULT_PROMPT, label="Prompt")
            gr.Examples([[p] for p in forms.EXAMPLE_PROMPTS], prompt, label="Prompts the pocket models learned")
            with gr.Row():
                go_btn = gr.Button("Generate", variant="primary", scale=3)
                stop_btn = gr.Button("Stop", variant="stop", scale=1)
            with gr.Accordion("Sampling and size", open=True):
                negative = gr.Textbox("", label="Negative prompt")
                with gr.Row():
                    seed = gr.Number(0, label="Seed")  # forms.number checks integers, not gradio
                    steps = _optional_number("Steps", "empty = model default")
                    guidance = _optional_number("Guidance", "empty = model default")
                    repeats = gr.Number(
                        1, label="Timing repeats",
                        info=f"runs it N times (1 to {MAX_REPEATS}); times are the median (benchmarks: 3 or more)",
                    )  # fmt: skip
                with gr.Row():
                    height = _optional_number("Height", "px; empty = default")
                    width = _optional_number("Width", "px; empty = default")
                    frames = _optional_number("Frames", "4k+1; empty = default")
                size_preset = gr.Radio(
                    list(models.SIZE_PRESETS), value="default", label="Size preset",
                    info="bench: over 2,000 tokens per call (pocket models), where sparse attention can pay off on a "
                    "CPU",
                )  # fmt: skip
            with gr.Accordion("Method settings", open=True):
                groups, field_inputs = [], []
                for m in names:
                    with gr.Group(visible=m == "xattention") as group:
                        gr.Markdown(f"**{m} settings** · {methods.get(m).summary}")
                        field_inputs += [_component(f) for f in forms.FIELDS if f.method == m]
                    groups.append(group)
            with gr.Accordion("Diffusion forcing (SkyReels-V2)", open=False):
                forcing = [_forcing_input(k) for k in forms.FORCING]
            with gr.Accordion("Profiling and kernels", open=True), gr.Row():
                profile_box = gr.Checkbox(False, label="Profile (torch.profiler trace + tables)")
                kernels = gr.Dropdown(
                    ["", *KERNEL_BACKENDS], value="", label="Kernel backend",
                    info="empty = $ACCEL_KERNELS, else auto (Triton on CUDA, torch on CPU); flex compiles per shape",
                )  # fmt: skip
        with gr.Column(scale=1):
            summary = gr.Markdown(elem_id="headline")  # above the video: seen without scrolling
            with gr.Row():
                retime_btn = gr.Button("Re-time both, interleaved", scale=3)
                rounds = gr.Number(retime.ROUNDS, label="rounds", scale=1, min_width=80,
                                   info=f"passes per side (1 to {retime.MAX_ROUNDS})")  # fmt: skip
            video = gr.Video(label="Output", autoplay=True, loop=True, height=420)
    method.change(lambda m: [gr.update(visible=n == m) for n in names], method, groups, api_name=False)
    model.change(model_defaults, model, model_note, api_name=False)
    size_preset.change(preset_sizes, [model, size_preset], [height, width, frames], api_name=False)
    sampling = [seed, height, width, frames, steps, guidance, repeats, *forcing]  # forms.SAMPLING + forms.FORCING
    generated = go_btn.click(
        run_generation, [model, method, prompt, negative, *sampling, profile_box, kernels, *field_inputs],
        [video, summary, run_pick], concurrency_limit=1, concurrency_id=GENERATE_QUEUE, api_name="generate",
        show_progress_on=video,
    )  # fmt: skip
    stop_btn.click(request_stop, None, None, api_name="stop", queue=False)
    retimed = retime_btn.click(
        retime_run, [run_pick, rounds], [video, summary], concurrency_limit=1, concurrency_id=GENERATE_QUEUE,
        api_name="retime", show_progress_on=summary,
    )  # fmt: skip
    return video, summary, generated, retimed


def sparsity_tab(run_pick: gr.Dropdown) -> None:
    with gr.Tab("Sparsity", id="sparsity"):
        with gr.Row():
            branch = gr.Dropdown([], label="Branch")
            step = gr.Dropdown([], label="Step (recorded masks)")
            layer = gr.Dropdown([], label="Layer")
        note = gr.Markdown()
        masks = gr.Plot(label="Per-head masks")
        density = gr.Plot(label="Density over step x layer (click a cell: its masks above)")
        clicked = gr.Button(elem_id=DENSITY_CLICK, elem_classes=[HIDDEN])  # pressed by the page script
        cell = gr.Textbox(elem_classes=[HIDDEN], container=False, show_label=False)  # filled by the event's js
    out = [branch, step, layer, masks, density, note]
    cell_js = "(run, branch, _) => [run, branch, window.accelDensityCell || '']"  # the cell the page script saw
    clicked.click(density_click, [run_pick, branch, cell], out, js=cell_js, api_name=False, show_progress_on=masks)
    run_pick.change(_for_run(sparsity_view, out), run_pick, out, api_name="sparsity", show_progress_on=masks)
    for ctl in (branch, step, layer):
        ctl.input(sparsity_view, [run_pick, branch, step, layer], out, api_name=False, show_progress_on=masks)


def reuse_tab(run_pick: gr.Dropdown) -> None:
    with gr.Tab("Mask reuse", id="reuse"):
        with gr.Row():
            branch = gr.Dropdown([], label="Branch")
            heads = gr.Dropdown([], multiselect=True, label="Heads for drift curves")
        note = gr.Markdown()
        with gr.Row():
            grid = gr.Image(label="Refresh / reuse grid: rows steps, columns layer·head (click a cell)",
                            interactive=False, type="numpy", height=420)  # fmt: skip
            mask = gr.Plot(empty_figure(CLICK_A_CELL), label="Mask of the clicked head")
        picked = gr.Markdown()
        drift = gr.Plot(label="Drift")
    out = [branch, grid, heads, drift, note, mask, picked]  # a run or branch shown anew clears the clicked mask
    run_pick.change(_for_run(reuse_view, out), run_pick, out, api_name="reuse", show_progress_on=drift)
    for ctl in (branch, heads):
        ctl.input(reuse_view, [run_pick, branch, heads], out, api_name=False, show_progress_on=drift)
    grid.select(reuse_pick, [run_pick, branch], [mask, picked, grid], api_name=False, show_progress_on=mask)


def chunks_tab(run_pick: gr.Dropdown) -> None:
    with gr.Tab("Chunk cache", id="chunks"):
        branch = gr.Dropdown([], label="Branch")
        out = [branch, gr.Plot(label="Timeline"), gr.Plot(label="Accumulators"), gr.Plot(label="KV buffer")]
    run_pick.change(_for_run(chunks_view, out), run_pick, out, api_name="chunks", show_progress_on=out[1])
    branch.input(chunks_view, [run_pick, branch], out, api_name=False, show_progress_on=out[1])


def motion_tab(run_pick: gr.Dropdown) -> None:
    with gr.Tab("Motion", id="motion"):
        with gr.Row():
            source = gr.Radio(
                list(motion.SOURCES), value="method", label="Motion source",
                info="method: MotionCache's token weights; flow: optical flow of the video",
            )  # fmt: skip
            frame = gr.Slider(0, 1, value=0, step=1, label="Frame")
        image = gr.Image(label="Motion heatmap over the frame", interactive=False, type="numpy", height=460)
        counts = gr.Plot(label="Token updates")
    out = [frame, source, image, counts]
    run_pick.change(_for_run(motion_view, out), run_pick, out, api_name="motion", show_progress_on=image)
    frame.release(motion_view, [run_pick, frame, source], out, api_name=False, show_progress_on=image)
    source.input(motion_view, [run_pick, frame, source], out, api_name=False, show_progress_on=image)


def compare_tab(run_pick: gr.Dropdown):
    """Runs side by side against a reference; returns the dense-reference event (it adds a run to the store)."""
    with gr.Tab("Compare", id="compare"):
        with gr.Row():
            runs = gr.Dropdown([], multiselect=True, label="Runs (first = reference)", scale=4, allow_custom_value=True)
            cmp_btn = gr.Button("Compare", variant="primary", scale=0)
            dense_btn = gr.Button("Run dense reference", scale=0)
        note = gr.Markdown()
        with gr.Row():
            side = gr.Video(label="Side by side", height=340, loop=True, scale=3)
            diff = gr.Video(label=DIFF_LABEL, height=340, loop=True, scale=1)
        _, _, first_curves, first_table = _no_comparison()
        table = gr.Dataframe(first_table, label="Quality and speed against the first run", wrap=True)
        curves = gr.Plot(first_curves, label="Per-frame PSNR / SSIM")
        pareto = gr.Plot(label="Speed vs quality")
    results = [side, diff, curves, table]
    out = [runs, pareto, note, *results]
    run_pick.change(_for_run(compare_choices, out), run_pick, out, api_name="compare_choices", show_progress_on=pareto)
    runs.input(lambda: _no_comparison(), None, results, api_name=False, queue=False)  # results of other runs go
    cmp_btn.click(compare_runs, runs, results, api_name="compare", show_progress_on=side)
    return dense_btn.click(
        run_dense_reference, run_pick, out,
        concurrency_limit=1, concurrency_id=GENERATE_QUEUE, api_name="dense_reference", show_progress_on=pareto,
    )  # fmt: skip


def profile_tab(run_pick: gr.Dropdown) -> list[gr.components.Component]:
    """Profiler views of the run shown; returns their outputs (refreshed when a dense reference arrives)."""
    with gr.Tab("Profile", id="profile"):
        with gr.Row():
            with gr.Column(scale=2):
                tb_btn = gr.Button("Open in TensorBoard (needs the internet)", interactive=False)
                gr.Markdown(TENSORBOARD_NOTE)
                tb_note = gr.Markdown()
            trace = gr.File(label="trace.json.gz (chrome://tracing offline, or Perfetto)", scale=1)
        breakdown = gr.Plot(label="Breakdown vs dense")
        with gr.Row():
            phases = gr.Dataframe(label="Phases (ms per transformer call)", wrap=True)
            amdahl = gr.Dataframe(label="Amdahl", wrap=True)
        ranges_fig = gr.Plot(label="Named ranges")
        kernels_fig = gr.Plot(label="Kernels")
        ranges = gr.Dataframe(label="Ranges", wrap=True)
        kernels = gr.Dataframe(label="Kernels", wrap=True)
        memory = gr.Dataframe(label="Peak memory", wrap=True)
    out = [ranges_fig, kernels_fig, ranges, kernels, memory, breakdown, phases, amdahl, trace, tb_btn]
    # the previous run's charts go at once (the new ones queue behind the other tabs' views)
    run_pick.change(_blanks(out, "loading the run's profile..."), None, out, api_name=False, queue=False).then(
        _for_run(profile_view, out), run_pick, out, api_name="profile", show_progress_on=ranges_fig
    )
    tb_btn.click(open_tensorboard, run_pick, tb_note, api_name="tensorboard")
    return out


def runs_tab(run_pick: gr.Dropdown) -> gr.Dataframe:
    with gr.Tab("Runs", id="runs"):
        table = gr.Dataframe(panels.runs_table(_store()), label="Run store (click a row)", interactive=False,
                             wrap=True)  # fmt: skip
        with gr.Row():
            selected = gr.Textbox(label="Selected run", interactive=False)
            open_btn = gr.Button("Open")
            confirm = gr.Checkbox(False, label="confirm delete")
            del_btn = gr.Button("Delete", variant="stop")
        note = gr.Markdown()
    table.select(runs_select, table, selected, api_name=False)
    open_btn.click(open_selected, selected, [run_pick, note], api_name=False)
    del_btn.click(delete_run, [selected, confirm, run_pick], [table, selected, confirm, run_pick, note],
                  api_name=False, show_progress_on=note)  # fmt: skip
    return table


def build_app() -> gr.Blocks:
    with gr.Blocks(title="Video DiT acceleration bench") as demo:
        gr.Markdown("# Video DiT acceleration bench\nGenerate with a method, then see why it is fast or ugly.")
        with gr.Row():
            choices = panels.run_choices(_store())
            run_pick = gr.Dropdown(
                choices, value=None, label="Run shown in the views", scale=4, allow_custom_value=True
            )
            refresh = gr.Button("Refresh list", scale=0)
            report_btn = gr.Button("HTML report", scale=0)
        report_file = gr.File(label="Report (HTML, opens offline)", visible=False)  # a row of its own: the name shows
        with gr.Tabs():
            video, summary, generated, retimed = generate_tab(run_pick)
            for tab in (sparsity_tab, reuse_tab, chunks_tab, motion_tab):
                tab(run_pick)
            dense_reference = compare_tab(run_pick)
            profile_out = profile_tab(run_pick)
            runs_table = runs_tab(run_pick)
        lists = [run_pick, runs_table]
        refresh.click(_run_lists, None, lists, api_name=False)
        report_btn.click(export_report, run_pick, report_file, api_name="report")
        run_pick.change(shown_run, run_pick, [video, summary], api_name="shown_run")
        retimed.success(profile_view, run_pick, profile_out, api_name=False, show_progress_on=profile_out[0])
        for adds_a_run in (generated, dense_reference):  # every run list shows the new run at once
            adds_a_run.then(_run_lists, None, lists, api_name=False)
        # a new dense reference changes the headline's speedup and the profile breakdown of the run shown
        dense_reference.success(shown_run, run_pick, [video, summary], api_name=False).success(
            profile_view, run_pick, profile_out, api_name=False, show_progress_on=profile_out[0]
        )
        demo.load(_run_lists, None, lists, api_name=False)
        demo.load(None, None, None, js=PAGE_SCRIPT)
    return demo


def _cannot_bind(host: str, port: int) -> str | None:
    """Why the server could not listen on (host, port), or None if it can (a socket is bound there briefly)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is free
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"port {port} on {host} is in use: pass --port N (or stop the other server)"
        return f"cannot listen on {host} port {port}: {exc.strerror or exc}: pass --host/--port"
    return None


def _port(text: str) -> int:
    """A TCP port from the command line (argparse turns the ValueError into a one-line usage error)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1 to 65535, got {port}")
    return port


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description="Serve the bench's Gradio app.")  # a usage error is one line
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=_port, default=7860, help="TCP port, 1 to 65535 (default: 7860)")
    parser.add_argument("--runs-dir", help="run store folder (default: $ACCEL_RUNS_DIR or ./runs)")
    budget.add_limits(parser)
    args = parser.parse_args(argv)
    if args.runs_dir:
        os.environ["ACCEL_RUNS_DIR"] = args.runs_dir
    busy = _cannot_bind(args.host, args.port)
    if busy:
        parser.exit(2, f"error: {busy}\n")  # before the UI is built, and no traceback
    try:
        limits = budget.limits_from(args)
        store = _store()
    except UserError as exc:
        parser.exit(2, f"error: {exc}\n")
    os.environ[budget.ENV_MAX_TOKENS], os.environ[budget.ENV_MAX_STEPS] = str(limits.max_tokens), str(limits.max_steps)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        store.check_writable()
    except UserError as exc:
        LOG.warning("%s: stored runs can be viewed, not generated", exc)
    tensorboard.install_signal_handlers()
    tempdirs.sweep()  # folders of app and runner processes that were killed
    demo = build_app().queue(default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(_store().root.resolve())])


if __name__ == "__main__":
    main()
