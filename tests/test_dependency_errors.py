"""A broken dependency is not a user error (issue 35): its root cause is shown (CLI, app message, app log with the
traceback), and the app recovers once the package is fixed, with nothing half-imported kept."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from accel.errors import DependencyError, UserError, failed_import, imports_undone_on_failure, root_cause

ROOT = Path(__file__).resolve().parent.parent


def _lazy_import_failure() -> RuntimeError:
    """The chain diffusers' lazy modules raise: RuntimeErrors (messages ending in a colon) from the ImportError."""
    try:
        try:
            raise ImportError("cannot import name 'CUDAProperties' from 'kernels' (/x/kernels/__init__.py)")
        except ImportError as inner:
            raise RuntimeError(
                "Failed to import diffusers.loaders.peft because of the following error (look up to see its "
                "traceback):\ncannot import name 'CUDAProperties' from 'kernels' (/x/kernels/__init__.py)"
            ) from inner
    except RuntimeError as middle:
        try:
            raise RuntimeError(
                "Failed to import diffusers.models.autoencoders.autoencoder_kl_wan because of the following error "
                "(look up to see its traceback):"
            ) from middle
        except RuntimeError as outer:
            return outer


def test_root_cause_is_the_innermost_exception_s_last_line():
    exc = _lazy_import_failure()
    assert root_cause(exc) == "ImportError: cannot import name 'CUDAProperties' from 'kernels' (/x/kernels/__init__.py)"
    assert failed_import(exc) and not failed_import(ValueError("bad config"))
    assert root_cause(KeyError()) == "KeyError"
    try:  # `from None` hides the context: the cause is the outer exception itself
        try:
            raise ImportError("hidden")
        except ImportError:
            raise ValueError("first\nshown") from None
    except ValueError as shown:
        assert root_cause(shown) == "ValueError: shown" and not failed_import(shown)
    assert issubclass(DependencyError, RuntimeError) and not issubclass(DependencyError, UserError)


@pytest.fixture()
def shadow(tmp_path) -> Path:
    """A folder holding a package named ``kernels`` without ``CUDAProperties``: put ahead of Hugging Face's on
    sys.path, it is the issue's failure (transformers >= 5.25 imports ``kernels``, which requires it)."""
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("transformers imports Hugging Face's kernels only from 5.25, which requires it")
    (tmp_path / "shadow" / "kernels").mkdir(parents=True)
    (tmp_path / "shadow" / "kernels" / "__init__.py").write_text("")
    return tmp_path / "shadow"


APP_SCRIPT = """
import io, logging, os, sys
import gradio as gr
sys.path.insert(0, os.environ["SHADOW"])
from accel.config import RunConfig
from accel.ui.common import event_handler
from accel.ui.generation import generate_run

log = io.StringIO()
logging.basicConfig(stream=log, level=logging.INFO)
cfg = RunConfig(prompt="a red circle moves left", model="tiny-wan", steps=1)
run = event_handler(lambda: generate_run(cfg, False, lambda *a, **k: None))
try:
    run()
    raise SystemExit("the first generation should have failed")
except gr.Error as exc:
    print("MESSAGE", exc.message)
print("LOGGED", "Traceback" in log.getvalue() and "CUDAProperties" in log.getvalue())
sys.path.remove(os.environ["SHADOW"])  # the package is fixed while the app keeps serving
print("RUN", run())
import kernels
print("KERNELS", kernels.__file__)
"""


@pytest.mark.slow
def test_the_app_shows_the_root_cause_and_recovers_once_the_package_is_fixed(tmp_path, shadow):
    env = {**os.environ, "SHADOW": str(shadow), "ACCEL_RUNS_DIR": str(tmp_path / "runs"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", APP_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.split(" ", 1)[0].isupper())
    assert "could not load model 'tiny-wan'" in lines["MESSAGE"]
    assert "ImportError: cannot import name 'CUDAProperties' from 'kernels'" in lines["MESSAGE"]
    assert "python -m accel env" in lines["MESSAGE"] and lines["LOGGED"] == "True"
    assert (tmp_path / "runs" / lines["RUN"] / "video.mp4").is_file()
    assert str(shadow) not in lines["KERNELS"]


@pytest.mark.slow
def test_the_cli_prints_the_traceback_then_the_root_cause_and_exits_1(tmp_path, shadow):
    env = {**os.environ, "PYTHONPATH": str(shadow), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accel", "generate", "--model", "tiny-wan", "--prompt", "a red circle moves left",
           "--steps", "1", "--out-dir", str(tmp_path / "runs")]  # fmt: skip
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not load model 'tiny-wan'") and "cannot import name 'CUDAProperties'" in last
    assert "python -m accel env" in last and "Traceback (most recent call last)" in out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_package_whose_init_failed_is_imported_afresh_once_fixed(tmp_path, monkeypatch):
    """A submodule that cached "not available" while its package's ``__init__`` failed is forgotten with it."""
    pkg = tmp_path / "fragile_pkg"
    pkg.mkdir()
    flag = tmp_path / "installed"
    (pkg / "state.py").write_text(f"import os\nOK = os.path.exists({str(flag)!r})\n")
    init = "from fragile_pkg import state\nif not state.OK:\n    raise ImportError('needs it')\n"
    (pkg / "__init__.py").write_text(init)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ImportError, match="needs it"), imports_undone_on_failure():
            import fragile_pkg
        assert "fragile_pkg.state" not in sys.modules
        flag.touch()  # the package gets installed while the process runs
        with imports_undone_on_failure():
            import fragile_pkg

        assert fragile_pkg.state.OK
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "fragile_pkg"]:
            del sys.modules[name]
