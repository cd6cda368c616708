"""One rank of the context-parallel tests (``torchrun --nproc_per_node 2 tests/parallel_worker.py OUT [cuda]``).

Every case installs an attention method on pocket-wan's transformer under diffusers' Ulysses plan and runs a few
denoising-like forwards (decreasing timesteps, so warm-up, TMR reuse and SVG2 warm starts all happen); rank 0 saves
the outputs and the gathered telemetry in ``OUT/<case>``. :func:`run_case` is also what the test runs on one
process for the reference, so both sides build exactly the same method and inputs.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
from pathlib import Path

import torch

from accel.attention.base import AttentionMethod, installed
from accel.attention.sta import SlidingTileAttention
from accel.attention.svg2 import SVG2
from accel.attention.xattention import XAttention
from accel.bench.parallel import forward_steps, skewed_table
from accel.config import RunConfig
from accel.methods.svg2 import SVG2Settings
from accel.methods.xattention import XAttentionSettings
from accel.paths import TABLES
from accel.telemetry import Recorder, RecordPolicy

MODEL = "pocket-wan"


def _built(method: str, recorder: Recorder, **settings) -> AttentionMethod:
    """The registry's attention for ``method`` with ``settings`` on pocket-wan."""
    from accel import methods, models

    return methods.build_attention(methods.settings_for(method, settings), models.resolve(MODEL), recorder)


TIMESTEPS = (999.0, 960.0, 900.0, 820.0, 700.0, 560.0)
TAUS = (0.9, 0.8, 0.95, 0.85, 0.9, 0.7)  # one per head: each rank gets its own three
CASES = {
    "dense": lambda rec: AttentionMethod(rec),
    "xattention_tmr_taus": lambda rec: XAttention(
        XAttentionSettings(tau=TAUS, tmr=True, tmr_delta=3.6, warmup_steps=1), 16, rec, model=MODEL
    ),
    "xattention_gated": lambda rec: XAttention(
        # a layer with 1 of 3 heads drifting on rank 0 and 2 of 3 on rank 1 is 3 of 6 (0.5, not gated) over both
        XAttentionSettings(tmr=True, tmr_delta=4.2, tmr_gate_lower=0.5, warmup_steps=1),
        16,
        rec,
        model=MODEL,
    ),
    "svg2_tmr": lambda rec: SVG2(SVG2Settings(tmr=True, tmr_delta=3.6), (10, 20), rec, seed=3, model=MODEL),
    "sparge_tmr_cdfs": lambda rec: _built("sparge", rec, cdf_threshold=TAUS, tmr=True, tmr_delta=3.6),
    "radial": lambda rec: _built("radial", rec),
    "sta_head_windows": lambda rec: SlidingTileAttention(  # each rank's heads take their own global windows
        (1, 4, 4), lambda step, layer, heads: [WINDOWS[h % len(WINDOWS)] for h in range(heads)], lambda n: 1, rec
    ),
}
WINDOWS = ((3, 3, 3), (1, 3, 3), (3, 1, 1), (5, 3, 3), (1, 1, 1), (3, 3, 1))
SKEWED = (0.99, 0.98, 0.97, 0.5, 0.6, 0.4)  # dense heads in rank 0's contiguous range, sparse ones in rank 1's


@functools.cache
def skewed() -> str:
    """The shipped pocket-wan XAttention table with each layer's heads sorted densest first (this process's copy)."""
    return str(skewed_table(TABLES / f"{MODEL}-xattention.json", Path(tempfile.mkdtemp()) / "skewed.json"))


# cases run with a balanced head assignment under Ulysses: (balance, rebalance threshold); a low threshold makes
# the measured densities re-balance mid-run, so TMR anchors, cached masks and SVG2 partitions move between ranks
BALANCED = {"xattention_tmr_balanced": ("on", 1.01), "svg2_tmr_balanced": ("on", 1.01),
            "xattention_skewed_table": ("auto", 1.1)}  # fmt: skip
CASES |= {
    "xattention_tmr_balanced": lambda rec: XAttention(
        XAttentionSettings(tau=SKEWED, tmr=True, tmr_delta=3.6, warmup_steps=1), 16, rec, model=MODEL
    ),
    "svg2_tmr_balanced": lambda rec: SVG2(  # one top_p: its heads' densities still differ by a few percent
        SVG2Settings(tmr=True, tmr_delta=3.6), (10, 20), rec, seed=3, model=MODEL
    ),
    "xattention_skewed_table": lambda rec: XAttention(  # auto: on, as the method has a per-head table
        XAttentionSettings(threshold_table=skewed(), warmup_steps=1), 16, rec, model=MODEL
    ),
}


BASELINES = ("pab", "fastercache", "taylorseer")
GENERATION = {"prompt": "a red circle moves quickly left over a blue background", "model": MODEL, "steps": 6}


def inputs(transformer) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed latents (5 latent frames of 16x16: 320 tokens) and prompt embeddings."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, transformer.config.in_channels, 5, 16, 16, generator=g)
    text = torch.randn(1, 32, transformer.config.text_dim, generator=g)
    return latents.to(transformer.device), text.to(transformer.device)


def run_case(transformer, name: str):
    """Outputs of every forward ``(steps, ...)``, the recorder's table and arrays, and the method."""
    recorder = Recorder(RecordPolicy())
    method = CASES[name](recorder)
    with installed(transformer, method, len(TIMESTEPS), *BALANCED.get(name, ("off", 1.1))):
        outs = forward_steps(transformer, *inputs(transformer), TIMESTEPS)
    table, arrays = recorder.finish()
    return outs, table, arrays, method


def main(out: Path, device: str = "cpu") -> None:
    from safetensors.torch import save_file

    from accel import models, parallel
    from accel.runner import generate
    from accel.runs import RunStore

    device = parallel.init("ulysses=2", device)  # gloo on CPU; NCCL and cuda:LOCAL_RANK with "cuda"
    transformer = models.load_pipeline(MODEL, device, "float32", "ulysses=2").transformer
    for name in CASES:
        outs, table, arrays, method = run_case(transformer, name)
        gathered = parallel.gather_run(table, arrays)
        if gathered is None:
            continue
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"outputs": outs.cpu().contiguous()}, str(folder / "outputs.safetensors"))
        gathered[0].to_parquet(folder / "telemetry.parquet")
        (folder / "balance.json").write_text(json.dumps(method.balancer.summary()))
        import numpy as np

        np.savez(folder / "arrays.npz", **gathered[1])
    for cache in BASELINES:  # whole generations: the diffusers cache hooks that decide by step alone
        run_config = RunConfig(method="baseline", settings={"cache": cache}, parallel="ulysses=2", device=device,
                               dtype="float32", **GENERATION)  # fmt: skip
        generate(run_config, RunStore(out / "runs"))
    parallel.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
