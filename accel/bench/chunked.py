"""Chunk caches on the embedded diffusion-forcing model: work done, wall time and quality vs uncached.

``python -m accel.bench.chunked`` generates the uncached chunked run and each cache method with the
same prompt and seed on ``tiny-skyreels`` (or ``--model``) and prints one row per method. Every row counts
work in one unit, token-weighted block executions (one block over one chunk's tokens, per CFG branch):
``blocks`` done, ``of`` what the same runner does without skipping (for a diffusers baseline: its own
full-window pipeline), ``saved`` between the two, and ``work`` = blocks / the uncached chunked run's blocks.
Then chunk decisions, PSNR/SSIM against the uncached video, wall time and its ratio. ``PSNR w1`` is the PSNR
over the first window's frames only: in a long video a window starts from the previous one's last frames, so a
cache's error compounds window by window and the whole-video PSNR measures that drift as much as the cache's own
error (equal to PSNR for a one-window video). Timings on shared machines are noisy: compare ratios within one run.

``--preset seeds`` is the seeds' evaluation setting: 50 steps and a long video in three overlapping
segments (53 frames in windows of 21 with 5 frames of overlap on the embedded models), run once per
commit mode (``--kv-commit``: last-step, the seeds' behaviour, and clean-pass, diffusers').
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from accel import methods
from accel.bench.headwise import row
from accel.config import RunConfig
from accel.forms import DEFAULT_PROMPT
from accel.model_specs import ModelSpec, resolve
from accel.runner import generate
from accel.runs import Run, RunStore
from accel.schema import Event
from accel.settings import COMMIT_MODES
from viz.compare import PSNR_CAP, frame_quality


def chunk_variants(spec: ModelSpec) -> dict[str, tuple[str, dict]]:
    """The registry's variants on ``spec`` that skip work across steps: every chunk cache's (and each with KV
    compression, where it has that setting) and the diffusers baselines'."""
    out: dict[str, tuple[str, dict]] = {}
    for name, (method, settings) in methods.variants(spec).items():
        record = methods.get(method)
        if record.cache is None and Event.BASELINE_BLOCKS not in record.events:
            continue
        out[name] = (method, settings)
        if "kv_compress" in {f.name for f in dataclasses.fields(record.settings)}:
            out[f"{name} +kv"] = (method, {**settings, "kv_compress": True})
    return out


METHODS = chunk_variants(resolve("pocket-skyreels"))  # the same names on every SkyReels-V2 model
# the seeds' setting on the embedded models: 50 steps; 53 frames = 14 latent frames in windows of 6 (21 frames)
# overlapping by 2 (5 frames): segments of 6, 4 and 4 new latent frames
PRESETS: dict[str, dict] = {
    "default": {},
    "seeds": {"steps": 50, "frames": 53, "base_num_frames": 21, "overlap_history": 5},
}


def work(run: Run) -> tuple[float, float]:
    """(blocks done, blocks without skipping) of a run, token-weighted, whatever ran it."""
    m = run.metrics
    key = "block_executions_possible" if "baseline" in m else "block_executions_uncached"
    return float(m["block_executions"]), float(m[key])


def first_window_psnr(run: Run, ref: Run) -> float:
    """Mean per-frame PSNR (capped) of ``run`` against ``ref`` over the frames of the first window."""
    frames = ref.config.get("frames")
    window = min(ref.config.get("base_num_frames") or frames, frames)
    return float(np.mean(np.minimum(frame_quality(ref, run)["psnr"][:window], PSNR_CAP)))


def table(runs: list[tuple[str, Run]], ref: Run) -> list[str]:
    """The printed rows (header first) of ``runs`` against the uncached run ``ref``."""
    ref_blocks = work(ref)[0]
    lines = [
        f"{'method':<20} {'blocks':>8} {'of':>8} {'saved':>6} {'work':>6} {'computed':>8} {'partial':>7} "
        f"{'reused':>6} {'PSNR':>7} {'PSNR w1':>7} {'SSIM':>6} {'wall s':>7} {'speedup':>7}"
    ]
    for name, run in runs:
        m, q = run.metrics, row(name, run, ref)
        blocks, possible = work(run)
        if "baseline" in m:
            decisions = f"{'-':>8} {'-':>7} {'-':>6}"
        else:
            decisions = f"{m['chunk_computes']:>8} {m['chunk_partials']:>7} {m['chunk_reuses'] + m['chunk_defers']:>6}"
        saved = 1.0 - blocks / possible if possible else 0.0
        lines.append(
            f"{name:<20} {blocks:>8.1f} {possible:>8.1f} {saved:>6.1%} {blocks / ref_blocks:>6.3f} {decisions} "
            f"{q['psnr']:>7.2f} {first_window_psnr(run, ref):>7.2f} {q['ssim']:>6.4f} {q['wall_s']:>7.2f} "
            f"{q['speedup']:>7.2f}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-skyreels")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=tuple(PRESETS), default="default")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--kv-commit", choices=COMMIT_MODES, nargs="+", help="default: last-step; seeds: both")
    parser.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=list(METHODS))
    parser.add_argument("--device")
    parser.add_argument("--out-dir", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    commits = args.kv_commit or (list(COMMIT_MODES) if args.preset == "seeds" else [COMMIT_MODES[0]])
    common = {"prompt": args.prompt, "model": args.model, "seed": args.seed, "device": args.device, **preset}
    common.update({k: v for k, v in (("steps", args.steps), ("frames", args.frames)) if v is not None})
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(args.out_dir or tmp)
        for commit in commits:
            ref = generate(RunConfig(method="dense", kv_commit=commit, **common), store)
            runs = [("uncached", ref)]
            for name in args.methods:
                method, settings = METHODS[name]
                runs.append((name, generate(RunConfig(method=method, settings=settings, kv_commit=commit, **common),
                                            store)))  # fmt: skip
            segments = len(ref.metrics.get("segments", [])) or 1
            print(f"\n{args.model}, kv_commit {commit}, {ref.config.get('steps')} steps, {ref.config.get('frames')} "
                  f"frames in {segments} segment(s), uncached {work(ref)[0]:.1f} blocks")  # fmt: skip
            print("\n".join(table(runs, ref)))


if __name__ == "__main__":
    main()
