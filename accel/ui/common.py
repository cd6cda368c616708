"""Adapters between :mod:`viz.panels` and gradio widgets: the run store, errors as messages, blank outputs."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from accel.errors import DependencyError, UserError, root_cause
from accel.runs import Run, RunStore
from viz import panels
from viz.common import empty_figure, fit_title

PROGRESS = gr.Progress()  # gradio injects a live tracker for a parameter defaulting to one
GENERATE_QUEUE = "generate"  # generations (and dense references) share one queue: one at a time
LOG = logging.getLogger("accel.app")
NO_RUN = "no run selected: generate one, or pick one above or in the Runs tab"


def run_store() -> RunStore:
    """The run store the app serves: ``$ACCEL_RUNS_DIR`` (``--runs-dir``), else ``./runs``."""
    return RunStore(os.environ.get("ACCEL_RUNS_DIR"))


def open_run(run_id: str | None) -> Run:
    """The stored run ``run_id`` (a :class:`~accel.errors.UserError` naming what is wrong if it cannot be opened)."""
    return panels.open_run(run_store(), run_id)


def event_handler(fn: Callable) -> Callable:
    """``fn`` as an event handler: a UserError becomes a message; anything else is logged, then a message."""

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        try:
            return fitted(fn(*args, **kwargs))
        except gr.Error:
            raise
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # a bug or a broken package: its root cause here, the traceback in the log
            LOG.exception("%s failed", fn.__name__)
            why = str(exc) if isinstance(exc, DependencyError) else root_cause(exc)
            raise gr.Error(f"{fn.__name__.replace('_', ' ')} failed: {why} (traceback in the server log)") from None

    return handler


def fitted(result: Any) -> Any:
    """A handler's result with every figure's title wrapped to the plot (plotly cuts a long title, never wraps)."""
    if isinstance(result, tuple):
        return tuple(fitted(r) for r in result)
    return fit_title(result) if isinstance(result, go.Figure) else result


def blank(component: gr.components.Component, why: str) -> Any:
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


def blanks(outputs: list, why: str) -> Callable[..., Any]:
    """An event handler that blanks ``outputs`` (:func:`blank`), whatever its inputs."""

    def blanked(*_):
        shown = tuple(blank(c, why) for c in outputs)
        return shown if len(shown) > 1 else shown[0]

    return blanked


def for_run(view: Callable, outputs: list) -> Callable:
    """``view`` for a change of the run shown: with no run (none yet, or it was deleted), every output blank."""

    @functools.wraps(view)
    def update(run_id: str | None, *rest):
        return view(run_id, *rest) if run_id else blanks(outputs, NO_RUN)()

    return update


def picker(pick: panels.Pick, **extra: Any) -> dict[str, Any]:
    """A dropdown's update from a :class:`viz.panels.Pick`: its options and the option picked."""
    return gr.update(choices=pick.options, value=pick.value, **extra)
