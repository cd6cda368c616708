"""The app's tabs: one builder per tab makes its widgets and wires them to the handlers, given the run picker."""

from __future__ import annotations

import gradio as gr
from gradio.events import Dependency

from accel import forms, methods, models, retime
from accel.config import DEFAULT_MODEL, KERNEL_BACKENDS, MAX_REPEATS
from accel.ui.common import GENERATE_QUEUE, blanks, for_run, run_store
from accel.ui.generation import (
    model_defaults,
    preset_sizes,
    request_stop,
    retime_run,
    run_dense_reference,
    run_generation,
)
from accel.ui.page import DENSITY_CLICK, HIDDEN
from accel.ui.store import delete_run, open_selected, runs_select
from accel.ui.views import (
    CLICK_A_CELL,
    DIFF_LABEL,
    TENSORBOARD_NOTE,
    chunks_view,
    compare_choices,
    compare_runs,
    density_click,
    motion_view,
    no_comparison,
    open_tensorboard,
    profile_view,
    reuse_pick,
    reuse_view,
    sparsity_view,
)
from accel.ui.widgets import forcing_input, optional_number, setting_input
from viz import motion, panels
from viz.common import empty_figure


def generate_tab(run_pick: gr.Dropdown) -> tuple[gr.Video, gr.Markdown, Dependency, Dependency]:
    """Model, method and prompt with Generate and Stop at the top; sampling, method settings, forcing and profiling in
    accordions below; the video and its headline numbers. Returns the Output video, the headline and the generation
    event (it adds a run to the store)."""
    names = methods.names()
    with gr.Tab("Generate", id="generate"), gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(
                [*models.REGISTRY], value=DEFAULT_MODEL, label="Model", allow_custom_value=True,
                info="registered name, hub id (from the local cache), or a local diffusers folder",
            )  # fmt: skip
            model_note = gr.Markdown(model_defaults(DEFAULT_MODEL))
            method = gr.Radio(names, value=forms.DEFAULT_METHOD, label="Method")
            prompt = gr.Textbox(forms.DEFAULT_PROMPT, label="Prompt")
            gr.Examples([[p] for p in forms.EXAMPLE_PROMPTS], prompt, label="Prompts the pocket models learned")
            with gr.Row():
                go_btn = gr.Button("Generate", variant="primary", scale=3)
                stop_btn = gr.Button("Stop", variant="stop", scale=1)
            with gr.Accordion("Sampling and size", open=True):
                negative = gr.Textbox("", label="Negative prompt")
                with gr.Row():
                    seed = gr.Number(0, label="Seed")  # forms.number checks integers, not gradio
                    steps = optional_number("Steps", "empty = model default")
                    guidance = optional_number("Guidance", "empty = model default")
                    repeats = gr.Number(
                        1, label="Timing repeats",
                        info=f"runs it N times (1 to {MAX_REPEATS}); times are the median (benchmarks: 3 or more)",
                    )  # fmt: skip
                with gr.Row():
                    height = optional_number("Height", "px; empty = default")
                    width = optional_number("Width", "px; empty = default")
                    frames = optional_number("Frames", "4k+1; empty = default")
                size_preset = gr.Radio(
                    list(models.SIZE_PRESETS), value="default", label="Size preset",
                    info="bench: over 2,000 tokens per call (pocket models), where sparse attention can pay off on a "
                    "CPU",
                )  # fmt: skip
            with gr.Accordion("Method settings", open=True):
                groups, field_inputs = [], []
                for m in names:
                    with gr.Group(visible=m == forms.DEFAULT_METHOD) as group:
                        gr.Markdown(f"**{m} settings** · {methods.get(m).summary}")
                        field_inputs += [setting_input(f) for f in forms.FIELDS if f.method == m]
                    groups.append(group)
            with gr.Accordion("Diffusion forcing (SkyReels-V2)", open=False):
                forcing = [forcing_input(k) for k in forms.FORCING]
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
    """Masks of a step and layer, density heatmaps (a click on a cell picks its step and layer)."""
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
    run_pick.change(for_run(sparsity_view, out), run_pick, out, api_name="sparsity", show_progress_on=masks)
    for ctl in (branch, step, layer):
        ctl.input(sparsity_view, [run_pick, branch, step, layer], out, api_name=False, show_progress_on=masks)


def reuse_tab(run_pick: gr.Dropdown) -> None:
    """The refresh/reuse grid (a click on a cell shows that head's mask) and drift curves."""
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
    run_pick.change(for_run(reuse_view, out), run_pick, out, api_name="reuse", show_progress_on=drift)
    for ctl in (branch, heads):
        ctl.input(reuse_view, [run_pick, branch, heads], out, api_name=False, show_progress_on=drift)
    grid.select(reuse_pick, [run_pick, branch], [mask, picked, grid], api_name=False, show_progress_on=mask)


def chunks_tab(run_pick: gr.Dropdown) -> None:
    """Chunk timeline, accumulators and KV buffer of a chunk-cache run."""
    with gr.Tab("Chunk cache", id="chunks"):
        branch = gr.Dropdown([], label="Branch")
        out = [branch, gr.Plot(label="Timeline"), gr.Plot(label="Accumulators"), gr.Plot(label="KV buffer")]
    run_pick.change(for_run(chunks_view, out), run_pick, out, api_name="chunks", show_progress_on=out[1])
    branch.input(chunks_view, [run_pick, branch], out, api_name=False, show_progress_on=out[1])


def motion_tab(run_pick: gr.Dropdown) -> None:
    """Motion heatmap over a frame (the method's token weights or optical flow) and token update counts."""
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
    run_pick.change(for_run(motion_view, out), run_pick, out, api_name="motion", show_progress_on=image)
    frame.release(motion_view, [run_pick, frame, source], out, api_name=False, show_progress_on=image)
    source.input(motion_view, [run_pick, frame, source], out, api_name=False, show_progress_on=image)


def compare_tab(run_pick: gr.Dropdown) -> Dependency:
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
        _, _, first_curves, first_table = no_comparison()
        table = gr.Dataframe(first_table, label="Quality and speed against the first run", wrap=True)
        curves = gr.Plot(first_curves, label="Per-frame PSNR / SSIM")
        pareto = gr.Plot(label="Speed vs quality")
    results = [side, diff, curves, table]
    out = [runs, pareto, note, *results]
    run_pick.change(for_run(compare_choices, out), run_pick, out, api_name="compare_choices", show_progress_on=pareto)
    runs.input(lambda: no_comparison(), None, results, api_name=False, queue=False)  # results of other runs go
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
    run_pick.change(blanks(out, "loading the run's profile..."), None, out, api_name=False, queue=False).then(
        for_run(profile_view, out), run_pick, out, api_name="profile", show_progress_on=ranges_fig
    )
    tb_btn.click(open_tensorboard, run_pick, tb_note, api_name="tensorboard")
    return out


def runs_tab(run_pick: gr.Dropdown) -> gr.Dataframe:
    """The run store as a table: open or delete the run of a row; returns the table (refreshed on new runs)."""
    with gr.Tab("Runs", id="runs"):
        table = gr.Dataframe(panels.runs_table(run_store()), label="Run store (click a row)", interactive=False,
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
