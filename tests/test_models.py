"""Model registry: embedded model through from_pretrained, clear errors, safe loading, no name shadowing."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from accel import models
from accel.models import ModelLoadError, load_pipeline, resolve


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-skyreels", "pocket-wan", "pocket-skyreels"])
def test_embedded_model_is_safetensors_only_and_meets_block_size(name):
    spec = resolve(name)
    files = [p.name for p in __import__("pathlib").Path(spec.source).rglob("*") if p.is_file()]
    assert any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) for f in files)
    d = spec.defaults
    tokens = (d["frames"] - 1) // 4 + 1
    tokens *= (d["height"] // 16) * (d["width"] // 16)
    assert -(-tokens // spec.block_size) >= 16  # every head's block mask is at least 16 x 16


def test_pocket_models_are_the_default_and_fit_the_budget():
    from pathlib import Path

    from accel.config import DEFAULT_MODEL, RunConfig

    assert DEFAULT_MODEL == "pocket-wan" == RunConfig(prompt="x").model
    folders = [Path(resolve(n).source) for n in ("pocket-wan", "pocket-skyreels")]
    weights = sum(f.stat().st_size for d in folders for f in d.rglob("*.safetensors"))
    assert weights <= 40 * 2**20
    for d in folders:
        assert (d / "loss.csv").read_text().startswith("step,loss")  # the training curve ships beside it
        assert "name_or_path" not in (d / "vae" / "config.json").read_text()  # no training machine's path
    wan = load_pipeline("pocket-wan", "cpu", "float32")
    sky = load_pipeline("pocket-skyreels", "cpu", "float32")
    assert type(sky).__name__ == "SkyReelsV2DiffusionForcingPipeline" and type(wan).__name__ == "WanPipeline"
    # one VAE and text encoder shared by both
    for part in ("vae", "text_encoder"):
        a, b = getattr(wan, part).state_dict(), getattr(sky, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_pipeline_is_loaded_once_per_device_dtype(tiny_pipe):
    assert load_pipeline("tiny-wan", "cpu", "float32") is tiny_pipe
    assert tiny_pipe.transformer.dtype == torch.float32
    assert type(tiny_pipe).__name__ == "WanPipeline"


def test_saved_copy_loads_by_path(tiny_pipe, tmp_path):
    """A real checkpoint's path: save a pipeline and load it back as a local folder."""
    tiny_pipe.save_pretrained(tmp_path / "copy", safe_serialization=True)
    spec = resolve(str(tmp_path / "copy"))
    assert spec.family == "wan" and spec.is_local
    pipe = load_pipeline(str(tmp_path / "copy"), "cpu", "float32")
    a = dict(tiny_pipe.transformer.state_dict())
    b = pipe.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_hub_model_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_pipeline("nobody-here/Wan2.1-missing", "cpu")
    msg = str(err.value)
    assert "nobody-here/Wan2.1-missing" in msg and "offline" in msg and "--model PATH" in msg
    assert "\n" not in msg


def test_registered_real_checkpoint_offline_names_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(ModelLoadError, match=re.escape("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")):
        load_pipeline("wan2.1-1.3b", "cpu")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p.mkdir(), "no model_index.json"),
        (lambda p: (p.mkdir(), (p / "model_index.json").write_text("{nope")), "unreadable"),
        (
            lambda p: (p.mkdir(), (p / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))),
            "not supported",
        ),
    ],
)
def test_bad_model_folders(tmp_path, make, match):
    path = tmp_path / "model"
    make(path)
    with pytest.raises(ModelLoadError, match=match):
        resolve(str(path))


def test_half_written_model_folder_is_a_clear_error(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "broken", safe_serialization=True)
    (tmp_path / "broken" / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ModelLoadError, match="could not load"):
        load_pipeline(str(tmp_path / "broken"), "cpu", "float32")


def test_unknown_name():
    with pytest.raises(ModelLoadError, match="unknown model"):
        resolve("not a model")


def test_cuda_request_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load_pipeline("tiny-wan", "cuda")


def test_defaults_device_and_dtype():
    dev = models.default_device()
    assert models.default_dtype(dev) == (torch.bfloat16 if dev == "cuda" else torch.float32)


@pytest.mark.slow
def test_project_packages_do_not_shadow_hf_kernels():
    """Our top-level `kernels` must not make diffusers/transformers think HF `kernels` is installed."""
    code = (
        "import kernels, diffusers.utils as du, transformers.utils as tu;"
        "assert hasattr(kernels, 'block_sparse_attention');"
        "assert not du.is_kernels_available(), 'diffusers sees kernels';"
        "assert not tu.is_kernels_available(), 'transformers sees kernels';"
        "from diffusers import WanTransformer3DModel; from transformers import UMT5EncoderModel; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
