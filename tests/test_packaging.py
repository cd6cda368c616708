"""The project owns no top-level import name that a dependency uses (issue 35).

Hugging Face publishes a ``kernels`` package that transformers (>= 5.25) imports; the repository's ``kernels/``
folder is ``accel.kernels`` and must never win over it, neither run from the repository root (``python app.py``,
``python -m pytest``) nor from anywhere else.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import importlib.util, json, kernels\n"
    "from accel.kernels import dispatch\n"
    "from accel.kernels.block_sparse import block_sparse_attention\n"
    "import torch\n"
    "q = torch.randn(1, 32, 2, 8)\n"
    "out = block_sparse_attention(q, q, q, torch.ones(1, 2, 2, 2, dtype=torch.bool), block_size=16)\n"
    "assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(*(q.transpose(1, 2),) * 3)"
    ".transpose(1, 2), atol=1e-5)\n"
    "print(json.dumps({'kernels': getattr(kernels, '__file__', None), 'ours': dispatch.__file__,"
    " 'marker': getattr(kernels, 'MARKER', None)}))\n"
)


def _top_level_names() -> set[str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {p.split(".")[0] for p in cfg["tool"]["setuptools"]["packages"]}


def _probe(cwd: Path, extra_path: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    if extra_path is not None:  # after the current folder on sys.path, as site-packages is
        env["PYTHONPATH"] = str(extra_path)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_folder_at_the_root_is_a_package_that_a_dependency_also_provides():
    """Every folder Python would import from the repository root is one of ours, and no installed distribution
    provides the same top-level name; ``kernels/`` in particular has no ``__init__.py``."""
    ours = _top_level_names()
    assert "kernels" not in ours and not (ROOT / "kernels" / "__init__.py").exists()
    importable = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert importable <= ours, f"root packages not declared in pyproject: {importable - ours}"
    provided = importlib.metadata.packages_distributions()
    clashes = {n: provided[n] for n in ours if set(provided.get(n, ())) - {"vdt-accel-bench"}}
    assert not clashes, f"top-level names also provided by: {clashes}"


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_a_kernels_package_on_the_path_wins_over_the_repository_folder(where, tmp_path):
    """A package named ``kernels`` later on sys.path than the current folder (as site-packages is) is the one
    imported, from the root too; the project's kernels still import and run."""
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("MARKER = 'theirs'\n")
    cwd = ROOT if where == "root" else tmp_path
    got = _probe(cwd, site)
    assert got["marker"] == "theirs" and got["kernels"] == str(site / "kernels" / "__init__.py")
    assert Path(got["ours"]).parent.name == "kernels" and Path(got["ours"]).name == "dispatch.py"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_hugging_face_kernels_is_what_import_kernels_gives(where, tmp_path):
    """With Hugging Face's ``kernels`` installed (transformers >= 5.25 requires it), ``import kernels`` is theirs,
    and diffusers loads Wan's VAE and transformer classes (the import that failed when ours shadowed it)."""
    try:
        dist = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels is not installed (transformers < 5.25)")
    cwd = ROOT if where == "root" else tmp_path
    got = _probe(cwd)
    assert got["kernels"] == str(Path(dist.locate_file("kernels/__init__.py")).resolve())
    code = "from diffusers import AutoencoderKLWan, SkyReelsV2Transformer3DModel, WanTransformer3DModel; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
