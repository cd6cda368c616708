"""Where the denoising loop is: step, timestep, CFG branch and token grid of each transformer call.

:class:`StepTracker` is a stateful diffusers ``ModelHook`` on the transformer. Pipelines that wrap
their denoiser calls in ``transformer.cache_context("cond"|"uncond", step_index=i, ...)`` (Wan,
SkyReels) hand it the branch name and step index directly. For loops without a cache context it
counts: a new timestep value starts a new step, and the calls within one step are branches
``cond``, ``uncond``, ``call2`` ...
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager

HOOK_NAME = "accel_step_tracker"
BRANCH_NAMES = ("cond", "uncond")


@dataclass
class StepInfo:
    """The current transformer call as the methods see it."""

    step: int = -1
    num_steps: int = 0
    timestep: float = float("nan")
    branch: str = "cond"
    grid: tuple[int, int, int] = (0, 0, 0)
    call: int = -1  # transformer calls so far in this run, 0-based
    chunk: int | None = None  # the group being forwarded, in chunked (autoregressive) runs


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class _ContextReceiver(StateManager):
    """The slot through which diffusers hands a stateful hook the pipeline's ``CacheContext``
    (``set_context``, called on every ``StateManager`` attribute); keeps the current one readable."""

    def __init__(self) -> None:
        super().__init__(_NoState)
        self.current: CacheContext | None = None

    def set_context(self, context: CacheContext | None) -> None:
        super().set_context(context)
        self.current = context


class StepTracker(ModelHook):
    """Fills :class:`StepInfo` before every transformer forward."""

    _is_stateful = True

    def __init__(self, patch_size: tuple[int, int, int], num_steps: int = 0):
        super().__init__()
        self.context = _ContextReceiver()
        self.patch_size = tuple(patch_size)
        self.expected_steps = num_steps
        self.info = StepInfo(num_steps=num_steps)
        self._last_t: float | None = None
        self._calls_this_step = 0

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float("nan")
        info = self.info
        info.call += 1
        ctx = self.context.current
        if ctx is not None and ctx.step_index is not None:
            info.step = int(ctx.step_index)
            info.branch = ctx.name
            info.num_steps = int(ctx.num_inference_steps or self.expected_steps)
        else:
            if self._last_t is None or t != self._last_t:
                info.step += 1
                self._calls_this_step = 0
            else:
                self._calls_this_step += 1
            n = self._calls_this_step
            info.branch = BRANCH_NAMES[n] if n < len(BRANCH_NAMES) else f"call{n}"
            info.num_steps = self.expected_steps
        self._last_t = t
        info.timestep = t
        if hidden is not None and hidden.ndim == 5:
            pt, ph, pw = self.patch_size
            _, _, f, h, w = hidden.shape
            info.grid = (f // pt, h // ph, w // pw)
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.info = StepInfo(num_steps=self.expected_steps)
        self._last_t = None
        self._calls_this_step = 0
        return module


def attach_tracker(transformer: torch.nn.Module, num_steps: int = 0) -> StepTracker:
    """Register a fresh :class:`StepTracker` on ``transformer`` (replacing an earlier one)."""
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.remove_hook(HOOK_NAME, recurse=False)
    tracker = StepTracker(tuple(transformer.config.patch_size), num_steps)
    registry.register_hook(tracker, HOOK_NAME)
    return tracker


def detach_tracker(transformer: torch.nn.Module) -> None:
    HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(HOOK_NAME, recurse=False)
