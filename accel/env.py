"""``python -m accel env``: what this installation is, for a bug report (like ``diffusers-cli env``).

Versions of Python and of the packages the bench runs on (read from their metadata, nothing imported), the device,
whether each optional part works here (Triton, FlexAttention's compile, the ffmpeg binary with H.264, Chromium for
the browser test), whether diffusers' Wan and SkyReels-V2 classes import, and where the project's modules come from
(``accel.kernels`` is the repository's ``kernels/`` folder; ``import kernels`` must be Hugging Face's package).

Every probe catches its own failure and reports its root cause, so the report also works in a broken environment;
``accel/__main__.py`` answers ``env`` before anything imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accel.errors import root_cause

PROJECT = "vdt-accel-bench"
# distribution names: what the bench runs on, then what its tests and optional parts use
PACKAGES = (
    "torch", "triton", "diffusers", "transformers", "kernels", "gradio", "accelerate", "huggingface-hub", "tokenizers",
    "safetensors", "numpy", "scipy", "pandas", "pyarrow", "opencv-python-headless", "imageio-ffmpeg", "plotly",
    "torch-tb-profiler", "tensorboard", "setuptools", "pytest", "playwright",
)  # fmt: skip
ENV_VARS = ("ACCEL_KERNELS", "ACCEL_RUNS_DIR", "ACCEL_MAX_TOKENS", "ACCEL_MAX_STEPS", "TRITON_INTERPRET",
            "HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "CUDA_VISIBLE_DEVICES")  # fmt: skip
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class Unavailable(Exception):
    """A part that is not there or does not work here, said in the message itself."""


def _probe(fn: Callable[[], Any]) -> dict:
    """``{"ok": True, "detail": fn()}``, or ``ok`` False with why: an :class:`Unavailable`'s message, or the root
    cause of anything else ``fn`` raised."""
    try:
        return {"ok": True, "detail": fn()}
    except Unavailable as exc:
        return {"ok": False, "detail": str(exc)}
    except Exception as exc:
        return {"ok": False, "detail": root_cause(exc)}


def install() -> dict:
    """How the project is installed and where its modules come from."""
    import accel

    dist = None
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution(PROJECT)
    mode = "not installed (source tree on sys.path)"
    if dist is not None:
        url = json.loads(dist.read_text("direct_url.json") or "{}")
        mode = "editable" if url.get("dir_info", {}).get("editable") else "installed"
    kernels_spec = importlib.util.find_spec("accel.kernels")
    hf = importlib.util.find_spec("kernels")  # finds, does not import; a bare folder named kernels is no package
    hf_origin = hf.origin if hf is not None else None
    root = Path(accel.__file__).resolve().parent.parent
    shadowed = hf_origin is not None and hf_origin.startswith(str(root / "kernels"))
    return {
        "version": dist.version if dist else None,
        "mode": mode,
        "accel": str(Path(accel.__file__).resolve().parent),
        "accel.kernels": list(kernels_spec.submodule_search_locations or []) if kernels_spec else None,
        "import kernels": hf_origin or "not installed",
        "kernels shadowed": shadowed,
    }


def device() -> dict:
    """The device the bench would use, with the GPU's name, capability and memory."""
    import torch

    out: dict = {"torch cuda build": torch.version.cuda, "cpu threads": torch.get_num_threads()}
    if not torch.cuda.is_available():
        return {"device": "cpu (CUDA not available)", **out}
    p = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    gpu = f"{p.name}, capability {p.major}.{p.minor}, {total / 2**30:.0f} GiB ({free / 2**30:.0f} free)"
    return {"device": f"cuda ({torch.cuda.device_count()} GPU)", "gpu": gpu, **out}


def _tiny_attention(backend: str, device_name: str) -> float:
    """Largest difference between ``backend`` and torch's SDPA on a 64-token, 2-block call."""
    import torch

    from accel.kernels.block_sparse import block_sparse_attention

    q = torch.randn(1, 64, 2, 16, device=device_name, generator=torch.Generator(device_name).manual_seed(0))
    mask = torch.ones(1, 2, 2, 2, dtype=torch.bool, device=device_name)
    got = block_sparse_attention(q, q, q, mask, block_size=32, dense=False, backend=backend)
    t = q.transpose(1, 2)
    want = torch.nn.functional.scaled_dot_product_attention(t, t, t).transpose(1, 2)
    return float((got.float() - want.float()).abs().max())


def triton(run: bool) -> str:
    from accel.kernels import dispatch

    version = _version("triton")
    if version is None or not dispatch.triton_available():
        raise Unavailable("triton is not installed (the torch reference runs instead)")
    import torch

    where = "cuda" if torch.cuda.is_available() else "cpu"
    if where == "cpu" and not dispatch.triton_interprets():
        return f"{version} imports; it runs on CUDA, or on CPU only under TRITON_INTERPRET=1 (the torch path runs)"
    if not run:
        return f"{version} imports (not launched: --quick)"
    t0 = time.perf_counter()
    err = _tiny_attention("triton", where)
    if err > 1e-2:
        raise Unavailable(f"Triton's block-sparse attention differs from SDPA by {err:.2g} on {where}")
    mode = "interpreter" if where == "cpu" else "compiled"
    took = time.perf_counter() - t0
    return f"{version}: block-sparse attention ran on {where} ({mode}, {took:.1f} s, max diff {err:.1e})"


