"""End-to-end timing of one Wan2.1-1.3B transformer call, dense vs block-sparse self-attention.

``python -m accel.kernels.bench_e2e [--quick] [--interpret]``

The transformer is built from the published Wan2.1-T2V-1.3B config (diffusers
``WanTransformer3DModel``: 30 layers, 12 heads x 128, ffn 8960) with random bf16 weights (nothing is
downloaded) and called once per timing at 480p (latent 21x60x104 -> 32,760 tokens) and 720p
(21x90x160 -> 75,600 tokens). Sparse variants install an :class:`accel.attention.AttentionMethod` on
``attn1`` of every block (through :func:`accel.attention.installed`, i.e. the project's own
``BenchAttnProcessor``) that calls :func:`accel.kernels.block_sparse.block_sparse_attention` with a block mask of a
forced density:

* ``random``: i.i.d. blocks; ``local``: the nearest key blocks in the (frame, h, w) grid, like a
  video model's masks; ``xattention``: the XAttention estimation on the layer's real Q/K (its cost
  included) followed by a per-row top-k at the density.

Printed per density: end-to-end time and speedup over the dense call, attention time (CUDA events
around every self-attention call), and the Amdahl predictions from the dense call's attention share
(ideal: attention time scales with density; measured: with the measured sparse attention time).
Without CUDA it prints a message and exits 0; ``--interpret`` runs a tiny model on CPU through the
Triton interpreter to smoke-test the script.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from accel.kernels.bench import reexec_interpreted

WAN_13B = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
TINY = {**WAN_13B, "num_attention_heads": 2, "attention_head_dim": 64, "text_dim": 32, "freq_dim": 32}
TINY.update(ffn_dim=128, num_layers=2)
LATENTS = {"480p": (21, 60, 104), "720p": (21, 90, 160)}
TINY_LATENT = {"tiny": (2, 8, 12)}
DENSITIES = (0.5, 0.25, 0.1)
KINDS = ("random", "local", "xattention")


def local_mask(grid: tuple[int, int, int], heads: int, length: int, block: int, density: float, device) -> torch.Tensor:
    """Per query block, the ``ceil(density * nk)`` key blocks whose centres are nearest in the token grid."""
    _, gh, gw = grid
    n = math.ceil(length / block)
    centre = (torch.arange(n, device=device) * block + block // 2).clamp_max(length - 1)
    pos = torch.stack([centre // (gh * gw), (centre // gw) % gh, centre % gw], dim=-1).float()
    dist = torch.cdist(pos, pos)  # (n, n)
    gen = torch.Generator(device="cpu").manual_seed(0)
    jitter = torch.rand(heads, n, n, generator=gen).to(device) * dist.max() * 0.1  # heads differ a little
    keep = max(1, math.ceil(density * n))
    idx = (dist + jitter).topk(keep, dim=-1, largest=False).indices
    return torch.zeros(1, heads, n, n, dtype=torch.bool, device=device).scatter_(-1, idx[None], True)


def topk_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    """Per query-block row, the ``ceil(density * nk)`` highest-scoring key blocks."""
    keep = max(1, math.ceil(density * scores.shape[-1]))
    idx = scores.topk(keep, dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)


def make_method(kind: str, density: float, block: int, stride: int):
    """An attention method with a forced mask density that times every self-attention call."""
    from accel.attention import AttentionMethod
    from accel.kernels.block_sparse import block_sparse_attention, uniform_offsets
    from accel.kernels.estimate import antidiagonal_block_scores

    class ForcedDensity(AttentionMethod):
        name = f"{kind}@{density:g}"

        def __init__(self) -> None:
            super().__init__()
            self.spans: list = []
            self.masks: dict[int, torch.Tensor] = {}

        def attend(self, q, k, v, layer, info):
            cuda = q.is_cuda
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            else:
                t0 = time.perf_counter()
            out = self._attend(q, k, v, layer, info)
            if cuda:
                end.record()
                self.spans.append((start, end))
            else:
                self.spans.append(time.perf_counter() - t0)
            return out

        def _attend(self, q, k, v, layer, info):
            if kind == "dense":
                return self.dense(q, k, v)
            length, heads = q.shape[1], q.shape[2]
            off = uniform_offsets(length, block, q.device)
            if kind == "xattention":
                mask = topk_mask(antidiagonal_block_scores(q, k, stride, block), density)
            else:
                mask = self.masks.get(layer)
                if mask is None:
                    n = off.numel() - 1
                    if kind == "local":
                        mask = local_mask(info.grid, heads, length, block, density, q.device)
                    else:
                        gen = torch.Generator(device="cpu").manual_seed(layer)
                        mask = (torch.rand(1, heads, n, n, generator=gen) < density).to(q.device)
                    self.masks[layer] = mask
            return block_sparse_attention(q, k, v, mask, block_size=block, dense=density >= 1.0)

        def take_seconds(self) -> float:
            """Attention seconds recorded since the last call."""
            if self.spans and not isinstance(self.spans[0], float):
                torch.cuda.synchronize()
                total = sum(s.elapsed_time(e) for s, e in self.spans) / 1e3
            else:
                total = float(sum(self.spans))
            self.spans.clear()
            return total

    return ForcedDensity()


def time_call(fn, warmup: int, iters: int, cuda: bool, method=None) -> float:
    """Median wall seconds of ``fn`` (synchronised); ``method``'s attention spans of the warm-up are dropped."""
    for _ in range(warmup):
        fn()
    if method is not None:
        method.take_seconds()
    times = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_model(config: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**config)
    # as from_pretrained(torch_dtype=...) does: the modules diffusers keeps in fp32 stay fp32
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not keep.intersection(name.split(".")):
            tensor.data = tensor.data.to(dtype)
    return model.eval().requires_grad_(False)


