"""Training scripts of the pocket models: a few steps end to end, and the result loads like a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_vae_then_transformer_train_save_and_load(tmp_path):
    import torch

    from accel.models import load_pipeline
    from accel.training.vae import train as train_vae
    from accel.training.wan import cache_latents, read_latents
    from accel.training.wan import train as train_wan

    vae_dir = tmp_path / "vae"
    last = train_vae(vae_dir, steps=2, batch=1, size=32, crop=16, frames=5, log_every=1)
    assert last["l1"] > 0 and (vae_dir / "diffusion_pytorch_model.safetensors").is_file()
    assert (vae_dir / "loss.csv").read_text().splitlines()[0] == "step,l1,kl,seconds"
    stats = json.loads((vae_dir / "config.json").read_text())
    assert stats["latents_std"] != [1.0] * 16  # measured on held-out clips
    base = Path(__file__).resolve().parent.parent / "assets" / "tiny-wan"
    out = tmp_path / "pocket"
    cache = tmp_path / "latents.safetensors"
    cache_latents(vae_dir, cache, clips=3, size=32, frames=9, seed=0)
    latents, prompts = read_latents(cache)
    assert latents.shape == (3, 16, 3, 4, 4) and len(prompts) == 3
    parallel = tmp_path / "parallel.safetensors"  # rendered by 2 processes in chunks of 2: the same cache
    cache_latents(vae_dir, parallel, clips=3, size=32, frames=9, seed=0, workers=2, chunk=2)
    parallel_latents, parallel_prompts = read_latents(parallel)
    assert parallel_prompts == prompts and torch.allclose(parallel_latents, latents, atol=1e-5)
    last = train_wan(base, vae_dir, out, cache, steps=2, batch=2, frames=5, log_every=1)
    assert last["loss"] > 0 and len((out / "loss.csv").read_text().splitlines()) == 3
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    pipe = load_pipeline(str(out), "cpu", "float32")  # the same path as a real checkpoint
    video = pipe("a red circle moves left", height=32, width=32, num_frames=5, num_inference_steps=2,
                 output_type="np").frames  # fmt: skip
    assert video.shape == (1, 5, 32, 32, 3)


@pytest.mark.slow
def test_diffusion_forcing_transformer_trains_and_samples_in_chunks(tmp_path):
    from accel.models import load_pipeline
    from accel.training.vae import train as train_vae
    from accel.training.wan import cache_latents
    from accel.training.wan import train as train_wan

    vae_dir = tmp_path / "vae"
    train_vae(vae_dir, steps=1, batch=1, size=32, crop=32, frames=5, log_every=1)
    base = Path(__file__).resolve().parent.parent / "assets" / "tiny-skyreels"
    cache = tmp_path / "latents.safetensors"
    cache_latents(vae_dir, cache, clips=2, size=32, frames=13, seed=0)
    wan = tmp_path / "pocket-wan"
    train_wan(base.parent / "tiny-wan", vae_dir, wan, cache, steps=1, batch=2, frames=13, log_every=1)
    out = tmp_path / "pocket-df"
    last = train_wan(base, vae_dir, out, cache, steps=2, batch=2, frames=13, log_every=1, family="skyreels", init=wan)
    assert last["loss"] > 0
    with pytest.raises(ValueError, match="whole chunks"):
        train_wan(base, vae_dir, tmp_path / "x", cache, steps=1, frames=9, family="skyreels")
    with pytest.raises(ValueError, match="latent frames"):
        train_wan(base, vae_dir, tmp_path / "x", cache, steps=1, frames=17)
    pipe = load_pipeline(str(out), "cpu", "float32")
    assert type(pipe).__name__ == "SkyReelsV2DiffusionForcingPipeline"
    assert pipe.transformer.config.num_frame_per_block == 2 and pipe.scheduler.config.flow_shift == 8.0
    video = pipe("a red circle moves left", height=32, width=32, num_frames=13, num_inference_steps=2, ar_step=1,
                 causal_block_size=2, output_type="np").frames  # fmt: skip
    assert video.shape == (1, 13, 32, 32, 3)


def test_identity_init_starts_every_residual_branch_at_zero_and_crops_stay_in_bounds():
    import torch

    from accel.training.vae import build_vae, identity_init, random_crops

    vae = build_vae()
    identity_init(vae)
    convs = {n: m for n, m in vae.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))}
    branch_ends = [m for n, m in convs.items() if n.endswith(("conv2", "proj"))]
    assert branch_ends and all(not m.weight.any() for m in branch_ends)
    conv_in = vae.decoder.conv_in.weight
    assert abs(float(conv_in.detach().std()) * conv_in[0].numel() ** 0.5 - 1.0) < 0.1  # variance preserving
    assert vae.encoder.conv_in.bias.abs().sum() > 0 and not vae.decoder.conv_in.bias.any()
    x = torch.arange(2 * 3 * 5 * 16 * 16, dtype=torch.float32).view(2, 3, 5, 16, 16)
    crops = random_crops(x, 8, torch.Generator().manual_seed(0))
    assert crops.shape == (2, 3, 5, 8, 8)
    for clip, crop in zip(x, crops, strict=True):  # each crop is a contiguous window of its own clip
        top, left = divmod(int(crop[0, 0, 0, 0]) % 256, 16)
        assert torch.equal(crop, clip[..., top : top + 8, left : left + 8])


def test_vae_cli_resume_continues_from_the_saved_weights(tmp_path):
    import torch
    from safetensors.torch import load_file

    from accel.training.vae import main

    small = ["--steps", "1", "--batch", "1", "--size", "16", "--crop", "16", "--frames", "5"]
    main(["--out", str(tmp_path / "a"), *small])
    main(["--out", str(tmp_path / "b"), "--resume", str(tmp_path / "a"), "--lr", "0", "--seed", "1", *small])
    first, second = (load_file(tmp_path / d / "diffusion_pytorch_model.safetensors") for d in "ab")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)  # lr 0: a resumed run keeps every weight


def _vae_and_cache(tmp_path: Path, clips: int) -> Path:
    """A one-step VAE in ``tmp_path / "vae"`` and a latent cache of ``clips`` 5-frame 32-px clips; returns the cache."""
    from accel.training.vae import train as train_vae
    from accel.training.wan import cache_latents

    train_vae(tmp_path / "vae", steps=1, batch=1, size=32, crop=32, frames=5, log_every=1)
    cache = tmp_path / "latents.safetensors"
    cache_latents(tmp_path / "vae", cache, clips=clips, size=32, frames=5, seed=0)
    return cache


def _logged(path: Path, column: str) -> list[float]:
    lines = path.read_text().splitlines()
    at = lines[0].split(",").index(column)
    return [float(line.split(",")[at]) for line in lines[1:]]


@pytest.mark.slow
def test_the_vae_overfits_one_clip(tmp_path, monkeypatch):
    """Trained on one clip over and over, the reconstruction error falls far below where it started."""
    import itertools

    from accel.synthetic.procedural import dataset
    from accel.training import vae

    clip = next(dataset(1, 3, height=16, width=16, frames=5))
    monkeypatch.setattr(vae, "dataset", lambda n, seed, **kw: itertools.repeat(clip, n))
    vae.train(tmp_path / "vae", steps=60, batch=1, size=16, crop=16, frames=5, lr=3e-3, log_every=10)
    l1 = _logged(tmp_path / "vae" / "loss.csv", "l1")
    assert len(l1) == 6 and l1[-1] < 0.5 * l1[0], l1


@pytest.mark.slow
def test_the_transformer_overfits_one_clip(tmp_path):
    """Flow matching on one cached clip, no prompt dropout: the loss falls far below where it started."""
    from accel.training.wan import train as train_wan

    cache = _vae_and_cache(tmp_path, clips=1)
    base = Path(__file__).resolve().parent.parent / "assets" / "tiny-wan"
    out = tmp_path / "wan"
    train_wan(base, tmp_path / "vae", out, cache, steps=120, batch=4, frames=5, lr=2e-3, drop=0.0, warmup=0,
              log_every=30)  # fmt: skip
    loss = _logged(out / "loss.csv", "loss")
    assert len(loss) == 4 and loss[-1] < 0.5 * loss[0], loss


@pytest.mark.slow
def test_the_text_encoder_trains_jointly_and_ships_in_the_folder(tmp_path):
    """``train_text``: the encoder's weights move with the transformer's, are saved in the pipeline folder, load back
    through the checkpoint path and condition generation; a warm start takes the init's encoder."""
    import torch
    from safetensors.torch import load_file

    from accel.models import load_pipeline
    from accel.training.wan import embed, tokenize
    from accel.training.wan import train as train_wan

    cache = _vae_and_cache(tmp_path, clips=2)
    base = Path(__file__).resolve().parent.parent / "assets" / "tiny-wan"
    out = tmp_path / "wan"
    train_wan(base, tmp_path / "vae", out, cache, steps=3, batch=2, frames=5, lr=1e-2, warmup=0, log_every=1,
              train_text=True)  # fmt: skip
    before = load_file(base / "text_encoder" / "model.safetensors")
    after = load_file(out / "text_encoder" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before), "the text encoder did not train"
    pipe = load_pipeline(str(out), "cpu", "float32")
    ids, mask = tokenize(pipe, ["a red circle moves quickly left over a blue background"])
    with torch.no_grad():
        ours = embed(pipe.text_encoder, ids, mask)
        theirs, _ = pipe.encode_prompt("a red circle moves quickly left over a blue background",
                                       do_classifier_free_guidance=False, max_sequence_length=ids.shape[1])  # fmt: skip
    torch.testing.assert_close(ours, theirs)  # training embeds prompts exactly as the pipeline does
    again = tmp_path / "again"
    last = train_wan(base, tmp_path / "vae", again, cache, steps=2, batch=2, frames=5, lr=0.0, warmup=0,
                     log_every=1, init=out, eval_every=1, eval_prompts=1)  # fmt: skip
    kept = load_file(again / "text_encoder" / "model.safetensors")
    assert all(torch.equal(after[k], kept[k]) for k in after)  # warm start: the init's encoder, kept frozen
    rows = (again / "accuracy.csv").read_text().splitlines()  # held-out accuracy every step, the best one kept
    assert rows[0] == "step,colour,direction,count,all,mean,seconds" and len(rows) == 3
    assert last["best_step"] in (1, 2) and 0 <= last["best_accuracy"] <= 1
    # a moving average that barely moves is what gets saved: the raw weights took steps of lr 1e-2, it did not
    ema = tmp_path / "ema"
    train_wan(base, tmp_path / "vae", ema, cache, steps=2, batch=2, frames=5, lr=1e-2, warmup=0, log_every=1,
              init=out, ema=1.0 - 1e-9)  # fmt: skip
    start = load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")
    saved = load_file(ema / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.allclose(start[k], saved[k], atol=1e-6) for k in start)


