"""The app serves on localhost and runs a generation on the embedded model through its API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture()
def served_app(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCEL_RUNS_DIR", str(tmp_path / "runs"))
    import app

    demo = app.build_app().queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield demo
    finally:
        demo.close()


def test_generate_through_the_api(served_app, tmp_path):
    assert served_app.local_url.startswith("http://127.0.0.1:")
    client = gradio_client.Client(served_app.local_url, verbose=False)
    args = ("tiny-wan", "xattention", "a red circle moves left", "", 0, 8, 0.8, 0.9, True, 3.0, "none")
    video, summary = client.predict(*args, api_name="/run_generation")
    info = json.loads(summary)
    assert Path(video).suffix == ".mp4" and Path(video).stat().st_size > 0
    assert (tmp_path / "runs" / info["run"] / "COMPLETE").exists()
    assert 0 < info["density_mean_sparse"] < 1
    assert 0 < info["mask_skip_frac"] < 1  # TMR reused some masks
    # bad input is an error message, and the app keeps serving
    with pytest.raises(Exception, match="prompt"):
        client.predict("tiny-wan", "dense", "   ", "", 0, 2, 0.9, 0.9, False, None, "none", api_name="/run_generation")
    dense = ("tiny-wan", "dense", "a blue square", "", 1, 2, 0.9, 0.9, False, None, "none")
    _, again = client.predict(*dense, api_name="/run_generation")
    assert json.loads(again)["run"] != info["run"]
