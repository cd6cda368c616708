"""Gradio app: generate with any method and see why it is fast or ugly, beside the video.

``python app.py`` serves on http://127.0.0.1:7860 (``--host``/``--port``/``--runs-dir`` to change) and
starts on the embedded model with no network. Tabs: Generate, Sparsity, Mask reuse, Chunk cache, Motion,
Compare, Profile, Runs. Every figure comes from :mod:`viz` as a function of a run folder, so any stored
run reopens without loading a model; the generation is queued (one at a time), the views stay responsive.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import typing
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from accel import methods, models
from accel.config import DEFAULT_MODEL, ConfigError, RunConfig, settings_for
from accel.errors import UserError, one_line
from accel.paths import TABLES
from accel.runs import RunStore
from accel.schema import Event
from accel.video import write_h264
from viz import chunks, compare, motion, profile, reuse, sparsity
from viz.common import branches, empty_figure
from viz.report import write_report

METHODS = list(methods.REGISTRY)
PROGRESS = gr.Progress()  # gradio injects a live tracker for a parameter defaulting to one
DEFAULT_PROMPT = "a red circle moves left over a blue background"
GENERATE_QUEUE = "generate"  # generations (and dense references) share one queue: one at a time
SAMPLING = ("seed", "height", "width", "frames", "steps", "guidance")
FORCING = ("ar_step", "causal_block_size", "base_num_frames", "overlap_history", "addnoise_condition")
CELL = 16  # pixels per decision in the clickable reuse grid
LOG = logging.getLogger("accel.app")


# -- settings form -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SettingField:
    """One method setting in the form: how to show it and how to read it back."""

    method: str
    name: str
    kind: str  # bool | int | float | choice | text
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    def read(self, value: Any) -> Any:
        """The setting's value from the component's value ('' / None = the default)."""
        if self.kind == "bool":
            return bool(value)
        if value is None or (isinstance(value, str) and not value.strip()):
            return self.default
        if self.kind in ("int", "float"):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{self.name} must be a number, got {value!r}") from None
            if self.kind == "float":
                return number
            if number != int(number):
                raise ConfigError(f"{self.name} must be an integer, got {value}")
            return int(number)
        if self.kind == "choice":
            return None if value == "none (model default)" else value
        from accel.cli import setting_flags  # the CLI's parser for optional and list-valued settings

        try:
            return setting_flags()[self.name].parse(str(value))
        except Exception as exc:
            raise ConfigError(f"{self.name}: {exc}") from None


def setting_fields() -> list[SettingField]:
    """Every setting of every method, in declaration order."""
    out = []
    for method, cls in ((name, m.settings) for name, m in methods.REGISTRY.items()):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            tp, choices = hints[f.name], tuple(f.metadata.get("choices", ()))
            kind = (
                "choice" if choices
                else "bool" if tp is bool
                else "int" if tp is int
                else "float" if tp is float
                else "text"
            )  # fmt: skip
            if f.name == "threshold_table":
                kind = "table"
            out.append(SettingField(method, f.name, kind, default, f.metadata.get("help", ""), choices))
    return out


FIELDS = setting_fields()


def table_choices() -> list[str]:
    """Calibrated per-head threshold tables shipped under assets/tables (for +EBC)."""
    return ["none", *sorted(str(p) for p in TABLES.glob("*.json"))]


def _component(f: SettingField) -> gr.components.Component:
    label = f.name.replace("_", " ")
    shown = "empty = model default" if f.default is None else str(f.default)
    info = f"{f.help} Default: {shown}."
    if f.kind == "bool":
        return gr.Checkbox(f.default, label=label, info=info)
    if f.kind in ("int", "float"):
        return gr.Number(f.default, label=label, info=info, precision=0 if f.kind == "int" else None)
    if f.kind == "choice":
        choices = list(f.choices) + (["none (model default)"] if f.default is None else [])
        return gr.Dropdown(choices, value=f.default or "none (model default)", label=label, info=info)
    if f.kind == "table":
        return gr.Dropdown(table_choices(), value="none", label=label, info=info, allow_custom_value=True)
    value = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else ("" if f.default is None else f.default)
    return gr.Textbox(str(value), label=label, info=info, placeholder=shown)


def _optional_number(label: str, info: str) -> gr.Textbox:
    """A number that may be left empty (= the model's default); gr.Number cannot stay empty in the browser."""
    elem_id = "in-" + label.lower().replace(" ", "-")
    return gr.Textbox("", label=label, info=info, placeholder="model default", elem_id=elem_id)


def read_settings(method: str, values: list[Any]) -> dict[str, Any]:
    """The settings dict of ``method`` from the values of every field's component (``FIELDS`` order)."""
    out = {}
    for f, v in zip(FIELDS, values, strict=True):
        if f.method != method:
            continue
        if f.kind == "table":
            out[f.name] = None if v in (None, "", "none") else str(v)
        else:
            out[f.name] = f.read(v)
    return out


def form_values(
    model: str = DEFAULT_MODEL,
    method: str = "xattention",
    prompt: str = DEFAULT_PROMPT,
    negative: str = "",
    sampling: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    profile: bool = False,
) -> list[Any]:
    """Positional values of the Generate form (for scripts and the API): defaults plus overrides."""
    sampling, settings = dict(sampling or {}), dict(settings or {})
    values = [sampling.pop(k, 0 if k == "seed" else None) for k in (*SAMPLING, *FORCING)]
    fields = []
    for f in FIELDS:
        v = settings.get(f.name, f.default) if f.method == method else f.default
        fields.append(",".join(map(str, v)) if isinstance(v, tuple) else v)
    if sampling:
        raise ValueError(f"unknown sampling keys {sorted(sampling)}")
    return [model, method, prompt, negative, *values, profile, *fields]


# -- generation ----------------------------------------------------------------------------------
def _store() -> RunStore:
    return RunStore(os.environ.get("ACCEL_RUNS_DIR"))


def _num(value: Any, name: str, integer: bool = True) -> Any:
    """A form number: empty = None (the model's default); anything else must parse."""
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if integer and number != int(number):
        raise ConfigError(f"{name} must be an integer, got {value}")
    return int(number) if integer else number


def headline(run_id: str) -> str:
    """Markdown of the numbers a user looks at first: time, speedup vs dense, density or reuse."""
    store = _store()
    run = store.load(run_id)
    m = run.metrics
    lines = [f"**{run.config.get('label')}** · run `{run.run_id}`", "", "| metric | value |", "|---|---|"]
    lines.append(
        f"| wall time | {m.get('wall_s', 0):.2f} s (denoise {m.get('stages', {}).get('denoise_s', 0):.2f} s) |"
    )
    ref = compare.dense_reference(store, run)
    if ref is not None:
        s_wall, s_den = compare.speedup(ref.path, run, "wall"), compare.speedup(ref.path, run, "denoise")
        lines.append(f"| speedup vs dense `{ref.run_id}` | {s_wall:.2f}x wall, {s_den:.2f}x denoise |")
    elif run.config.get("method") != "dense":
        lines.append("| speedup vs dense | no dense run of this prompt and seed yet (Compare tab) |")
    if "density_mean_sparse" in m:
        lines.append(f"| mean density (sparse steps) | {m['density_mean_sparse']:.3f} |")
    if m.get("mask_skip_frac") is not None:
        lines.append(f"| mask reuse rate (TMR) | {m['mask_skip_frac']:.1%} |")
    steps = (m.get("chunk_computes") or 0) + (m.get("chunk_reuses") or 0) + (m.get("chunk_partials") or 0)
    if steps:
        lines.append(f"| chunk steps reused | {(m.get('chunk_reuses') or 0) / steps:.1%} of {steps} |")
    lines.append(f"| tokens · device | {m.get('tokens')} · {m.get('device')} {m.get('dtype', '')} |")
    return "\n".join(lines)


def _generate(cfg: RunConfig, profile: bool, progress) -> str:
    from accel.runner import generate  # imported on first use: the views need no torch model

    try:
        run = generate(cfg, _store(), progress=lambda i, n: progress(i / n, desc=f"step {i}/{n}"), profile=profile)
    except UserError as exc:
        raise gr.Error(str(exc)) from None
    except Exception as exc:  # a bug or a broken environment: log the traceback, say what happened, keep serving
        LOG.exception("generation failed: %s", cfg.label())
        raise gr.Error(
            f"generation failed: {type(exc).__name__}: {one_line(exc)} (traceback in the server log)"
        ) from None
    return run.run_id


def run_generation(model, method, prompt, negative, *rest, progress=PROGRESS):
    """One generation from the form; bad input becomes a gr.Error and the app keeps serving."""
    n = len(SAMPLING) + len(FORCING)
    sampling, profile, fields = rest[:n], rest[n], rest[n + 1 :]
    try:
        if method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        values = dict(zip((*SAMPLING, *FORCING), sampling, strict=True))
        cfg = RunConfig(
            prompt=prompt or "",
            model=model,
            method=method,
            settings=settings_for(method, read_settings(method, list(fields))),
            negative_prompt=negative or "",
            seed=_num(values["seed"], "seed") or 0,
            height=_num(values["height"], "height"),
            width=_num(values["width"], "width"),
            frames=_num(values["frames"], "frames"),
            steps=_num(values["steps"], "steps"),
            guidance=_num(values["guidance"], "guidance", integer=False),
            **{k: _num(values[k], k, integer=k != "addnoise_condition") for k in FORCING},
        )
    except UserError as exc:
        raise gr.Error(str(exc)) from None
    run_id = _generate(cfg, bool(profile), progress)
    run = _store().load(run_id)
    return str(run.video_path), headline(run_id), gr.update(choices=run_choices(), value=run_id)


def run_dense_reference(run_id: str | None, progress=PROGRESS):
    """Generate the dense run matching ``run_id`` (same prompt, seed, model and sampling)."""
    run = _open(run_id)
    c = run.config
    cfg = RunConfig(
        prompt=c["prompt"],
        model=c["model"],
        method="dense",
        negative_prompt=c.get("negative_prompt", ""),
        **{k: c.get(k) for k in (*SAMPLING, *FORCING, "fps")},
    )
    _generate(cfg, profile=profile.is_profiled(run), progress=progress)
    return compare_choices(run_id)


# -- opening runs --------------------------------------------------------------------------------
def run_choices() -> list[tuple[str, str]]:
    """(display, run id) of every stored run, newest first."""
    return [(f"{i.run_id.split('-', 2)[1]} · {i.config.get('label') or i.run_id} · {i.run_id[-6:]}", i.run_id)
            for i in _store().list()]  # fmt: skip


def _open(run_id: str | None):
    if not run_id:
        raise gr.Error("no run selected: generate one or open one in the Runs tab")
    if Path(run_id).name != run_id:  # the app opens runs of its own store only, never a user's path
        raise gr.Error(f"invalid run id {run_id!r}: pick a run of the store")
    try:
        return _store().load(run_id)
    except UserError as exc:
        raise gr.Error(str(exc)) from None


def sparsity_view(run_id: str | None, branch: str | None = None, step: Any = None, layer: Any = None):
    """Masks of one step and layer, density heatmaps and the dense warm-up steps."""
    run = _open(run_id)
    names = branches(run, Event.DENSITY) or ["cond"]
    branch = branch if branch in names else names[0]
    idx = sparsity.mask_index(run)
    idx = idx[idx["branch"] == branch] if len(idx) else idx
    steps = sorted(int(s) for s in idx["step"].unique()) if len(idx) else []
    step = int(step) if step not in (None, "") and int(step) in steps else (steps[0] if steps else None)
    layers = sorted(int(x) for x in idx.loc[idx["step"] == step, "layer"].unique()) if steps else []
    layer = int(layer) if layer not in (None, "") and int(layer) in layers else (layers[0] if layers else None)
    masks = (
        sparsity.head_masks(run, step, layer, branch)
        if step is not None
        else empty_figure("no masks recorded in this run (a dense or cache-only run, or --no-masks)")
    )
    warm = sparsity.warmup_steps(run, branch)
    note = f"Dense warm-up steps: {sparsity.step_ranges(warm)}." if warm else "No dense warm-up steps recorded."
    return (
        gr.update(choices=names, value=branch),
        gr.update(choices=steps, value=step),
        gr.update(choices=layers, value=layer),
        masks,
        sparsity.density_heatmaps(run, branch),
        f"{note} Masks are kept for {len(steps)} steps (evenly spaced within the recording budget).",
    )


def reuse_view(run_id: str | None, branch: str | None = None, heads: list[str] | None = None):
    """Refresh/reuse grid (clickable image) and drift curves of the chosen heads."""
    run = _open(run_id)
    names = branches(run, Event.MASK_REFRESH) or ["cond"]
    branch = branch if branch in names else names[0]
    grid = reuse.reuse_matrix(run, branch)
    options = [f"l{int(layer)}h{int(h)}" for layer, h in grid.columns] if not grid.empty else []
    heads = [h for h in (heads or []) if h in options] or options[:4]
    pairs = [(int(h[1 : h.index("h")]), int(h[h.index("h") + 1 :])) for h in heads]
    rate = "" if grid.empty else f"Reuse rate {reuse.reuse_rate(grid):.1%}. "
    return (
        gr.update(choices=names, value=branch),
        reuse.reuse_grid_image(run, branch, CELL),
        gr.update(choices=options, value=heads),
        reuse.drift_curves(run, pairs, branch),
        f"{rate}Rows: steps; columns: layer·head (red refresh, blue reuse, grey no decision). Click a cell.",
    )


def reuse_pick(run_id: str | None, branch: str, evt: gr.SelectData):
    """The mask a clicked head used at that step."""
    run = _open(run_id)
    x, y = evt.index
    cell = reuse.cell_at(run, int(x), int(y), branch, CELL)
    if cell is None:
        return empty_figure("click inside the grid"), ""
    step, layer, head, refreshed = cell
    key = reuse.mask_in_effect(run, step, layer, head, branch)
    what = "refreshed" if refreshed == 1 else "reused" if refreshed == 0 else "no decision"
    text = f"step {step}, layer {layer}, head {head}: {what}; mask `{key or 'not recorded'}`"
    if key is None:
        return empty_figure("this head's mask was not recorded at that step"), text
    import plotly.graph_objects as go

    fig = go.Figure(go.Heatmap(z=sparsity.mask_image(run, key, head), colorscale="Blues", zmin=0, zmax=1))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=f"l{layer}h{head} at step {step} ({what})", height=420)
    return fig, text


