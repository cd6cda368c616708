"""Synthetic recorder load at real model size: how big a run folder gets and what recording costs.

``python -m accel.bench.recorder`` prints one row per configuration (default: Wan2.1-1.3B at 480p
and 720p: 30 layers x 12 heads, 50 steps, 2 CFG branches, XAttention block 128) with the
recording time, the time to write the folder's telemetry and arrays, and their size on disk.
Masks are random (incompressible: the worst case for size).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from accel.forms import DEFAULT_PROMPT
from accel.runs import RunStore
from accel.schema import Event
from accel.telemetry import Recorder, RecordPolicy
from accel.tracking import StepInfo


def synthetic_run(
    out_root: Path,
    tokens: int,
    layers: int = 30,
    heads: int = 12,
    steps: int = 50,
    block: int = 128,
    density: float = 0.3,
    policy: RecordPolicy | None = None,
) -> dict[str, float]:
    """Drive a :class:`Recorder` like an XAttention run of this size and store the result."""
    nb = math.ceil(tokens / block)
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(heads, nb, nb, generator=gen) < density
    dens = mask.float().mean((1, 2))
    tau = torch.full((heads,), 0.9)
    rec = Recorder(policy)
    info = StepInfo(num_steps=steps)
    rec.begin(info, layers)
    t0 = time.perf_counter()
    for step in range(steps):
        for branch in ("cond", "uncond"):
            info.step, info.branch, info.timestep = step, branch, 1000.0 * (1 - step / steps)
            for layer in range(layers):
                with rec.timed(Event.MASK_PREDICT, layer=layer):
                    pass
                ref = rec.record_mask(layer, mask)
                rec.log(Event.DENSITY, dens, layer=layer, threshold=tau, density=dens, mask_ref=ref)
    table, arrays = rec.finish()
    record_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    store = RunStore(out_root)
    with store.writer("synthetic") as w:
        w.write_json("config.json", {"synthetic": True, "tokens": tokens})
        w.write_table("telemetry.parquet", table)
        w.write_arrays("arrays.npz", arrays)
        w.write_json("metrics.json", {})
    save_s = time.perf_counter() - t1
    size = sum(p.stat().st_size for p in Path(w.final_path).rglob("*") if p.is_file())
    masks = sum(1 for k in arrays if k.startswith("mask/"))
    return {
        "tokens": tokens,
        "rows": len(table),
        "masks": masks,
        "record_s": record_s,
        "save_s": save_s,
        "mb": size / 1e6,
    }


def overhead(method: str = "xattention", repeats: int = 5, **settings) -> dict[str, float]:
    """What telemetry recording costs an embedded-model run, measured two ways.

    ``paired``: the median over ``repeats`` back-to-back pairs of (denoise + finish with recording) /
    (denoise without) - 1; recording touches nothing else (text encoding, VAE). ``direct``: the time spent
    inside the recorder (rows, mask packing, the final copy) as a share of the run's wall time; it does not
    depend on the machine's load, which on a shared 2-core machine moves the paired number by several percent.
    """
    from accel.config import RunConfig
    from accel.runner import generate

    cfg = RunConfig(prompt=DEFAULT_PROMPT, method=method, settings=settings)
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        generate(cfg, store)  # load and warm up
        ratios, direct, walls = [], [], []
        for _ in range(repeats):  # alternate, so drift in the machine's load hits both
            m = generate(cfg, store).metrics
            off = generate(cfg, store, record=False).metrics
            ratios.append((m["stages"]["denoise_s"] + m["record_s"]) / off["stages"]["denoise_s"] - 1)
            direct.append((m["record_loop_s"] + m["record_s"]) / m["wall_s"])
            walls.append(m["wall_s"])
    return {"paired": statistics.median(ratios), "paired_min": min(ratios), "paired_max": max(ratios),
            "direct": statistics.median(direct), "wall_s": statistics.median(walls)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[32760, 75600], help="sequence lengths (480p, 720p)")
    parser.add_argument("--mask-budget-mb", type=float, default=RecordPolicy().mask_budget_mb)
    parser.add_argument("--overhead", action="store_true", help="also time a real embedded run with recording on/off")
    args = parser.parse_args(argv)
    if args.overhead:
        r = overhead(tmr=True)
        print(f"embedded xattention+TMR run ({r['wall_s']:.1f} s): recording costs {r['direct']:.2%} of the wall "
              f"time inside the recorder; paired on/off denoise time {r['paired']:+.1%} "
              f"(median, range {r['paired_min']:+.1%} .. {r['paired_max']:+.1%})")  # fmt: skip
    print(f"{'tokens':>8} {'rows':>8} {'masks':>6} {'record s':>9} {'save s':>7} {'folder MB':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for tokens in args.tokens:
            r = synthetic_run(Path(tmp), tokens, policy=RecordPolicy(mask_budget_mb=args.mask_budget_mb))
            row = f"{r['tokens']:>8} {r['rows']:>8} {r['masks']:>6} {r['record_s']:>9.2f} {r['save_s']:>7.2f}"
            print(f"{row} {r['mb']:>10.1f}")


if __name__ == "__main__":
    main()
