"""SpargeAttn's block selection against a hand-written reference, its attention against dense under its mask, and
HASTE on it: Temporal Mask Reuse and a per-head (EBC) threshold table through the registry."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PROMPT, WAN

from accel.attention.sparge import select_blocks
from accel.config import RunConfig


def _reference(q, k, bq, bk, cdf, sim):
    """The selection written out per head and block (loops, float64)."""
    b, length, h, d = q.shape
    k = k - k.mean(1, keepdim=True)
    nq, nk = math.ceil(length / bq), math.ceil(k.shape[1] / bk)
    out = torch.zeros(b, h, nq, nk, dtype=torch.bool)

    def block(x, i, size, bi, hi):
        return x[bi, i * size : (i + 1) * size, hi].double()

    def similar(x):
        u = x / x.norm(dim=-1, keepdim=True)
        return (u @ u.T).mean().item() > sim

    for bi in range(b):
        for hi in range(h):
            qs = [block(q, i, bq, bi, hi) for i in range(nq)]
            ks = [block(k, j, bk, bi, hi) for j in range(nk)]
            sim_k = [similar(x) for x in ks]
            for i, qb in enumerate(qs):
                if not similar(qb):
                    out[bi, hi, i] = True
                    continue
                scores = torch.tensor([qb.mean(0) @ kb.mean(0) / math.sqrt(d) if sim_k[j] else -math.inf
                                       for j, kb in enumerate(ks)])  # fmt: skip
                probs = torch.softmax(scores, 0).nan_to_num(0.0)
                order = probs.argsort(descending=True)
                total = 0.0
                for rank, j in enumerate(order.tolist()):
                    total += probs[j].item()
                    if rank == 0 or total <= cdf[hi] or cdf[hi] >= 1:  # 1: every block (documented)
                        out[bi, hi, i, j] = True
                for j in range(nk):
                    out[bi, hi, i, j] |= not sim_k[j]
    return out


@pytest.mark.parametrize(("length", "bq", "bk"), [(64, 16, 8), (60, 16, 8)])  # the second: partial last blocks
def test_the_selection_equals_the_hand_written_reference(length, bq, bk):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 1, 3, 16, generator=gen)
    q = base + 0.3 * torch.randn(2, length, 3, 16, generator=gen)  # similar tokens: self-similar query blocks
    k = base + 0.3 * torch.randn(2, length, 3, 16, generator=gen)
    cdf, sim = torch.tensor([0.5, 0.9, 1.0]), 0.05  # smoothed K is near noise: block cosines about 1/8
    got = select_blocks(q, k, bq, bk, cdf, torch.full((3,), sim))
    want = _reference(q, k, bq, bk, cdf.tolist(), sim)
    assert torch.equal(got, want)
    assert got[:, 2].all() and not got[:, 0].all()  # 1 keeps everything; 0.5 drops blocks
    dense = select_blocks(q, k, bq, bk, cdf, torch.ones(3))  # nothing is self-similar above 1: dense
    assert dense.all()


def test_sparge_is_dense_attention_under_its_mask():
    from accel.attention.sparge import SpargeAttention
    from accel.methods.sparge import SpargeSettings

    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 48, 2, 8, generator=gen) for _ in range(3))
    attn = SpargeAttention(SpargeSettings(cdf_threshold=0.4, sim_threshold=-1.0), (16, 8))
    attn.setup(1, 2)
    thr = attn.threshold(0, "cond", q.device)
    mask = attn.predict(q, k, 0, "cond", thr, None)
    out = attn.apply(q, k, v, mask, 0, thr, None)
    tokens = mask[0][:, torch.arange(48) // 16][:, :, torch.arange(48) // 8]
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / 8**0.5
    ref = torch.einsum("bhlm,bmhd->blhd", scores.masked_fill(~tokens, float("-inf")).softmax(-1), v)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert not mask.all()


def test_haste_on_sparge_reuses_masks_and_takes_a_per_head_table(store, tmp_path):
    from accel import methods
    from accel.attention.thresholds import write_table
    from accel.runner import generate

    assert methods.calibratable()["sparge"] == "cdf_threshold"
    settings = {"tmr": True, "tmr_delta": 1e9, "sim_threshold": -1.0, "cdf_threshold": 0.5, "warmup_steps": 1}
    run = generate(RunConfig(prompt=PROMPT, model="tiny-wan", method="sparge", settings=settings, **WAN), store)
    events = set(run.telemetry["event"].dropna())
    assert {"density", "mask_refresh", "drift", "reuse_check"} <= events <= methods.get("sparge").events
    assert run.metrics["mask_skip_frac"] > 0 and run.metrics["density_mean_sparse"] < 1
    per_head = [[0.3, 0.3, 0.3, 1.0, 1.0, 1.0]] * 4  # tiny-wan: 4 layers x 6 heads
    table = write_table(tmp_path / "sparge.json", {"method": "sparge", "model": "tiny-wan", "layers": 4, "heads": 6,
                                                   "branches": {"cond": {"cdf_threshold": per_head},
                                                                "uncond": {"cdf_threshold": per_head}}})  # fmt: skip
    ebc = generate(RunConfig(prompt=PROMPT, model="tiny-wan", method="sparge", **WAN,
                             settings={"threshold_table": str(table), "sim_threshold": -1.0}), store)  # fmt: skip
    assert ebc.metrics["density_mean_sparse"] < 1
