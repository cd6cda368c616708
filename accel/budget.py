"""What a generation request may cost, checked before any model is loaded.

:func:`check` refuses, in one line, a request above the configured caps (:class:`Limits`: latent tokens
per transformer pass and denoising steps) or one whose estimated peak memory is above what the device has
free (CUDA: ``torch.cuda.mem_get_info``; CPU: the kernel's ``MemAvailable``), so that a huge request fails at
once instead of being killed by the out-of-memory killer or holding the one-at-a-time queue for days.

The estimate (:func:`estimate`) is coarse on purpose and errs high. It is the sum of

* the weights (the checkpoint's safetensors files, scaled to the run's dtype) unless already loaded,
* one transformer pass: ``tokens x (ACT_HIDDEN x dim + ACT_FFN x ffn_dim)`` activations in the run's dtype,
  plus the block-score and block-mask maps of ``heads x (tokens / 128)^2`` (the sparse methods),
* the VAE decode of one latent frame at full size: ``4 frames x H x W x base_dim x VAE_COPIES`` fp32 values,
* the decoded video in fp32 and uint8, the recorded masks (the recorder's budget), and a fixed
  ``OVERHEAD_BYTES`` for the allocator and the first run's one-time costs.

The working set (activations, VAE decode, video) is multiplied by ``SAFETY``. The multipliers are settings
checked on the embedded pocket-wan on CPU: the peak RSS growth of a 2-step run after loading (dense /
XAttention) was 510 / 332, 1045 / 1162 and 2194 / 2342 MiB at 256x256x17, 512x512x33 and 768x768x49 against
estimates of 974, 1748 and 3330 MiB (``docs/measurements/budget_peak.py``, output in ``budget_peak.txt``). The
real checkpoints' dimensions come from their ``transformer/config.json`` and ``vae/config.json`` when on disk,
else from Wan2.1 1.3B's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accel.errors import UserError, one_line

if TYPE_CHECKING:
    from accel.config import RunConfig
    from accel.models import ModelSpec

ENV_MAX_TOKENS = "ACCEL_MAX_TOKENS"
ENV_MAX_STEPS = "ACCEL_MAX_STEPS"
DEFAULT_MAX_TOKENS = 2**18  # 1080p x 81 frames of Wan2.1 is 171k latent tokens
DEFAULT_MAX_STEPS = 500  # the references sample 50 steps
ACT_HIDDEN = 16  # live (tokens x dim) tensors in one block at the peak: residual, norms, q/k/v, rope, output
ACT_FFN = 3  # live (tokens x ffn_dim) tensors: the FFN's projection and its activation
VAE_COPIES = 8  # live (4 x H x W x base_dim) fp32 maps in the VAE decoder at full resolution
OVERHEAD_BYTES = 768 * 2**20
SAFETY = 1.25
SCORE_BLOCK = 128
# Wan2.1 1.3B, for checkpoints whose config is not on disk yet
WAN_13B = {"num_layers": 30, "num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960}
WAN_VAE = {"base_dim": 96}
WAN_13B_BYTES = 7_300_000_000 * 2  # transformer 1.3B + umT5-XXL text encoder 5.7B + VAE, in bf16, roughly


class BudgetError(UserError, MemoryError):
    """A request above a cap or above the device's free memory; nothing was allocated."""


