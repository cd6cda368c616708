"""Golden outputs of every method variant: a refactoring must leave them bit-identical.

    python docs/measurements/golden_hashes.py            # write docs/measurements/golden_hashes.json
    python docs/measurements/golden_hashes.py --check    # compare against it; exit 1 and list what changed

Runs every benchmark variant of the registry (``accel.methods.variants``: dense, XAttention, SVG2 with TMR and
shipped EBC tables, FlowCache, MotionCache, the diffusers baseline caches), plus :data:`FORCED` settings that take
the sparse and reuse paths where the defaults run dense, on the test models (tiny-wan at
128x128x9, tiny-skyreels at 64x64x21, 6 steps, seed 0, float32 on the CPU, 2 threads) and records the SHA-256 of
each video's uint8 frames with the decisions that shaped it (mean density, mask reuse rate, block executions).

The hashes hold on the CPU that wrote them: another CPU's kernels round differently (on 2026-12-06 another 2-core
machine matched 0 of 44 for the committed code and for the change alike). To check a change on another machine,
write the hashes from the commit before it there first (a ``git worktree`` of it), then ``--check`` the change.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from accel import methods, models
from accel.config import RunConfig
from accel.forms import DEFAULT_PROMPT
from accel.runner import generate
from accel.runs import RunStore

GOLDEN = Path(__file__).with_suffix(".json")
SIZES = {"tiny-wan": {"height": 128, "width": 128, "frames": 9}, "tiny-skyreels": {"height": 64, "width": 64,
                                                                                    "frames": 21}}  # fmt: skip
# variants that take the sparse and reuse paths on the tiny models (the registry's defaults run them dense there)
FORCED = {
    "tiny-wan": {"xattention-sparse": ("xattention", {"tau": 0.5, "dense_above": 1.0, "warmup_steps": 1}),
                 "xattention-sparse+tmr": ("xattention", {"tau": 0.5, "dense_above": 1.0, "warmup_steps": 1,
                                                          "tmr": True}),
                 "sta-sparse": ("sta", {"window": (1, 1, 1), "warmup_steps": 1}),
                 "sparge-sparse+tmr": ("sparge", {"cdf_threshold": 0.5, "sim_threshold": -1.0, "warmup_steps": 1,
                                                  "tmr": True}),
                 "teacache-skip": ("teacache", {"thresh": 10.0})},
    "tiny-skyreels": {"xattention-sparse": ("xattention", {"tau": 0.5, "dense_above": 1.0}),
                      "flowcache-reuse": ("flowcache", {"thresh": 10.0, "ret_steps": 1}),
                      "motioncache-reuse": ("motioncache", {"thresh": 10.0, "warmup": 1, "phase1_updates": 1})},
}  # fmt: skip
DECISIONS = ("density_mean", "mask_skip_frac", "block_executions", "tokens_recomputed", "chunk_reuses")


def outputs() -> dict[str, dict]:
    """Variant (``model/name``) -> its frames' hash and decision metrics."""
    torch.set_num_threads(2)
    store = RunStore(tempfile.mkdtemp(prefix="golden-"))
    out = {}
    for model, size in SIZES.items():
        for name, (method, settings) in {**methods.variants(models.resolve(model)), **FORCED[model]}.items():
            cfg = RunConfig(prompt=DEFAULT_PROMPT, model=model, method=method, settings=settings, steps=6, seed=0,
                            device="cpu", dtype="float32", **size)  # fmt: skip
            m = generate(cfg, store).metrics
            out[f"{model}/{name}"] = {"frames_sha256": m["frames_sha256"],
                                      **{k: m[k] for k in DECISIONS if m.get(k) is not None}}  # fmt: skip
            print(f"{model}/{name}: {m['frames_sha256'][:16]}", file=sys.stderr, flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare with the stored hashes instead of writing them")
    args = p.parse_args()
    now = outputs()
    if not args.check:
        GOLDEN.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"{len(now)} variants written to {GOLDEN}")
        return 0
    golden = json.loads(GOLDEN.read_text())
    changed = sorted(k for k in golden.keys() | now.keys() if golden.get(k) != now.get(k))
    for key in changed:
        print(f"changed: {key}: {golden.get(key)} -> {now.get(key)}")
    print(f"{len(now) - len(changed)} of {len(golden.keys() | now.keys())} variants identical")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
