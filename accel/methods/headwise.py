"""What the head-wise sparse attention methods share in the registry: their benchmark variants."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from accel.methods import Variants
from accel.paths import shipped_table

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
