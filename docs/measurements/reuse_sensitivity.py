"""Why FlowCache-fast misses 25 dB on pocket-skyreels (issue 25): chaos floor and per-step reuse sensitivity.

``python docs/measurements/reuse_sensitivity.py`` runs the seeds preset (50 steps, 53 frames in 3 windows, the
app's default prompt) uncached, then
1. perturbs ONE group step's block output by gaussian noise of ``eps`` times its mean residual (is the model
   chaotic?), and
2. replaces the block output at exactly one denoising step of every group by that step's input plus the group's
   previous residual (what a cache reuse does), for several steps,
and prints the whole video's PSNR / SSIM against the uncached run (about 15 minutes on 2 cores).
"""

import tempfile

import torch

import accel.methods.installers as installers
from accel.bench.chunked import PRESETS
from accel.bench.headwise import row
from accel.cache.chunked import GroupCache
from accel.config import RunConfig
from accel.forms import DEFAULT_PROMPT
from accel.runner import generate
from accel.runs import RunStore

state = {"n": 0, "at": -1, "eps": 0.0, "reuse": set()}


class Probe(GroupCache):
    """Every group step computed; at call ``at`` the output is perturbed, at steps in ``reuse`` it is replaced."""

    def __init__(self):
        self.prev = {}

    def predict(self, step):
        out = super().predict(step)
        residual = out - step.emb.tokens
        prev = self.prev.get(step.key)
        self.prev[step.key] = residual
        state["n"] += 1
        if state["n"] == state["at"]:
            g = torch.Generator().manual_seed(0)
            noise = torch.randn(residual.shape, generator=g).to(residual)
            return out + state["eps"] * residual.abs().mean() * noise
        if step.step in state["reuse"] and prev is not None and prev.shape == residual.shape:
            return step.emb.tokens + prev
        return out


installers.build_cache = lambda settings, spec: Probe()  # every chunked run gets the probe
common = {"prompt": DEFAULT_PROMPT, "model": "pocket-skyreels", **PRESETS["seeds"]}
with tempfile.TemporaryDirectory() as tmp:
    store = RunStore(tmp)
    ref = generate(RunConfig(method="dense", **common), store)
    total = state["n"]
    print(f"uncached: {total} group steps")
    for at in (10, total // 3):
        for eps in (1e-3, 1e-2, 1e-1):
            state.update(n=0, at=at, eps=eps, reuse=set())
            q = row("x", generate(RunConfig(method="dense", **common), store), ref)
            print(f"perturb group step {at} by {eps:g} x mean |residual|: PSNR {q['psnr']:.2f} SSIM {q['ssim']:.4f}")
    for steps in ({2}, {5}, {10}, {20}, {30}, {40}, {45}, {48}, set(range(2, 40, 2))):
        state.update(n=0, at=-1, reuse=steps)
        q = row("x", generate(RunConfig(method="dense", **common), store), ref)
        print(f"reuse at steps {sorted(steps)}: PSNR {q['psnr']:.2f} SSIM {q['ssim']:.4f}")
