"""The Generate form as plain values: what the app's widgets hold, turned into a :class:`RunConfig`.

The app's form is ``model, method, prompt, negative, *SAMPLING, *FORCING, profile, kernels, *settings`` with one
value per field of :data:`FIELDS` (every method's settings, registry order). Empty numbers mean the model's
default. Nothing here imports gradio or torch; bad values raise :class:`accel.errors.ConfigError`.
"""

from __future__ import annotations

from typing import Any

from accel import methods
from accel.config import DEFAULT_MODEL, FORCING, RunConfig
from accel.fields import all_field_specs, parse_number, settings_from
from accel.methods import settings_for
from accel.settings import COMMIT_MODES

DEFAULT_PROMPT = "a red circle moves quickly left over a blue background"
# offered under the prompt; all in the grammar of the procedural clips the pocket models learned (tested)
EXAMPLE_PROMPTS = (
    DEFAULT_PROMPT,
    "a green square moves slowly up over a white background",
    "a yellow triangle moves quickly to the lower right over a purple background",
    "an orange circle moves slowly right over a horizontal gradient blue background",
    "a white square and a red circle move quickly down over a black background",
)
SAMPLING = ("seed", "height", "width", "frames", "steps", "guidance", "repeats")  # repeats: timing passes
CHOICES = {"kv_commit": COMMIT_MODES}  # form fields that are a choice, not a number (empty = RunConfig's default)
FIELDS = all_field_specs()
INTEGER = {*SAMPLING, *FORCING} - {"guidance", "addnoise_condition", *CHOICES}
SETTINGS_START = 4 + len(SAMPLING) + len(FORCING) + 2  # where the method settings start in the form's values


def _values(names: tuple[str, ...], raw: list[Any]) -> dict[str, Any]:
    """Form values by name: numbers parsed (:func:`number`), choices as given; empty ones left out of a choice
    (so the run takes its default)."""
    out: dict[str, Any] = {}
    for name, value in zip(names, raw, strict=True):
        if name not in CHOICES:
            out[name] = number(value, name)
        elif value not in (None, ""):
            out[name] = value
    return out


def number(value: Any, name: str) -> int | float | None:
    """A form number: empty = None (the model's default); anything else must parse (integers where due)."""
    if value is None or str(value).strip() == "":
        return None
    return parse_number(value, name, integer=name in INTEGER)


def run_config(
    model: str,
    method: str,
    prompt: str,
    negative: str,
    sampling: list[Any],
    fields: list[Any],
    kernels: str | None = None,
) -> RunConfig:
    """The run of a filled-in form (``sampling`` in ``SAMPLING + FORCING`` order, ``fields`` in ``FIELDS`` order,
    ``kernels`` the kernel backend: empty or None = the environment's)."""
    methods.get(method)  # an unknown method names the known ones
    values = _values((*SAMPLING, *FORCING), list(sampling))
    values["seed"] = values["seed"] or 0
    values["repeats"] = 1 if values["repeats"] is None else values["repeats"]
    settings = settings_for(method, settings_from(method, FIELDS, list(fields)))
    return RunConfig(
        prompt=prompt or "", model=model, method=method, settings=settings, negative_prompt=negative or "",
        kernels=kernels or None, **values,
    )  # fmt: skip


def dense_reference(config: dict[str, Any]) -> RunConfig:
    """The dense run that matches a stored run's ``config.json`` (same prompt, seed, model and sampling, timed
    with as many repeats)."""
    sampling = {k: config.get(k) for k in (*SAMPLING, *FORCING, "fps") if k not in CHOICES or config.get(k)}
    sampling["repeats"] = sampling["repeats"] or 1  # runs stored before timing repeats existed
    return RunConfig(prompt=config["prompt"], model=config["model"], method="dense",
                     negative_prompt=config.get("negative_prompt", ""), **sampling)  # fmt: skip


DEFAULT_METHOD = "xattention"  # the method the Generate form opens on


def form_values(
    model: str = DEFAULT_MODEL,
    method: str = DEFAULT_METHOD,
    prompt: str = DEFAULT_PROMPT,
    negative: str = "",
    sampling: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    profile: bool = False,
    kernels: str = "",
) -> list[Any]:
    """Positional values of the Generate form (for scripts and the API): defaults plus overrides."""
    sampling, settings = dict(sampling or {}), dict(settings or {})
    values = [sampling.pop(k, 0 if k == "seed" else None) for k in (*SAMPLING, *FORCING)]
    if sampling:
        raise ValueError(f"unknown sampling keys {sorted(sampling)}")
    fields = []
    for f in FIELDS:
        v = settings.get(f.name, f.default) if f.method == method else f.default
        fields.append(",".join(map(str, v)) if isinstance(v, tuple) else v)
    return [model, method, prompt, negative, *values, profile, kernels, *fields]
