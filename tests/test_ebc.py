"""Error-guided Budgeted Calibration: spectral error, MILP, probes, the table and its validation."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PROMPT

from accel import runner
from accel.attention.thresholds import load_table
from accel.config import RunConfig
from accel.ebc.calibrate import calibrate, solve_budget
from accel.ebc.probe import probe_errors, sample_steps, spectral_error
from accel.ebc.spec import CalibrationSpec
from accel.errors import ConfigError
from accel.models import load_pipeline

SMALL = {"model": "tiny-wan", "height": 128, "width": 128, "frames": 9, "steps": 4}
XA = {"warmup_steps": 1, "block_size": 16, "stride": 4}


def calibration(**kwargs) -> CalibrationSpec:
    """XAttention calibration of tiny-wan at test size."""
    return CalibrationSpec(base=RunConfig(prompt=PROMPT, method="xattention", settings=XA, **SMALL), **kwargs)


def test_spectral_error_is_parseval_with_unit_weights():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(3, 4, 6, 8, generator=gen)
    ys = y + 0.1 * torch.randn(2, 3, 4, 6, 8, generator=gen)
    e = spectral_error(ys, y, weights=(1, 1, 1, 1))
    direct = ((ys - y) ** 2).sum((1, 2, 3, 4)) / (y**2).sum()
    torch.testing.assert_close(e, direct, rtol=1e-4, atol=1e-8)
    assert spectral_error(y[None], y).item() == 0.0


def test_spectral_error_bands():
    y = torch.ones(1, 4, 8, 8)
    t = torch.arange(4).float()
    flicker = torch.cos(np.pi * t)[:, None, None].expand(4, 8, 8)[None]  # temporal Nyquist, spatially flat
    e = spectral_error((y + flicker)[None], y, weights=(0, 0, 1, 0))  # HL = temporal high x spatial low
    assert e.item() == pytest.approx(1.0, rel=1e-5)
    assert spectral_error((y + flicker)[None], y, weights=(1, 1, 0, 1)).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_milp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, k = 5, 3
    err = rng.random((n, k))
    spa = np.sort(rng.random((n, k)), axis=1)
    s_min = float(spa[:, 1].mean())
    choice = solve_budget(err, spa, s_min)
    best = min(
        (c for c in itertools.product(range(k), repeat=n) if spa[np.arange(n), c].mean() >= s_min - 1e-12),
        key=lambda c: err[np.arange(n), c].sum(),
    )
    assert err[np.arange(n), choice].sum() == pytest.approx(err[np.arange(n), best].sum())
    assert spa[np.arange(n), choice].mean() >= s_min - 1e-9


def test_milp_with_tiny_errors_still_optimal():
    err = np.array([[3e-8, 1e-8, 5e-9], [2e-8, 1.5e-8, 4e-8]])
    spa = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    # 5e-9 + 1.5e-8 (sparsity 0.25) beats uniform 1e-8 + 1.5e-8 and 5e-9 + 2e-8 (sparsity 0.2)
    assert solve_budget(err, spa, 0.2).tolist() == [2, 1]


def test_sample_steps_one_per_quarter_of_the_sparse_part():
    assert sample_steps(50, 5, 4) == [10, 21, 33, 44]  # 5 + (i + 0.5) * 45 / 4
    assert sample_steps(4, 1, 4) == [1, 2, 3]
    with pytest.raises(ConfigError, match="no sparse steps"):
        sample_steps(5, 5, 4)


def test_probe_with_threshold_one_is_the_dense_output(tiny_pipe):
    """Prefix replay and batched probes are exact: a probe at tau = 1 reproduces the dense output."""
    from accel.ebc.probe import collect_trajectories

    spec = calibration(prompts=(PROMPT,), candidates=(0.3, 1.0), reference=1.0)
    samples = collect_trajectories(tiny_pipe, spec, [2])
    probes = probe_errors(tiny_pipe, spec, samples)
    assert len(probes) == 2 * 4 * 6 * 2  # branches x layers x heads x candidates
    full = probes[probes.candidate == 1.0]
    assert (full["error"] < 1e-10).all() and (full["sparsity"] == 0).all()
    sparse = probes[probes.candidate == 0.3]
    assert (sparse["error"] > 0).all() and (sparse["sparsity"] > 0).all()


def test_svg2_probes_score_a_heads_candidates_on_one_clustering(monkeypatch):
    """Every candidate of a head sees the same clustering (identical rows give identical masks; a higher top_p
    keeps a superset), kept across probe calls of one sample; the next sample warm-starts from it with the run's
    few iterations, the first runs the cold initial k-means."""
    from accel.attention import svg2 as svg2_module
    from accel.attention.svg2 import SVG2
    from accel.methods.svg2 import SVG2Settings

    iters = []
    real = svg2_module.kmeans
    monkeypatch.setattr(svg2_module, "kmeans", lambda x, k, n, *a: iters.append(n) or real(x, k, n, *a))
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 96, 3, 16, generator=gen), torch.randn(1, 96, 3, 16, generator=gen)
    method = SVG2(SVG2Settings(kmeans_init_iters=20, kmeans_warm_iters=2), (6, 12))
    method.setup(1, 3)
    memory = {"before": {}, "now": {}}
    rows, top_p = [1, 1, 1, 1], torch.tensor([0.5, 0.5, 0.5, 0.9])
    state = method.probe_state(q, k, 0, "cond", rows, top_p, memory)
    assert torch.equal(state.mask[0], state.mask[1]) and torch.equal(state.mask[0], state.mask[2])
    assert torch.equal(state.q_perm[0], state.q_perm[3]) and bool((state.mask[3] >= state.mask[0]).all())
    again = method.probe_state(q, k, 0, "cond", [1, 2], torch.tensor([0.5, 0.5]), memory)  # a later probe call
    assert torch.equal(again.mask[0], state.mask[0]) and iters == [20, 20, 20, 20]  # head 1 once, head 2 once
    method.probe_state(q, k, 0, "cond", [1], torch.tensor([0.5]), {"before": memory["now"], "now": {}})
    assert iters[-2:] == [2, 2]  # the next sample: warm start


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    spec = calibration(prompts=(PROMPT, "a dog runs"), samples_per_prompt=2)
    return calibrate(spec, tmp_path_factory.mktemp("cal"))


def test_calibrated_table_meets_budget_and_beats_uniform(table_path):
    table = json.loads(table_path.read_text())
    assert table["format"] == "accel.threshold-table" and table["model"] == "tiny-wan"
    assert (table["layers"], table["heads"]) == (4, 6)
    probes = pd.read_parquet(table_path.parent / "probes.parquet")
    assert set(probes.branch) == {"cond", "uncond"}
    # the probes measure the masks (192 tokens: density-aware execution would have run every head dense, exact)
    assert (probes.error > 1e-9).mean() > 0.5
    for branch, entry in table["branches"].items():
        tau = np.array(entry["tau"])
        assert tau.shape == (4, 6) and set(np.unique(tau)) <= {0.85, 0.9, 0.95}
        assert entry["mean_sparsity"] >= entry["min_sparsity"] - 1e-9
        assert entry["objective"] <= entry["uniform_objective"] + 1e-15
        # the reported numbers are those of the calibration set's probes
        mean = probes[probes.branch == branch].groupby(["layer", "head", "candidate"])["error"].mean()
        chosen = sum(mean[(layer, head, tau[layer, head])] for layer in range(4) for head in range(6))
        assert chosen == pytest.approx(entry["objective"])
    assert (table_path.parent / "trajectories.safetensors").stat().st_size > 0


def test_generate_uses_the_table_per_branch(table_path, tmp_path):
    from accel.runs import RunStore

    cfg = RunConfig(prompt=PROMPT, method="xattention", settings={**XA, "threshold_table": str(table_path)}, **SMALL)
    run = runner.generate(cfg, RunStore(tmp_path))
    table = json.loads(table_path.read_text())
    dens = run.telemetry[run.telemetry.event == "density"]
    dens = dens[dens.step >= 1]
    for branch in ("cond", "uncond"):
        got = dens[dens.branch == branch].groupby(["layer", "head"])["threshold"].first().to_numpy().reshape(4, 6)
        assert np.allclose(got, table["branches"][branch]["tau"])
    assert "ebc" in run.run_id


def test_mismatched_tables_are_refused(table_path, tmp_path):
    data = json.loads(table_path.read_text())
    with pytest.raises(ConfigError, match="4 layers x 6 heads, but the model has 4 layers x 12 heads"):
        load_table(table_path, method="xattention", key="tau", model="tiny-wan", layers=4, heads=12)
    other = tmp_path / "other.json"
    branches = data["branches"]
    for bad, match in [
        ({"layers": [4]}, r"layers must be a positive integer, got \[4\]"),
        ({"branches": {**branches, "uncnd": branches["cond"]}}, "unknown branch.*'uncnd'.*known: cond, uncond"),
        ({"branches": {"cond": {"tau": [[0.9] * 6] * 3}}}, "'cond' has 3 x 6 values, expected 4 layers x 6 heads"),
        ({"branches": {"cond": {"tau": [[float("nan")] * 6] * 4}}}, "outside"),
    ]:
        other.write_text(json.dumps({**data, **bad}))
        with pytest.raises(ConfigError, match=match):
            load_table(other, method="xattention", key="tau", model="tiny-wan", layers=4, heads=6)
    with pytest.raises(ConfigError, match="calibrated for model 'tiny-wan'"):
        load_table(
            table_path, method="xattention", key="tau", model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", layers=4, heads=6
        )
    with pytest.raises(ConfigError, match="method 'xattention', not 'svg2'"):
        load_table(table_path, method="svg2", key="top_p", model="tiny-wan")
    other.write_text(json.dumps({**data, "heads": 8}))
    with pytest.raises(ConfigError, match="8 heads"):
        runner.generate(
            RunConfig(prompt=PROMPT, method="xattention", settings={**XA, "threshold_table": str(other)}, **SMALL),
            __import__("accel.runs").runs.RunStore(tmp_path / "runs"),
        )
    for bad, match in [("{nope", "not valid JSON"), (json.dumps({"format": "x"}), "not a threshold table"),
                       (json.dumps({**data, "version": 99}), "version 99")]:  # fmt: skip
        other.write_text(bad)
        with pytest.raises(ConfigError, match=match):
            load_table(other, method="xattention", key="tau", model="tiny-wan")
    with pytest.raises(ConfigError, match="does not exist"):
        load_table(tmp_path / "missing.json", method="xattention", key="tau", model="tiny-wan")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_calibration_spec_validation():
    with pytest.raises(ConfigError, match="reference threshold"):
        CalibrationSpec(candidates=(0.8, 0.95), reference=0.9)
    with pytest.raises(ConfigError, match="sparse base method"):
        CalibrationSpec(base=RunConfig(prompt=PROMPT, method="dense"))
    with pytest.raises(ConfigError, match="prompt"):
        CalibrationSpec(prompts=())


def test_candidates_and_reference_default_to_the_methods():
    """Candidates and the budget's reference centre on the method's default threshold unless given."""
    assert (calibration().candidates, calibration().reference) == ((0.85, 0.90, 0.95), 0.90)
    sparge = CalibrationSpec(base=RunConfig(prompt=PROMPT, method="sparge", **SMALL))
    assert (sparge.candidates, sparge.reference) == ((0.95, 0.98, 0.99), 0.98)
    given = CalibrationSpec(base=RunConfig(prompt=PROMPT, method="sparge", **SMALL), candidates=(0.9, 0.99),
                            reference=0.99)  # fmt: skip
    assert (given.candidates, given.reference) == ((0.9, 0.99), 0.99)


def test_cli_calibrate_and_refusal(table_path, tmp_path, capsys):
    from accel.cli import main

    assert load_pipeline("tiny-wan", "cpu", "float32") is not None
    args = ["generate", "--method", "svg2", "--threshold-table", str(table_path), "--prompt", "x"]
    code = main([*args, "--out-dir", str(tmp_path), "--height", "64", "--width", "64", "--frames", "5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "not 'svg2'" in err[-1]


def test_cli_calibrate_writes_a_table_that_generate_uses(tmp_path, capsys):
    from accel.cli import main

    out = tmp_path / "table"
    size = ["--height", "64", "--width", "64", "--frames", "5", "--steps", "3"]
    xa = ["--warmup-steps", "1", "--block-size", "16", "--stride", "4"]
    code = main(["calibrate", "--model", "tiny-wan", "--method", "xattention", "--prompt", PROMPT,
                 "--samples-per-prompt", "1", *size, *xa, "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    assert code == 0 and printed[0] == str(out / "table.json")
    assert [line.split(":")[0] for line in printed[1:]] == ["cond", "uncond"]  # one assignment per CFG branch
    table = load_table(out / "table.json", method="xattention", key="tau", model="tiny-wan", layers=4, heads=6)
    assert set(table) == {"cond", "uncond"} and all(t.shape == (4, 6) for t in table.values())
    table_flag = ["--threshold-table", str(out / "table.json")]
    code = main(["generate", "--model", "tiny-wan", "--method", "xattention", *table_flag, "--prompt", PROMPT,
                 *size, *xa, "--out-dir", str(tmp_path / "runs")])  # fmt: skip
    assert code == 0 and "ebc" in capsys.readouterr().out.splitlines()[0]
