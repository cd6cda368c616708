"""Tests for the command line (``python -m accel``) on the embedded tiny model, CPU only."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from accel import cli
from accel.runs import RunStore

ROOT = Path(__file__).resolve().parent.parent
# 128x128x5 -> latent 2 x 16 x 16 -> 2 x 8 x 8 = 128 tokens: 8 blocks of 16, so tau 0.5 can drop blocks.
SIZE = ["--height", "128", "--width", "128", "--frames", "5", "--steps", "3"]
XATTN = ["--method", "xattention", "--tau", "0.5", "--block-size", "16", "--stride", "4", "--warmup-steps", "1",
         "--kernels", "torch"]  # fmt: skip
PROMPT = ["--prompt", "a red circle moves quickly left over a blue background"]


def run_cli(*args: str) -> tuple[int, str, str]:
    """``main(args)`` in-process (the model stays loaded between calls): exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, str] | Path]:
    """One dense and one xattention run in a fresh store."""
    root = tmp_path_factory.mktemp("cli") / "runs"
    dense = run_cli("generate", *PROMPT, *SIZE, "--out-dir", str(root))
    xattn = run_cli("generate", *PROMPT, *SIZE, *XATTN, "--mask-budget-mb", "1", "--out-dir", str(root))
    return {"root": root, "dense": dense, "xattention": xattn}


def _run_path(result: tuple[int, str, str]) -> Path:
    code, out, err = result
    assert code == 0, err
    return Path(out.splitlines()[0])


def test_generate_dense(generated) -> None:
    path = _run_path(generated["dense"])
    _, out, err = generated["dense"]
    run = RunStore(generated["root"]).load(path.name)
    assert run.path == path and (path / "COMPLETE").is_file()
    assert run.config["method"] == "dense" and run.config["height"] == 128
    assert run.frames().shape == (5, 128, 128, 3)
    assert "step 1/3" in err and "step 3/3" in err
    assert "wall" in out.splitlines()[1]


def test_generate_xattention_is_sparse_after_warmup(generated) -> None:
    path = _run_path(generated["xattention"])
    run = RunStore(generated["root"]).load(path)
    expected = {"tau": 0.5, "stride": 4, "block_size": 16, "warmup_steps": 1, "tmr": False, "threshold_table": None}
    assert expected.items() <= run.config["settings"].items()
    assert run.config["kernels"] == "torch" and run.metrics["kernel_backend"] == "torch"
    assert run.metrics["tokens"] // 16 >= 4  # enough blocks for a sparse mask
    dens = run.telemetry[run.telemetry["event"] == "density"]
    assert (dens[dens["step"] == 0]["density"] == 1.0).all()
    after = dens[dens["step"] >= 1]["density"]
    assert len(after) and (after < 1.0).any()
    assert "mean density after warm-up" in generated["xattention"][1]


def test_compare_table_and_json(generated) -> None:
    a, b = _run_path(generated["dense"]), _run_path(generated["xattention"])
    root = str(generated["root"])
    code, out, err = run_cli("compare", a.name, b.name, "--out-dir", root)
    assert code == 0, err
    assert "PSNR" in out and "SSIM" in out and "mean" in out
    assert "speedup" in out and "reference" in out
    code, out, err = run_cli("compare", str(a), str(b), "--json")  # paths need no store
    assert code == 0, err
    data = json.loads(out)
    assert data["reference"] == "a" and data["a"]["run_id"] == a.name and data["b"]["run_id"] == b.name
    assert [f["frame"] for f in data["frames"]] == list(range(5))
    assert all(float(f["psnr"]) > 0 and -1 <= f["ssim"] <= 1 for f in data["frames"])
    assert data["speedup"] == pytest.approx(data["a"]["wall_s"] / data["b"]["wall_s"])


def test_compare_identical_runs_gives_inf_psnr(generated) -> None:
    a = _run_path(generated["dense"])
    code, out, _ = run_cli("compare", str(a), str(a), "--json")
    assert code == 0 and json.loads(out)["psnr_mean"] == "inf"


