"""Training scripts of the pocket models: a few steps end to end, and the result loads like a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_vae_then_transformer_train_save_and_load(tmp_path):
    from accel.models import load_pipeline
    from accel.train_vae import train as train_vae
    from accel.train_wan import train as train_wan

    vae_dir = tmp_path / "vae"
    last = train_vae(vae_dir, steps=2, batch=1, size=32, frames=5, log_every=1)
    assert last["l1"] > 0 and (vae_dir / "diffusion_pytorch_model.safetensors").is_file()
    assert (vae_dir / "loss.csv").read_text().splitlines()[0] == "step,l1,kl,seconds"
    stats = json.loads((vae_dir / "config.json").read_text())
    assert stats["latents_std"] != [1.0] * 16  # measured on held-out clips
    base = Path(__file__).resolve().parent.parent / "assets" / "tiny-wan"
    out = tmp_path / "pocket"
    last = train_wan(base, vae_dir, out, clips=3, steps=2, batch=2, size=32, frames=5, log_every=1)
    assert last["loss"] > 0 and len((out / "loss.csv").read_text().splitlines()) == 3
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    pipe = load_pipeline(str(out), "cpu", "float32")  # the same path as a real checkpoint
    video = pipe("a red circle moves left", height=32, width=32, num_frames=5, num_inference_steps=2,
                 output_type="np").frames  # fmt: skip
    assert video.shape == (1, 5, 32, 32, 3)


def test_diffusion_forcing_transformer_trains_and_samples_in_chunks(tmp_path):
    from accel.models import load_pipeline
    from accel.train_vae import train as train_vae
    from accel.train_wan import train as train_wan

    vae_dir = tmp_path / "vae"
    train_vae(vae_dir, steps=1, batch=1, size=32, frames=5, log_every=1)
    base = Path(__file__).resolve().parent.parent / "assets" / "tiny-skyreels"
    out = tmp_path / "pocket-df"
    last = train_wan(base, vae_dir, out, clips=2, steps=2, batch=2, size=32, frames=13, log_every=1, family="skyreels")
    assert last["loss"] > 0
    with pytest.raises(ValueError, match="whole chunks"):
        train_wan(base, vae_dir, tmp_path / "x", clips=1, steps=1, size=32, frames=9, family="skyreels")
    pipe = load_pipeline(str(out), "cpu", "float32")
    assert type(pipe).__name__ == "SkyReelsV2DiffusionForcingPipeline"
    assert pipe.transformer.config.num_frame_per_block == 2 and pipe.scheduler.config.flow_shift == 8.0
    video = pipe("a red circle moves left", height=32, width=32, num_frames=13, num_inference_steps=2, ar_step=1,
                 causal_block_size=2, output_type="np").frames  # fmt: skip
    assert video.shape == (1, 13, 32, 32, 3)
