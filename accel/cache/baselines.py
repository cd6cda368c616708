"""diffusers' own cache hooks as baseline acceleration methods, with skip accounting.

Six baselines from ``diffusers.hooks`` are installed on ``pipe.transformer`` through
``CacheMixin.enable_cache`` and always removed again (``disable_cache``):

- ``fbc``: First Block Cache (whole-step skip of blocks 1..N-1 when block 0's residual barely changes);
- ``pab``: Pyramid Attention Broadcast (self-/cross-attention outputs reused every few calls);
- ``fastercache``: FasterCache (self-attention outputs extrapolated from the last two computed ones);
- ``magcache``: MagCache (whole-step skip driven by calibrated residual-magnitude ratios);
- ``taylorseer``: TaylorSeer (attention/FFN outputs predicted with a Taylor series between refreshes);
- ``seacache``: SeaCache (whole-step skip while a spectrally filtered latent input barely changes, the residual
  extrapolated; Wan2.1 text-to-video only: diffusers' other pipelines give it no step index or sigma).

A baseline that silently skips nothing is a bug, so :class:`SkipCounter` measures what really ran: it puts
plain torch forward hooks on the first ``nn.Linear`` inside every block's ``attn1``/``attn2``/``ffn``
("units"). diffusers' hooks replace ``module.forward`` and return a cached value without calling the
original forward, so these inner layers only fire when the unit was computed (a hook on the unit or block
itself would still fire on a cache hit). Block executions are token-weighted like the chunked runner's
(:func:`accel.cache.chunked.work_metrics`): a call over ``n`` tokens counts ``n / unit_tokens`` per block
run, with ``unit_tokens`` one chunk on diffusion-forcing models (the whole video on Wan: one per call).

diffusers 0.42 keeps one PAB / FasterCache hook state for all calls, while the Wan and SkyReels pipelines
call the transformer once per CFG branch (inside ``cache_context("cond")`` / ``("uncond")``): a reused
attention output of the uncond call would be the cond call's. :class:`BranchStates` gives each branch its
own hook states, keyed by that context name.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    SeaCacheConfig,
    TaylorSeerCacheConfig,
)
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.hooks.faster_cache import FasterCacheBlockHook, FasterCacheDenoiserHook
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager
from diffusers.hooks.pyramid_attention_broadcast import PyramidAttentionBroadcastHook

from accel.models import pipeline_call, run_pipeline
from accel.schema import Event
from accel.target import Generation, Target

UNITS = ("attn1", "attn2", "ffn")
# TaylorSeer uses re.fullmatch on module names; these match Wan/SkyReels blocks (the diffusers default
# "^blocks.*attn" would not fullmatch "blocks.0.attn1", and it leaves the FFN out).
TAYLORSEER_IDENTIFIERS = (r"blocks\.\d+\.attn[12]", r"blocks\.\d+\.ffn")


def register_skyreels_block() -> None:
    """Register ``SkyReelsV2TransformerBlock`` for FBC/MagCache like diffusers registers Wan's block (idempotent)."""
    from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2TransformerBlock

    try:
        TransformerBlockRegistry.get(SkyReelsV2TransformerBlock)  # raises ValueError while not registered
    except ValueError:
        TransformerBlockRegistry.register(
            model_class=SkyReelsV2TransformerBlock,
            metadata=TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None),
        )


def _is_skyreels(pipe: Any) -> bool:
    return type(pipe.transformer).__name__.startswith("SkyReelsV2")


def _timestep_callback(pipe: Any):
    """The current timestep as a scalar (SkyReels DF keeps one timestep per latent frame: take the max)."""
    if _is_skyreels(pipe):
        return lambda: pipe.current_timestep.max()
    return lambda: pipe.current_timestep


