"""Train the pocket Wan T2V transformer by flow matching on latents of procedural clips.

``python -m accel.training.wan --vae DIR --latents F.safetensors --out assets/pocket-wan --steps 4000`` encodes
``--clips`` training clips of :mod:`accel.synthetic.procedural` once with the (trained) VAE into a latent cache, embeds
their prompts with the embedded text encoder (frozen, or trained jointly with ``--train-text``), and trains a small
``WanTransformer3DModel`` to predict ``noise - x0`` at ``x_sigma = (1 - sigma) x0 + sigma noise`` (the flow
convention of diffusers' Wan schedulers), dropping the prompt 10% of the time for classifier-free guidance.
With ``--family skyreels`` (and ``--base assets/tiny-skyreels``) it trains a SkyReels-V2 diffusion-forcing
transformer instead: every chunk of latent frames gets its own noise level, so chunked autoregressive sampling
works. The result is a complete diffusers pipeline folder (safetensors) plus ``loss.csv`` (and ``accuracy.csv`` with
``--eval-every``); it loads through the same path as a real checkpoint.

This module holds the model and its training loop (and the command line); the latent cache and the prompts' tokens
and embeddings are in :mod:`accel.training.wan_data` (re-exported here), the saved folder, resume points and
training curves in :mod:`accel.training.wan_checkpoint`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from accel.paths import ASSETS
from accel.synthetic.procedural import BASIC_DIRECTIONS, BASIC_SHAPES, held_out_prompts
from accel.training.vae import load_vae, lr_factor
from accel.training.wan_checkpoint import (
    RESUME_FILE,
    averaged_weights,
    keep_rows_until,
    load_resume,
    open_curve,
    save_pipeline,
    save_resume,
)
from accel.training.wan_data import (
    CHUNK_FRAMES,
    TEXT_TOKENS,
    LatentSource,
    cache_latents,
    embed,
    encode_latents,
    read_latents,
    tokenize,
)

__all__ = [
    "CHUNK_FRAMES",
    "RESUME_FILE",
    "TEXT_TOKENS",
    "build_transformer",
    "cache_latents",
    "embed",
    "encode_latents",
    "evaluate",
    "main",
    "read_latents",
    "sample_sigmas",
    "tokenize",
    "train",
]


def build_transformer(family: str, text_dim: int, z_dim: int = 16, layers: int = 4, heads: int = 6,
                      head_dim: int = 32):  # fmt: skip
    """A small Wan2.1-style T2V transformer (patch 1x2x2), or its SkyReels-V2 diffusion-forcing twin (per-frame
    timesteps, block-causal attention over chunks)."""
    from diffusers import SkyReelsV2Transformer3DModel, WanTransformer3DModel

    common = {
        "patch_size": (1, 2, 2), "num_attention_heads": heads, "attention_head_dim": head_dim, "in_channels": z_dim,
        "out_channels": z_dim, "text_dim": text_dim, "freq_dim": 64, "ffn_dim": heads * head_dim * 2,
        "num_layers": layers, "rope_max_seq_len": 1024,
    }  # fmt: skip
    if family == "wan":
        return WanTransformer3DModel(**common)
    if family == "skyreels":
        # no fps embedding: diffusers adds it correctly only for batch 1 under diffusion forcing (training batches)
        return SkyReelsV2Transformer3DModel(**common, inject_sample_info=False, num_frame_per_block=CHUNK_FRAMES)
    raise ValueError(f"family must be wan or skyreels, got {family!r}")


def evaluate(pipe, family: str, prompts: Sequence[str], seeds: Sequence[int]) -> dict[str, float]:
    """Accuracy of a pipeline (being trained) on ``prompts`` x ``seeds``: each generated densely at the embedded
    model's defaults (size, steps, guidance) and scored against its prompt by :mod:`accel.synthetic.scoring`."""
    from accel import models
    from accel.config import RunConfig
    from accel.synthetic.scoring import aggregate, score_many

    spec = models.resolve("pocket-wan" if family == "wan" else "pocket-skyreels")
    videos, texts = [], []
    for prompt in prompts:
        for seed in seeds:
            cfg = RunConfig(prompt=prompt, model=spec.name, seed=seed).resolve(spec.defaults)
            with torch.inference_mode():
                frames = pipe(**models.pipeline_call(cfg, spec)).frames[0]
            videos.append((np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8))
            texts.append(prompt)
    return aggregate(score_many(videos, texts))


