"""The method registry: one record per method, read by the runner, the CLI, the app and the benchmarks."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest
from conftest import PROMPT, WAN

from accel import methods, models
from accel.config import RunConfig
from accel.errors import ConfigError
from accel.methods import settings_for
from accel.schema import Event


def test_every_record_names_its_settings_and_every_event_has_a_writer():
    for name, record in zip(methods.names(), methods.records(), strict=True):
        assert record.settings.method == name
        assert record.summary
        assert set(record.families) <= set(methods.FAMILIES)
        assert type(settings_for(name, {})) is record.settings
    written = set().union(*(m.events for m in methods.records()))
    assert written == set(Event), f"events nobody writes: {set(Event) - written}"
    assert methods.calibratable() == {"xattention": "tau", "svg2": "top_p", "sparge": "cdf_threshold"}
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
    baselines = {"fbc", "pab", "fastercache", "magcache", "taylorseer"}
    assert {n for n, (m, _) in wan.items() if m == "baseline"} == baselines | {"seacache"}
    assert {n for n, (m, _) in sky.items() if m == "baseline"} == baselines  # SeaCache: Wan2.1 only


def test_seacache_on_skyreels_is_refused_before_anything_loads(store):
    from accel.runner import checked

    cfg = RunConfig(prompt=PROMPT, model="tiny-skyreels", method="baseline", settings={"cache": "seacache"})
    with pytest.raises(ConfigError, match=r"baseline with these settings does not run on tiny-skyreels: .*step index"):
        checked(cfg)


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
    # a chunk cache composes the attention methods that run in the chunked runner; STA's and Radial's masks need
    # the whole video's tokens: a one-line refusal, not a failure mid-run
    assert settings_for("flowcache", {"attention": "sparge"}).attention_settings() == settings_for("sparge")
    for wan_only in ("sta", "radial"):
        with pytest.raises(ConfigError, match="attention must be one of"):
            settings_for("motioncache", {"attention": wan_only})


# -- adding a method: one module in accel/methods/ (the template, docs/method_template.py) ------------------------
TEMPLATE = Path(__file__).resolve().parents[1] / "docs" / "method_template.py"


@pytest.fixture
def window_method(tmp_path, monkeypatch):
    """The template copied as a method module on the registry's search path, the registry loaded afresh."""
    folder = tmp_path / "more_methods"
    folder.mkdir()
    shutil.copy(TEMPLATE, folder / "window.py")
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(folder)])
    monkeypatch.setattr(methods, "_REGISTRY", {})
    yield sys.modules.get("accel.methods.window") or importlib.import_module("accel.methods.window")
    sys.modules.pop("accel.methods.window", None)


def test_the_template_is_a_method_module_and_the_attention_is_its_block_mask(window_method):
    import torch

    from accel.attention.block_mask import BlockMaskAttention
    from accel.tracking import StepInfo

    assert methods.names()[-1] == "window" and methods.get("window") is window_method.METHOD
    # the pattern: blocks of 4 tokens over frames of 6 tokens; block i covers frames (4i // 6 .. (4i + 3) // 6)
    mask = window_method.window_mask(0, 2, 3, 3, 4, 6)
    assert mask.shape == (2, 3, 3) and mask[0].tolist() == [
        [True, True, False],
        [True, True, True],
        [False, True, True],
    ]
    # the output is dense attention under the token mask the block mask stands for (fp32)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 12, 2, 8, generator=gen) for _ in range(3))
    attn = BlockMaskAttention("window", lambda h, nq, nk, b, info: mask, 4)
    attn.setup(1, 2)
    out = attn.attend(q, k, v, 0, StepInfo(step=0, grid=(2, 2, 3)))
    tokens = mask[:, torch.arange(12) // 4][:, :, torch.arange(12) // 4]  # (heads, Lq, Lk)
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / 8**0.5
    ref = torch.einsum("bhlm,bmhd->blhd", scores.masked_fill(~tokens, float("-inf")).softmax(-1), v)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_a_method_module_is_all_a_new_method_takes(window_method, store):
    """The CLI flags, the app's fields, the variants, a run, its stored masks and the Sparsity view follow from the
    one module, with no other edit."""
    from accel.cli import setting_flags
    from accel.fields import all_field_specs
    from accel.runner import generate
    from viz import sparsity

    assert "window" in setting_flags()["window"].methods  # a flag of its own or shared (STA has --window)
    assert "window" in {f.method for f in all_field_specs()}
    assert {"window", "window-w2"} <= set(methods.variants(models.resolve("tiny-wan")))
    assert "window block 64" in methods.defaults_text(models.resolve("tiny-wan"))
    run = generate(RunConfig(prompt=PROMPT, method="window", **WAN), store)
    events = set(run.telemetry["event"].dropna())
    assert events == {"density", "dense_warmup"} and events <= methods.get("window").events
    # tiny-wan at 128x128x9: 3 latent frames of 64 tokens, blocks of 64 (one frame each): window 1 drops 2 of 9
    density = run.telemetry[run.telemetry["event"] == "density"]["value"]
    assert density.min() == pytest.approx(7 / 9)
    masks = sparsity.mask_index(run)
    assert len(masks) > 0 and sparsity.head_masks(run, int(masks["step"].iloc[0]), 0).data
    assert RunConfig.from_dict(run.config).settings == window_method.WindowSettings()  # the stored run reopens
    with pytest.raises(ConfigError, match=r"window runs on Wan2\.1 models, not on tiny-skyreels"):
        generate(RunConfig(prompt=PROMPT, model="tiny-skyreels", method="window", **WAN), store)
