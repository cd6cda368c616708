"""The device check (devicecheck/): its plan, its command lines against today's CLIs, and its CPU dry run."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_check():
    spec = importlib.util.spec_from_file_location("devicecheck_check", ROOT / "devicecheck" / "check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_gpu_plan_fits_the_deadline_and_eight_files(tmp_path):
    dc = load_check()
    steps = dc.plan(False, tmp_path)
    assert [s.item for s in steps] == sorted(s.item for s in steps), "steps must follow the ledger's priority order"
    assert all(s.cmds or s.skip for s in steps), "every step has commands or a reason it cannot run"
    assert sum(s.budget for s in steps if not s.skip) <= dc.DEADLINE_S - dc.RESERVE_S
    assert len({s.log for s in steps}) + 1 <= dc.MAX_FILES
    assert all(s.budget >= dc.MIN_STEP_S for s in steps if not s.skip)


def test_gpu_command_lines_are_valid_today(tmp_path):
    dc = load_check()
    lines = dc.validate(dc.plan(False, tmp_path))
    assert lines and not [ln for ln in lines if ln.startswith("BAD")], "\n".join(lines)
    checked = {ln.split(":")[0].split()[-1] for ln in lines}
    assert {"bench", "sweep", "generate", "bench_e2e", "train", "generate_720p", "bench_e2e_720p"} <= checked


def test_a_bad_flag_is_caught(tmp_path):
    dc = load_check()
    steps = [s for s in dc.plan(False, tmp_path) if s.name in ("bench", "generate")]
    steps[0].cmds[0].append("--no-such-flag")
    steps[1].cmds[0] += ["--frames", "many"]
    lines = dc.validate(steps)
    assert [ln[:3] for ln in lines] == ["BAD", "BAD"], lines


def test_log_parsers_read_the_benchmarks_output():
    dc = load_check()
    bench = """
Wan2.1-1.3B 480p: L=32760, 12 heads x 128, block 128, uniform inputs, torch.bfloat16
  SDPA (flash)              10.00 ms     650.0 TFLOP/s
  estimation (S=16, B=128)      0.50 ms   =   5.0% of dense SDPA (ideal 1/S = 6.2%)
   density  actual    tau        ms  TFLOP/s  vs ours@1 vs SDPA
      1.00   1.000    nan     10.50    600.0          -    0.95x
      0.25   0.250    nan      3.00    500.0      3.50x    3.50x
"""
    rows = dc.parse_bench(bench)
    assert rows[0]["est_frac"] == pytest.approx(0.05) and rows[0]["stride"] == 16
    assert [r["vs_sdpa"] for r in rows[1:]] == [0.95, 3.5]
    e2e = """
720p: latent 21x90x160 -> 75600 tokens, 30 layers, torch.bfloat16, block 128
  dense (bench processor)      5000.0 ms   attention   4000.0 ms = 80.0% of the call
  local           0.25    2000.0    2.50x    1000.0   4.00x        2.50x        2.50x
"""
    (row,) = dc.parse_e2e(e2e)
    assert row["attn_share"] == pytest.approx(0.8) and row["speedup"] == 2.5 and row["tokens"] == 75600
    sweep = {"480p.varlen.ms": 2.0, "480p.fixed_same_density.ms": 1.8}
    parsed = {"bench_rows": rows, "e2e_rows": [row], "sweep": sweep}
    status = {t["target"].split()[0]: t["status"] for t in dc.targets({}, parsed)}
    assert status["dense"] == "PASS" and status["density"] == "PASS" and status["SVG2"] == "PASS"
    assert status["estimation"] == "PASS" and status["bench_e2e"] == "MEASURED" and status["bf16"] == "NO DATA"


@pytest.mark.slow
def test_dry_run(tmp_path):
    """The whole check on CPU: each step runs (tiny shapes) or is skipped with a reason; <= 8 files; summary last."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "TRITON_INTERPRET", "PYTHONPATH")}
    cmd = [sys.executable, "devicecheck/check.py", "--dry-run", "--out", str(out), "--work", str(work)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert "summary.json" in files and len(files) <= 8, files
    summary = json.loads((out / "summary.json").read_text())
    names = [s["name"] for s in summary["steps"]]
    assert names[:3] == ["env", "validate", "pytest_gpu"] and "generate_720p" in names
    for s in summary["steps"]:
        assert s["status"] == "ok" or (s["status"] == "skipped" and s["reason"]), s
    flex = next(s for s in summary["steps"] if s["name"] == "flex")
    assert flex["status"] == "ok"  # without CUDA the bench says so and exits 0: its flags are checked
    assert summary["parsed"]["sweep"]["empty_row_zero"] is True
    generated = summary["parsed"]["generate"]
    assert all(generated[v]["rc"] == 0 for v in ("dense", "xattention", "svg2", "xattention+profile", "svg2+profile"))
    assert len(summary["targets"]) == 7
    # the summary comes last: after its header only the table, the targets and the path of summary.json
    lines = proc.stdout.rstrip().splitlines()
    head = max(i for i, ln in enumerate(lines) if ln.startswith("==== device check summary"))
    tail = lines[head:]
    assert tail[-1] == f"summary.json: {out / 'summary.json'}"
    assert not [ln for ln in tail if re.match(r"^\[\s*\d+s\]", ln)], "progress printed after the summary"
    assert all(any(ln.startswith(f"[{s['item']}] {s['name']} ") for ln in tail) for s in summary["steps"])