def baseline_config(name: str, pipe: Any, **overrides: Any) -> Any:
    """The diffusers cache config for baseline ``name`` on ``pipe``, video defaults updated by ``overrides``.

    Defaults: FBC ``threshold=0.05`` (ParaAttention's video setting); PAB spatial (attn1) every 2nd and cross
    (attn2) every 6th call within timesteps (100, 800) (the PAB paper's pyramid; Wan has no temporal blocks);
    FasterCache attn1 every 2nd call in (-1, 681), weight 0.5, ``is_guidance_distilled=True`` (Wan runs CFG as
    separate calls, so the batched-uncond skip cannot apply); MagCache ``threshold=0.06, max_skip_steps=3,
    retention_ratio=0.2`` and needs ``mag_ratios`` (see :func:`calibrate_mag_ratios`) and
    ``num_inference_steps`` (transformer calls per branch); TaylorSeer ``cache_interval=5,
    disable_cache_before_step=3, max_order=1`` on attn1/attn2/ffn; SeaCache diffusers' defaults
    (``threshold=0.25``, first and last step computed, at most 2 reuses in a row, order-1 residual extrapolation).
    """
    if _is_skyreels(pipe) and name in ("fbc", "magcache"):
        register_skyreels_block()
    if name == "fbc":
        return FirstBlockCacheConfig(**{"threshold": 0.05, **overrides})
    if name == "pab":
        kw = {
            "spatial_attention_block_skip_range": 2,
            "spatial_attention_timestep_skip_range": (100, 800),
            "cross_attention_block_skip_range": 6,
            "cross_attention_timestep_skip_range": (100, 800),
            "current_timestep_callback": _timestep_callback(pipe),
        }
        return PyramidAttentionBroadcastConfig(**{**kw, **overrides})
    if name == "fastercache":
        kw = {
            "spatial_attention_block_skip_range": 2,
            "spatial_attention_timestep_skip_range": (-1, 681),
            "attention_weight_callback": lambda _: 0.5,
            "is_guidance_distilled": True,
            "tensor_format": "BCFHW",
            "current_timestep_callback": _timestep_callback(pipe),
        }
        return FasterCacheConfig(**{**kw, **overrides})
    if name == "magcache":
        if overrides.get("mag_ratios") is None and not overrides.get("calibrate", False):
            raise ValueError(
                "magcache needs mag_ratios=... (per model and schedule): use calibrate_mag_ratios(pipe, ...)"
            )
        if "num_inference_steps" not in overrides:
            raise ValueError("magcache needs num_inference_steps= (transformer calls per CFG branch)")
        return MagCacheConfig(**{"threshold": 0.06, "max_skip_steps": 3, "retention_ratio": 0.2, **overrides})
    if name == "taylorseer":
        kw = {
            "cache_interval": 5,
            "disable_cache_before_step": 3,
            "max_order": 1,
            "cache_identifiers": list(TAYLORSEER_IDENTIFIERS),
        }
        return TaylorSeerCacheConfig(**{**kw, **overrides})
    if name == "seacache":
        return SeaCacheConfig(**{"threshold": 0.25, **overrides})
    raise ValueError(f"unknown baseline {name!r}; choose from fbc, pab, fastercache, magcache, taylorseer, seacache")


BRANCH_HOOK = "accel_branch_states"
PER_CALL_STATE_HOOKS = (PyramidAttentionBroadcastHook, FasterCacheBlockHook, FasterCacheDenoiserHook)


class BranchStates(ModelHook):
    """One state per CFG branch for diffusers hooks that keep a single one (PAB, FasterCache in 0.42).

    Registered on the transformer after the cache (so it runs first), it reads the pipeline's
    ``cache_context`` name through a :class:`StateManager` (which diffusers sets on every stateful hook) and
    swaps the ``state`` of every such hook under the transformer to that branch's own, fresh on first use.
    """

    _is_stateful = True

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.context = StateManager(BaseState)  # only its context is used
        self.hooks = [
            hook
            for module in transformer.modules()
            for hook in getattr(getattr(module, "_diffusers_hook", None), "hooks", {}).values()
            if isinstance(hook, PER_CALL_STATE_HOOKS)
        ]
        self.fresh = [copy.deepcopy(h.state) for h in self.hooks]
        self.states: dict[str | None, list[Any]] = {}
        self.current: str | None = None

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        name = self.context._context.name if self.context._context is not None else None
        if name != self.current:
            self.states[self.current] = [h.state for h in self.hooks]
            fresh = self.states.get(name) or [copy.deepcopy(s) for s in self.fresh]
            for hook, state in zip(self.hooks, fresh, strict=True):
                hook.state = state
            self.current = name
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        """Forget every branch's state (diffusers resets stateful hooks between runs)."""
        self.states, self.current = {}, None
        for hook, fresh in zip(self.hooks, self.fresh, strict=True):
            hook.state = copy.deepcopy(fresh)
        return module


