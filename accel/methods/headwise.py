"""What the head-wise sparse attention methods share in the registry: their record's shape (every family, the
shared installer, TMR and EBC) and their benchmark variants."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from accel.methods import (
    BALANCE,
    CHUNKED,
    FAMILIES,
    SPARSE,
    TMR,
    AttentionBuilder,
    Method,
    Variants,
    installers,
    parallel_ok,
)
from accel.paths import shipped_table
from accel.settings import HeadwiseSettings

if TYPE_CHECKING:
    from accel.models import ModelSpec


def headwise_variants(method: str) -> Variants:
    """base, +TMR, and +EBC / +TMR+EBC where a calibrated table ships for the model."""

    def variants(spec: ModelSpec) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {method: {}, f"{method}+tmr": {"tmr": True}}
        table = shipped_table(spec.name, method)
        if table is not None:
            out[f"{method}+ebc"] = {"threshold_table": str(table)}
            out[f"{method}+tmr+ebc"] = {"tmr": True, "threshold_table": str(table)}
        return out

    return variants


def headwise_method(
    settings: type[HeadwiseSettings],
    build: AttentionBuilder,
    order: int,
    summary: str,
    model_defaults: Callable[[ModelSpec], dict[str, Any]],
    defaults_note: Callable[[ModelSpec], str],
    colour: str | None = None,
) -> Method:
    """The record of a head-wise sparse attention method: every family (on SkyReels-V2 inside the chunked runner),
    its sparse and TMR events, base / +TMR / +EBC variants, EBC on its ``threshold_name``, and ``--parallel``."""
    return Method(
        settings.method,
        settings,
        FAMILIES,
        installers.attention,
        SPARSE | TMR | CHUNKED | BALANCE,
        headwise_variants(settings.method),
        order=order,
        attention=build,
        summary=summary,
        parallel=parallel_ok,
        model_defaults=model_defaults,
        defaults_note=defaults_note,
        colour=colour,
    )
