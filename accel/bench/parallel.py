"""Context parallelism (Ulysses): what each rank spends, and a model of step time on 1-8 GPUs.

``measure`` runs a few denoising-like transformer forwards with a method installed, on one process or under
``torchrun --nproc_per_node N -m accel.bench.parallel measure --parallel ulysses=N``, and prints one row per rank:
step time, self-attention time (the method's ``attend``), all-to-all time and share (it includes waiting for the
slowest rank: load imbalance shows there), mask-prediction time, peak memory, and the rank's heads with their mean
density after the dense warm-up. On CPU (gloo) the numbers show the mechanics, not GPU speed.

``model`` prints the modelled step time of Wan2.1-1.3B / 14B at 480p / 720p on 1, 2, 4 and 8 GPUs from the FLOPs of
one denoising step (both CFG branches), per-GPU throughputs and the all-to-all volume over NVLink. The throughputs
are inputs (defaults: assumptions for an H200 in bf16, stated in ``--help``), to be replaced by measured kernel rates
(``accel.kernels.bench`` on the GPU ledger). With ``--run`` a stored sparse run's per-head densities set the attention
work and the load imbalance: Ulysses gives each rank H/N heads, a rank's attention time is the sum of its heads'
densities, and the step waits for the slowest rank. ``balanced`` assigns heads to ranks greedily (densest first, to the
least-loaded rank with room), which Ulysses allows for free: attention is per head, so permuting heads before
the all-to-all and back after it changes nothing but who computes what.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from accel import balance
from accel.attention.thresholds import table_densities
from accel.paths import TABLES
from accel.runner import sync
from accel.settings import parallel_balance

# Wan2.1 transformers (diffusers configs): layers, heads x head_dim, FFN width; text context 512 tokens
ARCH = {"1.3B": (30, 12, 128, 8960), "14B": (40, 40, 128, 13824)}
# latent tokens after the VAE (4x time, 8x space) and patch 1x2x2, 81 frames: 21 latent frames
TOKENS = {"480p": 21 * (480 // 16) * (832 // 16), "720p": 21 * (720 // 16) * (1280 // 16)}
TEXT_TOKENS = 512


# -- measure --------------------------------------------------------------------------------------------------
@torch.inference_mode()
def forward_steps(transformer, latents: torch.Tensor, text: torch.Tensor, timesteps, on_step=None) -> torch.Tensor:
    """The transformer's output at each of ``timesteps`` ``(steps, ...)``, moving the latents a little each step
    like a sampler (so Q/K drift between steps and TMR has something to decide). ``on_step(seconds)`` gets each
    forward's wall time."""
    outs = []
    for t in timesteps:
        sync(latents.device)
        t0 = time.perf_counter()
        out = transformer(latents, torch.tensor([t], device=latents.device), text, return_dict=False)[0]
        sync(latents.device)
        if on_step is not None:
            on_step(time.perf_counter() - t0)
        outs.append(out)
        latents = latents - 0.05 * out
    return torch.stack(outs)


def _timed(fn: Callable, bucket: list[float], device: torch.device) -> Callable:
    def wrapper(*args, **kwargs):
        sync(device)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        sync(device)
        bucket.append(time.perf_counter() - t0)
        return out

    return wrapper


