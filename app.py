"""Gradio app: run a generation on the embedded model (or a real checkpoint) and see the result.

``python app.py`` serves on http://127.0.0.1:7860 (``--host``/``--port`` to change). This is the
first, thin version: generate with any method and read the run's headline numbers; the views of
masks, reuse, chunks, motion and profiles build on the same run folders.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gradio as gr

from accel import models
from accel.config import ConfigError, RunConfig, settings_for
from accel.models import ModelLoadError
from accel.runner import RunError, generate
from accel.runs import RunStore

TABLES = Path(__file__).resolve().parent / "assets" / "tables"

METHODS = ["dense", "xattention", "svg2"]
PROGRESS = gr.Progress()  # gradio injects a live tracker for a parameter defaulting to one


def table_choices() -> list[str]:
    """Calibrated per-head threshold tables shipped under assets/tables (for +EBC)."""
    return ["none", *sorted(str(p) for p in TABLES.glob("*.json"))]


def run_generation(model, method, prompt, negative, seed, steps, tau, top_p, tmr, delta, table, progress=PROGRESS):
    """One generation from the UI; bad input becomes a gr.Error and the app keeps serving."""
    settings = {"xattention": {"tau": float(tau)}, "svg2": {"top_p": float(top_p)}}.get(method, {})
    if method != "dense":
        settings["tmr"] = bool(tmr)
        if delta not in (None, ""):
            settings["tmr_delta"] = float(delta)
        if table and table != "none":
            settings["threshold_table"] = table
    try:
        cfg = RunConfig(
            prompt=prompt,
            model=model,
            method=method,
            settings=settings_for(method, settings),
            negative_prompt=negative,
            seed=int(seed),
            steps=int(steps) if steps else None,
        )
        run = generate(cfg, RunStore(), progress=lambda i, n: progress(i / n, desc=f"step {i}/{n}"))
    except (ConfigError, ModelLoadError, RunError, ValueError) as exc:
        raise gr.Error(str(exc)) from None
    m = run.metrics
    keys = ("wall_s", "density_mean_sparse", "mask_predict_s", "mask_skip_frac", "tokens", "device")
    headline = {k: m[k] for k in keys if k in m}
    return str(run.video_path), json.dumps({"run": run.run_id, **headline}, indent=2)


def build_app() -> gr.Blocks:
    with gr.Blocks(title="Video DiT acceleration bench") as demo:
        gr.Markdown("# Video DiT acceleration bench\nGenerate with a sparse-attention method and inspect the run.")
        with gr.Row():
            with gr.Column():
                model = gr.Dropdown(
                    [*models.REGISTRY],
                    value="tiny-wan",
                    label="Model",
                    allow_custom_value=True,
                    info="registered name, hub id, or local diffusers folder",
                )
                method = gr.Radio(METHODS, value="xattention", label="Method")
                prompt = gr.Textbox("a red circle moves left over a blue background", label="Prompt")
                negative = gr.Textbox("", label="Negative prompt")
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0)
                    steps = gr.Number(None, label="Steps (empty = model default)", precision=0)
                tau = gr.Slider(
                    0.05,
                    1.0,
                    value=0.9,
                    step=0.01,
                    label="XAttention tau",
                    info="cumulative block-score threshold per query block; 1 = dense",
                )
                top_p = gr.Slider(
                    0.05,
                    1.0,
                    value=0.9,
                    step=0.01,
                    label="SVG2 top_p",
                    info="share of the cluster-pair map kept per query cluster",
                )
                with gr.Row():
                    tmr = gr.Checkbox(
                        False,
                        label="Temporal Mask Reuse",
                        info="reuse a head's mask while its Q/K drift stays <= delta",
                    )
                    delta = gr.Number(None, label="TMR delta (empty = model default)")
                table = gr.Dropdown(
                    table_choices(),
                    value="none",
                    label="EBC threshold table",
                    allow_custom_value=True,
                    info="per-head thresholds from `python -m accel calibrate` (+EBC)",
                )
                go = gr.Button("Generate", variant="primary")
            with gr.Column():
                video = gr.Video(label="Output")
                summary = gr.Code(label="Run", language="json")
        go.click(
            run_generation,
            [model, method, prompt, negative, seed, steps, tau, top_p, tmr, delta, table],
            [video, summary],
            concurrency_limit=1,
        )
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the bench's Gradio app.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    build_app().queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