def test_compare_shape_mismatch(generated, tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    with store.writer("small") as w:
        w.write_json("config.json", {"label": "small"})
        w.write_json("metrics.json", {"wall_s": 1.0})
        w.write_video(np.zeros((5, 64, 64, 3), np.uint8))
    code, out, err = run_cli("compare", str(_run_path(generated["dense"])), str(w.final_path))
    assert code == 2 and out == ""
    assert err.startswith("error: frame shapes differ") and len(err.strip().splitlines()) == 1


def test_compare_unknown_run(tmp_path: Path) -> None:
    code, _, err = run_cli("compare", "nope", "../elsewhere", "--out-dir", str(tmp_path))
    assert code == 2 and err.startswith("error: run not found") and len(err.strip().splitlines()) == 1


def test_runs_lists_newest_first(generated, tmp_path: Path) -> None:
    code, out, err = run_cli("runs", "--out-dir", str(generated["root"]))
    assert code == 0, err
    lines = out.splitlines()
    dense, xattn = _run_path(generated["dense"]).name, _run_path(generated["xattention"]).name
    assert lines[0].split() == ["ID", "METHOD", "WALL"]
    assert lines[1].startswith(xattn) and "xattention-tau0.5" in lines[1] and lines[1].endswith(" s")
    assert lines[2].startswith(dense) and " dense " in lines[2]
    code, out, err = run_cli("runs", "--out-dir", str(tmp_path / "empty"))
    assert code == 0 and out == "" and "no runs" in err


@pytest.fixture()
def empty_model(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    return tmp_path / "model"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--height", "100"], "multiple of 16"),
        (["--frames", "10"], "4k+1"),
        (["--method", "xattention", "--tau", "1.5"], "tau"),
        (["--method", "xattention", "--tau", "x"], "--tau"),
        (["--method", "xattention", "--block-size", "12", "--stride", "8"], "multiple of stride"),
        (["--method", "bogus"], "invalid choice"),
        (["--method", "svg2", "--tau", "0.5"], "xattention"),
        (["--model", "EMPTY"], "model_index.json"),
        (["--model", "/nonexistent/path"], "unknown model"),
        (["--mask-budget-mb", "-1"], "mask-budget-mb"),
        (["--kernels", "cuda"], "--kernels: invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str, tmp_path: Path, empty_model: Path) -> None:
    args = [str(empty_model) if a == "EMPTY" else a for a in args]
    root = tmp_path / "runs"
    code, out, err = run_cli("generate", *PROMPT, *SIZE, *args, "--out-dir", str(root))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    assert not root.exists()


@pytest.mark.parametrize("command", [[], ["generate"], ["compare"], ["runs"]])
def test_help(command: list[str]) -> None:
    code, out, _ = run_cli(*command, "--help")
    assert code == 0 and out.startswith("usage:") and "examples:" in out


def test_generate_help_lists_method_settings() -> None:
    _, out, _ = run_cli("generate", "--help")
    assert "xattention settings" in out and "svg2 settings" in out
    for flag in ("--tau", "--stride", "--block-size", "--warmup-steps", "--top-p", "--query-clusters"):
        assert flag in out
    assert "Default: 0.9." in out and "tiny-wan" in out and "wan2.1-1.3b" in out


def test_a_flag_several_methods_share_gives_each_methods_help() -> None:
    from accel.cli.flags import flag_help, setting_flags

    flags = setting_flags()
    thresh = flag_help(flags["thresh"])  # FlowCache's and MotionCache's thresholds mean different things
    assert thresh.startswith("flowcache: Accumulator threshold") and "motioncache: Per-token accumulator" in thresh
    kv = flag_help(flags["kv_budget_chunks"])  # one meaning: one text, each method's default
    assert kv.count("Clean K/V kept") == 1 and "(flowcache), 1 (motioncache)" in kv


def test_setting_flags_parse_types_and_only_given_values() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["generate", "--prompt", "x", "--tau", "0.9, 0.8", "--block-size", "none"])
    assert cli.method_settings("xattention", args) == {"tau": (0.9, 0.8), "block_size": None}
    args = parser.parse_args(["generate", "--prompt", "x", "--method", "svg2", "--query-clusters", "7"])
    assert cli.method_settings("svg2", args) == {"query_clusters": 7}
    assert cli.method_settings("dense", parser.parse_args(["generate", "--prompt", "x"])) == {}


def test_keyboard_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.runs, "cmd_runs", interrupted)
    assert run_cli("runs")[0] == 130


@pytest.mark.slow
def test_module_entry_point() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accel", "generate", *PROMPT, "--frames", "10", "--out-dir", "/nonexistent/runs"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: frames must be 4k+1") and len(proc.stderr.strip().splitlines()) == 1


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, tmp_path) -> None:
    code, _, err = run_cli("report", "no-such-run", "--out-dir", str(tmp_path))
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1

    def shape_bug(args):  # a torch shape mistake raises ValueError/RuntimeError: not the user's fault
        raise ValueError("shape '[2, -1]' is invalid for input of size 3")

    monkeypatch.setattr(cli.runs, "cmd_runs", shape_bug)
    with pytest.raises(ValueError, match="shape"):
        cli.main(["runs", "--out-dir", str(tmp_path)])


