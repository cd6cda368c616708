"""TeaCache for Wan2.1 (ali-vilab/TeaCache, ``TeaCache4Wan2.1/teacache_generate.py``, ``teacache_forward``) on
diffusers' own Wan transformer, as hooks on its blocks.

Per CFG branch (diffusers' ``cache_context("cond" / "uncond")``, where the reference tells the branches apart by
call parity): the compared tensor is the timestep embedding ``e`` (diffusers' ``temb``) or, with ``use_ret_steps``,
the projected modulation ``e0`` (``timestep_proj``). Steps ``< ret_steps`` are computed (and, without ret-steps,
the last step); on the others ``acc += poly(mean|cur - prev| / mean|prev|)`` and the block stack is skipped while
``acc < thresh`` (else computed and ``acc = 0``); ``prev`` is updated on every call. Computing stores the residual
of the whole block stack (last block's output minus the first block's input); skipping returns the input plus that
residual. Patch and condition embeddings and the output head always run. A threshold <= 0 disables reuse. The
reference computes ``e`` in fp32; diffusers casts it to the text encoder's dtype (the same on CPU in fp32).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from accel.cache.baselines import SkipCounter
from accel.cache.rescale import polynomial, reference_steps, relative_l1
from accel.models import run_pipeline
from accel.target import Generation, Target

HOOK = "accel_teacache"


class BranchState(BaseState):
    """One CFG branch's accumulator, last compared tensor, residual, and what the current call does."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.acc = 0.0
        self.prev: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.stack_input: torch.Tensor | None = None
        self.skip = False


@dataclass(frozen=True)
class Rule:
    """When a call computes: the threshold, the leading steps always computed, whether the last one is too, and the
    rescaled distance between two compared tensors."""

    thresh: float
    ret_steps: int
    last_step: bool
    distance: Callable[[torch.Tensor, torch.Tensor], float]

    def decide(self, st: BranchState, cur: torch.Tensor, step: int, num_steps: int) -> bool:
        """Whether this call computes the block stack; updates the branch's accumulator and ``prev``."""
        forced = self.thresh <= 0 or step < self.ret_steps or (self.last_step and step >= num_steps - 1)
        if forced or st.prev is None or st.residual is None:
            compute = True
        else:
            st.acc += self.distance(cur, st.prev)
            compute = st.acc >= self.thresh
        st.prev = cur
        if compute:
            st.acc = 0.0
        return compute


def rule(thresh: float, coefficients: str, use_ret_steps: bool, ret_steps: int | None, num_steps: int) -> Rule:
    """The reference's schedule: with ret-steps its first 5 of 50 steps computed (scaled to the run), else the first
    step and the last one."""
    poly = polynomial(coefficients, use_ret_steps, "TeaCache")
    if ret_steps is None:
        ret_steps = reference_steps(5, num_steps) if use_ret_steps else 1
    return Rule(thresh, ret_steps, not use_ret_steps, lambda cur, prev: float(poly(relative_l1(cur, prev))))


class BlockHook(ModelHook):
    """On every block: the first decides for the call (and skips with the stored residual), the others pass their
    input through on a skipped call, the last stores the residual on a computed one."""

    _is_stateful = True

    def __init__(
        self, states: StateManager, rule: Rule, compared: dict[str, torch.Tensor], skipped: Counter, first: bool,
        last: bool,
    ):  # fmt: skip
        super().__init__()
        self.states, self.rule, self.compared, self.first, self.last = states, rule, compared, first, last
        self.skipped = skipped  # skipped calls per branch (the states are reset when the pipeline ends)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        st = self.states.get_state()
        if self.first:
            ctx = self.states.context
            compute = self.rule.decide(st, self.compared["tensor"], ctx.step_index, ctx.num_inference_steps)
            st.skip = not compute
            self.skipped[ctx.name] += st.skip
            if st.skip:
                return hidden + st.residual
            st.stack_input = hidden
        elif st.skip:
            return hidden
        out = self.fn_ref.original_forward(*args, **kwargs)
        if self.last:
            st.residual = out - st.stack_input
        return out

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.states.reset()
        return module


@contextmanager
def teacache_installed(transformer: torch.nn.Module, rule: Rule, use_ret_steps: bool) -> Iterator[Counter]:
    """TeaCache's hooks on every block of diffusers' Wan ``transformer`` for the block (the condition embedder's
    output is captured for the first block); yields the skipped calls per branch; every hook is removed on exit."""
    compared: dict[str, torch.Tensor] = {}
    skipped: Counter = Counter()

    def capture(_: torch.nn.Module, args: Any, output: tuple) -> None:
        temb, timestep_proj = output[0], output[1]
        compared["tensor"] = (timestep_proj if use_ret_steps else temb).float()

    states = StateManager(BranchState)
    blocks = transformer.blocks
    handle = transformer.condition_embedder.register_forward_hook(capture)
    registries = []
    try:
        for i, block in enumerate(blocks):
            registry = HookRegistry.check_if_exists_or_initialize(block)
            registry.register_hook(BlockHook(states, rule, compared, skipped, i == 0, i == len(blocks) - 1), HOOK)
            registries.append(registry)
        root = HookRegistry.check_if_exists_or_initialize(transformer)
        root.invalidate_child_registries_cache()  # so cache_context reaches the new block hooks
        yield skipped
    finally:
        handle.remove()
        for registry in registries:
            registry.remove_hook(HOOK, recurse=False)
        HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


@contextmanager
def install(
    target: Target, thresh: float, coefficients: str, use_ret_steps: bool, ret_steps: int | None = None
) -> Iterator[Generation]:
    """TeaCache on diffusers' Wan pipeline with the block accounting of the baseline caches (``SkipCounter``)."""
    pipe, cfg, spec = target.pipe, target.cfg, target.spec
    decision = rule(thresh, coefficients, use_ret_steps, ret_steps, cfg.steps)
    counter = SkipCounter(pipe.transformer, target.recorder)
    try:
        with teacache_installed(pipe.transformer, decision, use_ret_steps) as skipped:

            def run(progress):
                video = run_pipeline(pipe, cfg, spec, progress)
                extra = {"teacache_thresh": thresh, "teacache_ret_steps": decision.ret_steps,
                         "teacache_skipped_calls": dict(skipped)}  # fmt: skip
                return video, {**extra, **counter.summary()}

            yield run
    finally:
        counter.remove()