def chunks_view(run_id: str | None, branch: str | None = None):
    """Chunk timeline, accumulators and KV buffer."""
    run = _open(run_id)
    names = branches(run, *chunks.EVENT_STATE) or ["cond"]
    branch = branch if branch in names else names[0]
    return (
        gr.update(choices=names, value=branch),
        chunks.chunk_timeline(run, branch),
        chunks.accumulators(run, branch),
        chunks.kv_buffer(run),
    )


def motion_view(run_id: str | None, frame: Any = 0, source: str = "method"):
    """Motion heatmap over a frame, and token update counts."""
    run = _open(run_id)
    n = len(run.frames())
    frame = min(max(int(frame or 0), 0), n - 1)
    if source == "method" and motion.token_maps(run, "weights") is None:
        source = "flow"
    return (
        gr.update(maximum=n - 1, value=frame),
        gr.update(value=source),
        motion.motion_overlay(run, frame, source),
        motion.update_counts(run),
    )


def compare_choices(run_id: str | None):
    """Comparable runs (same prompt, seed, model and sampling), the dense one first, and the Pareto plot."""
    run = _open(run_id)
    store = _store()
    infos = compare.comparable_runs(store, run)
    infos.sort(key=lambda i: i.config.get("method") != "dense")
    choices = [(f"{i.config.get('label')} · {i.run_id[-6:]}", i.run_id) for i in infos]
    ref = compare.dense_reference(store, run)
    value = [i for i in ([ref.run_id] if ref else []) + [run.run_id] if i]
    note = "" if ref or run.config.get("method") == "dense" else "No dense reference yet: run one."
    return gr.update(choices=choices, value=value), compare.pareto(store, run), note


