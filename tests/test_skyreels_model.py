"""SkyReels-V2 diffusion forcing: the embedded tiny-skyreels model, family detection, real checkpoints offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from accel import models
from accel.methods import xattention
from accel.models import ModelLoadError, ModelSpec, load_pipeline, resolve

PROMPT = "a red circle moves quickly left over a blue background"
# 64x64, 21 frames -> 6 latent frames of 4 x 4 patches = 3 chunks of 2 latent frames
SMALL = {"height": 64, "width": 64, "num_frames": 21, "base_num_frames": 21, "num_inference_steps": 3}


def run_sky(pipe, **overrides):
    kwargs = {
        **SMALL,
        "guidance_scale": 5.0,
        "causal_block_size": pipe.transformer.config.num_frame_per_block,
        "ar_step": 2,
        **overrides,
    }
    with torch.inference_mode():
        out = pipe(
            PROMPT, negative_prompt="blurry", generator=torch.Generator().manual_seed(0), output_type="np", **kwargs
        )
    return out.frames


def test_embedded_folder_is_safetensors_only_and_chunks_are_whole():
    spec = resolve("tiny-skyreels")
    assert spec.embedded and spec.family == "skyreels"
    files = [p.name for p in Path(spec.source).rglob("*") if p.is_file()]
    assert any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) for f in files)
    d = spec.defaults
    latent_frames = (d["frames"] - 1) // 4 + 1
    assert latent_frames % d["causal_block_size"] == 0 and latent_frames // d["causal_block_size"] >= 3
    assert d["base_num_frames"] >= d["frames"] and d["overlap_history"] is None and d["ar_step"] > 0
    tokens = latent_frames * (d["height"] // 16) * (d["width"] // 16)
    assert (
        -(-tokens // xattention.model_defaults(spec)["block_size"]) >= 16
    )  # every head's block mask is at least 16 x 16


def test_shared_components_are_tiny_wan_files():
    wan, sky = Path(resolve("tiny-wan").source), Path(resolve("tiny-skyreels").source)
    for sub in ("vae", "text_encoder", "tokenizer"):
        names = sorted(p.name for p in (wan / sub).iterdir())
        assert names == sorted(p.name for p in (sky / sub).iterdir())
        assert all((wan / sub / n).read_bytes() == (sky / sub / n).read_bytes() for n in names), sub


def test_load_pipeline_gives_skyreels_with_tiny_wan_weights(sky_pipe, tiny_pipe):
    assert type(sky_pipe).__name__ == "SkyReelsV2DiffusionForcingPipeline"
    assert load_pipeline("tiny-skyreels", "cpu", "float32") is sky_pipe
    assert sky_pipe.vae.dtype == torch.float32
    assert sky_pipe.scheduler.config.flow_shift == 8.0
    assert sky_pipe.scheduler.config.prediction_type == "flow_prediction"
    assert sky_pipe.transformer.config.num_frame_per_block == resolve("tiny-skyreels").defaults["causal_block_size"]
    for part in ("vae", "text_encoder"):
        a, b = getattr(tiny_pipe, part).state_dict(), getattr(sky_pipe, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


@pytest.mark.parametrize(
    ("alias", "name", "height"),
    [
        ("skyreels-v2-df-1.3b", "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers", 544),
        ("skyreels-v2-df-14b", "Skywork/SkyReels-V2-DF-14B-540P-Diffusers", 544),
        ("skyreels-v2-df-14b-720p", "Skywork/SkyReels-V2-DF-14B-720P-Diffusers", 720),
    ],
)
def test_aliases_resolve_to_real_checkpoints(alias, name, height):
    spec = resolve(alias)
    assert spec is resolve(name) and spec.name == name and spec.family == "skyreels" and not spec.embedded
    d = spec.defaults
    assert d["height"] == height and d["steps"] == 50 and d["guidance"] == 6.0 and spec.flow_shift == 8.0
    assert d["ar_step"] == 5 and d["causal_block_size"] == 5 and d["overlap_history"] == 17
    assert ((d["frames"] - 1) // 4 + 1) % d["causal_block_size"] == 0
    assert ((d["base_num_frames"] - 1) // 4 + 1) % d["causal_block_size"] == 0


def test_unregistered_skyreels_hub_id_is_the_skyreels_family():
    assert resolve("someone/SkyReels-V2-DF-1.3B-finetune").family == "skyreels"
    assert resolve("someone/Wan2.1-finetune").family == "wan"


def test_real_checkpoint_offline_names_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(ModelLoadError, match=re.escape("Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers")) as err:
        load_pipeline("skyreels-v2-df-1.3b", "cpu")
    assert "offline" in str(err.value) and "\n" not in str(err.value)


def test_saved_copy_loads_by_path_as_skyreels(sky_pipe, tmp_path):
    sky_pipe.save_pretrained(tmp_path / "copy", safe_serialization=True)
    spec = resolve(str(tmp_path / "copy"))
    assert spec.family == "skyreels" and spec.is_local and spec.defaults["causal_block_size"] == 5
    pipe = load_pipeline(str(tmp_path / "copy"), "cpu", "float32")
    assert type(pipe).__name__ == "SkyReelsV2DiffusionForcingPipeline"
    a, b = sky_pipe.transformer.state_dict(), pipe.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.filterwarnings("ignore:.*torch_dtype.*:FutureWarning")
def test_spec_flow_shift_replaces_the_scheduler_shift():
    spec = ModelSpec(name="x", source=resolve("tiny-skyreels").source, family="skyreels", flow_shift=5.0)
    pipe = models._from_pretrained(spec, torch.float32)
    assert pipe.scheduler.config.flow_shift == 5.0 and type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"


@pytest.mark.parametrize("ar_step", [2, 0])
def test_tiny_call_returns_frames(sky_pipe, ar_step):
    frames = run_sky(sky_pipe, ar_step=ar_step)
    assert frames.shape == (1, 21, 64, 64, 3)
    assert frames.min() >= 0 and frames.max() <= 1 and frames.std() > 0
    # asynchronous: chunk g starts ar_step steps after chunk g-1 (3 chunks)
    assert sky_pipe.num_timesteps == SMALL["num_inference_steps"] + 2 * ar_step
