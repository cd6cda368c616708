"""Context parallelism (issue 27): diffusers' Ulysses plan with the project's attention methods inside it.

The end-to-end checks launch real ranks with ``torchrun`` (gloo, world size 2, CPU) and compare against one
process: dense bit for bit, XAttention (+TMR, per-head tau), gated TMR and SVG2 within 1e-5 with identical masks
and per-head telemetry, and one whole ``accel generate --parallel ulysses=2`` run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from accel import methods, models, parallel
from accel.config import RunConfig, parse_parallel
from accel.errors import ConfigError
from accel.runner import generate
from accel.runs import RunStore
from viz.panels import headline_rows, runs_table

HERE = Path(__file__).parent
PROMPT = "a red circle moves quickly left over a blue background"


# how a launch fails when the local transport does (a port taken between torchrun choosing and binding it, a gloo
# connection reset on a busy machine): such a launch is tried once more, anything else fails the test
TRANSPORT_ERRORS = ("Address already in use", "Connection reset by peer", "Connection refused", "RendezvousError")


def _torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("RANK", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    for attempt in range(2):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE.parent)
        if done.returncode == 0 or attempt or not any(e in done.stderr for e in TRANSPORT_ERRORS):
            break
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# -- refusals (one process) ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["ulysses=1", "ulysses", "ulysses=two", "tensor=2", ""])
def test_a_malformed_parallel_setting_is_one_clear_error(text):
    with pytest.raises(ConfigError, match="ulysses=N"):
        RunConfig(prompt=PROMPT, parallel=text)


def test_ring_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="log-sum-exp"):
        parse_parallel("ring=2")


def test_heads_or_tokens_that_do_not_split_are_refused():
    with pytest.raises(ConfigError, match="6 heads do not split over 4"):
        parallel.check_divisible("ulysses=4", 6, 320)
    with pytest.raises(ConfigError, match="322 video tokens"):
        parallel.check_divisible("ulysses=3", 6, 322)
    parallel.check_divisible("ulysses=2", 6, 320)


def test_methods_without_parallel_support_refuse_it():
    fbc = RunConfig(prompt=PROMPT, method="baseline", settings={"cache": "fbc"}, parallel="ulysses=2")
    with pytest.raises(ConfigError, match="does not run under --parallel: FirstBlockCache decides"):
        methods.get("baseline").check_parallel(fbc, models.resolve("pocket-wan"))
    mag = RunConfig(prompt=PROMPT, method="baseline", settings={"cache": "magcache"}, parallel="ulysses=2")
    with pytest.raises(ConfigError, match="MagCache hook subtracts"):
        methods.get("baseline").check_parallel(mag, models.resolve("pocket-wan"))
    sky = RunConfig(prompt=PROMPT, model="pocket-skyreels", method="xattention", parallel="ulysses=2")
    with pytest.raises(ConfigError, match="no context-parallel plan for SkyReels-V2"):
        methods.get("xattention").check_parallel(sky, models.resolve("pocket-skyreels"))
    for name in ("dense", "xattention", "svg2", "sparge", "radial", "sta"):
        methods.get(name).check_parallel(RunConfig(prompt=PROMPT, method=name, parallel="ulysses=2"),
                                         models.resolve("pocket-wan"))  # fmt: skip


def test_a_parallel_run_outside_torchrun_says_how_to_launch(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node 2"):
        generate(RunConfig(prompt=PROMPT, parallel="ulysses=2", steps=2), RunStore(tmp_path))
    assert not list(tmp_path.iterdir())


# -- real ranks ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_method_under_ulysses_matches_one_process(tmp_path):
    from safetensors.torch import load_file

    sys.path.insert(0, str(HERE))
    import parallel_worker as pw

    _torchrun(str(HERE / "parallel_worker.py"), str(tmp_path))
    transformer = models.load_pipeline(pw.MODEL, "cpu").transformer
    for name in pw.CASES:
        outs, table, arrays, _ = pw.run_case(transformer, name)
        cp_outs = load_file(str(tmp_path / name / "outputs.safetensors"))["outputs"]
        cp_table = pd.read_parquet(tmp_path / name / "telemetry.parquet")
        cp_arrays = dict(np.load(tmp_path / name / "arrays.npz"))
        diff = float((outs - cp_outs).abs().max())
        if name == "dense":
            assert diff == 0.0
        assert diff < 1e-5, (name, diff)
        keys = sorted(k for k in arrays if not k.startswith("__"))
        assert keys == sorted(k for k in cp_arrays if not k.startswith("__")), name
        for k in keys:  # every recorded mask, stacked over both ranks' heads, equals the single-process one
            assert np.array_equal(arrays[k], cp_arrays[k]), (name, k)
        for event in ("density", "mask_refresh", "drift"):
            order = ["step", "branch", "layer", "head"]
            one = table[(table["event"] == event) & table["head"].notna()].sort_values(order)
            two = cp_table[(cp_table["event"] == event) & cp_table["head"].notna()].sort_values(order)
            assert len(one) == len(two), (name, event)
            assert one[order].to_numpy().tolist() == two[order].to_numpy().tolist()  # global head ids
            np.testing.assert_allclose(two["value"].to_numpy(float), one["value"].to_numpy(float), atol=1e-5)
        if "tmr" in name:
            refresh = table[table["event"] == "mask_refresh"]["value"]
            assert 0.2 < refresh.mean() < 0.95, name  # TMR really reused some heads and refreshed others
        summary = json.loads((tmp_path / name / "balance.json").read_text())
        moved = [layer for layer, order in summary["orders"].items() if order != sorted(order)]
        if name not in pw.BALANCED:
            assert summary["balance"] == "off" and not moved, name
            continue
        assert summary["balance"] == "on" and moved, (name, summary)  # the skewed heads really moved
        assert summary["imbalance"] < summary["imbalance_contiguous"], (name, summary)
        rebalanced = cp_table[cp_table["event"] == "rebalance"]
        assert len(rebalanced) == summary["rebalances"], name
        if "tmr" in name:  # re-balanced mid-run from measured densities: the state moved with its heads
            assert summary["rebalances"] >= 1 and (rebalanced["threshold"] < rebalanced["value"]).all(), name
    store = RunStore(tmp_path / "one")
    for info in RunStore(tmp_path / "runs").list():  # the step-driven cache hooks decide alike on every rank
        run = RunStore(tmp_path / "runs").load(info.path)
        cache = run.config["settings"]["cache"]
        one = generate(RunConfig(method="baseline", settings={"cache": cache}, **pw.GENERATION), store)
        counts = ("block_executions", "unit_executions", "skipped_fraction")
        assert [run.metrics[k] for k in counts] == [one.metrics[k] for k in counts], cache
        assert run.metrics["skipped_fraction"] > 0, cache  # the hook really skipped work
        assert np.abs(run.frames().astype(int) - one.frames().astype(int)).max() <= 1, cache
    assert len(RunStore(tmp_path / "runs").list()) == len(pw.BASELINES)


@pytest.mark.slow
def test_accel_generate_under_torchrun_writes_one_run_equal_to_one_process(tmp_path):
    args = ["--model", "pocket-wan", "--prompt", PROMPT, "--steps", "4", "--method", "xattention", "--tmr", "true"]
    done = _torchrun("-m", "accel", "generate", *args, "--parallel", "ulysses=2", "--out-dir", str(tmp_path / "cp"))
    runs = RunStore(tmp_path / "cp").list()
    assert len(runs) == 1 and done.stdout.count("mean density after warm-up") == 1  # rank 0 alone reports
    run = RunStore(tmp_path / "cp").load(runs[0].path)
    assert run.config["parallel"] == "ulysses=2"
    assert run.metrics["parallel"] == {"kind": "ulysses", "degree": 2, "backend": "gloo"}
    assert sorted(run.telemetry["head"].dropna().unique().tolist()) == list(range(6))
    single = generate(
        RunConfig(prompt=PROMPT, model="pocket-wan", method="xattention", steps=4, settings={"tmr": True}),
        RunStore(tmp_path / "one"),
    )
    diff = np.abs(run.frames().astype(int) - single.frames().astype(int)).max()
    assert diff <= 1, diff  # the same video (uint8 rounding of a <1e-5 difference at most)
    assert json.loads((run.path / "metrics.json").read_text())["heads"] == 6
    rows = dict(headline_rows(None, run))
    assert rows["context parallel"].startswith("ulysses × 2 ranks (gloo); each attends 3 of 6 heads")
    assert run.metrics["head_balance"]["balance"] == "on"  # balance=auto: on, as TMR is
    assert rows["head assignment"].startswith("balanced by density: imbalance")
    assert runs_table(RunStore(tmp_path / "cp"))["device"].tolist() == ["cpu · ulysses×2"]


# -- the benchmark ---------------------------------------------------------------------------------------------
def test_balanced_head_assignment_evens_the_ranks_attention_work():
    from accel.bench.parallel import rank_loads

    dens = np.array([[0.9, 0.8, 0.7, 0.1, 0.2, 0.3]])  # dense heads first: contiguous ranges load rank 0
    contiguous, balanced = rank_loads(dens, 2, False), rank_loads(dens, 2, True)
    assert contiguous.tolist() == [[pytest.approx(2.4), pytest.approx(0.6)]]
    assert balanced.max() < contiguous.max() and balanced.sum() == pytest.approx(contiguous.sum())
    assert sorted(balanced[0]) == [pytest.approx(1.4), pytest.approx(1.6)]  # 0.9+0.3+0.2 | 0.8+0.7+0.1


def test_the_step_model_scales_with_gpus_and_skips_uneven_head_splits(capsys):
    from accel.bench.parallel import main

    main(["model"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    gpus: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        gpus.setdefault((r[0], r[1]), []).append(int(r[2]))
    assert gpus[("1.3B", "480p")] == [1, 2, 4]  # 12 heads do not split over 8 GPUs
    assert gpus[("14B", "720p")] == [1, 2, 4, 8]
    speedups = [float(r[7]) for r in rows if r[:2] == ["14B", "720p"]]
    assert speedups[0] == 1.0 and all(1 < s < g for s, g in zip(speedups[1:], (2, 4, 8), strict=True))


def test_measure_reports_a_row_for_one_process(capsys):
    from accel.bench.parallel import main

    main(["measure", "--size", "default", "--steps", "2", "--tmr"])
    out = capsys.readouterr().out.splitlines()
    assert "one process" in out[0] and out[2].split()[:2] == ["0", "0-5"]


def test_the_dense_reference_of_a_parallel_run_has_its_layout(monkeypatch):
    from types import SimpleNamespace

    from viz import compare

    dense = [SimpleNamespace(run_id="one", config={"method": "dense"}),
             SimpleNamespace(run_id="two", config={"method": "dense", "parallel": "ulysses=2"})]  # fmt: skip
    monkeypatch.setattr(compare, "comparable_runs", lambda store, run: dense)
    monkeypatch.setattr(compare, "as_run", lambda run: run)
    cp = SimpleNamespace(run_id="x", config={"method": "xattention", "parallel": "ulysses=2"})
    assert compare.dense_reference(None, cp).run_id == "two"
    assert compare.dense_reference(None, SimpleNamespace(run_id="y", config={"method": "svg2"})).run_id == "one"
    cp4 = SimpleNamespace(run_id="z", config={"method": "svg2", "parallel": "ulysses=4"})
    assert compare.dense_reference(None, cp4).run_id == "one"  # none with its layout: the newest comparable