def compare_runs(run_ids: list[str] | None):
    """Side-by-side and difference videos, per-frame quality and the table; the first run is the reference."""
    if not run_ids or len(run_ids) < 2:
        raise gr.Error("pick at least two runs (the first is the reference)")
    runs = [_open(r) for r in run_ids]
    try:
        both = compare.side_by_side(runs)
        diff, gain = compare.difference_video(runs[0], runs[1])
    except UserError as exc:
        raise gr.Error(str(exc)) from None
    out = Path(tempfile.mkdtemp(prefix="accel-compare-"))
    write_h264(both, out / "side_by_side.mp4", fps=int(runs[0].config.get("fps") or 16))
    write_h264(diff, out / "difference.mp4", fps=int(runs[0].config.get("fps") or 16))
    table = compare.quality(runs[0], runs[1:]).round(3)
    diff_video = gr.update(value=str(out / "difference.mp4"), label=f"|second - first| x{gain:.0f}")
    return str(out / "side_by_side.mp4"), diff_video, compare.quality_curves(runs[0], runs[1:]), table


def profile_view(run_id: str | None):
    """Profiler tables and charts, the breakdown beside the dense reference, and the trace file."""
    run = _open(run_id)
    t = profile.profile_tables(run)
    ref = compare.dense_reference(_store(), run)
    if ref is not None and profile.is_profiled(run) and profile.is_profiled(ref.path):
        fig, phases, amdahl = profile.breakdown_chart(run, ref.path)
        amdahl_df = pd.DataFrame([{"quantity": k, "value": round(v, 3)} for k, v in amdahl.items()])
    else:
        why = "profile this run and its dense reference (same prompt and seed) to see the breakdown"
        fig, phases, amdahl_df = empty_figure(why), pd.DataFrame(), pd.DataFrame()
    trace = run.path / "trace.json.gz"
    return (
        profile.range_chart(run),
        profile.kernel_chart(run),
        t["ranges"].round(3),
        t["kernels"].round(3),
        t["memory"].round(1),
        fig,
        phases.round(3) if len(phases) else phases,
        amdahl_df,
        str(trace) if trace.is_file() else None,
    )


