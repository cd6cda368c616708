"""The Generate form's widgets built from settings: one per method setting, the forcing fields, optional numbers."""

from __future__ import annotations

import gradio as gr

from accel import forms
from accel.fields import MODEL_DEFAULT, FieldSpec
from accel.paths import TABLES

CHOICE_INFO = {  # the help of each choice field of the form (forms.CHOICES)
    "kv_commit": "how a finished chunk's K/V is frozen: empty = last-step (the seeds' FlowCache / MotionCache: its "
    "last denoising step's K/V), clean-pass = diffusers' extra pass at timestep 0",
}


def setting_input(f: FieldSpec) -> gr.components.Component:
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


def forcing_input(name: str) -> gr.Dropdown | gr.Textbox:
    """A diffusion-forcing field of the form: a choice (:data:`accel.forms.CHOICES`; empty = the run's default) or a
    number (empty = the model's default)."""
    label = name.replace("_", " ")
    if name in forms.CHOICES:
        return gr.Dropdown(["", *forms.CHOICES[name]], value="", label=label, info=CHOICE_INFO[name])
    return optional_number(label, "empty = model default")


def optional_number(label: str, info: str) -> gr.Textbox:
    """A number that may be left empty (= the model's default); gr.Number cannot stay empty in the browser."""
    elem_id = "in-" + label.lower().replace(" ", "-")
    return gr.Textbox("", label=label, info=info, placeholder="model default", elem_id=elem_id)
