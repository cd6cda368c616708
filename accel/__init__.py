"""A lab bench for training-free acceleration of video diffusion transformers.

``accel.kernels`` is the repository's top-level ``kernels/`` folder. The top-level import name ``kernels`` belongs
to Hugging Face's package (transformers >= 5.25 imports it), so the folder has no ``__init__.py``: run from the
repository root, ``import kernels`` still finds Hugging Face's. A wheel installs the folder as ``accel/kernels``
(``package-dir`` in pyproject.toml); in a source checkout (run from the tree or installed editable) the finder
below maps ``accel.kernels`` to the folder, as a namespace package.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path

_SOURCE_KERNELS = Path(__file__).resolve().parent.parent / "kernels"


class _SourceKernelsFinder(MetaPathFinder):
    """Finds ``accel.kernels`` in a source checkout: the top-level ``kernels/`` folder."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname != "accel.kernels":
            return None
        spec = ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [str(_SOURCE_KERNELS)]
        return spec


def _in_source_checkout() -> bool:
    """No installed ``accel/kernels`` beside this file, and the top-level folder is ours (not a site-packages
    neighbour such as Hugging Face's ``kernels``)."""
    here = Path(__file__).resolve().parent
    return not (here / "kernels").is_dir() and (_SOURCE_KERNELS / "block_sparse.py").is_file()


if _in_source_checkout() and not any(isinstance(f, _SourceKernelsFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _SourceKernelsFinder())
