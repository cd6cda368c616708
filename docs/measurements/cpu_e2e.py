"""End-to-end denoise time of pocket-wan on CPU: dense against sparse-attention settings, repeats interleaved, one
process.

    python docs/measurements/cpu_e2e.py --height 128 --width 128 --frames 17 --repeats 3
    python docs/measurements/cpu_e2e.py --height 256 --width 256 --frames 33 --repeats 2 --settings tau=0.9 tau=0.8

Each setting is ``[method:]key=value,...`` (method ``xattention`` by default), or a method's name alone for its
defaults (``radial``, ``sta``, ``sparge``, ``svg2``; ``dense`` is the baseline). The model loads once; every round
runs each setting once, in order, so machine noise spreads evenly.
Prints the median and range of the denoise seconds, the ratio to dense's median (higher is faster), the mean
density after warm-up, the share of heads run on dense SDPA, the sparse-attention backend calls and the PSNR of the
video against dense.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

from accel import methods, metrics, models, runner
from accel.config import RunConfig
from accel.runs import RunStore

PROMPT = "a red circle moves left fast over a blue background"


def parse_setting(text: str) -> tuple[str, str, dict]:
    """``"tmr=true,tau=0.8"``, ``"svg2:top_p=0.8"`` or a method's name alone (``"radial"``, ``"dense"``) as
    (label, method, settings)."""
    method, _, rest = text.rpartition(":") if ":" in text else ("xattention", "", text)
    if text in methods.names():
        method, rest = text, ""
    settings: dict = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        settings[key] = {"true": True, "false": False}.get(value.lower(), value)
        if isinstance(settings[key], str):
            settings[key] = float(value) if "." in value else int(value)
    return text, method, settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--settings", nargs="+", default=["tau=0.9", "tmr=true"])
    args = p.parse_args()
    models.load_pipeline("pocket-wan", "cpu")
    store = RunStore(tempfile.mkdtemp(prefix="cpu-e2e-"))
    cases = [parse_setting("dense")] + [parse_setting(s) for s in args.settings if s != "dense"]
    runs: dict[str, list] = {label: [] for label, _, _ in cases}
    for _ in range(args.repeats):
        for label, method, settings in cases:
            cfg = RunConfig(prompt=PROMPT, method=method, settings=settings, height=args.height, width=args.width,
                            frames=args.frames, steps=args.steps, seed=0, device="cpu")  # fmt: skip
            runs[label].append(runner.generate(cfg, store))
    dense_frames = runs["dense"][0].frames()
    base = statistics.median(r.metrics["stages"]["denoise_s"] for r in runs["dense"])
    tokens = runs["dense"][0].metrics.get("tokens")
    backend = os.environ.get("ACCEL_KERNELS", "auto")
    print(f"pocket-wan {args.height}x{args.width}x{args.frames}, {tokens} tokens, {args.steps} steps, "
          f"{os.cpu_count()} CPUs, {args.repeats} rounds; kernels: {backend}")  # fmt: skip
    print(f"{'setting':<22} {'denoise s':>9} {'range':>13} {'vs dense':>8} {'density':>7} {'dense hd':>8} "
          f"{'PSNR dB':>7}  kernel calls")  # fmt: skip
    for label, group in runs.items():
        times = [r.metrics["stages"]["denoise_s"] for r in group]
        m = group[0].metrics
        psnr = float(metrics.psnr(dense_frames, group[0].frames()).mean()) if label != "dense" else float("inf")
        calls = ", ".join(f"{k.split('/')[-1]} {v}" for k, v in (m.get("kernel_calls") or {}).items()
                          if k.startswith("block_sparse"))  # fmt: skip
        print(f"{label:<22} {statistics.median(times):>9.2f} {min(times):>6.2f}-{max(times):<6.2f} "
              f"{base / statistics.median(times):>7.2f}x {m.get('density_mean_sparse', 1.0):>7.3f} "
              f"{m.get('dense_head_frac', 0.0):>8.2f} {psnr:>7.1f}  {calls}")  # fmt: skip


if __name__ == "__main__":
    main()
