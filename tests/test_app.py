"""The app serves on localhost; through its API a generation on the embedded model returns the video and
every view's figures, bad input is a message, and the app keeps serving."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from accel import forms
from accel.fields import settings_from

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture()
def served(served_app):
    app, demo, store, runs = served_app
    return app, demo, gradio_client.Client(demo.local_url, verbose=False), store, runs


@pytest.mark.slow
def test_generate_then_every_view_through_the_api(served):
    _app, demo, client, store, runs = served
    assert demo.local_url.startswith("http://127.0.0.1:")
    before = {i.run_id for i in store.list()}
    values = forms.form_values(
        method="xattention",
        sampling={"height": 128, "width": 128, "frames": 9, "steps": 6},
        settings={"tau": 0.8, "tmr": True, "tmr_delta": 3.0, "warmup_steps": 2},
    )
    video, summary, picked = client.predict(*values, api_name="/generate")
    new = {i.run_id for i in store.list()} - before
    assert len(new) == 1 and Path(video).suffix == ".mp4" and Path(video).stat().st_size > 0
    run_id = new.pop()
    assert picked == run_id or picked.get("value") == run_id
    assert "speedup vs dense" in summary and "mean density" in summary and "mask reuse rate" in summary
    *_, masks, density, note = client.predict(run_id, api_name="/sparsity")
    assert masks["type"] == "plotly" and density["type"] == "plotly"
    assert "Dense warm-up: steps 0-1 (every layer)" in note
    _, grid, _, drift, _, mask, clicked = client.predict(run_id, api_name="/reuse")
    assert Path(grid).is_file() and drift["type"] == "plotly" and mask["type"] == "plotly" and clicked == ""
    chunk_views = client.predict(runs["motion"].run_id, api_name="/chunks")
    assert all(v["type"] == "plotly" for v in chunk_views[1:])
    _, _, overlay, counts = client.predict(runs["motion"].run_id, api_name="/motion")
    assert Path(overlay).is_file() and counts["type"] == "plotly"
    _, pareto, _, side, _, _, table = client.predict(run_id, api_name="/compare_choices")
    assert pareto["type"] == "plotly" and side is None and table["headers"] == ["note"]  # no old comparison
    side, _, _, table = client.predict([runs["dense"].run_id, run_id], api_name="/compare")
    assert Path(side["video"] if isinstance(side, dict) else side).is_file()
    assert table["headers"][:2] == ["run", "method"]
    profile = client.predict(runs["xattention"].run_id, api_name="/profile")
    assert profile[0]["type"] == "plotly" and Path(profile[-1]).name == "trace.json.gz"  # the button is no output
    _, retimed = client.predict(run_id, 1, api_name="/retime")  # the ratio of both sides timed alternately
    assert "speedup vs dense (re-timed in one process)" in retimed
    report = client.predict(run_id, api_name="/report")
    assert Path(report["value"] if isinstance(report, dict) else report).suffix == ".html"


def test_bad_input_is_a_message_and_the_app_keeps_serving(served):
    _app, _, client, _, runs = served
    with pytest.raises(Exception, match="prompt"):
        client.predict(*forms.form_values(prompt="   ", sampling={"steps": 2}), api_name="/generate")
    with pytest.raises(Exception, match="tau"):
        client.predict(*forms.form_values(settings={"tau": 1.5}, sampling={"steps": 2}), api_name="/generate")
    with pytest.raises(Exception, match="steps must be an integer"):
        client.predict(*forms.form_values(sampling={"steps": "many"}), api_name="/generate")
    with pytest.raises(Exception, match=r"diffusion-forcing"):
        client.predict(*forms.form_values(method="flowcache", sampling={"steps": 2}), api_name="/generate")
    with pytest.raises(Exception, match=r"not found|no model|local"):
        client.predict(*forms.form_values(model="/nonexistent/model", sampling={"steps": 2}), api_name="/generate")
    huge = {"height": 8192, "width": 8192, "frames": 81}
    with pytest.raises(Exception, match=r"5,505,024 latent tokens per pass, above the cap"):
        client.predict(*forms.form_values(sampling=huge), api_name="/generate")
    with pytest.raises(Exception, match=r"steps is above the cap of 500"):
        client.predict(*forms.form_values(sampling={"steps": 10**6}), api_name="/generate")
    with pytest.raises(Exception, match="guidance must be a finite number"):
        client.predict(*forms.form_values(sampling={"guidance": "inf"}), api_name="/generate")
    for bad in ("../../etc", "/etc"):
        with pytest.raises(Exception, match="invalid run id"):
            client.predict(bad, api_name="/sparsity")
    with pytest.raises(Exception, match="at least two"):
        client.predict([runs["dense"].run_id], api_name="/compare")
    assert client.predict(runs["svg2"].run_id, api_name="/sparsity")[3]["type"] == "plotly"  # still serving


def test_every_api_parameter_has_a_name(served):
    """gradio_client users see the form's names (``param_<N>`` is what gradio shows for an unnamed one)."""
    _app, _, client, _, _ = served
    api = client.view_api(return_format="dict", print_info=False)
    endpoints = {**api["named_endpoints"], **api["unnamed_endpoints"]}
    unnamed = {
        (endpoint, p["parameter_name"])
        for endpoint, info in endpoints.items()
        for p in info["parameters"]
        if re.fullmatch(r"param_\d+", p["parameter_name"])
    }
    assert not unnamed
    generate = api["named_endpoints"]["/generate"]["parameters"]
    names = [p["parameter_name"] for p in generate]
    assert names[:5] == ["model", "method", "prompt", "negative", "seed"]
    assert {"steps", "ar_step", "profile", "xattention_tau", "svg2_top_p", "motioncache_warmup"} <= set(names)
    assert len(names) == len(set(names)) == len(forms.form_values())
    assert all(p["parameter_has_default"] for p in generate)  # any subset can be passed by name


