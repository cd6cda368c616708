"""Balanced head assignment for Ulysses (accel.balance), on one process: the rule, the options, the bookkeeping that
keeps global head ids (telemetry rows, gathered masks) and the per-head state that moves with a head. The end-to-end
equality under torchrun is in test_parallel.py."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from accel import parallel
from accel.attention.thresholds import table_densities
from accel.attention.xattention import XAttention
from accel.balance import assign, contiguous, imbalance, rank_loads
from accel.config import RunConfig, parse_parallel
from accel.errors import ConfigError
from accel.methods.xattention import XAttentionSettings
from accel.paths import TABLES
from accel.schema import INDEX_KEY, Event, load_mask
from accel.settings import parallel_balance
from accel.telemetry import Recorder, RecordPolicy

PROMPT = "a red circle moves quickly left over a blue background"


def _best(costs: list[float], world: int) -> float:
    """The lowest imbalance of any equal-size split (brute force)."""
    heads, per = len(costs), len(costs) // world
    best = np.inf
    for first in itertools.combinations(range(heads), per):  # world == 2
        rest = [h for h in range(heads) if h not in first]
        best = min(best, imbalance(costs, (*first, *rest), world))
    return best


def test_assign_gives_every_rank_its_share_densest_first_to_the_least_loaded():
    costs = [0.9, 0.8, 0.7, 0.1, 0.2, 0.3]  # contiguous ranges load rank 0 with the dense heads
    order = assign(costs, 2)
    assert sorted(order) == list(range(6)) and order == (0, 4, 5, 1, 2, 3)  # 0.9+0.2+0.3 | 0.8+0.7+0.1
    assert rank_loads(costs, order, 2).tolist() == pytest.approx([1.4, 1.6])
    assert imbalance(costs, contiguous(6), 2) == pytest.approx(2.4 / 1.5)
    assert imbalance(costs, order, 2) == pytest.approx(1.6 / 1.5)
    assert imbalance([0.0] * 4, contiguous(4), 2) == 1.0  # nothing computed: even
    rng = np.random.default_rng(0)
    for _ in range(20):  # within 5% of the best split of 6 heads, never worse than contiguous
        c = rng.uniform(0.05, 1.0, 6).tolist()
        got = imbalance(c, assign(c, 2), 2)
        assert got <= imbalance(c, contiguous(6), 2) + 1e-12 and got <= _best(c, 2) * 1.05


@pytest.mark.parametrize(
    ("text", "want"),
    [("ulysses=2", ("auto", 1.1)), ("ulysses=2,balance=off", ("off", 1.1)),
     ("ulysses=4, balance=ON, rebalance=1.25", ("on", 1.25))],
)  # fmt: skip
def test_the_parallel_setting_takes_balance_options(text, want):
    assert parallel_balance(text) == want and parse_parallel(text)[1] in (2, 4)
    assert RunConfig(prompt=PROMPT, parallel=text).parallel == text


@pytest.mark.parametrize(
    ("text", "match"),
    [("ulysses=2,balance=maybe", "balance must be one of"), ("ulysses=2,rebalance=1", "rebalance must be"),
     ("ulysses=2,rebalance=x", "rebalance must be"), ("ulysses=2,greedy", "options are"),
     ("ulysses=2,balance=on,balance=off", "options are")],
)  # fmt: skip
def test_a_bad_balance_option_is_one_clear_error(text, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig(prompt=PROMPT, parallel=text)


def test_table_densities_are_those_of_each_heads_chosen_candidate(tmp_path):
    path = TABLES / "pocket-wan-xattention.json"
    data = json.loads(path.read_text())
    dens = table_densities(path, "tau")
    cond = data["branches"]["cond"]
    index = data["candidates"].index(cond["tau"][1][2])
    want = 1 - (cond["sparsity"][1][2][index] + data["branches"]["uncond"]["sparsity"][1][2][index]) / 2
    assert dens.shape == (4, 6) and dens[1, 2] == pytest.approx(want)
    del cond["sparsity"]
    (tmp_path / "t.json").write_text(json.dumps(data))
    assert table_densities(tmp_path / "t.json", "tau") is None  # nothing measured: no starting assignment


def _shard(rank: int, order: tuple[int, ...]) -> parallel.Shard:
    return parallel.Shard(rank, 2, 6, orders={0: order})


def test_a_ranks_rows_and_masks_carry_global_head_ids_and_merge_in_head_order():
    order = (0, 4, 5, 1, 2, 3)
    per_rank = []
    for rank in (0, 1):
        shard = _shard(rank, order)
        assert shard.heads_of(0) == order[3 * rank : 3 * rank + 3] and shard.heads_of(1) == (3 * rank, 3 * rank + 1,
                                                                                             3 * rank + 2)  # fmt: skip
        rec = Recorder(RecordPolicy())
        rec.heads_of = shard.heads_of
        rec.begin(rec.info, 2)
        local = torch.tensor(shard.heads_of(0), dtype=torch.float32)
        rec.log(Event.DENSITY, local / 10, layer=0, density=local / 10)
        mask = torch.zeros(3, 2, 2, dtype=torch.bool)
        for i, h in enumerate(shard.heads_of(0)):
            mask[i].view(-1)[h % 4] = True  # a pattern that names its head
        rec.record_mask(0, mask)
        table, arrays = rec.finish()
        rows = table[table["event"] == Event.DENSITY]
        assert rows["head"].tolist() == list(shard.heads_of(0))
        assert rows["density"].tolist() == pytest.approx([h / 10 for h in shard.heads_of(0)])
        per_rank.append(arrays)
    merged = parallel._merge_arrays(per_rank)
    key = next(k for k in merged if k != INDEX_KEY)
    index = json.loads(str(merged[INDEX_KEY]))
    bits = load_mask(merged, key)
    assert [int(np.flatnonzero(b.reshape(-1))[0]) for b in bits] == [h % 4 for h in range(6)]
    assert "heads" not in index[key]


def test_permuting_heads_round_trips():
    x = torch.randn(1, 4, 6, 2)
    order = (0, 4, 5, 1, 2, 3)
    y = parallel.permute_heads(x, order)
    assert torch.equal(y[:, :, 1], x[:, :, 4]) and torch.equal(parallel.unpermute_heads(y, order), x)
    assert parallel.permute_heads(x, None) is x


def test_head_state_moves_with_its_heads():
    """What a rank hands over at a re-balance (cached masks, TMR anchors) and takes back, per head."""
    method = XAttention(XAttentionSettings(tmr=True, tmr_delta=1.0), 16)
    method.setup(2, 6)
    mask = torch.rand(1, 6, 3, 3) > 0.5
    method.states[(1, "cond")] = mask
    q, k = torch.randn(1, 40, 6, 8), torch.randn(1, 40, 6, 8)
    decision = method.reuse.decide(1, "cond", q, k, torch.full((6,), 0.9))
    method.reuse.commit(1, "cond", decision, torch.full((6,), 0.9))
    parts = method.head_state(1)
    assert set(parts) == {"state/cond/mask", "anchor/cond/q", "anchor/cond/k", "anchor/cond/t"}
    assert all(v.shape[1] == 6 for v in parts.values()) and method.head_state(0) == {}
    pos = torch.tensor([5, 0, 2, 1, 4, 3])
    method.set_head_state(1, {k: v.index_select(1, pos) for k, v in parts.items()})
    assert torch.equal(method.states[(1, "cond")], mask[:, pos])
    qa, _, ta = method.reuse.anchors(1)["cond"]
    assert torch.equal(qa, decision.q_mean[:, pos]) and ta.shape == (6,)


def test_measure_prints_the_attention_imbalance_and_each_layers_heads():
    from accel.bench.parallel import balance_lines

    summary = {"balance": "on", "imbalance": 1.02, "imbalance_contiguous": 1.4, "rebalances": 1, "orders": {}}
    rows = [{"rank": 0, "attend_s": 1.1, "layers": [[0, 4, 5]], "balance": summary},
            {"rank": 1, "attend_s": 0.9, "layers": [[1, 2, 3]], "balance": summary}]  # fmt: skip
    lines = balance_lines(rows)
    assert lines[0].startswith("attention imbalance (max/mean of attend s over ranks): 1.100; balance on")
    assert "judged 1.020 (contiguous 1.400), 1 re-balance(s)" in lines[0]
    assert lines[1] == "layer 0: rank 0 heads 0,4,5 | rank 1 heads 1,2,3"


def test_the_headline_states_the_assignment_and_its_imbalance():
    from viz.panels import _assignment

    on = {"balance": "on", "imbalance": 1.03, "imbalance_contiguous": 1.31, "rebalances": 2,
          "orders": {"0": [0, 4, 5, 1, 2, 3], "1": [0, 1, 2, 3, 4, 5]}}  # fmt: skip
    assert _assignment(on) == ("balanced by density: imbalance 1.03 (contiguous ranges: 1.31); 1 layer(s) permuted, "
                               "2 re-balance(s)")  # fmt: skip
    assert _assignment({"balance": "off", "imbalance": 1.3}) == "contiguous ranges (balance off): imbalance 1.30"