@dataclass(frozen=True)
class Limits:
    """Caps on one request: latent tokens per transformer pass and denoising steps (0 = no cap)."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    max_steps: int = DEFAULT_MAX_STEPS

    @classmethod
    def from_env(cls) -> Limits:
        """The caps in ``$ACCEL_MAX_TOKENS`` / ``$ACCEL_MAX_STEPS`` (the app's and CLI's flags set them)."""
        values = {}
        for name, env in (("max_tokens", ENV_MAX_TOKENS), ("max_steps", ENV_MAX_STEPS)):
            raw = os.environ.get(env)
            if raw:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise BudgetError(f"${env} must be an integer, got {raw!r}") from None
                if values[name] < 0:
                    raise BudgetError(f"${env} must be >= 0 (0 = no cap), got {raw!r}")
        return cls(**values)


@dataclass(frozen=True)
class Estimate:
    """Peak memory of a request by part, in bytes."""

    weights: int
    activations: int
    vae_decode: int
    video: int
    masks: int = 0

    @property
    def total(self) -> int:
        work = self.activations + self.vae_decode + self.video
        return self.weights + int(SAFETY * work) + self.masks + OVERHEAD_BYTES

    def __str__(self) -> str:
        parts = [("weights", self.weights), ("activations", self.activations), ("VAE decode", self.vae_decode),
                 ("video", self.video), ("masks", self.masks)]  # fmt: skip
        return f"{_gib(self.total)} ({', '.join(f'{name} {_gib(v)}' for name, v in parts)})"


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def latent_tokens(cfg: RunConfig, patch: tuple[int, int, int] = (1, 2, 2)) -> int:
    """Tokens of one transformer pass: a SkyReels-V2 long video is denoised ``base_num_frames`` at a time."""
    frames = cfg.frames if cfg.base_num_frames is None else min(cfg.frames, cfg.base_num_frames)
    latent = ((frames - 1) // 4 + 1) // patch[0]
    return latent * (cfg.height // 8 // patch[1]) * (cfg.width // 8 // patch[2])


def most_mask_bytes(cfg: RunConfig, spec: ModelSpec, budget_mb: float) -> int:
    """Packed mask bytes the recorder can keep for the resolved ``cfg``: its budget ``budget_mb`` (a cap, not an
    allocation) or, if less, every mask the run could record (one bit per query-key token pair of every head, layer,
    CFG branch and step; chunked runs: per latent frame, more than their chunks)."""
    t = transformer_config(spec)
    tokens = latent_tokens(cfg, tuple(t.get("patch_size") or (1, 2, 2)))
    calls = cfg.steps * (2 if (cfg.guidance or 0) > 1 else 1)
    if spec.family == "skyreels":
        calls *= (cfg.frames - 1) // 4 + 1
    per_call = int(t.get("num_layers") or 1) * int(t["num_attention_heads"]) * tokens * -(-tokens // 8)
    return int(min(budget_mb * 2**20, calls * per_call))


def _config(root: Path | None, sub: str) -> dict[str, Any] | None:
    """``<root>/<sub>/config.json`` when the checkpoint is on disk and has it, else None (the caller's defaults); one
    that is there but cannot be read is a one-line error naming it (a guess would mis-size the memory check)."""
    path = root / sub / "config.json" if root else None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        data = exc
    if not isinstance(data, dict):
        why = one_line(data) if isinstance(data, Exception) else "not a JSON object"
        raise UserError(f"model folder {root}: {sub}/config.json cannot be read ({why}): the checkpoint is damaged or "
                        "half-written (download or save it again)")  # fmt: skip
    return data


SAFETENSORS_HEADER_MAX = 100 * 2**20  # the format's own limit on a header's size


def _values(file: Path) -> int:
    """Number of values stored in a safetensors file (from its header; nothing else is read)."""
    with open(file, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if not 0 < size <= min(SAFETENSORS_HEADER_MAX, file.stat().st_size - 8):  # a truncated or foreign file
            raise ValueError(f"{file.relative_to(file.parents[1])} is not a complete safetensors file")
        header = json.loads(fh.read(size))
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")


def _weight_bytes(root: Path | None, dtype_bytes: int) -> int:
    """Bytes of the checkpoint's weights in memory at ``dtype_bytes`` per value (the VAE stays fp32); Wan2.1-1.3B's
    when the checkpoint is not on disk. A weight file whose header cannot be read is a one-line error naming it (a
    guess would mis-size the memory check)."""
    total = 0
    for f in list(root.rglob("*.safetensors")) if root else []:
        try:
            total += _values(f) * (4 if f.parent.name == "vae" else dtype_bytes)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"model folder {root}: {one_line(exc)}: the checkpoint is damaged or half-written "
                            "(download or save it again)") from None  # fmt: skip
    return total or WAN_13B_BYTES


def transformer_config(spec: ModelSpec) -> dict[str, Any]:
    """The checkpoint's ``transformer/config.json`` when on disk (nothing is loaded), else Wan2.1-1.3B's."""
    from accel.models import local_folder

    return _config(local_folder(spec), "transformer") or WAN_13B


def estimate(
    cfg: RunConfig, spec: ModelSpec, dtype_bytes: int, weights_loaded: bool = False, mask_bytes: int = 0
) -> Estimate:
    """Estimated peak memory of the resolved request ``cfg`` on ``spec`` (see the module docstring); the recorder
    keeps up to ``mask_bytes`` of packed masks."""
    from accel.models import local_folder

    root = local_folder(spec)
    t = transformer_config(spec)
    vae = _config(root, "vae") or WAN_VAE
    patch = tuple(t.get("patch_size") or (1, 2, 2))
    tokens = latent_tokens(cfg, patch)
    dim = int(t["num_attention_heads"]) * int(t["attention_head_dim"])
    blocks = -(-tokens // SCORE_BLOCK)
    activations = tokens * (ACT_HIDDEN * dim + ACT_FFN * int(t["ffn_dim"])) * dtype_bytes
    activations += int(t["num_attention_heads"]) * blocks * blocks * 5  # fp32 scores + bool mask
    pixels = cfg.height * cfg.width
    vae_decode = 4 * pixels * int(vae.get("base_dim") or 96) * VAE_COPIES * 4
    video = cfg.frames * pixels * 3 * (4 + 1)
    weights = 0 if weights_loaded else _weight_bytes(root, dtype_bytes)
    return Estimate(weights, activations, vae_decode, video, mask_bytes)


def available_bytes(device: str) -> int | None:
    """Free memory of ``device`` now (CUDA: free device memory; CPU: MemAvailable), or None if unknown."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check(cfg: RunConfig, spec: ModelSpec, device: str, dtype_bytes: int, limits: Limits | None = None,
          weights_loaded: bool = False, mask_bytes: int = 0) -> Estimate:  # fmt: skip
    """Refuse the resolved request ``cfg`` with a one-line :class:`BudgetError` if it is above a cap or its
    estimated peak memory is above the device's free memory; return the estimate otherwise."""
    limits = limits or Limits.from_env()
    size = f"{cfg.width}x{cfg.height}, {cfg.frames} frames"
    tokens = latent_tokens(cfg)
    if limits.max_tokens and tokens > limits.max_tokens:
        raise BudgetError(
            f"{size} is {tokens:,} latent tokens per pass, above the cap of {limits.max_tokens:,} (--max-tokens): "
            "lower the size or frames, or raise the cap"
        )
    if limits.max_steps and cfg.steps > limits.max_steps:
        raise BudgetError(f"{cfg.steps} steps is above the cap of {limits.max_steps} (--max-steps)")
    need = estimate(cfg, spec, dtype_bytes, weights_loaded, mask_bytes)
    free = available_bytes(device)
    if free is not None and need.total > free:
        raise BudgetError(f"{size} needs about {need} but {device} has {_gib(free)} free: lower the size or frames")
    return need