def test_open_with_nothing_selected_keeps_the_run_shown(monkeypatch, tmp_path):
    from accel.ui.store import open_selected

    monkeypatch.setenv("ACCEL_RUNS_DIR", str(tmp_path / "runs"))
    for nothing in ("", None):
        picker, note = open_selected(nothing)
        assert "value" not in picker and "choices" not in picker  # the picker keeps its run: no view clears
        assert note == "select a run in the table first"
    picker, note = open_selected("20260101-000000-dense-abc123")
    assert picker["value"] == "20260101-000000-dense-abc123" and not note


@pytest.mark.slow  # a whole generation: in the full suite, not the quick subset
def test_a_busy_port_is_one_line_before_the_ui_is_built(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "app.py", "--port", str(port), "--runs-dir", str(tmp_path / "runs")],
            capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent,
        )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"error: port {port} on 127.0.0.1 is in use: pass --port N (or stop the other server)"
    ]
    assert "Traceback" not in out.stderr and "GRADIO" not in out.stderr and not out.stdout  # gradio never started


def test_settings_form_reads_every_method(stored_runs):
    from accel.methods import REGISTRY, settings_for

    for method in REGISTRY:
        values = forms.form_values(method=method)[forms.SETTINGS_START :]
        assert settings_for(method, settings_from(method, forms.FIELDS, values)) == settings_for(method, {})
    xa = forms.form_values(method="xattention", settings={"tau": (0.8, 0.9)})
    fields = xa[forms.SETTINGS_START :]
    assert settings_from("xattention", forms.FIELDS, fields)["tau"] == (0.8, 0.9)


def test_delete_needs_confirmation(stored_runs, monkeypatch, tmp_path):
    import shutil

    import gradio as gr

    from accel.runs import RunStore
    from accel.ui.store import delete_run

    _, runs = stored_runs
    root = tmp_path / "runs"
    shutil.copytree(runs["svg2"].path, root / runs["svg2"].run_id)
    monkeypatch.setenv("ACCEL_RUNS_DIR", str(root))
    with pytest.raises(gr.Error, match="confirm"):
        delete_run(runs["svg2"].run_id, False)
    assert len(RunStore(root).list()) == 1
    table, *_ = delete_run(runs["svg2"].run_id, True)
    assert RunStore(root).list() == [] and table.empty


@pytest.mark.slow
def test_dense_reference_and_tensorboard_buttons(served):
    _app, _, client, store, runs = served
    before = {i.run_id for i in store.list()}
    values = forms.form_values(method="svg2", sampling={"seed": 7, "height": 64, "width": 64, "frames": 5, "steps": 3})
    _, summary, _ = client.predict(*values, api_name="/generate")
    assert "no dense run of this prompt and seed yet" in summary
    sparse = ({i.run_id for i in store.list()} - before).pop()
    _, _, note, *_ = client.predict(sparse, api_name="/dense_reference")  # one click: the matching dense run
    dense = [i for i in store.list() if i.config["method"] == "dense" and i.config["seed"] == 7]
    assert len(dense) == 1 and dense[0].config["steps"] == 3 and not note
    from viz import compare

    assert compare.dense_reference(store, store.load(sparse)).run_id == dense[0].run_id
    msg = client.predict(runs["xattention"].run_id, api_name="/tensorboard")
    assert "http://127.0.0.1:" in msg
    with pytest.raises(Exception, match="no TensorBoard logdir"):
        client.predict(runs["svg2"].run_id, api_name="/tensorboard")  # not profiled: a message