def open_tensorboard(run_id: str | None) -> str:
    """Start TensorBoard (torch-tb-profiler) on 127.0.0.1 for the run's logdir; one process per app."""
    from profiling import tensorboard

    run = _open(run_id)
    try:
        port = tensorboard.start(run.path / "tb")
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        raise gr.Error(str(exc)) from None
    url = f"http://127.0.0.1:{port}/#pytorch_profiler"
    return f"TensorBoard serves this run's profile on port {port}: [{url}]({url})"


def runs_table() -> pd.DataFrame:
    rows = [
        {
            "run": i.run_id,
            "method": i.config.get("label"),
            "model": i.config.get("model"),
            "prompt": i.config.get("prompt"),
            "seed": i.config.get("seed"),
            "wall_s": round(float(i.metrics.get("wall_s") or 0), 2),
        }
        for i in _store().list()
    ]
    return pd.DataFrame(rows, columns=["run", "method", "model", "prompt", "seed", "wall_s"])


def runs_select(table: pd.DataFrame, evt: gr.SelectData) -> str:
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return str(table.iloc[int(row)]["run"])


def delete_run(run_id: str, confirm: bool):
    """Delete a run once the box is ticked; the list refreshes."""
    if not run_id:
        raise gr.Error("select a run in the table first")
    if not confirm:
        raise gr.Error(f"tick 'confirm delete' to delete {run_id}")
    try:
        _store().delete(run_id)
    except UserError as exc:
        raise gr.Error(str(exc)) from None
    return runs_table(), "", False, gr.update(choices=run_choices(), value=None), f"Deleted {run_id}."