# -- the other commands end to end -------------------------------------------------------------


def test_breakdown_of_a_profiled_run_against_its_dense_reference(stored_runs) -> None:
    _, runs = stored_runs
    code, out, err = run_cli("breakdown", str(runs["xattention"].path), str(runs["dense"].path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["phase", "reference", "run"]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[1:] if line.strip()}
    assert rows["attn_sparse_ms"][0] == 0 and rows["attn_sparse_ms"][1] > 0  # only the sparse run has sparse calls
    assert rows["mask_predict_ms"][1] > 0 and rows["attention_fraction"][0] > 0 and "transformer_speedup_bound" in rows
    code, _, err = run_cli("breakdown", str(runs["svg2"].path), str(runs["dense"].path))
    assert code == 2 and "was not profiled" in err


def test_report_writes_one_offline_html_file(stored_runs, tmp_path: Path) -> None:
    store, runs = stored_runs
    out = tmp_path / "report.html"
    code, printed, err = run_cli("report", runs["xattention"].run_id, "--out", str(out), "--out-dir", str(store.root))
    assert code == 0, err
    assert printed.strip() == str(out) and "<video" in out.read_text() and "Mask reuse: refresh grid" in out.read_text()
    code, _, err = run_cli("report", runs["xattention"].run_id, "--out", str(tmp_path / "r.txt"), "--out-dir",
                           str(store.root))  # fmt: skip
    assert code == 2 and ".html" in err


@pytest.mark.slow
def test_bench_quality_prints_the_table_and_writes_every_row(tmp_path: Path) -> None:
    size = ["--height", "64", "--width", "64", "--frames", "5", "--steps", "2"]
    csv = tmp_path / "rows.csv"
    variants = ["--variants", "xattention+tmr,fbc", "--prompts", "1", "--seeds", "0,1"]
    out_dir = ["--out-dir", str(tmp_path / "runs")]
    code, out, err = run_cli("bench-quality", "--model", "tiny-wan", *variants, *size, "--csv", str(csv), *out_dir)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[0] == "variant" and [line.split()[0] for line in lines[1:]] == ["dense", "xattention+tmr",
                                                                                           "fbc"]  # fmt: skip
    assert len(csv.read_text().splitlines()) == 1 + 3 * 2  # header + (dense and 2 variants) x 2 seeds
    assert len(RunStore(tmp_path / "runs").list()) == 6
    code, _, err = run_cli("bench-quality", "--model", "tiny-wan", "--variants", "flowcache-slow", "--out-dir",
                           str(tmp_path / "runs"))  # fmt: skip
    assert code == 2 and "unknown variant" in err
