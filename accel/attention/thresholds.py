"""Per-head threshold tables: the output of Error-guided Budgeted Calibration (METHODS 1.4).

A table is a versioned JSON file with, per CFG branch, one threshold per (layer, head): ``tau`` for
XAttention, ``top_p`` for SVG2. :func:`load_table` refuses a table made for another format version,
model, base method or model shape with a one-line :class:`~accel.errors.ConfigError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from accel.errors import ConfigError, one_line
from accel.tracking import BRANCH_NAMES

TABLE_FORMAT = "accel.threshold-table"
TABLE_VERSION = 1
MAX_TABLE_BYTES = 16 * 2**20


def read_table(path: str | Path) -> dict[str, Any]:
    """Parse a table file and check its format and version (not yet against a model)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"threshold table {path} does not exist or is not a file")
    if p.stat().st_size > MAX_TABLE_BYTES:
        raise ConfigError(f"threshold table {path} is larger than {MAX_TABLE_BYTES // 2**20} MiB; not a table")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"threshold table {path} is not valid JSON ({one_line(exc)})") from None
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
        raise ConfigError(f"{path} is not a threshold table (format {TABLE_FORMAT!r} expected)")
    if data.get("version") != TABLE_VERSION:
        raise ConfigError(
            f"threshold table {path} has version {data.get('version')!r}; this bench reads {TABLE_VERSION}"
        )
    branches = data.get("branches")
    if not isinstance(branches, dict):
        raise ConfigError(f"threshold table {path}: branches must map branch names to thresholds")
    if "cond" not in branches:  # every run has a cond branch; an uncond-only table would lend it uncond's thresholds
        has = f" (it has {', '.join(map(repr, branches))})" if branches else ""
        raise ConfigError(f"threshold table {path} has no 'cond' branch{has}: calibrate it again")
    return data


def load_table(
    path: str | Path, *, method: str, key: str, model: str, layers: int | None = None, heads: int | None = None
) -> dict[str, torch.Tensor]:
    """Per-branch thresholds ``{branch: (layers, heads)}`` of the setting ``key`` (``tau``, ``top_p``) from
    ``path``, validated for this model and method."""
    data = read_table(path)
    if data.get("method") != method:
        raise ConfigError(f"threshold table {path} was calibrated for method {data.get('method')!r}, not {method!r}")
    if data.get("model") != model:
        raise ConfigError(f"threshold table {path} was calibrated for model {data.get('model')!r}, not {model!r}")
    t_layers, t_heads = data.get("layers"), data.get("heads")
    for name, value in (("layers", t_layers), ("heads", t_heads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"threshold table {path}: {name} must be a positive integer, got {value!r}")
    if (layers is not None and t_layers != layers) or (heads is not None and t_heads != heads):
        raise ConfigError(
            f"threshold table {path} is for {t_layers} layers x {t_heads} heads, but the model has "
            f"{layers} layers x {heads} heads"
        )
    out: dict[str, torch.Tensor] = {}
    branches = data["branches"]
    unknown = sorted(set(branches) - set(BRANCH_NAMES))
    if unknown:
        raise ConfigError(
            f"threshold table {path} has unknown branch(es) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(BRANCH_NAMES)}"
        )
    for branch, entry in branches.items():
        try:
            values = torch.tensor(entry[key], dtype=torch.float32)
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"threshold table {path}: branch {branch!r} has no valid {key!r} values") from None
        if values.shape != (t_layers, t_heads):
            shape = " x ".join(map(str, values.shape)) or "a single value"
            raise ConfigError(
                f"threshold table {path}: branch {branch!r} has {shape} values, expected {t_layers} layers x "
                f"{t_heads} heads"
            )
        if not bool(((values > 0) & (values <= 1)).all()):
            raise ConfigError(f"threshold table {path}: branch {branch!r} has {key} values outside (0, 1]")
        out[branch] = values
    return out


def table_warnings(path: str | Path, guidance: float | None) -> list[str]:
    """What a run with classifier-free guidance ``guidance`` should know about its table: the uncond branch
    borrows cond's thresholds when the table has none (a table calibrated without CFG)."""
    if (guidance or 0) > 1 and "uncond" not in read_table(path)["branches"]:
        return [f"threshold table {path} has no 'uncond' branch: the uncond branch uses cond's thresholds"]
    return []


def write_table(path: str | Path, table: dict[str, Any]) -> Path:
    """Write a table (adds format and version) atomically: a temp file renamed into place."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps({"format": TABLE_FORMAT, "version": TABLE_VERSION, **table}, indent=1), encoding="utf-8")
    tmp.replace(p)
    return p


def table_densities(path: str | Path, key: str) -> np.ndarray | None:
    """Mean density ``(layers, heads)`` over the branches of each head's chosen candidate in an EBC table (what a
    balanced head assignment starts from), or None when the table has no measured sparsity."""
    data = read_table(path)
    rows = []
    try:
        candidates = np.asarray(data["candidates"], dtype=float)
        for entry in data["branches"].values():
            sparsity = np.asarray(entry["sparsity"], dtype=float)  # (layers, heads, candidates)
            chosen = np.asarray(entry[key], dtype=float)  # (layers, heads)
            index = np.abs(chosen[..., None] - candidates).argmin(-1)
            rows.append(1.0 - np.take_along_axis(sparsity, index[..., None], -1)[..., 0])
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return np.mean(rows, axis=0) if rows else None