def measure(args: argparse.Namespace) -> None:
    from unittest import mock

    import torch.distributed as dist

    from accel import methods, models, parallel
    from accel.attention.base import AttentionMethod, installed
    from accel.config import RunConfig
    from accel.runner import summarize
    from accel.telemetry import Recorder, RecordPolicy

    device = args.device or models.default_device()
    if args.parallel:
        device = parallel.init(args.parallel, args.device)
    cfg = RunConfig(prompt="-", model=args.model, method=args.method, settings=args.settings)
    spec = models.resolve(cfg.model)
    cfg = cfg.resolve({**spec.defaults, **spec.presets.get(args.size, {})})
    pipe = models.load_pipeline(cfg.model, device, args.dtype, args.parallel)
    tr = pipe.transformer
    recorder = Recorder(RecordPolicy(masks=False))
    method = methods.build_attention(cfg.settings, spec, recorder, 0) or AttentionMethod(recorder)
    grid = ((cfg.frames - 1) // 4 + 1, cfg.height // 8, cfg.width // 8)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, tr.config.in_channels, *grid, generator=g).to(tr.device, tr.dtype)
    text = torch.randn(1, spec.text_tokens, tr.config.text_dim, generator=g).to(tr.device, tr.dtype)
    timesteps = np.linspace(999, 50, args.steps).tolist()
    dev = tr.device
    steps_s: list[float] = []
    attend_s: list[float] = []
    a2a_s: list[float] = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    after_first: list[int] = []  # timed calls of the first forward, which warms caches and allocators

    def on_step(seconds: float) -> None:
        steps_s.append(seconds)
        if len(steps_s) == 1:
            after_first.extend((len(attend_s), len(a2a_s)))

    balanced = installed(tr, method, args.steps, *parallel_balance(args.parallel))
    with balanced, mock.patch.object(parallel, "seq_to_heads", _timed(parallel.seq_to_heads, a2a_s, dev)), \
            mock.patch.object(parallel, "heads_to_seq", _timed(parallel.heads_to_seq, a2a_s, dev)):  # fmt: skip
        method.attend = _timed(method.attend, attend_s, dev)
        forward_steps(tr, latents, text, timesteps, on_step)
    table, _ = recorder.finish()
    first = 1 if len(steps_s) > 1 else 0  # every column averages the same forwards: all but the first
    if first:
        attend_s, a2a_s = attend_s[after_first[0] :], a2a_s[after_first[1] :]
        table = table[table["step"] >= first]
    forwards = len(steps_s) - first
    summary = summarize(table)  # this rank's heads: mask prediction time, density after the dense warm-up
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _rss_mb()
    shard = method.shard
    row = {
        "rank": shard.rank if shard else 0,
        "heads": f"{shard.start}-{shard.stop - 1}" if shard else f"0-{method.num_heads - 1}",
        "layers": [list(shard.heads_of(layer)) for layer in range(len(tr.blocks))] if shard else None,
        "balance": method.balancer.summary() if method.balancer else None,
        "step_s": sum(steps_s[first:]) / forwards,
        "attend_s": sum(attend_s) / forwards,
        "a2a_s": sum(a2a_s) / forwards,
        "predict_s": summary.get("mask_predict_s", 0.0) / forwards,
        "density": summary.get("density_mean_sparse", float("nan")),
        "peak_mb": peak,
    }
    rows = [row]
    if args.parallel:
        rows = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(row, rows, dst=0)
        parallel.close()
        if rows is None:
            return
    print(f"{cfg.model}, {cfg.method}, {cfg.width}x{cfg.height}x{cfg.frames} ({int(np.prod(grid)) // 4} tokens), "
          f"{args.steps} forwards, {args.parallel or 'one process'} on {dev}")  # fmt: skip
    print(f"{'rank':>4} {'heads':>6} {'step s':>8} {'attend s':>9} {'a2a s':>8} {'a2a %':>6} {'predict s':>9} "
          f"{'density':>7} {'peak MB':>8}")  # fmt: skip
    for r in rows:
        share = r["a2a_s"] / r["step_s"]
        heads = r["heads"] if not r["balance"] or r["balance"]["balance"] == "off" else "bal."
        print(f"{r['rank']:>4} {heads:>6} {r['step_s']:>8.4f} {r['attend_s']:>9.4f} {r['a2a_s']:>8.4f} "
              f"{share:>6.1%} {r['predict_s']:>9.4f} {r['density']:>7.3f} {r['peak_mb']:>8.0f}")  # fmt: skip
    if len(rows) > 1:
        print("\n".join(balance_lines(rows)))


def balance_lines(rows: list[dict]) -> list[str]:
    """Below a parallel measurement: the attention imbalance (slowest rank's attend time over the mean), the density
    imbalance the balancer judged (and Ulysses' contiguous ranges' on the same densities), and each layer's heads."""
    attend = np.array([r["attend_s"] for r in rows])
    b = rows[0]["balance"] or {}
    lines = [f"attention imbalance (max/mean of attend s over ranks): {attend.max() / attend.mean():.3f}; balance "
             f"{b.get('balance', 'off')}, density imbalance judged {b.get('imbalance', float('nan')):.3f} (contiguous "
             f"{b.get('imbalance_contiguous', float('nan')):.3f}), {b.get('rebalances', 0)} re-balance(s)"]  # fmt: skip
    for layer in range(len(rows[0]["layers"])):
        lines.append(f"layer {layer}: " + " | ".join(f"rank {r['rank']} heads {','.join(map(str, r['layers'][layer]))}"
                                                     for r in rows))  # fmt: skip
    return lines


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# -- model ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rates:
    """Per-GPU rates the model assumes (bf16)."""

    linear_tflops: float  # achieved on the projections and FFN
    attn_tflops: float  # achieved by dense attention (FlashAttention-class)
    sparse_efficiency: float  # block-sparse kernel rate per computed block, relative to dense attention
    a2a_gbs: float  # all-to-all bandwidth per GPU, one direction (NVLink)
    bytes_per_value: int = 2


def step_flops(arch: str, tokens: int) -> tuple[float, float]:
    """(linear FLOPs, dense self-attention FLOPs) of one denoising step, both CFG branches."""
    layers, heads, head_dim, ffn = ARCH[arch]
    d = heads * head_dim
    linear = 2 * tokens * d * d * 6 + 2 * TEXT_TOKENS * d * d * 2 + 2 * tokens * d * ffn * 2  # qkvo+cross qo, kv, FFN
    cross = 4 * tokens * TEXT_TOKENS * d
    attn = 4 * tokens * tokens * d
    return 2 * layers * (linear + cross), 2 * layers * attn


def a2a_bytes(arch: str, tokens: int, gpus: int, rates: Rates) -> float:
    """Bytes each GPU sends per step: Ulysses exchanges Q, K, V and the output of self-attention, and the query and
    output of cross-attention (diffusers' plan), each (N-1)/N of the rank's L/N x d share, both CFG branches."""
    if gpus == 1:
        return 0.0
    layers, heads, head_dim, _ = ARCH[arch]
    per_tensor = tokens / gpus * heads * head_dim * rates.bytes_per_value * (gpus - 1) / gpus
    return 2 * layers * 6 * per_tensor


def rank_loads(densities: np.ndarray, gpus: int, balanced: bool) -> np.ndarray:
    """Attention work of each rank (sum of its heads' densities) for ``(layers, heads)`` densities: contiguous head
    ranges (diffusers' Ulysses), or ``balanced`` (:func:`accel.balance.assign`)."""
    heads = densities.shape[1]
    return np.stack([balance.rank_loads(row, balance.assign(row, gpus) if balanced else balance.contiguous(heads),
                                        gpus) for row in densities])  # fmt: skip


def skewed_table(source: str | Path, out: str | Path) -> Path:
    """A copy of the EBC table ``source`` with each layer's heads sorted densest first (every per-head field moved
    alike), so Ulysses' contiguous ranges give rank 0 the densest heads: a deliberately skewed assignment."""
    data = json.loads(Path(source).read_text())
    key = data["parameter"]
    dens = table_densities(source, key)
    if dens is None:
        raise SystemExit(f"{source} has no measured sparsity to skew by")
    order = np.argsort(-dens, axis=1, kind="stable")  # (layers, heads)
    for entry in data["branches"].values():
        for name, value in entry.items():
            arr = np.asarray(value)
            if arr.ndim >= 2 and arr.shape[:2] == dens.shape:
                index = order.reshape(order.shape + (1,) * (arr.ndim - 2))
                entry[name] = np.take_along_axis(arr, np.broadcast_to(index, arr.shape), 1).tolist()
    Path(out).write_text(json.dumps(data))
    return Path(out)


def model_rows(rates: Rates, densities: np.ndarray | None) -> list[str]:
    """The printed table: step time per (model, resolution, GPUs), dense and (with densities) sparse."""
    head = (f"{'model':<5} {'res':<5} {'GPUs':>4} {'linear s':>9} {'attn s':>8} {'a2a s':>7} {'step s':>8} "
            f"{'speedup':>7} {'a2a %':>6}")  # fmt: skip
    if densities is not None:
        head += f" {'sparse s':>9} {'imbal.':>6} {'balanced s':>10} {'imbal.':>6}"
    lines = [head]
    for arch, (layers, heads, _, _) in ARCH.items():
        for res, tokens in TOKENS.items():
            linear, attn = step_flops(arch, tokens)
            base = None
            for gpus in (1, 2, 4, 8):
                if heads % gpus:
                    continue
                t_lin = linear / gpus / (rates.linear_tflops * 1e12)
                t_attn = attn / gpus / (rates.attn_tflops * 1e12)
                t_a2a = a2a_bytes(arch, tokens, gpus, rates) / (rates.a2a_gbs * 1e9)
                step = t_lin + t_attn + t_a2a
                base = base or step
                line = (f"{arch:<5} {res:<5} {gpus:>4} {t_lin:>9.2f} {t_attn:>8.2f} {t_a2a:>7.2f} {step:>8.2f} "
                        f"{base / step:>7.2f} {t_a2a / step:>6.1%}")  # fmt: skip
                if densities is not None:
                    dens = _tile(densities, layers, heads)
                    for balanced, width in ((False, 9), (True, 10)):
                        loads = rank_loads(dens, gpus, balanced)
                        slowest = loads.max(1).sum() / loads.sum() * gpus  # vs a perfectly even split
                        t_sparse = t_lin + t_a2a + t_attn * float(dens.mean()) / rates.sparse_efficiency * slowest
                        line += f" {t_sparse:>{width}.2f} {slowest:>6.3f}"
                lines.append(line)
    return lines


def _tile(densities: np.ndarray, layers: int, heads: int) -> np.ndarray:
    """A measured ``(layers', heads')`` density map stretched to the modelled architecture (nearest layer and head),
    so a pocket model's head spread stands in for a real one's."""
    li = np.minimum((np.arange(layers) * densities.shape[0]) // layers, densities.shape[0] - 1)
    hi = np.minimum((np.arange(heads) * densities.shape[1]) // heads, densities.shape[1] - 1)
    return densities[np.ix_(li, hi)]


def run_densities(path: str) -> np.ndarray:
    """Mean density per (layer, head) over a stored run's sparse steps (dense warm-up calls left out)."""
    from accel.runs import RunStore
    from accel.schema import Event

    run = RunStore().load(path)
    t = run.telemetry
    dens = t[t["event"] == Event.DENSITY]
    warm = t[t["event"] == Event.DENSE_WARMUP][["step", "branch", "layer"]].drop_duplicates()
    sparse = dens.merge(warm, on=["step", "branch", "layer"], how="left", indicator=True)
    sparse = sparse[sparse["_merge"] == "left_only"]
    if sparse.empty:
        raise SystemExit(f"{path} has no sparse attention steps (a dense run?)")
    grid = sparse.groupby(["layer", "head"])["density"].mean().unstack().sort_index()
    return grid.to_numpy(dtype=float)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="per-rank times of a few forwards (one process, or under torchrun)")
    m.add_argument("--model", default="pocket-wan")
    m.add_argument("--method", default="xattention")
    m.add_argument("--tmr", action="store_true", help="with Temporal Mask Reuse")
    m.add_argument("--size", choices=("default", "bench"), default="bench")
    m.add_argument("--steps", type=int, default=6)
    m.add_argument("--parallel", metavar="ulysses=N[,balance=auto|on|off][,rebalance=X]")
    m.add_argument("--table", help="an EBC threshold table for the method (its per-head densities seed the balance)")
    m.add_argument("--skew", action="store_true",
                   help="use a copy of --table (default: the model's shipped one) with each layer's heads sorted "
                        "densest first: contiguous ranges give rank 0 the densest heads")  # fmt: skip
    m.add_argument("--device")
    m.add_argument("--dtype")
    mo = sub.add_parser("model", help="modelled step time of Wan2.1 on 1-8 GPUs")
    mo.add_argument(
        "--linear-tflops",
        type=float,
        default=600.0,
        help="achieved bf16 TFLOP/s on projections and FFN (assumed: ~60%% of an H200's 989 peak)",
    )
    mo.add_argument(
        "--attn-tflops",
        type=float,
        default=500.0,
        help="achieved dense attention TFLOP/s (assumed: FlashAttention-3 class on an H200)",
    )
    mo.add_argument(
        "--sparse-efficiency",
        type=float,
        default=0.7,
        help="block-sparse kernel rate per computed block relative to dense (assumed)",
    )
    mo.add_argument(
        "--a2a-gbs",
        type=float,
        default=350.0,
        help="all-to-all GB/s per GPU and direction (assumed: NVLink 4, 450 nominal)",
    )
    mo.add_argument("--run", help="a stored sparse run: its per-head densities set the sparse work and imbalance")
    args = parser.parse_args(argv)  # fmt: skip
    if args.command == "measure":
        args.settings = {"tmr": True} if args.tmr else {}
        table = args.table
        if args.skew:
            import tempfile

            source = table or str(TABLES / f"{args.model}-{args.method}.json")
            table = str(skewed_table(source, Path(tempfile.mkdtemp(prefix="accel-skew-")) / "skewed.json"))
        if table:
            args.settings["threshold_table"] = table
        measure(args)
        return
    rates = Rates(args.linear_tflops, args.attn_tflops, args.sparse_efficiency, args.a2a_gbs)
    densities = run_densities(args.run) if args.run else None
    print(f"model (not measured): linear {rates.linear_tflops:g} TFLOP/s, attention {rates.attn_tflops:g} TFLOP/s, "
          f"sparse efficiency {rates.sparse_efficiency:g}, all-to-all {rates.a2a_gbs:g} GB/s per GPU; one step, both "
          f"CFG branches, 81 frames")  # fmt: skip
    if densities is not None:
        print(f"densities from {args.run}: {densities.shape[0]} layers x {densities.shape[1]} heads, mean "
              f"{densities.mean():.3f}; imbal. = slowest rank's attention / an even split")  # fmt: skip
    print("\n".join(model_rows(rates, densities)))


if __name__ == "__main__":
    main()
