"""Hostile input (issue 36): every bad value is one ``error:`` line (exit 2) before any work, never a traceback, a
generic error or a silently wrong run, and nothing is stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accel import forms
from accel.config import RunConfig
from accel.errors import ConfigError
from accel.fields import all_field_specs
from tests.test_cli import run_cli

TINY = ["--model", "tiny-wan", "--prompt", "a red ball", "--height", "64", "--width", "64", "--frames", "5"]
GEN = ["generate", *TINY, "--steps", "2"]
CAL = ["calibrate", "--model", "tiny-wan", "--height", "64", "--width", "64", "--frames", "5", "--steps", "2"]


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, str]:
    """Hostile files: model folders with a bad model_index.json, a 100,000-deep JSON, binary text."""
    out = {"tmp": str(tmp_path)}
    for name, text in {"class_list": '{"_class_name": ["WanPipeline"]}', "json_list": "[1, 2]"}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text(text)
        out[name] = str(tmp_path / name)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "uncond.json").write_text(
        '{"format": "accel.threshold-table", "version": 1, "method": "xattention", "model": "tiny-wan", '
        '"layers": 2, "heads": 2, "branches": {"uncond": {"tau": [[0.9, 0.9], [0.9, 0.9]]}}}'
    )
    out.update({k: str(tmp_path / f) for k, f in (("deep", "deep.json"), ("binary", "binary.txt"))})
    out["uncond"] = str(tmp_path / "uncond.json")
    return out


CASES = {  # name: (argv, environment, what the error line must say)
    "seed 1e25": ([*GEN, "--seed", "9999999999999999999999999"], {}, "seed must be below 2**63"),
    "model_index class list": ([*GEN, "--model", "{class_list}"], {}, "_class_name"),
    "model_index json list": ([*GEN, "--model", "{json_list}"], {}, "_class_name"),
    "table nested deep": ([*GEN, "--method", "xattention", "--threshold-table", "{deep}"], {}, "not valid JSON"),
    "table without cond": ([*GEN, "--method", "xattention", "--threshold-table", "{uncond}"], {}, "no 'cond' branch"),
    "device cuda": ([*GEN, "--device", "cuda"], {}, "device 'cuda'"),
    "device cuda:9": ([*GEN, "--device", "cuda:9"], {}, "device 'cuda:9'"),
    "device bogus": ([*GEN, "--device", "tpu7"], {}, "device 'tpu7'"),
    "ACCEL_KERNELS=foo": (GEN, {"ACCEL_KERNELS": "foo"}, "$ACCEL_KERNELS must be one of"),
    "fps 1e9": ([*GEN, "--fps", "1000000000"], {}, "fps must be at most 240"),
    "out-dir empty": ([*GEN, "--out-dir", ""], {}, "run store folder is empty"),
    "ar-step on a Wan model": ([*GEN, "--ar-step", "2"], {}, "ar_step applies to diffusion-forcing models"),
    "kv-commit on a Wan model": ([*GEN, "--kv-commit", "clean-pass"], {}, "kv_commit applies"),
    "guidance 1e30": ([*GEN, "--guidance", "1e30"], {}, "non-finite values"),
    "calibrate binary prompts": ([*CAL, "--prompts-file", "{binary}", "--out", "{tmp}/t"], {}, "not UTF-8"),
    "calibrate out /proc": ([*CAL, "--out", "/proc/x"], {}, "--out /proc/x cannot be written"),
    "calibrate skyreels": (["calibrate", "--model", "pocket-skyreels", "--out", "{tmp}/t"], {}, "calibration runs on"),
    "calibrate band nan": ([*CAL, "--band-weights", "nan,1,1,1", "--out", "{tmp}/t"], {}, "band_weights must be"),
    "bench csv /proc": (["bench-quality", "--csv", "/proc/x.csv"], {}, "--csv /proc/x.csv cannot be written"),
    "bench prompts 1e5": (["bench-quality", "--model", "tiny-wan", "--prompts", "100000"], {}, "prompts must be 1 to"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_stores_nothing(name, files, tmp_path, monkeypatch) -> None:
    argv, env, needle = CASES[name]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = [a.format(**files) for a in argv]
    root = tmp_path / "runs"
    if "--out-dir" not in argv and argv[0] != "calibrate":
        argv += ["--out-dir", str(root)]
    monkeypatch.chdir(tmp_path)  # an empty --out-dir would store here
    code, out, err = run_cli(*argv)
    assert code == 2 and out == "", err
    assert err.startswith("error: ") or "\nerror: " in err, err
    assert "Traceback" not in err and needle in err.strip().splitlines()[-1], err
    assert not root.exists() or not any(p for p in root.iterdir() if not p.name.startswith(".")), list(root.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("2026") or p.name == "t"]


def test_a_report_to_an_unwritable_place_is_refused_before_writing(stored_runs) -> None:
    store, runs = stored_runs
    code, out, err = run_cli("report", runs["dense"].run_id, "--out", "/proc/x/r.html", "--out-dir", str(store.root))
    assert code == 2 and out == "" and "--out /proc/x/r.html cannot be written" in err


def test_a_huge_mask_budget_is_a_cap_not_an_allocation(tmp_path) -> None:
    for budget in ("1e308", "1e7"):
        code, out, err = run_cli(*GEN, "--method", "xattention", "--warmup-steps", "0", "--mask-budget-mb", budget,
                                 "--out-dir", str(tmp_path))  # fmt: skip
        assert code == 0, err
        assert (Path(out.splitlines()[0]) / "arrays.npz").is_file()


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("steps", "inf", "steps must be a finite number"),
        ("steps", "1e400", "steps must be a finite number"),
        ("steps", "nan", "steps must be a finite number"),
        ("frames", "inf", "frames must be a finite number"),
        ("causal_block_size", "1e400", "causal_block_size must be a finite number"),
        ("seed", "1e30", "seed must be below 2**63"),
        ("seed", "1.5", "seed must be an integer"),
        ("steps", "five", "steps must be an integer"),
        ("guidance", "1e400", "guidance must be a finite number"),
    ],
)
def test_form_numbers_are_refused_in_one_line(name, value, needle) -> None:
    values = forms.form_values("tiny-wan", "dense", "x", sampling={name: value})
    start, end = 4, forms.SETTINGS_START - 2
    with pytest.raises(ConfigError, match=needle.replace("*", r"\*")):
        forms.run_config(*values[:4], values[start:end], values[forms.SETTINGS_START :])


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("stride", 1.5, "stride must be an integer, got 1.5"),
        ("stride", "inf", "stride must be a finite number"),
        ("stride", "nan", "stride must be a finite number"),
        ("warmup_steps", "five", "warmup_steps must be an integer, got 'five'"),
        ("tau", "inf", "tau"),
    ],
)
def test_setting_widgets_refuse_fractions_and_words(field, value, needle) -> None:
    spec = next(f for f in all_field_specs() if f.method == "xattention" and f.name == field)
    with pytest.raises(ConfigError, match=needle):
        settings = {field: spec.read(value)}
        RunConfig(prompt="x", method="xattention", settings=settings)


def test_a_seed_up_to_2_63_runs_and_one_above_is_refused() -> None:
    assert RunConfig(prompt="x", seed=2**63 - 1).seed == 2**63 - 1
    with pytest.raises(ConfigError, match="2\\*\\*63"):
        RunConfig(prompt="x", seed=2**63)


def test_app_port_out_of_range_is_one_line(capsys) -> None:
    import app

    with pytest.raises(SystemExit) as exit_:
        app.main(["--port", "99999"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "port must be 1 to 65535, got 99999" in err and "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_a_cfg_run_with_a_cond_only_table_names_the_fallback(tmp_path) -> None:
    from accel.attention.thresholds import read_table, table_warnings
    from accel.paths import TABLES

    table = read_table(TABLES / "tiny-wan-xattention.json")
    del table["branches"]["uncond"]
    path = tmp_path / "cond.json"
    path.write_text(json.dumps(table))
    assert table_warnings(path, guidance=5.0) == [
        f"threshold table {path} has no 'uncond' branch: the uncond branch uses cond's thresholds"
    ]
    assert table_warnings(path, guidance=1.0) == []
    code, _, err = run_cli(*GEN, "--method", "xattention", "--threshold-table", str(path), "--guidance", "5",
                             "--out-dir", str(tmp_path / "runs"))  # fmt: skip
    assert code == 0, err
    assert "warning: threshold table" in err and "uses cond's thresholds" in err


API_CASES = [  # (sampling, settings, what the message says): through gradio's preprocessing, as a client sends them
    ({"steps": "inf"}, {}, "steps must be a finite number"),
    ({"frames": "1e400"}, {}, "frames must be a finite number"),
    ({"steps": "nan"}, {}, "steps must be a finite number"),
    ({"seed": 1e30}, {}, r"seed must be below 2\*\*63"),
    ({"steps": 2}, {"stride": 1.5}, "stride must be an integer, got 1.5"),
    ({"steps": 2}, {"stride": "inf"}, "stride must be a finite number"),
    ({"steps": 2}, {"warmup_steps": "five"}, "warmup_steps must be an integer, got 'five'"),
    ({"steps": 2, "repeats": "many"}, {}, "repeats must be an integer"),
]


def test_api_numbers_are_refused_by_name(served_app) -> None:
    gradio_client = pytest.importorskip("gradio_client")
    _, demo, _, _ = served_app
    client = gradio_client.Client(demo.local_url, verbose=False)
    for sampling, settings, needle in API_CASES:
        values = forms.form_values(model="tiny-wan", sampling=sampling, settings=settings)
        with pytest.raises(Exception, match=needle):
            client.predict(*values, api_name="/generate")
