"""Handlers that run a model: a generation from the form, a dense reference, a re-timing; Stop; the form's help."""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Callable
from typing import Any

import gradio as gr

from accel import forms, methods, models, retime
from accel.config import RunConfig
from accel.errors import UserError, imports_undone_on_failure
from accel.fields import parse_number
from accel.ui.common import PROGRESS, event_handler, open_run, run_store
from accel.ui.views import compare_choices, shown_run
from viz import panels, profile

STOP = threading.Event()  # set by the Stop button; generations run one at a time (common.GENERATE_QUEUE)


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


def generate_run(cfg: RunConfig, profile: bool, progress) -> str:
    """Generate ``cfg`` into the store with a progress bar (steps, then the VAE decode) that honours Stop; returns
    the run id. A failed import leaves nothing half-imported behind: the next request imports afresh."""
    from accel.runner import generate  # imported on first use: the views need no torch model

    with imports_undone_on_failure():
        return generate(cfg, run_store(), progress=_steps(cfg.model, progress), profile=profile).run_id


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


@event_handler
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
        run = run_store().load(generate_run(cfg, bool(profile_on), progress))
    except Stopped as exc:
        return _stopped(exc, 3)
    choices = panels.run_choices(run_store())
    video = run.video_path  # refused (one line) if a symbolic link or over its size limit
    return (
        str(video) if video else None,
        panels.headline(run_store(), run),
        gr.update(choices=choices, value=run.run_id),
    )


run_generation.__signature__ = GENERATE_FORM  # what gradio (and inspect) read: one name per form value


@event_handler
def run_dense_reference(run_id: str | None, progress=PROGRESS):
    """Generate the dense run matching ``run_id`` (same prompt, seed, model and sampling)."""
    run = open_run(run_id)
    try:
        generate_run(forms.dense_reference(run.config), profile.is_profiled(run), progress)
    except Stopped as exc:
        return _stopped(exc, 7)
    return compare_choices(run_id)


@event_handler
def retime_run(run_id: str | None, rounds: Any = retime.ROUNDS, progress=PROGRESS):
    """Time the shown run and dense alternately in this process (:mod:`accel.retime`); the headline then shows that
    ratio instead of the two runs' own."""
    run = open_run(run_id)
    rounds = retime.ROUNDS if rounds is None or str(rounds).strip() == "" else parse_number(rounds, "rounds", True)
    try:
        with imports_undone_on_failure():
            retime.retime(run, rounds, _steps(run.config.get("model"), progress))
    except Stopped as exc:
        return _stopped(exc, 2)
    return shown_run(run_id)


@event_handler
def model_defaults(model: str) -> str:
    """What the form's empty fields mean for this model (sizes, blocks, clusters, TMR deltas, cache thresholds)."""
    try:
        return methods.defaults_text(models.resolve(model))
    except UserError:  # a folder or hub id that is not registered: its defaults are known once it loads
        return f"**{model}**: defaults come from the checkpoint and the Wan2.1 settings"


@event_handler
def preset_sizes(model: str, name: str) -> list[Any]:
    """Height, width and frames of a size preset for the form (empty = the model's defaults)."""
    sizes = models.size_preset(models.resolve(model), name)
    return [sizes.get(k, "") for k in ("height", "width", "frames")]
