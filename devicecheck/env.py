"""Environment report for the device check: versions, the GPU, what imports and what is missing.

``python3 devicecheck/env.py`` (the check runs it with the staged wheels on PYTHONPATH). Never fails on a missing
module or a missing GPU: everything is reported. The last line is ``ENV_JSON {...}``.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

sys.path.insert(0, os.getcwd())

# module -> what needs it (pyproject's dependencies that the commands of the check import)
MODULES = {
    "torch": "everything",
    "triton": "accel.kernels",
    "numpy": "everything",
    "diffusers": "generate, bench_e2e, training (staged wheel)",
    "transformers": "text encoder",
    "tokenizers": "text encoder",
    "huggingface_hub": "model loading",
    "accelerate": "diffusers low_cpu_mem_usage",
    "safetensors": "weights",
    "ftfy": "SkyReels prompts (staged wheel)",
    "wcwidth": "ftfy (staged wheel)",
    "scipy": "metrics",
    "pandas": "telemetry, profiler tables",
    "pyarrow": "telemetry.parquet",
    "cv2": "metrics",
    "imageio_ffmpeg": "accel.video (staged, Python part only)",
    "PIL": "diffusers",
    "pytest": "pytest_gpu step",
}
PROJECT = [
    "accel.kernels.dispatch",
    "accel.kernels.triton_attention",
    "accel.kernels.bench",
    "accel.kernels.bench_e2e",
    "accel.runner",
    "accel.cli",
    "accel.training.wan",
    "profiling.profiler",
]


def version(name: str) -> str:
    try:
        mod = importlib.import_module(name)
    except Exception as exc:
        return f"MISSING ({type(exc).__name__}: {str(exc)[:120]})"
    where = getattr(mod, "__file__", "") or ""
    return f"{getattr(mod, '__version__', '?')}" + (" [staged]" if "/site/" in where else "")


def main() -> int:
    info: dict[str, object] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    info["modules"] = {name: version(name) for name in MODULES}
    info["missing"] = [n for n, v in info["modules"].items() if v.startswith("MISSING")]
    for name, ver in info["modules"].items():
        print(f"  {name:<16} {ver:<40} ({MODULES[name]})")
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            p = torch.cuda.get_device_properties(0)
            free, total = torch.cuda.mem_get_info()
            info["gpu"] = f"{p.name}, {p.multi_processor_count} SMs, {total / 2**30:.0f} GiB ({free / 2**30:.0f} free)"
            info["capability"] = list(torch.cuda.get_device_capability())
            info["cuda_version"] = torch.version.cuda
        try:
            from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

            info["torch_flex_attention"] = True
        except Exception:
            info["torch_flex_attention"] = False
    except Exception as exc:
        info["cuda"] = f"torch failed: {exc}"
    imports = {}
    for name in PROJECT:
        try:
            importlib.import_module(name)
            imports[name] = "ok"
        except Exception as exc:
            imports[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
            traceback.print_exc(limit=2)
    try:
        from diffusers import WanPipeline, WanTransformer3DModel  # noqa: F401

        imports["diffusers.Wan"] = "ok"
    except Exception as exc:
        imports["diffusers.Wan"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    info["imports"] = imports
    info["import_failures"] = [n for n, v in imports.items() if v != "ok"]
    smi = shutil.which("nvidia-smi")
    if smi:
        q = "name,memory.total,driver_version,clocks.max.sm,clocks.max.mem,power.limit"
        r = subprocess.run([smi, f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True)
        info["nvidia_smi"] = (r.stdout or r.stderr).strip()[:300]
    info["ffmpeg"] = shutil.which("ffmpeg")
    hub = Path(
        os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "hub"
    )
    info["hf_cache_models"] = sorted(p.name for p in hub.glob("models--*"))[:20] if hub.is_dir() else []
    du = shutil.disk_usage("/tmp")
    info["tmp_free_gib"] = round(du.free / 2**30, 1)
    staged = Path(".whl/COMMIT")
    info["staged_commit"] = staged.read_text().strip() if staged.is_file() else None
    print(
        "versions: "
        + " ".join(
            f"{n} {info['modules'][n].split(' (')[0]}"
            for n in ("torch", "triton", "numpy", "diffusers", "transformers")
        )
    )
    for key in (
        "python",
        "cpus",
        "cuda",
        "gpu",
        "capability",
        "cuda_version",
        "torch_flex_attention",
        "nvidia_smi",
        "ffmpeg",
        "hf_cache_models",
        "tmp_free_gib",
        "staged_commit",
        "missing",
        "import_failures",
    ):
        if key in info:
            print(f"{key}: {info[key]}")
    print("ENV_JSON " + json.dumps(info, default=str), flush=True)
    return 0 if not info["import_failures"] and "torch" not in info["missing"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
