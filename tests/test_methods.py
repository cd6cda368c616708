"""The method registry: one record per method, read by the runner, the CLI, the app and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pytest
from conftest import PROMPT, WAN

from accel import methods, models
from accel.attention.base import AttentionMethod
from accel.config import ConfigError, MethodSettings, RunConfig, settings_for
from accel.schema import Event


def test_every_record_names_its_settings_and_every_event_has_a_writer():
    for name, record in methods.REGISTRY.items():
        assert record.settings.method == name
        assert record.summary
        assert set(record.families) <= set(methods.FAMILIES)
        assert type(settings_for(name, {})) is record.settings
    written = set().union(*(m.events for m in methods.REGISTRY.values()))
    assert written == set(Event), f"events nobody writes: {set(Event) - written}"
    assert methods.calibratable() == {"xattention": "tau", "svg2": "top_p"}
    with pytest.raises(ConfigError, match="unknown method 'nope'; choose one of dense, xattention"):
        methods.get("nope")


def test_runs_write_only_the_events_their_method_declares(stored_runs):
    _, runs = stored_runs
    for run in runs.values():
        written = set(run.telemetry["event"].dropna().unique())
        declared = methods.get(run.config["method"]).events
        assert written <= declared, f"{run.config['label']} wrote undeclared {written - declared}"
    assert Event.MASK_REFRESH in set(runs["xattention"].telemetry["event"])  # TMR on: its events are there


def test_variants_follow_the_model_family_and_the_shipped_tables():
    wan = methods.variants(models.resolve("pocket-wan"))
    sky = methods.variants(models.resolve("pocket-skyreels"))
    assert next(iter(wan)) == next(iter(sky)) == "dense"
    assert wan["xattention+tmr+ebc"][0] == "xattention" and wan["xattention+tmr+ebc"][1]["tmr"] is True
    assert "flowcache-slow" not in wan and sky["flowcache-fast"] == ("flowcache", {"preset": "fast"})
    assert "svg2+ebc" not in sky  # no table calibrated for pocket-skyreels
    assert {n for n, (m, _) in wan.items() if m == "baseline"} == {
        "fbc",
        "pab",
        "fastercache",
        "magcache",
        "taylorseer",
    }


def test_settings_say_their_dense_warmup():
    assert settings_for("xattention", {"warmup_steps": 3}).dense_steps(20) == 3
    svg2 = settings_for("svg2", {"first_times_fp": 0.2, "first_layers_fp": 0.03})
    # floor, as the reference: 0.03 of 30 layers -> 0, of 40 -> 1
    assert (svg2.dense_steps(20), svg2.dense_steps(50), svg2.dense_layers(30), svg2.dense_layers(40)) == (4, 10, 0, 1)
    assert (svg2.dense_steps(3), svg2.dense_layers(4)) == (0, 0)
    assert settings_for("dense").dense_steps(50) == 0 == settings_for("flowcache").dense_steps(50)
    fc = settings_for("flowcache", {"attention": "svg2", "attention_tmr": True})
    assert fc.attention_settings() == settings_for("svg2", {"tmr": True})
    assert settings_for("flowcache").attention_settings() is None


# -- adding a method: one module (here, this test) and one registry entry --------------------------------------
@dataclass(frozen=True)
class ExactSettings(MethodSettings):
    """Exact attention written out in torch (a stand-in for a new sparse method)."""

    method: ClassVar[str] = "exact"
    log_density: bool = field(default=True, metadata={"help": "Log a density of 1 per head."})

    def attention_settings(self) -> MethodSettings:
        return self


class ExactAttention(AttentionMethod):
    name = "exact"

    def attend(self, q, k, v, layer, info):
        import torch

        if self.recorder is not None:
            self.recorder.log(Event.DENSITY, torch.ones(q.shape[2]), layer=layer, density=torch.ones(q.shape[2]))
        scores = torch.einsum("blhd,bmhd->bhlm", q.float(), k.float()) / q.shape[-1] ** 0.5
        return torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v.float()).to(q.dtype)


def test_a_new_method_is_one_registry_entry(monkeypatch, store):
    from accel.cli import setting_flags
    from accel.runner import generate

    record = methods.Method(
        "exact",
        ExactSettings,
        ("wan",),
        methods.get("xattention").install,
        frozenset({Event.DENSITY}),
        lambda spec: {"exact": {}},
        attention=lambda s, spec, recorder=None, seed=0: ExactAttention(recorder),
        summary="exact attention in plain torch",
    )
    monkeypatch.setitem(methods.REGISTRY, "exact", record)
    assert "log_density" in setting_flags() and "exact" in methods.variants(models.resolve("tiny-wan"))
    run = generate(RunConfig(prompt=PROMPT, method="exact", **WAN), store)
    dense = generate(RunConfig(prompt=PROMPT, method="dense", **WAN), store)
    assert set(run.telemetry["event"]) == {"density"}
    diff = np.abs(run.frames().astype(int) - dense.frames().astype(int))
    assert diff.max() <= 2, "exact attention reproduces diffusers' attention up to rounding"
    assert RunConfig.from_dict(run.config).settings == ExactSettings()  # the stored run reopens
    with pytest.raises(ConfigError, match=r"exact runs on Wan2\.1 models, not on tiny-skyreels"):
        generate(RunConfig(prompt=PROMPT, model="tiny-skyreels", method="exact", **WAN), store)
