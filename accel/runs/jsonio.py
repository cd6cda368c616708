"""Strict JSON for a run's files: what :func:`to_jsonable` converts, how files are written and read.

Files are strict JSON (``allow_nan=False``) so browsers can parse them. Non-finite floats are written as the
strings ``"inf"``, ``"-inf"`` and ``"nan"``; ``float()`` turns them back into floats. NumPy scalars/arrays,
tuples, sets, paths, datetimes, enums and dataclasses are converted as well.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """Recursively convert ``obj`` into strict-JSON-serialisable values (see module docstring)."""
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, Mapping):
        return {k if isinstance(k, str) else str(to_jsonable(k)): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=repr)
    if isinstance(obj, (np.ndarray, np.generic)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):  # e.g. tensors, without importing their library
        return to_jsonable(obj.tolist())
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable: {obj!r}")


def _dump_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as strict, indented JSON."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    """Parse a JSON file (also tolerates bare NaN/Infinity written by other tools)."""
    return json.loads(path.read_text(encoding="utf-8"))
