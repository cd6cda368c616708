"""Chunk caches on the embedded diffusion-forcing model: work done, wall time and quality vs uncached.

``python -m accel.bench.chunked`` generates the uncached chunked run and each cache method with the
same prompt and seed on ``tiny-skyreels`` (or ``--model``) and prints one row per method: block
executions (token-weighted) against the uncached run, chunk decisions, wall-time ratio and PSNR/SSIM
against the uncached video. Timings on shared machines are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from accel.bench.headwise import row
from accel.config import BASELINE_NAMES, RunConfig
from accel.forms import DEFAULT_PROMPT
from accel.runner import generate
from accel.runs import RunStore

METHODS: dict[str, tuple[str, dict]] = {
    "flowcache slow": ("flowcache", {"preset": "slow"}),
    "flowcache fast": ("flowcache", {"preset": "fast"}),
    "flowcache fast +kv": ("flowcache", {"preset": "fast", "kv_compress": True}),
    "motioncache": ("motioncache", {}),
    "motioncache +kv": ("motioncache", {"kv_compress": True}),
    **{f"baseline {c}": ("baseline", {"cache": c}) for c in BASELINE_NAMES},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-skyreels")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--device")
    parser.add_argument("--out-dir", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(args.out_dir or tmp)
        common = {"prompt": args.prompt, "model": args.model, "seed": args.seed, "steps": args.steps}
        common.update(frames=args.frames, device=args.device)
        ref = generate(RunConfig(method="dense", **common), store)
        runs = [("uncached", ref)]
        for name, (method, settings) in METHODS.items():
            runs.append((name, generate(RunConfig(method=method, settings=settings, **common), store)))
        print(f"{'method':<20} {'blocks':>8} {'of':>6} {'saved':>6} {'computed':>8} {'partial':>7} {'reused':>6} "
              f"{'PSNR':>7} {'SSIM':>6} {'wall s':>7} {'speedup':>7}")  # fmt: skip
        for name, run in runs:
            m, q = run.metrics, row(name, run, ref)
            if "baseline" in m:  # diffusers' full-window pipeline with a hook: blocks counted per call
                blocks, possible, saved = m["block_executions"], m["block_executions_possible"], m["skipped_fraction"]
                decisions = f"{'-':>8} {'-':>7} {'-':>6}"
            else:
                blocks, possible, saved = (
                    m["block_executions"],
                    m["block_executions_uncached"],
                    m["linear_flops_saved_frac"],
                )
                decisions = (
                    f"{m['chunk_computes']:>8} {m['chunk_partials']:>7} {m['chunk_reuses'] + m['chunk_defers']:>6}"
                )
            print(
                f"{name:<20} {blocks:>8.1f} {possible:>6} {saved:>6.1%} {decisions} "
                f"{q['psnr']:>7.2f} {q['ssim']:>6.4f} {q['wall_s']:>7.2f} {q['speedup']:>7.2f}"
            )


if __name__ == "__main__":
    main()
