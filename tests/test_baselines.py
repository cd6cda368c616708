"""diffusers cache hooks as baselines: they run, really skip (counted), and leave the pipeline dense."""

from __future__ import annotations

import pytest
import torch

from accel.cache.baselines import baseline_config, baseline_installed, calibrate_mag_ratios
from accel.methods.baseline import BASELINE_NAMES as BASELINES

WAN = {"height": 64, "width": 64, "num_frames": 5, "num_inference_steps": 4, "guidance_scale": 5.0}
SKY = {
    "height": 64,
    "width": 64,
    "num_frames": 21,
    "base_num_frames": 21,
    "num_inference_steps": 4,
    "causal_block_size": 2,
    "ar_step": 0,
    "guidance_scale": 5.0,
}
# Aggressive enough to skip on a random-weight model (the video defaults are documented in baseline_config).
AGGRESSIVE = {"fbc": {"threshold": 0.5}, "magcache": {"threshold": 0.5}, "seacache": {"threshold": 5.0}}


class _Rows:
    """Minimal recorder stand-in."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int]] = []

    def log(self, event: str, value: int = 0, **_: object) -> None:
        self.rows.append((event, value))


def _run(pipe, output_type: str = "np", **kw) -> torch.Tensor:
    with torch.inference_mode():
        out = pipe("a red circle", negative_prompt="blurry", generator=torch.Generator().manual_seed(0),
                   output_type=output_type, **kw)  # fmt: skip
    return torch.as_tensor(out.frames)


@pytest.fixture(scope="module")
def wan():
    from accel.models import load_pipeline

    return load_pipeline("tiny-wan", "cpu", "float32")


@pytest.fixture(scope="module")
def sky():
    from accel.models import load_pipeline

    return load_pipeline("tiny-skyreels", "cpu", "float32")


def _overrides(name: str, pipe, kw: dict) -> dict:
    over = dict(AGGRESSIVE.get(name, {}))
    if name == "magcache":
        ratios = calibrate_mag_ratios(pipe, prompt="a red circle", negative_prompt="blurry", output_type="latent", **kw)
        over.update(mag_ratios=ratios, num_inference_steps=len(ratios))
    return over


@pytest.mark.parametrize("name", BASELINES)
def test_wan_baseline_skips(wan, name: str) -> None:
    rec = _Rows()
    with baseline_installed(wan, name, recorder=rec, **_overrides(name, wan, WAN)) as counter:
        frames = _run(wan, **WAN)
    s = counter.summary()
    assert torch.isfinite(frames).all()
    assert s["calls"] == 2 * WAN["num_inference_steps"]  # cond + uncond per step
    assert 0 < s["skipped_fraction"] < 1, s
    assert [v for e, v in rec.rows if e == "baseline_blocks"] == counter.per_call
    assert sum(counter.per_call) == s["block_executions"] <= s["block_executions_possible"]
    assert wan.transformer._cache_config is None  # disabled on exit


@pytest.mark.parametrize("name", ["fbc", "pab"])
def test_skyreels_baseline_skips(sky, name: str) -> None:
    with baseline_installed(sky, name, **_overrides(name, sky, SKY)) as counter:
        latents = _run(sky, output_type="latent", **SKY)
    assert torch.isfinite(latents).all()
    assert counter.summary()["skipped_fraction"] > 0, counter.summary()


def test_pipeline_restored_after_baselines(wan) -> None:
    small = {**WAN, "num_inference_steps": 3}
    before = _run(wan, output_type="latent", **small)
    for name in ("fbc", "fastercache", "taylorseer"):
        with baseline_installed(wan, name, **AGGRESSIVE.get(name, {})):
            _run(wan, output_type="latent", **small)
    with pytest.raises(RuntimeError), baseline_installed(wan, "pab"):
        raise RuntimeError("interrupted run")
    after = _run(wan, output_type="latent", **small)
    assert (after - before).abs().max().item() <= 1e-6
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in wan.transformer.modules())


def test_config_validation(wan) -> None:
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_config("nope", wan)
    with pytest.raises(ValueError, match="mag_ratios"):
        baseline_config("magcache", wan)
    cfg = baseline_config("taylorseer", wan, cache_interval=2)
    assert cfg.cache_interval == 2 and r"blocks\.\d+\.ffn" in cfg.cache_identifiers
    assert baseline_config("fastercache", wan).is_guidance_distilled


@pytest.mark.parametrize("name", ["pab", "fastercache"])
def test_a_reused_attention_output_comes_from_its_own_cfg_branch(wan, name: str) -> None:
    """diffusers 0.42 keeps one PAB / FasterCache state for both CFG calls; BranchStates keeps one per branch: a
    skipped call returns its own branch's last computed output (PAB) or extrapolates its own branch's last two
    outputs (FasterCache, weight 0.5, which caches every output, approximated ones too)."""
    from diffusers.hooks.hooks import HookRegistry

    from accel.cache.baselines import BRANCH_HOOK

    attn = wan.transformer.blocks[1].attn1
    computed: dict[str, list[torch.Tensor]] = {"cond": [], "uncond": []}
    outputs: dict[str, list[torch.Tensor]] = {"cond": [], "uncond": []}
    skipped: list[tuple[str, torch.Tensor, list[torch.Tensor]]] = []
    ran: list[bool] = []

    def after(_module, _args, output) -> None:
        branch = HookRegistry.check_if_exists_or_initialize(wan.transformer).get_hook(BRANCH_HOOK).current
        (computed[branch].append(output) if ran else skipped.append((branch, output, list(outputs[branch]))))
        outputs[branch].append(output)
        ran.clear()

    handles = [attn.to_q.register_forward_hook(lambda *_: ran.append(True)), attn.register_forward_hook(after)]
    try:
        with baseline_installed(wan, name) as counter:
            _run(wan, output_type="latent", **{**WAN, "num_inference_steps": 8})
    finally:
        for h in handles:
            h.remove()
    assert skipped and counter.summary()["skipped_fraction"] > 0
    assert {b for b, *_ in skipped} == {"cond", "uncond"}
    for branch, out, before in skipped:
        mine, other = computed[branch], computed["uncond" if branch == "cond" else "cond"]
        if name == "pab":
            assert any(out is c for c in mine) and not any(out is c for c in other)
        else:
            torch.testing.assert_close(out, before[-1] + 0.5 * (before[-1] - before[-2]))


@pytest.mark.slow  # a whole generation: in the full suite, not the quick subset
def test_fbc_on_the_embedded_models_defaults_to_a_threshold_that_skips(tmp_path) -> None:
    """ParaAttention's 0.05 never skipped on the pocket models; their default is the measured 0.1, and it skips."""
    from accel.config import RunConfig
    from accel.runner import generate
    from accel.runs import RunStore
    from viz import panels

    cfg = RunConfig(prompt="a red circle moves quickly left over a blue background", model="pocket-wan",
                    method="baseline", settings={"cache": "fbc"})  # fmt: skip
    run = generate(cfg, RunStore(tmp_path))
    m = run.metrics
    assert m["baseline_threshold"] == 0.1 and m["skipped_fraction"] > 0
    rows = dict(panels.headline_rows(None, run))  # the cache's own saving is in the headline
    skipped = m["block_executions_possible"] - m["block_executions"]
    assert rows["block executions skipped (token-weighted)"].startswith(f"{skipped:,.0f} of ")
    assert "units skipped (self-attention, cross-attention, FFN)" in rows
    explicit = generate(RunConfig(**{**cfg.to_dict(), "settings": {"cache": "fbc", "threshold": 0.05}}),
                        RunStore(tmp_path)).metrics  # fmt: skip
    assert explicit["baseline_threshold"] == 0.05
