"""A regular (non-editable) install carries the embedded models and runs the default generation anywhere."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_wheel_install_generates_from_another_directory(tmp_path):
    # read from metadata, neither imported nor looked up as a module: setuptools' distutils hack switches itself
    # off in a process that looks for pip, and torch's inductor (the flex tests) then fails on its distutils check
    try:
        importlib.metadata.version("pip")
        setuptools = tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("builds the wheel with pip and setuptools (a uv-made venv has no pip)")
    if setuptools < (70, 1):
        pytest.skip("building a wheel offline needs setuptools >= 70.1 (bdist_wheel built in)")
    # the project's wheel unpacked into a folder of its own, ahead of this interpreter's site (torch, diffusers ...;
    # a nested venv would see the base interpreter's site instead, which a fresh CI venv leaves empty)
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
               str(ROOT)]  # fmt: skip
    subprocess.run(install, check=True, capture_output=True, timeout=600)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    probe = (
        "import accel.paths as p, accel.kernels.dispatch as d, importlib.util as u\n"
        "print(p.__file__, p.ASSETS, d.__file__, getattr(u.find_spec('kernels'), 'origin', None))"
    )
    where = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    package = site / "accel"
    assert where[:3] == [str(package / "paths.py"), str(package / "assets"), str(package / "kernels" / "dispatch.py")]
    assert not where[3].startswith(str(site))  # the wheel has no top-level `kernels`: Hugging Face's, or none
    cmd = [sys.executable, "-m", "accel", "generate", "--prompt", "a red circle moves left", "--steps", "2",
           "--out-dir", "runs"]  # fmt: skip
    gen = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert gen.returncode == 0, gen.stderr[-2000:]
    run = Path(gen.stdout.splitlines()[0])
    assert run.parent == work / "runs" and (run / "video.mp4").stat().st_size > 0
