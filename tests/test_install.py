"""A regular (non-editable) install carries the embedded models and runs the default generation anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_wheel_install_generates_from_another_directory(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) < (70, 1):
        pytest.skip("building a wheel offline needs setuptools >= 70.1 (bdist_wheel built in)")
    venv = tmp_path / "venv"
    # this interpreter's site (torch, diffusers, pip, setuptools ...) stays visible: only the project is installed
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    install = [py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(ROOT)]
    subprocess.run(install, check=True, capture_output=True, timeout=600)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    where = subprocess.run([py, "-c", "import accel.paths as p; print(p.__file__); print(p.ASSETS)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert where[0].startswith(str(venv)) and where[1] == str(Path(where[0]).parent / "assets")
    cmd = [py, "-m", "accel", "generate", "--prompt", "a red circle moves left", "--steps", "2", "--out-dir", "runs"]
    gen = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert gen.returncode == 0, gen.stderr[-2000:]
    run = Path(gen.stdout.splitlines()[0])
    assert run.parent == work / "runs" and (run / "video.mp4").stat().st_size > 0