def flex(run: bool) -> str:
    from accel.kernels import flex as fx

    if not fx.available():
        raise Unavailable("FlexAttention needs torch >= 2.5 and a C++ compiler on the PATH for torch.compile")
    if not run:
        return "torch has it and a C++ compiler is on the PATH (not compiled: --quick)"
    import torch

    t0 = time.perf_counter()
    err = _tiny_attention("flex", "cuda" if torch.cuda.is_available() else "cpu")
    if err > 1e-2:
        raise Unavailable(f"FlexAttention differs from SDPA by {err:.2g}")
    return f"compiled and ran ({time.perf_counter() - t0:.1f} s, max diff {err:.1e})"


def ffmpeg() -> str:
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    first = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
    encoders = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30).stdout
    if "libx264" not in encoders:
        raise Unavailable(f"{exe} has no libx264 encoder: videos cannot be written as H.264")
    return f"{first.split(' Copyright')[0]} with libx264 ({exe})"


def chromium() -> str:
    exe = next((shutil.which(name) for name in CHROMIUMS if shutil.which(name)), None)
    if exe is None:
        raise Unavailable("no chromium on the PATH (only the browser test needs it: apt-get install chromium)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    return f"{(out.stdout or out.stderr).strip()} ({exe})"


def model_classes() -> str:
    from diffusers import AutoencoderKLWan, SkyReelsV2DiffusionForcingPipeline, WanPipeline  # noqa: F401
    from transformers import UMT5EncoderModel  # noqa: F401

    return "diffusers' Wan and SkyReels-V2 pipelines, the Wan VAE and transformers' UMT5 import"


def report(run: bool = True) -> dict:
    """Everything :func:`main` prints, as one dict; ``run`` False skips launching and compiling kernels."""
    return {
        "platform": f"{platform.platform()} ({platform.machine()}), {os.cpu_count()} CPUs",
        "python": sys.version.split()[0] + f" ({sys.executable})",
        "project": _probe(install),
        "packages": {name: _version(name) for name in PACKAGES},
        "device": _probe(device),
        "imports": _probe(model_classes),
        "optional": {
            "triton": _probe(lambda: triton(run)),
            "flex attention": _probe(lambda: flex(run)),
            "ffmpeg": _probe(ffmpeg),
            "chromium": _probe(chromium),
        },
        "environment": {name: os.environ[name] for name in ENV_VARS if name in os.environ},
    }


def _decoded(probe: dict) -> dict | str:
    return probe["detail"] if probe["ok"] else f"FAILED: {probe['detail']}"


def format_report(info: dict) -> str:
    """The report as a Markdown list to paste into a bug report."""
    lines = ["Paste this into the bug report (`python -m accel env`):", ""]
    add = lines.append
    add(f"- platform: {info['platform']}")
    add(f"- python: {info['python']}")
    project = _decoded(info["project"])
    if isinstance(project, dict):
        add(f"- {PROJECT}: {project['version'] or '-'} ({project['mode']}), accel from {project['accel']}")
        add(f"- accel.kernels from: {', '.join(project['accel.kernels'] or ['NOT FOUND'])}")
        shadow = " SHADOWED by the project's folder: reinstall the project" if project["kernels shadowed"] else ""
        add(f"- import kernels (Hugging Face's) from: {project['import kernels']}{shadow}")
    else:
        add(f"- {PROJECT}: {project}")
    for name, version in info["packages"].items():
        add(f"- {name}: {version or 'not installed'}")
    dev = _decoded(info["device"])
    if isinstance(dev, dict):
        add(f"- device: {dev['device']}" + (f", {dev['gpu']}" if "gpu" in dev else ""))
        add(f"- torch CUDA build: {dev['torch cuda build'] or 'none (CPU build)'}; {dev['cpu threads']} CPU threads")
    else:
        add(f"- device: {dev}")
    imports = info["imports"]
    add(f"- model classes: {'ok' if imports['ok'] else 'FAILED'}: {imports['detail']}")
    for name, probe in info["optional"].items():
        add(f"- {name}: {'yes' if probe['ok'] else 'no'}: {probe['detail']}")
    env = info["environment"]
    add("- environment: " + (", ".join(f"{k}={v}" for k, v in env.items()) if env else "(none of the bench's set)"))
    return "\n".join(lines)


def add_parser(sub) -> None:
    """The ``env`` subcommand of :mod:`accel.cli` (``accel/__main__.py`` answers it before torch is imported)."""
    p = sub.add_parser("env", help="versions, device and optional parts, for a bug report", description=__doc__)
    _arguments(p)
    p.set_defaults(func=_run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the list")
    p.add_argument("--quick", action="store_true", help="skip launching Triton and compiling FlexAttention")


def _run(args: argparse.Namespace) -> int:
    info = report(run=not args.quick)
    print(json.dumps(info, indent=1) if args.json else format_report(info))
    return 0 if info["imports"]["ok"] and info["device"]["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m accel env [--json] [--quick]``; exit 1 when torch or the model classes fail to import."""
    p = argparse.ArgumentParser(prog="python -m accel env", description=__doc__.split("\n\n")[0])
    _arguments(p)
    return _run(p.parse_args(argv))