def sample_sigmas(n: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Logit-normal sigmas, shifted like the sampler's ``flow_shift`` so training matches sampling."""
    s = torch.sigmoid(torch.randn(n, generator=generator, device=generator.device))
    return shift * s / (1 + (shift - 1) * s)


def train(
    base: Path,
    vae_dir: Path,
    out: Path,
    latents_file: Path,
    steps: int = 4000,
    batch: int = 8,
    frames: int = 17,
    lr: float = 5e-4,
    seed: int = 0,
    drop: float = 0.1,
    shift: float | None = None,
    log_every: int = 20,
    family: str = "wan",
    init: Path | None = None,
    warmup: int = 200,
    device: str = "cpu",
    layers: int = 4,
    train_text: bool = False,
    eval_every: int = 0,
    eval_prompts: int = 8,
    eval_seeds: Sequence[int] = (0,),
    ema: float = 0.0,
    mix: Sequence[tuple[Path, int, int | None]] = (),
    checkpoint_every: int = 0,
    resume: bool = False,
) -> dict[str, float]:
    """Train on the cached latents (first latent frames of each clip for ``frames``) and save a pipeline folder.

    ``train_text`` trains the text encoder jointly (same optimizer and learning rate) and saves it in the folder in
    place of the base's frozen one, so the conditioning can learn to bind words to colour and motion.

    ``eval_every`` > 0 scores the model on ``eval_prompts`` held-out prompts x ``eval_seeds`` every that many steps
    and at the end (:func:`evaluate`; ``accuracy.csv`` beside ``loss.csv``) and keeps the best checkpoint (mean of
    colour, direction and count accuracy; ties go to the later one) as the saved folder instead of the last.

    ``ema`` > 0 keeps an exponential moving average of the trained weights (decay ``ema`` per step, as diffusion
    models are usually sampled from) and evaluates and saves it in place of the raw weights.

    ``init`` warm-starts from another pocket pipeline's transformer (SkyReels-V2's DF models are fine-tuned from
    Wan2.1 the same way; both classes share one state-dict layout). On ``device`` ``cuda`` the data, the random
    draws and the model all live on the GPU (seeded there, so a GPU run does not repeat a CPU run bit for bit).

    ``mix`` adds latent caches trained on in turn with the main one (step ``s`` draws from cache ``s mod n``), each
    as ``(file, frames, batch)`` (batch None: ``batch``): one model learns several sizes, e.g. the default size and
    a bench size of 256x256x33 whose positions the default clips never reach.

    ``checkpoint_every`` > 0 writes a resume point (``resume.safetensors`` in ``out``: weights, moving average,
    optimizer moments, random states, best accuracy so far) every that many steps, atomically; ``resume`` continues
    from it (same arguments), appending to the curves, so a killed background training loses at most that many
    steps and ends where an uninterrupted one would.
    """
    from diffusers import DiffusionPipeline, SkyReelsV2DiffusionForcingPipeline, WanPipeline
    from safetensors.torch import load_file

    torch.manual_seed(seed)
    pipe = DiffusionPipeline.from_pretrained(base, dtype=torch.float32, use_safetensors=True)
    shift = float(pipe.scheduler.config.get("flow_shift", 3.0)) if shift is None else shift  # the sampler's
    vae = load_vae(vae_dir)
    t0 = time.perf_counter()
    text_encoder = pipe.text_encoder
    init_text = Path(init) / "text_encoder" / "model.safetensors" if init is not None else None
    if init_text is not None and init_text.is_file():  # the encoder the init's transformer was trained against
        text_encoder.load_state_dict(load_file(init_text), strict=False)  # not strict: tied embeddings saved once
    text_encoder.to(device).train(train_text)
    sources = [LatentSource.load(latents_file, frames, batch, pipe, text_encoder, family, train_text, device)]
    sources += [LatentSource.load(Path(f), n, b or batch, pipe, text_encoder, family, train_text, device)
                for f, n, b in mix]  # fmt: skip
    prep_s = time.perf_counter() - t0
    model = build_transformer(family, text_encoder.config.d_model, layers=layers)
    if init is not None:
        model.load_state_dict(load_file(Path(init) / "transformer" / "diffusion_pytorch_model.safetensors"))
    model.to(device).train()
    params = [*model.parameters(), *(text_encoder.parameters() if train_text else ())]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    averaged = [p.detach().clone() for p in params] if ema > 0 else None
    gen = torch.Generator(device).manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start, best, best_step = 0, -1.0, 0
    if resume:
        start, best, best_step = load_resume(out / RESUME_FILE, params, averaged, opt, gen)
        for name in ("loss.csv", "accuracy.csv"):  # rows logged after the resume point are trained again
            keep_rows_until(out / name, start)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s + start, steps, warmup))
    last: dict[str, float] = {}
    cls = WanPipeline if family == "wan" else SkyReelsV2DiffusionForcingPipeline
    current = cls(tokenizer=pipe.tokenizer, text_encoder=text_encoder, vae=vae.to(device), scheduler=pipe.scheduler,
                  transformer=model)  # fmt: skip
    held_out = held_out_prompts(eval_prompts, shapes=BASIC_SHAPES, directions=BASIC_DIRECTIONS)
    with contextlib.ExitStack() as files:
        fh, writer = open_curve(files, out / "loss.csv", ["step", "loss", "seconds"], start)
        acc_file, acc_writer = (
            open_curve(files, out / "accuracy.csv", ["step", "colour", "direction", "count", "all", "mean", "seconds"],
                       start) if eval_every > 0 else (None, None)
        )  # fmt: skip
        running, counted = torch.zeros((), device=device), 0
        for step in range(start + 1, steps + 1):
            data = sources[step % len(sources)]
            batch = data.batch
            idx = torch.randint(len(data.latents), (batch,), generator=gen, device=device)
            x0 = data.latents[idx]
            keep = torch.rand(batch, generator=gen, device=device) >= drop
            rows = torch.where(keep, idx, len(data.latents))
            ctx = embed(text_encoder, data.ids[rows], data.mask[rows]) if train_text else data.contexts[rows]
            if family == "wan":
                sigma = sample_sigmas(batch, shift, gen).view(-1, 1, 1, 1, 1)
                kwargs = {}
            else:  # diffusion forcing: an independent noise level per chunk of latent frames
                chunks = math.ceil(x0.shape[2] / CHUNK_FRAMES)
                per_chunk = sample_sigmas(batch * chunks, shift, gen).view(batch, chunks)
                sigma = per_chunk.repeat_interleave(CHUNK_FRAMES, dim=1)[:, : x0.shape[2]].view(batch, 1, -1, 1, 1)
                kwargs = {"enable_diffusion_forcing": True}
            timestep = sigma.flatten(1) * 1000 if family == "skyreels" else sigma.flatten() * 1000
            noise = torch.randn(x0.shape, generator=gen, device=device)
            xt = (1 - sigma) * x0 + sigma * noise
            pred = model(xt, timestep, ctx, return_dict=False, **kwargs)[0]
            loss = F.mse_loss(pred, noise - x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            if averaged is not None:
                with torch.no_grad():
                    for avg, p in zip(averaged, params, strict=True):
                        avg.lerp_(p, 1.0 - ema)
            running += loss.detach()
            counted += 1
            if step % log_every == 0 or step == steps:
                last = {"loss": float(running) / counted, "seconds": time.perf_counter() - t0, "prep_s": prep_s}
                writer.writerow([step, f"{last['loss']:.5f}", f"{last['seconds']:.1f}"])
                fh.flush()
                running.zero_()
                counted = 0
            if acc_writer and (step % eval_every == 0 or step == steps):
                with averaged_weights(params, averaged):
                    model.eval()
                    text_encoder.eval()
                    acc = evaluate(current, family, held_out, eval_seeds)
                    mean = (acc["colour_acc"] + acc["direction_acc"] + acc["count_acc"]) / 3
                    acc_writer.writerow([step, *(f"{acc[k]:.4f}" for k in ("colour_acc", "direction_acc", "count_acc",
                                                                           "all_acc")), f"{mean:.4f}",
                                         f"{time.perf_counter() - t0:.1f}"])  # fmt: skip
                    acc_file.flush()
                    if mean >= best:
                        best, best_step = mean, step
                        save_pipeline(current, out, base)
                model.train()
                text_encoder.train(train_text)
            if checkpoint_every > 0 and step % checkpoint_every == 0 and step < steps:
                save_resume(out / RESUME_FILE, step, params, averaged, opt, gen, best, best_step)
    if eval_every > 0:
        last.update(best_step=best_step, best_accuracy=best)
    else:
        model.eval()
        text_encoder.eval()
        with averaged_weights(params, averaged):
            save_pipeline(current, out, base)
    return last


def _mix_arg(text: str) -> tuple[Path, int, int | None]:
    """``FILE:FRAMES[:BATCH]`` of ``--mix`` (the file name may hold colons)."""
    parts = text.split(":")
    numbers = 2 if len(parts) > 2 and parts[-1].isdigit() and parts[-2].isdigit() else 1
    file, counts = ":".join(parts[:-numbers]), parts[-numbers:]
    if not file or not all(c.isdigit() for c in counts):
        raise argparse.ArgumentTypeError(f"--mix takes FILE:FRAMES[:BATCH], got {text!r}")
    return Path(file), int(counts[0]), int(counts[1]) if numbers == 2 else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=ASSETS / "tiny-wan",
                        help="pipeline folder whose tokenizer, text encoder and scheduler are reused")  # fmt: skip
    parser.add_argument("--vae", type=Path, required=True, help="trained VAE folder (python -m accel.training.vae)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--latents", type=Path, required=True,
                        help="latent cache (safetensors); written first when missing")  # fmt: skip
    parser.add_argument("--clips", type=int, default=800, help="clips encoded into a new latent cache")
    parser.add_argument("--cache-frames", type=int, default=21, help="frames per cached clip (4k+1)")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, default=None, help="pocket pipeline whose transformer starts training")
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks")
    parser.add_argument(
        "--eval-every", type=int, default=0, help="score held-out prompts every N steps, keep the best checkpoint"
    )
    parser.add_argument("--eval-prompts", type=int, default=8, help="held-out prompts per evaluation")
    parser.add_argument("--eval-seeds", default="0", help="comma-separated seeds per evaluation prompt")
    parser.add_argument(
        "--train-text", action="store_true", help="train the text encoder jointly (saved in the folder), not frozen"
    )
    parser.add_argument(
        "--ema", type=float, default=0.0, help="decay of a moving average of the weights, evaluated and saved (0 = off)"
    )
    parser.add_argument("--mix", action="append", default=[], type=_mix_arg, metavar="FILE:FRAMES[:BATCH]",
                        help="another latent cache trained on in turn with --latents (repeatable)")  # fmt: skip
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="write a resume point (resume.safetensors in --out) every N steps")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue from --out's resume point (same arguments)")
    parser.add_argument("--device", default="cpu", help="where to encode the cache and train (cpu, cuda)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering clips for a new cache")
    parser.add_argument("--log-every", type=int, default=20, help="steps per row of loss.csv")
    parser.add_argument(
        "--family",
        choices=("wan", "skyreels"),
        default="wan",
        help="wan: T2V; skyreels: diffusion forcing (per-chunk noise levels; use --base tiny-skyreels)",
    )
    args = parser.parse_args(argv)
    if not args.latents.is_file():
        t0 = time.perf_counter()
        cache_latents(args.vae, args.latents, args.clips, args.size, args.cache_frames, args.seed, args.device,
                      args.workers)  # fmt: skip
        print(f"cached {args.clips} clips in {time.perf_counter() - t0:.0f} s")
    last = train(args.base, args.vae, args.out, args.latents, args.steps, args.batch, args.frames, args.lr,
                 args.seed, log_every=args.log_every, family=args.family, init=args.init, device=args.device,
                 layers=args.layers, train_text=args.train_text, eval_every=args.eval_every,
                 eval_prompts=args.eval_prompts, eval_seeds=[int(s) for s in args.eval_seeds.split(",")],
                 ema=args.ema, mix=args.mix,
                 checkpoint_every=args.checkpoint_every, resume=args.resume)  # fmt: skip
    print(f"saved {args.out}: last loss {last['loss']:.4f}, {last['seconds']:.0f} s (data {last['prep_s']:.0f} s)")


if __name__ == "__main__":
    main()
