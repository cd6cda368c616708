"""Train the pocket video VAE (Wan's ``AutoencoderKLWan``, 4x8x8 compression) on procedural clips.

``python -m accel.training.vae --out /tmp/vae --steps 2800 --batch 4`` trains from scratch, seeded, on random
48x48 crops of 128x128x5 clips streamed from :mod:`accel.synthetic.procedural` (nothing is downloaded), starting from
:func:`identity_init`, and writes the model in diffusers format (safetensors) plus ``loss.csv`` (step,
reconstruction L1, KL, seconds). The loss is L1 reconstruction plus
``--kl`` times the KL of the diagonal-Gaussian posterior (a small weight: the latents need to be smooth enough
for a diffusion model, not a good generative prior by themselves). By default the decoder sees the posterior
mean (``sample_posterior=False``): at initialisation the posterior's std is ~1, so sampled latents are mostly
noise; the KL term still regularises the posterior. The latent mean/std written into the config are measured
on clips not used in training, as diffusers' Wan pipelines expect.

Five-frame clips (one latent frame for frame 0, one for frames 1-4) never exercise the causal cache's steady
state (a chunk that follows another 4-frame chunk), so decoding frames 5+ of a longer clip goes wrong; the
shipped VAE continues with ``--resume DIR --frames 9`` for a second stage (see the README's commands).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch

from accel.synthetic.procedural import dataset
from accel.training.embedded import build_vae


def identity_init(vae, encoder_bias: float = 1.0, seed: int = 0) -> None:
    """Start training from a near-linear autoencoder (a setting, on by default; see the module docstring).

    Every residual branch's last convolution and the attention output projections are zeroed, so each block
    starts as the identity; every other convolution gets a variance-preserving ``N(0, 1/fan_in)`` weight and
    zero bias. With PyTorch's default init the Wan VAE's signal from the input is swamped by the branches'
    output and its RMS norms (no mean centring) learn colour very slowly; measured on uniform-colour clips,
    the decoder reaches L1 0.16 in 150 steps with this init against 0.36 without. The encoder's first
    convolution gets an ``N(0, encoder_bias)`` bias so the head's RMS norm does not discard the input's scale.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in vae.named_modules():
            if not isinstance(mod, (torch.nn.Conv2d, torch.nn.Conv3d)):
                continue
            zero = name.endswith("conv2") or name.endswith("proj")
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) / math.sqrt(mod.weight[0].numel()))
            if zero:
                mod.weight.zero_()
            if mod.bias is not None:
                mod.bias.zero_()
        vae.encoder.conv_in.bias.copy_(torch.randn(vae.encoder.conv_in.bias.shape, generator=gen) * encoder_bias)


def load_vae(vae_dir: Path):
    """A saved VAE, built from its config and a strict safetensors state dict (no load path in its config)."""
    from diffusers import AutoencoderKLWan
    from safetensors.torch import load_file

    vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(vae_dir)).eval()
    vae.load_state_dict(load_file(Path(vae_dir) / "diffusion_pytorch_model.safetensors"), strict=True)
    return vae


def lr_factor(step: int, steps: int, warmup: int = 0) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then a cosine from 1 to 0.1 at ``steps``."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return warm * (0.55 + 0.45 * math.cos(math.pi * min(step / steps, 1.0)))


