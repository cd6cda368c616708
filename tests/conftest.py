"""Shared fixtures: the embedded pipeline at test sizes, offline hub, an isolated run store."""

from __future__ import annotations

import os

import pytest
import torch

from accel.forms import DEFAULT_PROMPT

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
# the project's own settings of the shell that runs the tests (ACCEL_KERNELS, ACCEL_RUNS_DIR, the request caps ...)
# never reach them, session fixtures included: a test that needs one sets it (monkeypatch)
for _name in [n for n in os.environ if n.startswith("ACCEL_")]:
    del os.environ[_name]
torch.set_num_threads(min(2, os.cpu_count() or 1))

# 64x64x5 frames -> latent 2 x 8 x 8 -> 2 x 4 x 4 = 32 tokens; 128x128x9 -> 3 x 8 x 8 = 192 tokens.
SMALL = {"height": 64, "width": 64, "num_frames": 5, "num_inference_steps": 3, "guidance_scale": 5.0}
MEDIUM = {"height": 128, "width": 128, "num_frames": 9, "num_inference_steps": 4, "guidance_scale": 5.0}
PROMPT = DEFAULT_PROMPT  # the app's default: the browser test finds its dense reference among these runs


@pytest.fixture(scope="session")
def tiny_pipe():
    from accel.models import load_pipeline

    return load_pipeline("tiny-wan", "cpu", "float32")


@pytest.fixture(scope="session")
def sky_pipe():
    from accel.models import load_pipeline

    return load_pipeline("tiny-skyreels", "cpu", "float32")


@pytest.fixture()
def store(tmp_path):
    from accel.runs import RunStore

    return RunStore(tmp_path / "runs")


def run_pipe(pipe, seed: int = 0, **overrides):
    """Run the pipeline at test size and return frames as a float array."""
    kwargs = {**SMALL, **overrides}
    with torch.inference_mode():
        out = pipe(
            PROMPT, negative_prompt="blurry", generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs
        )
    return out.frames


WAN = {"height": 128, "width": 128, "frames": 9, "steps": 6}
SKY = {"height": 64, "width": 64, "frames": 21, "steps": 6}


@pytest.fixture(scope="session")
def stored_runs(tmp_path_factory):
    """A small store: dense, XAttention+TMR (profiled) and SVG2 on tiny-wan; dense and MotionCache on SkyReels."""
    from accel.config import RunConfig
    from accel.runner import generate
    from accel.runs import RunStore

    store = RunStore(tmp_path_factory.mktemp("viz") / "runs")
    xa = {"warmup_steps": 2, "tmr": True, "tmr_delta": 3.0}
    svg = {"first_times_fp": 0.3, "first_layers_fp": 0.25}  # a dense warm-up step and a dense layer
    out = {
        # timed 3 times (the profiled first pass left out): the Pareto plot's dense noise band
        "dense": generate(RunConfig(prompt=PROMPT, method="dense", repeats=3, **WAN), store, profile=True),
        "xattention": generate(RunConfig(prompt=PROMPT, method="xattention", settings=xa, **WAN), store, profile=True),
        "svg2": generate(RunConfig(prompt=PROMPT, method="svg2", settings=svg, **WAN), store),
        "sky_dense": generate(RunConfig(prompt=PROMPT, model="tiny-skyreels", method="dense", **SKY), store),
        "motion": generate(
            RunConfig(
                prompt=PROMPT,
                model="tiny-skyreels",
                method="motioncache",
                settings={"warmup": 1, "phase1_updates": 1, "thresh": 0.3},
                **SKY,
            ),
            store,
        ),
    }
    return store, out


@pytest.fixture()
def served_app(stored_runs, monkeypatch):
    """The app serving the ``stored_runs`` store on 127.0.0.1 (a free port): app module, demo, store, runs."""
    store, runs = stored_runs
    monkeypatch.setenv("ACCEL_RUNS_DIR", str(store.root))
    import app

    demo = app.build_app().queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield app, demo, store, runs
    finally:
        demo.close()