def export_report(run_id: str | None):
    run = _open(run_id)
    out = Path(tempfile.mkdtemp(prefix="accel-report-")) / f"{run.run_id}.html"
    return gr.update(value=str(write_report(run, out, _store())), visible=True)


def show_method(method: str):
    """Show only the settings group of the chosen method."""
    return [gr.update(visible=m == method) for m in METHODS]


# -- layout ----------------------------------------------------------------------------------------
def build_app() -> gr.Blocks:
    with gr.Blocks(title="Video DiT acceleration bench") as demo:
        gr.Markdown("# Video DiT acceleration bench\nGenerate with a method, then see why it is fast or ugly.")
        with gr.Row():
            run_pick = gr.Dropdown(
                run_choices(), value=None, label="Run shown in the views", scale=4, allow_custom_value=True
            )
            refresh = gr.Button("Refresh list", scale=0)
            report_btn = gr.Button("HTML report", scale=0)
            report_file = gr.File(label="Report", scale=1, visible=False)
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"), gr.Row():
                with gr.Column(scale=1):
                    model = gr.Dropdown(
                        [*models.REGISTRY], value=DEFAULT_MODEL, label="Model", allow_custom_value=True,
                        info="registered name, hub id (from the local cache), or a local diffusers folder",
                    )  # fmt: skip
                    method = gr.Radio(METHODS, value="xattention", label="Method")
                    prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt")
                    negative = gr.Textbox("", label="Negative prompt")
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0)
                        steps = _optional_number("Steps", "empty = model default")
                        guidance = _optional_number("Guidance", "empty = model default")
                    with gr.Row():
                        height = _optional_number("Height", "px; empty = default")
                        width = _optional_number("Width", "px; empty = default")
                        frames = _optional_number("Frames", "4k+1; empty = default")
                    with gr.Accordion("Diffusion forcing (SkyReels-V2)", open=False):
                        forcing = [_optional_number(k.replace("_", " "), "empty = model default") for k in FORCING]
                    profile_box = gr.Checkbox(False, label="Profile (torch.profiler trace + tables)")
                    groups, field_inputs = [], []
                    for m in METHODS:
                        with gr.Group(visible=m == "xattention") as group:
                            gr.Markdown(f"**{m} settings** · {methods.get(m).summary}")
                            field_inputs += [_component(f) for f in FIELDS if f.method == m]
                        groups.append(group)
                    go_btn = gr.Button("Generate", variant="primary")
                with gr.Column(scale=1):
                    video = gr.Video(label="Output", autoplay=True)
                    summary = gr.Markdown()
            with gr.Tab("Sparsity", id="sparsity"):
                with gr.Row():
                    sp_branch = gr.Dropdown([], label="Branch")
                    sp_step = gr.Dropdown([], label="Step (recorded masks)")
                    sp_layer = gr.Dropdown([], label="Layer")
                sp_note = gr.Markdown()
                sp_masks = gr.Plot(label="Per-head masks")
                sp_density = gr.Plot(label="Density over step x layer")
            with gr.Tab("Mask reuse", id="reuse"):
                with gr.Row():
                    ru_branch = gr.Dropdown([], label="Branch")
                    ru_heads = gr.Dropdown([], multiselect=True, label="Heads for drift curves")
                ru_note = gr.Markdown()
                with gr.Row():
                    ru_grid = gr.Image(
                        label="Refresh / reuse grid (click a cell)", interactive=False, type="numpy", height=420
                    )
                    ru_mask = gr.Plot(label="Mask of the clicked head")
                ru_pick = gr.Markdown()
                ru_drift = gr.Plot(label="Drift")
            with gr.Tab("Chunk cache", id="chunks"):
                ch_branch = gr.Dropdown([], label="Branch")
                ch_timeline = gr.Plot(label="Timeline")
                ch_acc = gr.Plot(label="Accumulators")
                ch_kv = gr.Plot(label="KV buffer")
            with gr.Tab("Motion", id="motion"):
                with gr.Row():
                    mo_source = gr.Radio(
                        list(motion.SOURCES),
                        value="method",
                        label="Motion source",
                        info="method: MotionCache's token weights; flow: optical flow of the video",
                    )
                    mo_frame = gr.Slider(0, 1, value=0, step=1, label="Frame")
                mo_image = gr.Image(label="Motion heatmap over the frame", interactive=False, type="numpy", height=420)
                mo_counts = gr.Plot(label="Token updates")
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    cmp_runs = gr.Dropdown(
                        [], multiselect=True, label="Runs (first = reference)", scale=4, allow_custom_value=True
                    )
                    cmp_btn = gr.Button("Compare", variant="primary", scale=0)
                    dense_btn = gr.Button("Run dense reference", scale=0)
                cmp_note = gr.Markdown()
                with gr.Row():
                    cmp_video = gr.Video(label="Side by side")
                    cmp_diff = gr.Video(label="Difference of the second run")
                cmp_table = gr.Dataframe(label="Quality and speed against the first run")
                cmp_curves = gr.Plot(label="Per-frame PSNR / SSIM")
                cmp_pareto = gr.Plot(label="Speed vs quality")
            with gr.Tab("Profile", id="profile"):
                with gr.Row():
                    tb_btn = gr.Button("Open in TensorBoard", scale=0)
                    tb_note = gr.Markdown()
                    pr_trace = gr.File(label="trace.json.gz (Perfetto / chrome://tracing)")
                pr_breakdown = gr.Plot(label="Breakdown vs dense")
                with gr.Row():
                    pr_phases = gr.Dataframe(label="Phases (ms per transformer call)")
                    pr_amdahl = gr.Dataframe(label="Amdahl")
                pr_ranges_fig = gr.Plot(label="Named ranges")
                pr_kernels_fig = gr.Plot(label="Kernels")
                pr_ranges = gr.Dataframe(label="Ranges")
                pr_kernels = gr.Dataframe(label="Kernels")
                pr_memory = gr.Dataframe(label="Peak memory")
            with gr.Tab("Runs", id="runs"):
                runs_df = gr.Dataframe(runs_table(), label="Run store (click a row)", interactive=False)
                with gr.Row():
                    runs_sel = gr.Textbox(label="Selected run", interactive=False)
                    open_btn = gr.Button("Open")
                    confirm = gr.Checkbox(False, label="confirm delete")
                    del_btn = gr.Button("Delete", variant="stop")
                runs_note = gr.Markdown()

        # -- events ----------------------------------------------------------------------------
        method.change(show_method, method, groups, api_name=False)
        form = [model, method, prompt, negative, seed, height, width, frames, steps, guidance, *forcing, profile_box]
        go_btn.click(
            run_generation, [*form, *field_inputs], [video, summary, run_pick],
            concurrency_limit=1, concurrency_id=GENERATE_QUEUE, api_name="generate",
        )  # fmt: skip
        refresh.click(lambda: gr.update(choices=run_choices()), None, run_pick, api_name=False)
        report_btn.click(export_report, run_pick, report_file, api_name="report")
        sp_out = [sp_branch, sp_step, sp_layer, sp_masks, sp_density, sp_note]
        ru_out = [ru_branch, ru_grid, ru_heads, ru_drift, ru_note]
        ch_out = [ch_branch, ch_timeline, ch_acc, ch_kv]
        mo_out = [mo_frame, mo_source, mo_image, mo_counts]
        pr_out = [pr_ranges_fig, pr_kernels_fig, pr_ranges, pr_kernels, pr_memory, pr_breakdown, pr_phases,
                  pr_amdahl, pr_trace]  # fmt: skip
        run_pick.change(sparsity_view, run_pick, sp_out, api_name="sparsity")
        run_pick.change(reuse_view, run_pick, ru_out, api_name="reuse")
        run_pick.change(chunks_view, run_pick, ch_out, api_name="chunks")
        run_pick.change(motion_view, run_pick, mo_out, api_name="motion")
        run_pick.change(compare_choices, run_pick, [cmp_runs, cmp_pareto, cmp_note], api_name="compare_choices")
        run_pick.change(profile_view, run_pick, pr_out, api_name="profile")
        run_pick.change(lambda r: headline(r) if r else "", run_pick, summary, api_name=False)
        for ctl in (sp_branch, sp_step, sp_layer):
            ctl.input(sparsity_view, [run_pick, sp_branch, sp_step, sp_layer], sp_out, api_name=False)
        for ctl in (ru_branch, ru_heads):
            ctl.input(reuse_view, [run_pick, ru_branch, ru_heads], ru_out, api_name=False)
        ru_grid.select(reuse_pick, [run_pick, ru_branch], [ru_mask, ru_pick], api_name=False)
        ch_branch.input(chunks_view, [run_pick, ch_branch], ch_out, api_name=False)
        mo_frame.release(motion_view, [run_pick, mo_frame, mo_source], mo_out, api_name=False)
        mo_source.input(motion_view, [run_pick, mo_frame, mo_source], mo_out, api_name=False)
        cmp_btn.click(compare_runs, cmp_runs, [cmp_video, cmp_diff, cmp_curves, cmp_table], api_name="compare")
        dense_btn.click(
            run_dense_reference, run_pick, [cmp_runs, cmp_pareto, cmp_note],
            concurrency_limit=1, concurrency_id=GENERATE_QUEUE, api_name="dense_reference",
        )  # fmt: skip
        tb_btn.click(open_tensorboard, run_pick, tb_note, api_name="tensorboard")
        runs_df.select(runs_select, runs_df, runs_sel, api_name=False)
        open_btn.click(lambda r: gr.update(choices=run_choices(), value=r or None), runs_sel, run_pick, api_name=False)
        del_btn.click(delete_run, [runs_sel, confirm], [runs_df, runs_sel, confirm, run_pick, runs_note],
                      api_name=False)  # fmt: skip
        demo.load(lambda: (runs_table(), gr.update(choices=run_choices())), None, [runs_df, run_pick], api_name=False)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the bench's Gradio app.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--runs-dir", help="run store folder (default: $ACCEL_RUNS_DIR or ./runs)")
    args = parser.parse_args(argv)
    if args.runs_dir:
        os.environ["ACCEL_RUNS_DIR"] = args.runs_dir
    demo = build_app().queue(default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(_store().root.resolve())])


if __name__ == "__main__":
    main()