@pytest.mark.slow
def test_the_app_builds_its_form_from_the_settings_not_from_the_cli():
    import subprocess
    import sys

    code = "import sys, app; print('accel.cli' in sys.modules, 'accel.runner' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent
    )
    assert out.stdout.split() == ["False", "False"]  # no CLI, and no model code until a generation


@pytest.mark.slow
def test_sigterm_to_the_app_stops_its_tensorboard(stored_runs, tmp_path):
    """``python app.py`` started as users do: its TensorBoard child is gone once the app gets SIGTERM."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    store, runs = stored_runs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app_py = Path(__file__).resolve().parents[1] / "app.py"
    proc = subprocess.Popen(
        [sys.executable, str(app_py), "--port", str(port), "--runs-dir", str(store.root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                assert time.monotonic() < deadline and proc.poll() is None, "the app did not come up"
                time.sleep(1)
        msg = client.predict(runs["xattention"].run_id, api_name="/tensorboard")
        tb_url = re.search(r"\((http://127\.0\.0\.1:\d+)/", msg).group(1)
        urllib.request.urlopen(tb_url, timeout=5).close()  # TensorBoard answers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == -signal.SIGTERM
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(tb_url, timeout=2).close()
            except OSError:
                break  # nothing serves there any more
            assert time.monotonic() < deadline, "TensorBoard outlived the app"
            time.sleep(0.5)
    finally:
        proc.kill()


def test_a_stored_run_shows_its_video_and_numbers(served):
    _app, _, client, _, runs = served
    for run in (runs["dense"], runs["motion"]):
        video, summary = client.predict(run.run_id, api_name="/shown_run")
        path = Path(video["video"] if isinstance(video, dict) else video)
        assert path.suffix == ".mp4" and path.read_bytes() == run.video_path.read_bytes()
        assert summary.strip()
    video, summary = client.predict(None, api_name="/shown_run")
    assert video is None and summary == ""


def test_stop_ends_a_generation_at_its_next_step_and_stores_nothing(monkeypatch, tmp_path):
    """The Stop button sets a flag the progress callback checks: the run ends with a message, the store is as
    before; the next generation starts afresh. The last step's label says the VAE decode follows."""
    from accel.config import RunConfig
    from accel.forms import DEFAULT_PROMPT as PROMPT
    from accel.runs import RunStore
    from accel.ui import generation

    monkeypatch.setenv("ACCEL_RUNS_DIR", str(tmp_path / "runs"))
    cfg = RunConfig(prompt=PROMPT, model="tiny-wan", method="dense", height=32, width=32, frames=5, steps=3)
    labels = []

    def pressing_stop(fraction, desc):
        labels.append(desc)
        generation.request_stop()  # pressed during the first step

    with pytest.raises(generation.Stopped, match="at step 2 of 3: nothing was stored"):
        generation.generate_run(cfg, False, pressing_stop)
    assert labels == ["step 1/3"] and RunStore(tmp_path / "runs").list() == []
    generation.generate_run(cfg, False, lambda fraction, desc: labels.append(desc))  # Stop was for the last one only
    assert labels[-1] == "step 3/3 · decoding the video (VAE)" and len(RunStore(tmp_path / "runs").list()) == 1


def test_a_stopped_generation_is_a_neutral_note_and_the_shown_run_stays(monkeypatch, tmp_path):
    import gradio as gr

    from accel.ui import generation

    monkeypatch.setenv("ACCEL_RUNS_DIR", str(tmp_path / "runs"))
    notes = []
    monkeypatch.setattr(generation.gr, "Info", lambda message, **_: notes.append(message))
    values = forms.form_values(model="tiny-wan", method="dense", sampling={"steps": 3, "height": 32, "width": 32,
                                                                           "frames": 5})  # fmt: skip
    out = generation.run_generation(*values, progress=lambda fraction, desc: generation.request_stop())
    assert out == (gr.skip(),) * 3  # video, headline and run picker unchanged; no error raised
    assert notes == ["Stopped: at step 2 of 3: nothing was stored"]  # pressed during step 1


def test_the_form_sets_the_kv_commit_and_its_dense_reference_keeps_it():
    sampling = {"steps": 2, "kv_commit": "clean-pass"}
    values = forms.form_values(model="pocket-skyreels", method="flowcache", sampling=sampling)
    n = forms.SETTINGS_START
    cfg = forms.run_config(*values[:4], values[4 : n - 2], values[n:], values[n - 1])
    assert cfg.kv_commit == "clean-pass"
    assert forms.dense_reference(cfg.to_dict()).kv_commit == "clean-pass"
    default = forms.form_values(model="pocket-skyreels", method="flowcache")
    assert forms.run_config(*default[:4], default[4 : n - 2], default[n:], "").kv_commit == "last-step"
    older = {k: v for k, v in cfg.to_dict().items() if k != "kv_commit"}  # stored before the setting existed
    assert forms.dense_reference(older).kv_commit == "last-step"
