"""Peak RSS growth of one 2-step pocket-wan generation on CPU after loading, beside accel.budget's estimate.

    python docs/measurements/budget_peak.py H W FRAMES METHOD

Prints one JSON line: the size, the latent tokens, the measured growth and the estimate (MiB) and its parts.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile

from accel import budget, models
from accel.config import RunConfig
from accel.runner import generate
from accel.runs import RunStore


def main() -> None:
    h, w, f, method = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    models.load_pipeline("pocket-wan", "cpu")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cfg = RunConfig(prompt="a red ball", model="pocket-wan", method=method, height=h, width=w, frames=f, steps=2)
    spec = models.resolve("pocket-wan")
    est = budget.estimate(cfg.resolve(spec.defaults), spec, 4, weights_loaded=True)
    generate(cfg, RunStore(tempfile.mkdtemp(prefix="budget-peak-")))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    growth, estimate = round((peak - base) / 2**20), round(est.total / 2**20)
    row = {"h": h, "w": w, "frames": f, "method": method, "tokens": budget.latent_tokens(cfg)}
    print(json.dumps({**row, "growth_mib": growth, "estimate_mib": estimate, "parts": str(est)}))


if __name__ == "__main__":
    main()
