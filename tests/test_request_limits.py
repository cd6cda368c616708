"""Requests a user types are checked before anything heavy: caps, the memory estimate, finite settings, the run
store; failures while generating or saving are one line and leave no run behind."""

from __future__ import annotations

import errno
import math
import shutil

import pytest
from conftest import PROMPT

from accel import budget, models, runner
from accel.cli import main as cli_main
from accel.config import RunConfig
from accel.errors import ConfigError
from accel.methods import settings_for
from accel.runs import RunStore, StoreError
from viz import panels

SMALL = {"height": 64, "width": 64, "frames": 5, "steps": 2}


def _no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded for a request that should have been refused")

    monkeypatch.setattr(models, "load_pipeline", refuse)


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        ({"height": 8192, "width": 8192, "frames": 81}, r"8192x8192, 81 frames is 5,505,024 latent tokens"),
        ({"height": 2048, "width": 2048, "frames": 81}, r"344,064 latent tokens per pass, above the cap of 262,144"),
        ({"steps": 10**6}, r"1000000 steps is above the cap of 500 \(--max-steps\)"),
    ],
)
def test_caps_refuse_before_loading(request_, match, store, monkeypatch):
    _no_loading(monkeypatch)
    with pytest.raises(budget.BudgetError, match=match):
        runner.generate(RunConfig(prompt=PROMPT, model="tiny-wan", **{**SMALL, **request_}), store)
    assert not store.root.exists() or not any(store.root.iterdir())


def test_memory_estimate_refuses_far_above_available(store, monkeypatch):
    _no_loading(monkeypatch)
    free = budget.available_bytes("cpu")
    assert free is not None and free > 0
    big = RunConfig(prompt=PROMPT, model="tiny-wan", height=4096, width=4096, frames=321, steps=2)
    need = budget.estimate(big.resolve({}), models.resolve("tiny-wan"), 4)
    assert need.total > 4 * free  # far above what this machine has
    with pytest.raises(budget.BudgetError, match=r"needs about .* GiB \(weights .*\) but cpu has .* GiB free"):
        runner.generate(big, store, limits=budget.Limits(max_tokens=0, max_steps=0))


def test_estimate_parts_scale_with_the_request():
    spec = models.resolve("pocket-wan")
    small = RunConfig(prompt="x", model="pocket-wan", height=256, width=256, frames=17, steps=2)
    large = RunConfig(prompt="x", model="pocket-wan", height=512, width=512, frames=33, steps=2)
    a, b = budget.estimate(small, spec, 4), budget.estimate(large, spec, 4)
    assert budget.latent_tokens(small) == 5 * 16 * 16 and budget.latent_tokens(large) == 9 * 32 * 32
    assert b.activations > 7 * a.activations and b.vae_decode == 4 * a.vae_decode and b.video * 17 == a.video * 4 * 33
    assert a.weights == b.weights > 0 and budget.estimate(small, spec, 4, weights_loaded=True).weights == 0
    # a long SkyReels video is denoised one window of base_num_frames at a time
    long = RunConfig(prompt="x", model="pocket-skyreels", height=64, width=64, frames=97, base_num_frames=17, steps=2)
    assert budget.latent_tokens(long) == 5 * 4 * 4