def random_crops(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """One random ``size`` x ``size`` spatial crop per clip of a ``(B, C, F, H, W)`` batch."""
    h, w = x.shape[-2:]
    tops = torch.randint(0, h - size + 1, (x.shape[0],), generator=gen).tolist()
    lefts = torch.randint(0, w - size + 1, (x.shape[0],), generator=gen).tolist()
    return torch.stack([c[..., t : t + size, left : left + size] for c, t, left in zip(x, tops, lefts, strict=True)])


def frames_as_batch(pixels: np.ndarray) -> torch.Tensor:
    """uint8 frames ``(B, F, H, W, 3)`` as a float ``(B, 3, F, H, W)`` batch in [-1, 1]."""
    video = pixels.astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(video).permute(0, 4, 1, 2, 3).contiguous()


def clips_as_batch(clips) -> torch.Tensor:
    """uint8 ``(F, H, W, 3)`` clips as a float ``(B, 3, F, H, W)`` batch in [-1, 1]."""
    return frames_as_batch(np.stack([c.frames for c in clips]))


def train(
    out: Path,
    steps: int,
    batch: int = 8,
    size: int = 128,
    frames: int = 5,
    lr: float = 1e-3,
    kl: float = 1e-6,
    seed: int = 0,
    base_dim: int = 16,
    log_every: int = 10,
    sample_posterior: bool = False,
    crop: int | None = 48,
    init: bool = True,
    resume: Path | None = None,
) -> dict[str, float]:
    """Train for ``steps`` and save; returns the last logged losses.

    Clips are rendered at ``size`` and trained on as random ``crop`` x ``crop`` windows (the VAE is
    convolutional, so it sees shapes at the scale of full-size clips for a fraction of the cost); the
    learning rate follows a cosine from ``lr`` to ``lr / 10``.
    """
    crop = crop or size
    if size % 8 or crop % 8 or crop > size or (frames - 1) % 4:
        raise ValueError(
            f"size and crop must be multiples of 8 with crop <= size, frames of the form 4k+1; "
            f"got size {size}, crop {crop}, frames {frames}"
        )
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if resume is not None:  # continue from a saved VAE (e.g. a second stage on longer clips)
        vae = load_vae(resume).train()
    else:
        vae = build_vae(base_dim).train()
        if init:
            identity_init(vae, seed=seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, steps))
    stream = dataset(steps * batch, seed, height=size, width=size, frames=frames)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0, last = time.perf_counter(), {}
    with open(out / "loss.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "l1", "kl", "seconds"])
        sums = [0.0, 0.0]  # running L1 and KL since the last log line
        for step in range(1, steps + 1):
            x = random_crops(clips_as_batch([next(stream) for _ in range(batch)]), crop, gen)
            posterior = vae.encode(x).latent_dist
            z = posterior.sample() if sample_posterior else posterior.mode()
            recon = vae.decode(z).sample
            l1 = (recon - x).abs().mean()
            kl_term = posterior.kl().mean()  # summed over the latent, averaged over the batch
            loss = l1 + kl * kl_term
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            sched.step()
            sums[0] += float(l1.detach())
            sums[1] += float(kl_term.detach())
            if step % log_every == 0 or step == steps:
                n = step - (step - 1) // log_every * log_every
                last = {"l1": sums[0] / n, "kl": sums[1] / n, "seconds": time.perf_counter() - t0}
                sums = [0.0, 0.0]
                writer.writerow([step, f"{last['l1']:.5f}", f"{last['kl']:.5f}", f"{last['seconds']:.1f}"])
                fh.flush()
    vae.eval()
    _set_latent_stats(vae, seed, size, frames)
    vae.save_pretrained(out, safe_serialization=True)
    return last


@torch.no_grad()
def _set_latent_stats(vae, seed: int, size: int, frames: int, n: int = 16) -> None:
    """Per-channel latent mean/std over ``n`` clips not seen in training (another seed)."""
    x = clips_as_batch(list(dataset(n, seed + 10_000, height=size, width=size, frames=frames)))
    z = vae.encode(x).latent_dist.mean
    vae.register_to_config(
        latents_mean=z.mean(dim=(0, 2, 3, 4)).tolist(), latents_std=z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3).tolist()
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the diffusers VAE and loss.csv")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="square clip side in pixels (multiple of 8)")
    parser.add_argument("--crop", type=int, default=48, help="side of the random training crop (multiple of 8)")
    parser.add_argument("--frames", type=int, default=5, help="frames per clip, 4k+1")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--kl", type=float, default=1e-6, help="weight of the KL term")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-dim", type=int, default=16)
    parser.add_argument("--default-init", action="store_true", help="keep PyTorch's init (no identity_init)")
    parser.add_argument("--resume", type=Path, default=None, help="start from this saved VAE folder")
    args = parser.parse_args(argv)
    last = train(
        args.out,
        args.steps,
        args.batch,
        args.size,
        args.frames,
        args.lr,
        args.kl,
        args.seed,
        args.base_dim,
        crop=args.crop,
        init=not args.default_init,
        resume=args.resume,
    )
    print(f"saved {args.out}: last L1 {last['l1']:.4f}, KL {last['kl']:.4f}, {last['seconds']:.0f} s")


if __name__ == "__main__":
    main()
