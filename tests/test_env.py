"""``python -m accel env``: the bug-report command (issue 35)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from accel.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _env(*args: str, cwd: Path = ROOT, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")} | extra
    return subprocess.run([sys.executable, "-m", "accel", "env", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_the_report_names_versions_device_parts_and_where_modules_come_from(capsys):
    assert main(["env", "--quick", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["packages"]["torch"] == torch.__version__ and info["python"].startswith(sys.version.split()[0])
    assert {"diffusers", "transformers", "gradio", "triton", "kernels"} <= set(info["packages"])
    project = info["project"]["detail"]
    assert project["accel.kernels"] == [str(ROOT / "kernels")] and not project["kernels shadowed"]
    assert not str(project["import kernels"]).startswith(str(ROOT / "kernels") + os.sep)
    assert info["imports"]["ok"] and info["device"]["detail"]["device"].startswith("cuda" if torch.cuda.is_available()
                                                                                    else "cpu")  # fmt: skip
    assert info["optional"]["ffmpeg"]["ok"] and "libx264" in info["optional"]["ffmpeg"]["detail"]
    assert set(info["optional"]) == {"triton", "flex attention", "ffmpeg", "chromium"}
    assert main(["env", "--quick"]) == 0
    text = capsys.readouterr().out
    for line in ("- torch: ", "- diffusers: ", "- transformers: ", "- gradio: ", "- kernels: ", "- device: ",
                 "- accel.kernels from: ", "- import kernels (Hugging Face's) from: ", "- triton: ",
                 "- flex attention: ", "- ffmpeg: yes", "- chromium: "):  # fmt: skip
        assert line in text, line


def test_a_broken_torch_is_reported_not_raised(tmp_path):
    """``env`` answers before anything imports torch: a torch that fails to import is a line of the report."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('libcudart.so.13: cannot open shared object')\n")
    out = _env("--quick", cwd=tmp_path, PYTHONPATH=str(tmp_path))
    assert out.returncode == 1, out.stderr[-2000:]
    assert "- device: FAILED: ImportError: libcudart.so.13: cannot open shared object" in out.stdout
    assert "- model classes: FAILED: " in out.stdout and "- diffusers: " in out.stdout


@pytest.mark.slow
def test_the_full_report_launches_triton_in_its_interpreter_and_compiles_flex():
    out = _env("--json", TRITON_INTERPRET="1")
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout)
    triton = info["optional"]["triton"]
    if info["packages"]["triton"] is not None and not torch.cuda.is_available():
        assert triton["ok"] and "ran on cpu (interpreter" in triton["detail"], triton
    flex = info["optional"]["flex attention"]
    assert flex["ok"] == ("compiled and ran" in flex["detail"]), flex
