"""Gradio app: generate with any method and see why it is fast or ugly, beside the video.

``python app.py`` serves on http://127.0.0.1:7860 (``--host``/``--port``/``--runs-dir`` to change) and
starts on the embedded model with no network. This file is the entry point and the page's wiring: the tabs
(:mod:`accel.ui.tabs`, one builder per tab) connect widgets to the handlers of :mod:`accel.ui.generation`
(:func:`accel.runner.generate`, Stop, re-timing), :mod:`accel.ui.views` (what :mod:`viz.panels` shows for a run)
and :mod:`accel.ui.store` (run lists, delete). Any stored run reopens without loading a model; generations are
queued one at a time while the views stay responsive. A :class:`~accel.errors.UserError` is shown as a message;
any other failure is logged with its traceback and shown in one line (:func:`accel.ui.common.event_handler`), and
the app keeps serving.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket

import gradio as gr

from accel import budget, tempdirs
from accel.errors import Parser, UserError
from accel.ui import tabs
from accel.ui.common import LOG, run_store
from accel.ui.page import PAGE_SCRIPT
from accel.ui.store import run_lists
from accel.ui.views import export_report, profile_view, shown_run
from profiling import tensorboard
from viz import panels


def build_app() -> gr.Blocks:
    """The page: the run picker and report button above the tabs, and the events that span tabs."""
    with gr.Blocks(title="Video DiT acceleration bench") as demo:
        gr.Markdown("# Video DiT acceleration bench\nGenerate with a method, then see why it is fast or ugly.")
        with gr.Row():
            choices = panels.run_choices(run_store())
            run_pick = gr.Dropdown(
                choices, value=None, label="Run shown in the views", scale=4, allow_custom_value=True
            )
            refresh = gr.Button("Refresh list", scale=0)
            report_btn = gr.Button("HTML report", scale=0)
        report_file = gr.File(label="Report (HTML, opens offline)", visible=False)  # a row of its own: the name shows
        with gr.Tabs():
            video, summary, generated, retimed = tabs.generate_tab(run_pick)
            for tab in (tabs.sparsity_tab, tabs.reuse_tab, tabs.chunks_tab, tabs.motion_tab):
                tab(run_pick)
            dense_reference = tabs.compare_tab(run_pick)
            profile_out = tabs.profile_tab(run_pick)
            runs_table = tabs.runs_tab(run_pick)
        lists = [run_pick, runs_table]
        refresh.click(run_lists, None, lists, api_name=False)
        report_btn.click(export_report, run_pick, report_file, api_name="report")
        run_pick.change(shown_run, run_pick, [video, summary], api_name="shown_run")
        retimed.success(profile_view, run_pick, profile_out, api_name=False, show_progress_on=profile_out[0])
        for adds_a_run in (generated, dense_reference):  # every run list shows the new run at once
            adds_a_run.then(run_lists, None, lists, api_name=False)
        # a new dense reference changes the headline's speedup and the profile breakdown of the run shown
        dense_reference.success(shown_run, run_pick, [video, summary], api_name=False).success(
            profile_view, run_pick, profile_out, api_name=False, show_progress_on=profile_out[0]
        )
        demo.load(run_lists, None, lists, api_name=False)
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
    """Serve the app (``python app.py --help``); a usage error or a busy port is one line, exit 2."""
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
        store = run_store()
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
    demo.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(run_store().root.resolve())])


if __name__ == "__main__":
    main()