def _first_linear(module: torch.nn.Module) -> torch.nn.Module:
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear):
            return sub
    raise ValueError(f"no nn.Linear inside {type(module).__name__}")


class SkipCounter:
    """Counts, per transformer call, which block units (attn1/attn2/ffn) really computed."""

    def __init__(self, transformer: torch.nn.Module, recorder: Any = None, unit_tokens: int | None = None) -> None:
        self.recorder = recorder
        self.num_blocks = len(transformer.blocks)
        self.patch = tuple(transformer.config.patch_size)
        self.unit_tokens = unit_tokens
        self.calls = 0
        self.unit_executions = 0
        self.block_executions = 0.0  # token-weighted (see the module docstring)
        self.block_executions_possible = 0.0
        self.per_call: list[int] = []  # executed blocks per transformer call
        self._ran: set[tuple[int, str]] = set()
        self._weight = 1.0
        self._handles: list[torch.utils.hooks.RemovableHandle] = [
            transformer.register_forward_pre_hook(self._start, with_kwargs=True),
            transformer.register_forward_hook(self._end),
        ]
        for i, block in enumerate(transformer.blocks):
            for unit in UNITS:
                self._handles.append(_first_linear(getattr(block, unit)).register_forward_hook(self._marker(i, unit)))

    def _marker(self, i: int, unit: str):
        def hook(*_: Any) -> None:
            self._ran.add((i, unit))

        return hook

    def _start(self, _: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self._ran = set()
        x = kwargs.get("hidden_states", args[0] if args else None)
        self._weight = 1.0
        if self.unit_tokens and torch.is_tensor(x) and x.ndim == 5:  # (B, C, F, H, W) latents
            pt, ph, pw = self.patch
            self._weight = x.shape[0] * (x.shape[2] // pt) * (x.shape[3] // ph) * (x.shape[4] // pw) / self.unit_tokens

    def _end(self, *_: Any) -> None:
        blocks = len({i for i, _ in self._ran})
        self.calls += 1
        self.unit_executions += len(self._ran)
        self.block_executions += blocks * self._weight
        self.block_executions_possible += self.num_blocks * self._weight
        self.per_call.append(blocks)
        if self.recorder is not None:
            self.recorder.log(Event.BASELINE_BLOCKS, blocks)
            self.recorder.log(Event.BASELINE_UNITS, len(self._ran))

    def remove(self) -> None:
        """Detach the counting hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def summary(self) -> dict[str, Any]:
        """Totals: calls, executed/possible blocks and units, and the skipped fraction of units."""
        units_possible = self.calls * self.num_blocks * len(UNITS)
        return {
            "calls": self.calls,
            "block_executions": round(self.block_executions, 2),
            "block_executions_possible": round(self.block_executions_possible, 2),
            "unit_executions": self.unit_executions,
            "unit_executions_possible": units_possible,
            "skipped_fraction": 1.0 - self.unit_executions / units_possible if units_possible else 0.0,
        }


@contextmanager
def baseline_installed(
    pipe: Any, name: str, recorder: Any = None, unit_tokens: int | None = None, **overrides: Any
) -> Iterator[SkipCounter]:
    """Enable baseline ``name`` on ``pipe.transformer`` for the block, yielding its :class:`SkipCounter`
    (``unit_tokens``: see the module docstring). PAB and FasterCache get one hook state per CFG branch.

    The cache and the counting hooks are always removed on exit, leaving the pipeline dense.
    """
    transformer = pipe.transformer
    config = baseline_config(name, pipe, **overrides)
    counter = SkipCounter(transformer, recorder, unit_tokens)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    try:
        transformer.enable_cache(config)
        try:
            if name in ("pab", "fastercache"):
                registry.register_hook(BranchStates(transformer), BRANCH_HOOK)
            yield counter
        finally:
            if registry.get_hook(BRANCH_HOOK) is not None:
                registry.remove_hook(BRANCH_HOOK, recurse=False)
            transformer.disable_cache()
    finally:
        counter.remove()


def calibrate_mag_ratios(pipe: Any, **call_kwargs: Any) -> list[float]:
    """MagCache ratios for ``pipe`` from one dense run of ``pipe(**call_kwargs)``.

    Same statistic as diffusers' ``MagCacheConfig(calibrate=True)`` (mean over tokens of
    ``|r_t| / |r_{t-1}|`` for the residual ``r`` of the whole block stack, 1.0 for the first call), averaged
    over the CFG branches (told apart by the transformer's ``encoder_hidden_states``). The list length is the number of
    transformer calls per branch: pass it as ``num_inference_steps``.
    """
    blocks = pipe.transformer.blocks
    inputs: dict[str, torch.Tensor] = {}
    prev: dict[int, torch.Tensor] = {}
    ratios: dict[int, list[float]] = {}

    def branch(_: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        inputs["branch"] = ehs.data_ptr() if torch.is_tensor(ehs) else 0

    def pre(_: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        inputs["h"] = kwargs.get("hidden_states", args[0] if args else None)

    def post(_: torch.nn.Module, args: tuple, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        residual = (out - inputs["h"]).float()
        key = inputs["branch"]
        if key in prev:
            cur, old = torch.linalg.norm(residual, dim=-1), torch.linalg.norm(prev[key], dim=-1)
            ratio = (cur / (old + 1e-8)).mean().item()
        else:
            ratio = 1.0
        ratios.setdefault(key, []).append(ratio)
        prev[key] = residual

    handles = [
        pipe.transformer.register_forward_pre_hook(branch, with_kwargs=True),
        blocks[0].register_forward_pre_hook(pre, with_kwargs=True),
        blocks[-1].register_forward_hook(post),
    ]
    try:
        with torch.no_grad():
            pipe(**call_kwargs)
    finally:
        for h in handles:
            h.remove()
    series = list(ratios.values())
    n = min(len(s) for s in series)
    return [sum(s[i] for s in series) / len(series) for i in range(n)]


@contextmanager
def install(target: Target, threshold: float | None = None) -> Iterator[Generation]:
    """The baseline's diffusers hook on diffusers' own pipeline (Wan or SkyReels DF), counting skipped blocks;
    ``threshold`` (FBC / MagCache) None: the hook's default.

    MagCache needs per-model ratios: one dense calibration pass runs first (its time is in the metrics).
    """
    pipe, cfg, spec, s = target.pipe, target.cfg, target.spec, target.cfg.settings
    overrides: dict[str, Any] = {} if threshold is None else {"threshold": threshold}
    extra: dict[str, Any] = {"baseline": s.cache, "baseline_threshold": overrides.get("threshold")}
    if s.cache == "magcache":
        t0 = time.perf_counter()
        with torch.inference_mode():
            ratios = calibrate_mag_ratios(pipe, **{**pipeline_call(cfg, spec), "output_type": "latent"})
        overrides.update(mag_ratios=ratios, num_inference_steps=len(ratios))
        extra["magcache_calibration_s"] = time.perf_counter() - t0
    unit = None
    if spec.family == "skyreels":  # one chunk of latent frames, as the chunked runner counts
        _, ph, pw = pipe.transformer.config.patch_size
        scale = pipe.vae_scale_factor_spatial
        unit = cfg.causal_block_size * (cfg.height // scale // ph) * (cfg.width // scale // pw)
    with baseline_installed(pipe, s.cache, target.recorder, unit, **overrides) as counter:

        def run(progress):
            return run_pipeline(pipe, cfg, spec, progress), {**extra, **counter.summary()}

        yield run