def run_resolution(model, name: str, latent: tuple[int, int, int], args: argparse.Namespace, device, dtype) -> None:
    from accel.attention import installed

    cfg = model.config
    f, h, w = latent
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(1, cfg.in_channels, f, h, w, generator=gen).to(device, dtype)
    text = torch.randn(1, 512, cfg.text_dim, generator=gen).to(device, dtype)
    timestep = torch.tensor([500], device=device)
    tokens = f * (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
    cuda = device.type == "cuda"

    def call() -> None:
        with torch.inference_mode():
            model(hidden_states=hidden, timestep=timestep, encoder_hidden_states=text, return_dict=False)

    t_dense = time_call(call, args.warmup, args.iters, cuda)
    dense = make_method("dense", 1.0, args.block, args.stride)
    with installed(model, dense):
        t_dense_proc = time_call(call, args.warmup, args.iters, cuda, dense)
    attn_dense = dense.take_seconds() / args.iters
    share = attn_dense / t_dense_proc
    print(f"\n{name}: latent {f}x{h}x{w} -> {tokens} tokens, {cfg.num_layers} layers, {dtype}, block {args.block}")
    print(f"  dense (diffusers processor)  {t_dense * 1e3:9.1f} ms")
    print(
        f"  dense (bench processor)      {t_dense_proc * 1e3:9.1f} ms   attention {attn_dense * 1e3:8.1f} ms "
        f"= {share:.1%} of the call"
    )
    print(
        f"  {'variant':<12} {'density':>7} {'e2e ms':>9} {'speedup':>8} {'attn ms':>9} {'attn x':>7} "
        f"{'Amdahl ideal':>12} {'Amdahl meas.':>12}"
    )
    for density in args.densities:
        for kind in args.kinds:
            method = make_method(kind, density, args.block, args.stride)
            with installed(model, method):
                t = time_call(call, args.warmup, args.iters, cuda, method)
            attn = method.take_seconds() / args.iters
            ideal = 1.0 / ((1 - share) + share * density)
            measured = 1.0 / ((1 - share) + share * attn / attn_dense)
            print(
                f"  {kind:<12} {density:7.2f} {t * 1e3:9.1f} {t_dense_proc / t:7.2f}x {attn * 1e3:9.1f} "
                f"{attn_dense / attn:6.2f}x {ideal:11.2f}x {measured:11.2f}x"
            )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m accel.kernels.bench_e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="480p only, density 0.25, one timed call")
    p.add_argument("--interpret", action="store_true", help="tiny model on CPU through the Triton interpreter")
    p.add_argument("--resolutions", nargs="+", choices=sorted(LATENTS), default=sorted(LATENTS))
    p.add_argument("--densities", nargs="+", type=float, default=list(DENSITIES))
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.interpret:
        reexec_interpreted("accel.kernels.bench_e2e")
        device, dtype, config, latents = torch.device("cpu"), torch.float32, TINY, TINY_LATENT
        args.block, args.stride, args.warmup, args.iters = 8, 4, 0, 1
    else:
        if not torch.cuda.is_available():
            print("accel.kernels.bench_e2e: no CUDA device, nothing to time (--interpret: a tiny CPU smoke run).")
            return 0
        device, dtype, config = torch.device("cuda"), torch.bfloat16, WAN_13B
        latents = {r: LATENTS[r] for r in (["480p"] if args.quick else args.resolutions)}
        if args.quick:
            args.densities, args.warmup, args.iters = [0.25], 1, 1
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    model = build_model(config, device, dtype)
    print(f"Wan2.1 transformer, random weights: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters")
    for name, latent in latents.items():
        run_resolution(model, name, latent, args, device, dtype)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