@pytest.mark.slow
def test_a_resumed_training_ends_where_an_uninterrupted_one_does(tmp_path):
    """A resume point written at step 2 of 4 (weights, moving average, optimizer moments, random state) continues
    to the same weights and the same loss curve as the run that was not stopped; rows logged after the point are
    replaced, not duplicated."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from accel.training.wan import train as train_wan

    cache = _vae_and_cache(tmp_path, clips=2)
    base = Path(__file__).resolve().parent.parent / "assets" / "tiny-wan"
    out = tmp_path / "wan"
    kwargs = {"steps": 4, "batch": 2, "frames": 5, "lr": 1e-2, "warmup": 2, "log_every": 1, "train_text": True,
              "ema": 0.5, "checkpoint_every": 2}  # fmt: skip
    train_wan(base, tmp_path / "vae", out, cache, **kwargs)
    assert (out / "resume.safetensors").is_file()
    whole = tmp_path / "whole"
    shutil.copytree(out, whole)
    train_wan(base, tmp_path / "vae", out, cache, resume=True, **kwargs)  # as if killed after step 3
    assert _logged(out / "loss.csv", "loss") == _logged(whole / "loss.csv", "loss")
    assert [r.split(",")[0] for r in (out / "loss.csv").read_text().splitlines()] == ["step", "1", "2", "3", "4"]
    for part in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(out / part), load_file(whole / part)
        assert all(torch.equal(a[k], b[k]) for k in a), part
    with pytest.raises(ValueError, match="--ema"):
        train_wan(base, tmp_path / "vae", out, cache, resume=True, **{**kwargs, "ema": 0.0})


@pytest.mark.slow
def test_mixed_sizes_train_in_turn(tmp_path, monkeypatch):
    """``mix``: a second cache of another size, frame count and batch is drawn from every other step."""
    from accel.training import wan
    from accel.training.wan import cache_latents

    cache = _vae_and_cache(tmp_path, clips=2)
    big = tmp_path / "big.safetensors"
    cache_latents(tmp_path / "vae", big, clips=2, size=48, frames=9, seed=1)
    seen = []
    build = wan.build_transformer

    def recording(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_pre_hook(lambda _m, inputs: seen.append(tuple(inputs[0].shape)))
        return model

    monkeypatch.setattr(wan, "build_transformer", recording)
    base = Path(__file__).resolve().parent.parent / "assets" / "tiny-wan"
    wan.train(base, tmp_path / "vae", tmp_path / "out", cache, steps=4, batch=2, frames=5, log_every=2,
              mix=[(big, 9, 1)])  # fmt: skip
    assert seen == [(1, 16, 3, 6, 6), (2, 16, 2, 4, 4)] * 2


def test_mix_argument_reads_file_frames_and_batch():
    import argparse

    from accel.training.wan import _mix_arg

    assert _mix_arg("/a:b/c.safetensors:33:4") == (Path("/a:b/c.safetensors"), 33, 4)
    assert _mix_arg("c.safetensors:33") == (Path("c.safetensors"), 33, None)
    for bad in ("c.safetensors", ":33", "c.safetensors:x"):
        with pytest.raises(argparse.ArgumentTypeError, match="FILE:FRAMES"):
            _mix_arg(bad)


def test_curves_resume_after_their_last_kept_row(tmp_path):
    """A resumed curve keeps the rows up to the resume point; one stopped before its header reached the disk (empty)
    starts afresh with the header."""
    import contextlib

    from accel.training.wan_checkpoint import keep_rows_until, open_curve

    loss, empty = tmp_path / "loss.csv", tmp_path / "accuracy.csv"
    loss.write_text("step,loss\n10,0.5\n20,0.4\n30,0.3\n")
    empty.write_text("")
    for path in (loss, empty, tmp_path / "missing.csv"):
        keep_rows_until(path, 20)
    with contextlib.ExitStack() as files:
        for path in (loss, empty):
            _, writer = open_curve(files, path, ["step", "loss"], start=20)
            writer.writerow([40, 0.2])
    assert loss.read_text().splitlines() == ["step,loss", "10,0.5", "20,0.4", "40,0.2"]
    assert empty.read_text().splitlines() == ["step,loss", "40,0.2"]
