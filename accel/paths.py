"""Where the shipped files are: the embedded models' weights and the calibrated EBC tables.

In a source checkout they are the top-level ``assets/`` folder; an installed wheel carries the same files
as the package data ``accel/assets`` (see ``[tool.setuptools.package-dir]`` in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
ASSETS = next((p for p in (_HERE / "assets", _HERE.parent / "assets") if p.is_dir()), _HERE.parent / "assets")
TABLES = ASSETS / "tables"


def shipped_table(model: str, method: str) -> Path | None:
    """The calibrated threshold table shipped for ``model`` (its registry name) and ``method``, if any."""
    path = TABLES / f"{Path(model).name}-{method}.json"
    return path if path.is_file() else None
