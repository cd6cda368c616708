"""What the pocket transformer trains on (:mod:`accel.training.wan`): the latent cache of procedural clips
(encoded once by the trained VAE, prompts kept as metadata), the prompts' tokens and embeddings as the pipeline
builds them, and :class:`LatentSource`, one cache ready to draw training batches from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from accel.model_specs import POCKET_TEXT_TOKENS
from accel.synthetic.procedural import dataset, spec_at
from accel.training.vae import frames_as_batch, load_vae

__all__ = [
    "CHUNK_FRAMES",
    "TEXT_TOKENS",
    "LatentSource",
    "cache_latents",
    "embed",
    "encode_latents",
    "read_latents",
    "tokenize",
]

# Prompt embeddings are zero-padded to TEXT_TOKENS, as the pipeline does with max_sequence_length (the
# pocket models' ModelSpec.text_tokens; Wan2.1 uses 512, the grammar's prompts need fewer than 32).
TEXT_TOKENS = POCKET_TEXT_TOKENS
CHUNK_FRAMES = 2  # latent frames per diffusion-forcing chunk (the embedded SkyReels model's causal block)


@torch.no_grad()
def encode_latents(vae, pixels: np.ndarray, batch: int = 16, device: str = "cpu") -> torch.Tensor:
    """Normalised latent means ``(N, C, f, h, w)`` of uint8 clips ``(N, F, H, W, 3)``: ``(mu - mean) / std`` as
    the Wan pipeline decodes them."""
    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
    out = []
    for i in range(0, len(pixels), batch):
        mu = vae.encode(frames_as_batch(pixels[i : i + batch]).to(device)).latent_dist.mean
        out.append((mu - mean) / std)
    return torch.cat(out)


def tokenize(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask ``(N, TEXT_TOKENS)``, padded as the pipeline pads (``max_sequence_length``)."""
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=TEXT_TOKENS, truncation=True, return_tensors="pt")
    return ids.input_ids, ids.attention_mask


def embed(text_encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Prompt embeddings ``(B, TEXT_TOKENS, D)`` as the pipeline builds them: the encoder's states, zero past each
    prompt's tokens (differentiable, for training the encoder with the transformer)."""
    return text_encoder(ids, mask).last_hidden_state * mask[..., None].to(torch.float32)


def _render(job: tuple[int, int, int, int, int]) -> np.ndarray:
    """Frames ``(n, F, H, W, 3)`` of training clips ``start .. start + n`` (a worker's share of the cache)."""
    start, n, seed, size, frames = job
    return np.stack([c.frames for c in dataset(n, seed, height=size, width=size, frames=frames, start=start)])


def _prompts(n: int, seed: int) -> list[str]:
    """The prompts of the first ``n`` training clips (their specs only, nothing rendered)."""
    return [spec_at(i, seed).prompt for i in range(n)]


def cache_latents(vae_dir: Path, path: Path, clips: int, size: int, frames: int, seed: int, device: str = "cpu",
                  workers: int = 1, chunk: int = 256) -> None:  # fmt: skip
    """Encode ``clips`` training clips once into a safetensors file (latents) with their prompts as metadata.

    Clips are rendered ``chunk`` at a time (by ``workers`` processes) and encoded on ``device``, so the cache can
    hold far more clips than fit in memory as pixels. The Wan VAE is causal in time, so the first ``k`` latent
    frames of a long clip equal the latents of its first ``4(k - 1) + 1`` frames: one cache of 21-frame clips
    serves a 17-frame model too.
    """
    from concurrent.futures import ProcessPoolExecutor

    from safetensors.torch import save_file

    vae = load_vae(vae_dir).to(device)
    jobs = [(s, min(chunk, clips - s), seed, size, frames) for s in range(0, clips, chunk)]
    out = []
    with ProcessPoolExecutor(max(1, workers)) as pool:
        for pixels in pool.map(_render, jobs):
            out.append(encode_latents(vae, pixels, device=device).cpu())
    meta = {"prompts": json.dumps(_prompts(clips, seed)), "size": str(size), "frames": str(frames)}
    save_file({"latents": torch.cat(out).contiguous()}, str(path), metadata=meta)


def read_latents(path: Path) -> tuple[torch.Tensor, list[str]]:
    """Latents and prompts written by :func:`cache_latents`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return fh.get_tensor("latents"), json.loads(fh.metadata()["prompts"])


@dataclass
class LatentSource:
    """One latent cache as training draws from it: latents cut to the trained frames, token ids and masks of its
    prompts plus the empty prompt (last row, the unconditional branch), their embeddings when the encoder is frozen."""

    latents: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    contexts: torch.Tensor | None
    batch: int

    @classmethod
    def load(cls, path: Path, frames: int, batch: int, pipe, text_encoder, family: str, train_text: bool,
             device: str) -> LatentSource:  # fmt: skip
        latent_frames = (frames - 1) // 4 + 1
        if family == "skyreels" and latent_frames % CHUNK_FRAMES:
            raise ValueError(f"diffusion forcing needs whole chunks: {frames} frames give {latent_frames} latent "
                             f"frames, not a multiple of {CHUNK_FRAMES} (use 5, 13, 21, ...)")  # fmt: skip
        latents, prompts = read_latents(path)
        if latents.shape[2] < latent_frames:
            raise ValueError(f"{path} holds {latents.shape[2]} latent frames, {frames} frames need {latent_frames}")
        ids, mask = (t.to(device) for t in tokenize(pipe, [*prompts, ""]))
        contexts = None
        if not train_text:  # a frozen encoder: every prompt embedded once
            with torch.no_grad():
                contexts = embed(text_encoder, ids, mask)
        return cls(latents[:, :, :latent_frames].to(device).contiguous(), ids, mask, contexts, batch)
