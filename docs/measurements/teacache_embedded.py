"""TeaCache's thresholds on the embedded models (no fitted polynomial: the raw relative L1 of the timestep embedding).

    PYTHONPATH=. python docs/measurements/teacache_embedded.py [--model pocket-wan] [--thresholds 0.05 0.1 ...]

Runs dense and TeaCache at each threshold on the app's default prompt at the model's defaults (seed 0) and prints
the share of transformer calls skipped and PSNR / SSIM against dense. Only counts and quality: no timing.
"""

from __future__ import annotations

import argparse
import tempfile

from accel.config import RunConfig
from accel.forms import DEFAULT_PROMPT
from accel.runner import generate
from accel.runs import RunStore
from viz.compare import frame_quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pocket-wan")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2, 0.3])
    args = parser.parse_args()
    store = RunStore(tempfile.mkdtemp(prefix="teacache-"))
    dense = generate(RunConfig(prompt=DEFAULT_PROMPT, model=args.model, method="dense"), store)
    print(f"{args.model}, defaults, seed 0; {dense.metrics['grid']} tokens grid")
    print(f"{'thresh':>7} {'skipped calls':>14} {'PSNR dB':>8} {'SSIM':>6}")
    for thresh in args.thresholds:
        run = generate(RunConfig(prompt=DEFAULT_PROMPT, model=args.model, method="teacache",
                                 settings={"thresh": thresh}), store)  # fmt: skip
        skipped = sum(run.metrics["teacache_skipped_calls"].values())
        q = frame_quality(dense, run)
        print(f"{thresh:>7g} {skipped:>6} of {run.metrics['calls']:<5} {q['psnr_mean']:>8.2f} {q['ssim_mean']:>6.4f}")


if __name__ == "__main__":
    main()