def run_bytes(cfg: RunConfig, lossless_max: int = 64 * 2**20) -> int:
    """Disk space a run folder may take: the lossless frames copy (up to ``lossless_max``), the H.264 video,
    telemetry and arrays (a fixed 64 MiB allowance)."""
    raw = cfg.frames * cfg.height * cfg.width * 3
    return (raw if raw <= lossless_max else 0) + raw // 10 + 64 * 2**20


def add_limits(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--max-tokens`` and ``--max-steps``: the caps a request is checked against before the model loads."""
    parser.add_argument(
        "--max-tokens", type=int, metavar="N",
        help=f"Refuse requests above N latent tokens per transformer pass (0 = no cap). Default: "
        f"${ENV_MAX_TOKENS} or {DEFAULT_MAX_TOKENS}.",
    )  # fmt: skip
    parser.add_argument(
        "--max-steps", type=int, metavar="N",
        help=f"Refuse requests above N denoising steps (0 = no cap). Default: ${ENV_MAX_STEPS} or "
        f"{DEFAULT_MAX_STEPS}.",
    )  # fmt: skip


def limits_from(args: argparse.Namespace) -> Limits:
    """The :class:`Limits` of ``--max-tokens``/``--max-steps`` (unset: the environment's or default)."""
    limits = Limits.from_env()
    for name in ("max_tokens", "max_steps"):
        value = getattr(args, name, None)
        if value is not None:
            if value < 0:
                raise BudgetError(f"--{name.replace('_', '-')} must be >= 0 (0 = no cap), got {value}")
            limits = dataclasses.replace(limits, **{name: value})
    return limits
