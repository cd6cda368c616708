"""Model registry: embedded model through from_pretrained, clear errors, safe loading, no name shadowing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from accel import budget, models
from accel.errors import UserError
from accel.methods import xattention
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
    assert (
        -(-tokens // xattention.model_defaults(spec)["block_size"]) >= 16
    )  # every head's block mask is at least 16 x 16


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


REPO = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def no_from_pretrained(monkeypatch):
    """Fail the test on any diffusers from_pretrained (pipeline or model)."""
    from diffusers import DiffusionPipeline, ModelMixin

    def fail(*args, **kwargs):
        pytest.fail(f"from_pretrained was called: {args} {kwargs}")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", fail)
    monkeypatch.setattr(ModelMixin, "from_pretrained", fail)


def test_uncached_hub_model_offline_fails_before_from_pretrained(monkeypatch, tmp_path, no_from_pretrained):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError) as err:
        load_pipeline("wan2.1-1.3b", "cpu")
    msg = str(err.value)
    assert "\n" not in msg
    assert REPO in msg and "local Hugging Face cache" in msg and str(tmp_path) in msg and "offline" in msg
    assert f"hf download {REPO}" in msg and "--model PATH" in msg
    with pytest.raises(ModelLoadError, match="local Hugging Face cache"):  # the same check, callable early
        models.check_available(resolve("wan2.1-1.3b"))
    models.check_available(resolve("tiny-wan"))  # embedded models need no hub


def test_uncached_hub_model_with_unreachable_hub_fails_before_from_pretrained(
    monkeypatch, tmp_path, no_from_pretrained
):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):  # connect to the endpoint itself
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nobody there
    with pytest.raises(ModelLoadError) as err:
        load_pipeline("wan2.1-1.3b", "cpu")
    msg = str(err.value)
    assert "\n" not in msg
    assert "unreachable" in msg and "127.0.0.1:9" in msg and "local Hugging Face cache" in msg
    assert f"hf download {REPO}" in msg and "--model PATH" in msg


def _fake_load(calls):
    def load(spec, dtype, **kw):
        calls.append(kw)
        raise OSError(f"{spec.source} does not appear to have a file named config.json.")

    return load


def test_cached_hub_model_keeps_the_from_pretrained_path(monkeypatch, tmp_path):
    """model_index.json in the cache HF_HUB_CACHE names: the check passes and from_pretrained runs, offline only."""
    repo = tmp_path / ("models--" + REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "model_index.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    calls: list[dict] = []
    monkeypatch.setattr(models, "_load", _fake_load(calls))
    with pytest.raises(ModelLoadError, match="not available locally and the hub is offline"):
        load_pipeline("wan2.1-1.3b", "cpu")
    assert [(c["local_files_only"], c["use_safetensors"], Path(c["cache_dir"])) for c in calls] == [
        (True, True, tmp_path)
    ]


def test_reachable_hub_tries_the_cache_then_a_download(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_hub_unreachable", lambda: None)
    calls: list[dict] = []
    monkeypatch.setattr(models, "_load", _fake_load(calls))
    with pytest.raises(ModelLoadError, match="not available locally"):
        load_pipeline("wan2.1-1.3b", "cpu")
    assert [c["local_files_only"] for c in calls] == [True, False]


@pytest.mark.slow
def test_cli_offline_uncached_model_is_one_error_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    cmd = [sys.executable, "-m", "accel", "generate", "--model", "wan2.1-1.3b", "--prompt", "x"]
    cmd += ["--out-dir", str(tmp_path / "runs")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    # one error line, last; before it at most the command's own "<method> on <model>: <size>" header
    assert len(errors) == 1 and lines[-1] == errors[0] and len(lines) <= 2, proc.stderr
    assert "hf download" in errors[0] and "offline" in errors[0]


def test_embedded_model_loads_without_torch_dtype_deprecation(monkeypatch):
    monkeypatch.setattr(models, "_CACHE", {})  # a fresh load; the session's cached pipelines stay untouched
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_pipeline("tiny-wan", "cpu", "float32")
        models._from_pretrained(resolve("tiny-skyreels"), torch.float32)  # the loader itself, no filter around it
    dtype_warnings = [str(w.message) for w in caught if "torch_dtype" in str(w.message)]
    assert not dtype_warnings
    assert not [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


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
    with pytest.raises(ModelLoadError, match=r"could not load .* \(cause: SafetensorError: .*header"):
        load_pipeline(str(tmp_path / "broken"), "cpu", "float32")
    with pytest.raises(UserError, match=r"transformer/diffusion_pytorch_model.safetensors is not a complete"):
        budget._weight_bytes(tmp_path / "broken", 4)  # named before loading, not guessed (nor a MemoryError)
    (tmp_path / "broken" / "transformer" / "config.json").write_text('{"num_attention_heads": 1')
    spec = resolve(str(tmp_path / "broken"))
    with pytest.raises(UserError, match=r"transformer/config.json cannot be read \(.*\): the checkpoint is damaged"):
        budget.transformer_config(spec)  # not Wan2.1-1.3B's shape in its place (the memory and --parallel checks)


def test_unknown_name():
    with pytest.raises(ModelLoadError, match="unknown model"):
        resolve("not a model")


def test_cuda_request_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ModelLoadError, match=r"device 'cuda' requested but (this torch has no CUDA|no CUDA GPU)"):
        load_pipeline("tiny-wan", "cuda")
    with pytest.raises(ModelLoadError, match="unknown device 'gpu'"):
        models.check_device("gpu")


def test_defaults_device_and_dtype():
    dev = models.default_device()
    assert models.default_dtype(dev) == (torch.bfloat16 if dev == "cuda" else torch.float32)


def test_size_presets_fill_only_the_sizes_not_given() -> None:
    """``--size-preset bench``: the pocket models' attention-heavy size (over 2,000 tokens per call); explicit sizes
    win; a model without the preset or an unknown name is a one-line error."""
    from accel import models
    from accel.cli import build_parser
    from accel.cli.flags import preset_sizes
    from accel.errors import ConfigError

    for name in ("pocket-wan", "pocket-skyreels"):
        spec = models.resolve(name)
        sizes = {**spec.defaults, **models.size_preset(spec, "bench")}
        latent = (sizes["frames"] - 1) // 4 + 1
        assert latent * (sizes["height"] // 16) * (sizes["width"] // 16) >= 2000, name
    parse = build_parser().parse_args
    args = parse(["generate", "--prompt", "p", "--size-preset", "bench", "--frames", "17"])
    assert {k: v for k, v in preset_sizes(args).items() if v} == {"height": 256, "width": 256, "frames": 17}
    assert preset_sizes(parse(["generate", "--prompt", "p", "--size-preset", "default"]))["height"] is None
    with pytest.raises(ConfigError, match="tiny-wan has no 'bench' size preset"):
        preset_sizes(parse(["generate", "--prompt", "p", "--model", "tiny-wan", "--size-preset", "bench"]))
    with pytest.raises(ConfigError, match="size preset must be one of"):
        models.size_preset(models.resolve("pocket-wan"), "huge")


def test_an_unreadable_hub_cache_is_said_not_taken_for_not_cached(monkeypatch, tmp_path):
    import huggingface_hub

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", unreadable)
    with pytest.raises(ModelLoadError, match=r"the hub cache .* cannot be read for org/model: Permission denied"):
        models.local_folder(resolve("org/model"))