def test_limits_from_flags_and_environment(monkeypatch, capsys):
    monkeypatch.setenv(budget.ENV_MAX_STEPS, "7")
    assert budget.Limits.from_env() == budget.Limits(budget.DEFAULT_MAX_TOKENS, 7)
    monkeypatch.setenv(budget.ENV_MAX_STEPS, "many")
    with pytest.raises(budget.BudgetError, match="ACCEL_MAX_STEPS must be an integer"):
        budget.Limits.from_env()
    monkeypatch.delenv(budget.ENV_MAX_STEPS)
    assert cli_main(["generate", "--model", "tiny-wan", "--prompt", "x", "--steps", "9", "--max-steps", "8"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "error: 9 steps is above the cap of 8 (--max-steps)"


@pytest.mark.parametrize(
    ("method", "field", "value"),
    [
        ("flowcache", "thresh", math.nan),
        ("motioncache", "thresh", math.inf),
        ("baseline", "threshold", math.inf),
        ("xattention", "tmr_delta", math.inf),
        ("xattention", "tau", (0.9, math.nan)),
        ("svg2", "top_p", math.nan),
        ("flowcache", "kv_lambda", -math.inf),
    ],
)
def test_non_finite_settings_are_refused(method, field, value):
    with pytest.raises(ConfigError, match=f"{field} must be a finite number"):
        settings_for(method, {field: value})


@pytest.mark.parametrize("field", ["guidance", "addnoise_condition"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_sampling_is_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        RunConfig(prompt="x", **{field: value})


def test_cli_non_finite_is_one_line(capsys):
    assert cli_main(["generate", "--model", "tiny-wan", "--prompt", "x", "--guidance", "inf"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "error: guidance must be a finite number, got inf"


def test_unwritable_store_is_found_before_loading(tmp_path, monkeypatch):
    _no_loading(monkeypatch)
    store = RunStore(tmp_path / "runs")
    real = type(store.root).write_bytes

    def read_only(self, data):
        if self.name.startswith(".tmp-probe"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(self, data)

    monkeypatch.setattr(type(store.root), "write_bytes", read_only)
    with pytest.raises(StoreError, match=r"runs is not writable: Read-only file system"):
        runner.generate(RunConfig(prompt=PROMPT, model="tiny-wan", **SMALL), store)


def test_full_disk_is_found_before_loading(tmp_path, monkeypatch):
    _no_loading(monkeypatch)
    store = RunStore(tmp_path / "runs")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(StoreError, match=r"has 1 MiB free; this run needs about \d+ MiB"):
        runner.generate(RunConfig(prompt=PROMPT, model="tiny-wan", **SMALL), store)


def test_full_disk_while_saving_is_one_line_and_stores_nothing(store, tiny_pipe, monkeypatch):
    import accel.runs

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(accel.runs.RunWriter, "write_table", full)
    with pytest.raises(runner.RunError, match=r"could not save the run in .*: No space left on device; nothing"):
        runner.generate(RunConfig(prompt=PROMPT, model="tiny-wan", **SMALL), store)
    assert not any(store.root.iterdir())


def test_cpu_allocator_failure_is_a_run_error(store, tiny_pipe, monkeypatch):
    import accel.attention

    def oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 92233720368 bytes. Error code 12 (Cannot allocate memory)")  # fmt: skip

    monkeypatch.setattr(accel.attention, "run_pipeline", oom)
    with pytest.raises(runner.RunError, match=r"out of memory on cpu at 64x64x5: lower the size or frames"):
        runner.generate(RunConfig(prompt=PROMPT, model="tiny-wan", **SMALL), store)
    assert not store.root.exists() or not any(store.root.iterdir())
    monkeypatch.setattr(accel.attention, "run_pipeline", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):  # any other failure keeps its type and traceback
        runner.generate(RunConfig(prompt=PROMPT, model="tiny-wan", **SMALL), store)


def test_a_prompt_longer_than_the_encoder_takes_is_recorded(store, tiny_pipe):
    spec = models.resolve("tiny-wan")
    long = " ".join(["a red ball rolls over green grass"] * 100)
    run = runner.generate(RunConfig(prompt=long, model="tiny-wan", **SMALL), store)
    assert run.metrics["prompt_tokens"] == spec.text_tokens
    assert run.metrics["warnings"] and f"the text encoder takes {spec.text_tokens}" in run.metrics["warnings"][0]
    assert f"**Warning**: {run.metrics['warnings'][0]}" in panels.headline(store, run)
    short = runner.generate(RunConfig(prompt="a red ball", model="tiny-wan", **SMALL), store)
    assert not any("text encoder" in w for w in short.metrics["warnings"])  # (a load warning may be there)
    assert 0 < short.metrics["prompt_tokens"] < spec.text_tokens
