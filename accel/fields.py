"""Every method setting as a field spec: what the CLI turns into a ``--flag`` and the app into a widget.

:func:`field_specs` reads the settings dataclasses of :func:`accel.methods.records` (their ``help``,
``choices`` and defaults), so a new setting shows up in both places with its tooltip and default. A spec
parses the text a user typed (:meth:`FieldSpec.parse`) and the value a widget holds (:meth:`FieldSpec.read`);
bad values raise :class:`accel.errors.ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accel.errors import ConfigError
from accel.settings import MethodSettings

MODEL_DEFAULT = "model default"  # how an unset optional choice reads in a widget (unlike a choice named "none")
EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a path"}


def parse_number(value: Any, name: str, integer: bool = False) -> int | float:
    """A number typed into a form or sent through the API (text or number): finite, and a whole number where
    ``integer`` (``1.5`` is refused, never rounded); anything else is one :class:`ConfigError` naming ``name``."""
    text = str(value).strip()
    try:
        number = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if not integer:
        return number
    if number != int(number):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    try:
        return int(text)  # exact for long integer text (float() rounds past 2**53)
    except ValueError:
        return int(number)


def _scalar(kind: type, text: str) -> Any:
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    return kind(text)


def _parser(tp: Any) -> tuple[Callable[[str], Any], str]:
    """A text parser and metavar for a settings field type (int, float, bool, str, optional, tuple of scalars)."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    optional = type(None) in args
    scalars = [a for a in args if a in (int, float, bool, str)]
    seqs = [typing.get_args(a)[0] for a in args if typing.get_origin(a) in (tuple, list)]
    if not scalars and not seqs:
        raise TypeError(f"no text parser for settings type {tp!r}")
    scalar = scalars[0] if scalars else None
    metavar = (scalar or seqs[0]).__name__.upper()
    if seqs:
        metavar = f"{metavar}[,{seqs[0].__name__.upper()}...]" if scalar else f"{metavar},..."
    if optional:
        metavar += "|none"

    def parse(text: str) -> Any:
        s = text.strip()
        if optional and s.lower() in ("none", ""):
            return None
        try:
            if seqs and ("," in s or scalar is None):
                return tuple(_scalar(seqs[0], part.strip()) for part in s.split(",") if part.strip())
            return _scalar(scalar, s)
        except ValueError:
            what = EXPECTED[scalar or seqs[0]]
            if seqs:
                what += f" or a comma-separated list of {EXPECTED[seqs[0]].split(' ', 1)[1]}s"
            if optional:
                what += " or 'none'"
            raise ConfigError(f"expected {what}, got {text!r}") from None

    return parse, metavar


def _kind(tp: Any, choices: tuple[str, ...], name: str) -> str:
    if name == "threshold_table":
        return "table"
    if choices:
        return "choice"
    return {bool: "bool", int: "int", float: "float"}.get(tp, "text")


@dataclass(frozen=True)
class FieldSpec:
    """One settings field of one method."""

    method: str
    name: str
    kind: str  # bool | int | float | choice | table | text (optional numbers and lists are text)
    default: Any
    help: str
    choices: tuple[str, ...]
    metavar: str
    parse: Callable[[str], Any]  # text as typed on a command line -> value ('none' or empty: unset if optional)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def read(self, value: Any) -> Any:
        """The value of a widget holding ``value`` (empty = the default; ``none`` table = no table)."""
        if self.kind == "bool":
            return bool(value)
        if self.kind == "table":
            return None if value in (None, "", "none") else str(value)
        if value is None or (isinstance(value, str) and not value.strip()):
            return self.default
        if self.kind in ("int", "float"):
            return parse_number(value, self.name, integer=self.kind == "int")
        if self.kind == "choice":
            return None if value == MODEL_DEFAULT else value
        try:
            return self.parse(str(value))
        except ConfigError as exc:
            raise ConfigError(f"{self.name}: {exc}") from None

    def shown(self, value: Any) -> str:
        """A value as text (lists comma-separated, unset as the model default)."""
        if value is None:
            return MODEL_DEFAULT
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        return str(value)


def field_specs(settings: type[MethodSettings]) -> list[FieldSpec]:
    """The fields of one settings class, in declaration order."""
    hints = typing.get_type_hints(settings)
    out = []
    for f in dataclasses.fields(settings):
        default = f.default if f.default is not dataclasses.MISSING else None
        choices = tuple(f.metadata.get("choices", ()))
        parse, metavar = _parser(hints[f.name])
        kind = _kind(hints[f.name], choices, f.name)
        text = f.metadata.get("help", "")
        out.append(FieldSpec(settings.method, f.name, kind, default, text, choices, metavar, parse))
    return out


def all_field_specs() -> list[FieldSpec]:
    """Every field of every registered method, registry order then declaration order."""
    from accel import methods

    return [spec for m in methods.records() for spec in field_specs(m.settings)]


def settings_from(method: str, specs: list[FieldSpec], values: list[Any]) -> dict[str, Any]:
    """The settings dict of ``method`` from widget ``values`` given in ``specs`` order (other methods skipped)."""
    return {s.name: s.read(v) for s, v in zip(specs, values, strict=True) if s.method == method}
