"""Chunked (group-by-group) diffusion-forcing runner over the real SkyReels-V2 transformer (METHODS 2).

Each row of the schedule forwards only the groups that take a step, in order, with a persistent
per-layer KV buffer: group ``g``'s self-attention uses its fresh Q and K/V = [earlier groups ; itself].
Under the model's block-causal attention (``num_frame_per_block = causal_block_size``) a group's
output depends only on groups up to itself, so unstarted groups are skipped. When a group finishes, its
K/V are frozen one of two ways (``commit``): ``last-step`` keeps the K/V of its last denoising step, as
both seed implementations (FlowCache, MotionCache) do; ``clean-pass`` forwards it once more at timestep 0,
as the full window of diffusers' pipeline sees it afterwards, which reproduces that pipeline. A long
video's clean prefix is forwarded once in both modes (it has no K/V yet). Buffers, counters and cache
state are kept per CFG branch. The model's modules are used as they are; the glue below follows
``SkyReelsV2Transformer3DModel.forward`` (patch embedding, per-frame modulation, RoPE, blocks, head).
"""

from __future__ import annotations

import copy
import functools
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from accel.attention.base import AttentionMethod
from accel.cache.group_model import Call, Embedded, GroupAttnProcessor, GroupModel, KVBuffer
from accel.cache.kv import KVCompression
from accel.cache.schedule import COMPUTE, DONE, GroupSchedule, build_schedule
from accel.errors import ConfigError
from accel.schema import Event
from accel.settings import COMMIT_MODES
from accel.target import Generation, ProgressFn, Target
from accel.telemetry import Recorder
from accel.tracking import StepInfo
from profiling.ranges import named_range


@dataclass
class GroupStep:
    """One group's denoising step as a chunk cache sees it: the tokens, the blocks to run, where to log."""

    group: int
    branch: str
    step: int  # the group's own denoising step
    num_steps: int
    emb: Embedded
    run_blocks: Callable[[torch.Tensor | None], torch.Tensor]  # every block on all tokens (None) or a subset
    log: Callable[[Event, float | None, float | None, int], None]  # (decision, value, threshold, tokens computed)

    @property
    def key(self) -> tuple[int, str]:
        """Per-(group, CFG branch) state key: a group's branches never share cache state."""
        return self.group, self.branch


class GroupCache:
    """No cache: every scheduled group step runs all blocks. FlowCache / MotionCache subclass this."""

    name = "none"

    def reset(self) -> None:
        """Forget all state (called at the start of a run)."""

    def export(self, recorder: Recorder) -> None:
        """Hand any per-token arrays to the run's recorder (called at the end of a run)."""

    def predict(self, step: GroupStep) -> torch.Tensor:
        """The last block output for this group step (computed or reused)."""
        step.log(Event.CHUNK_COMPUTE, None, None, step.emb.tokens.shape[1])
        return step.run_blocks(None)


class ChunkedRunner:
    """Denoise a video group by group with a persistent per-layer KV buffer.

    ``stats`` counts the current window; ``segments`` keeps one such dict per window of the run (a long
    video has several), so a run's totals are their sum (:func:`work_metrics`). Token counts are per CFG
    branch: ``tokens_scheduled`` is what the uncached runner computes, ``tokens_recomputed`` what the cache
    let run, ``commit_tokens`` what the commit (and prefix) passes ran.
    """

    def __init__(
        self,
        pipe,
        cache: GroupCache | None = None,
        recorder: Recorder | None = None,
        fps: int = 24,
        kv: KVCompression | None = None,
        attention: AttentionMethod | None = None,
        commit: str = "last-step",
    ):
        if commit not in COMMIT_MODES:
            raise ConfigError(f"kv_commit must be one of {', '.join(COMMIT_MODES)}, got {commit!r}")
        self.commit = commit
        self.pipe = pipe
        self.kv = kv
        self.attention = attention  # a sparse method (XAttention / SVG2, +TMR) composed with the cache
        self.attn_info = StepInfo()  # what the attention method sees: the group's own step, state per group
        self.transformer = pipe.transformer
        self.model = GroupModel(pipe.transformer, fps)
        self.cache = cache or GroupCache()
        self.recorder = recorder or Recorder(enabled=False)
        self.call = Call()
        self.info = StepInfo()
        self.stats: dict[str, int] = {}
        self.segments: list[dict[str, int]] = []
        self.schedule: GroupSchedule | None = None
        self.chunk_tokens = 0  # tokens of one whole chunk, set per run
        self.frame_tokens = 0

    @property
    def buffer(self) -> KVBuffer:
        """The KV buffer of the current (or last) run."""
        return self.call.buffer

    def _compress(self, layer: int, query: torch.Tensor) -> None:
        """KV compression at ``layer`` of the groups finished since this branch last attended, scored with the
        queries of the group now running (the next active group, at its current step, as the reference)."""
        c = self.call
        keep = self.kv.budget_chunks * self.chunk_tokens
        block = {"token": 1, "frame": self.frame_tokens, "chunk": self.chunk_tokens}[self.kv.granularity]
        with named_range("kv.compress"):
            sizes = c.buffer.compress(c.branch, layer, c.pending[c.branch], query, keep, self.kv, block)
        if layer == len(self.transformer.blocks) - 1:
            del c.pending[c.branch]  # every layer has compressed
        if sizes is not None and layer == 0 and sizes[0] > sizes[1]:
            self.recorder.log(Event.KV_COMPRESS, float(sizes[1]), chunk=c.group, threshold=float(sizes[0]))
            self.stats["kv_compressions"] = self.stats.get("kv_compressions", 0) + 1

    def _log_chunk(self, group: int, event: Event, value: float | None, threshold: float | None, tokens: int) -> None:
        """One cache decision for (row, group, branch); counts recomputed tokens for the metrics."""
        self.recorder.log(event, value, chunk=group, threshold=threshold)
        self.recorder.log(Event.TOKENS_UPDATED, float(tokens), chunk=group)
        self.stats[event] = self.stats.get(event, 0) + 1
        self.stats["tokens_recomputed"] = self.stats.get("tokens_recomputed", 0) + tokens

    def _install(self) -> list:
        originals = [b.attn1.processor for b in self.transformer.blocks]
        backend = getattr(originals[0], "_attention_backend", None)
        for i, block in enumerate(self.transformer.blocks):
            block.attn1.set_processor(GroupAttnProcessor(i, self.call, backend, self.attention, self.attn_info))
        return originals

    def _run_blocks(self, emb: Embedded, enc: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """Every block on the group's tokens or the subset ``tokens`` (the processors write only their K/V)."""
        self.call.tokens = tokens
        try:
            return self.model.blocks(emb, enc, tokens)
        finally:
            self.call.tokens = None

    def _forward(self, x_g, t_g, context, group, frame0, branch, step, commit_only=False) -> torch.Tensor:
        """Predict the flow of one group (B, C, f, H, W); a commit pass only refreshes its K/V."""
        self.call.branch, self.call.group, self.call.tokens = branch, group, None
        self.info.chunk = group
        num_steps = self.schedule.steps if self.schedule else 0
        a = self.attn_info
        a.step, a.num_steps, a.branch = step, num_steps, f"{branch}/g{group}"
        emb, enc = self.model.embed(x_g, t_g, context, frame0)
        if commit_only:
            self.model.blocks(emb, enc)
            self.stats["commit_passes"] += 1
            self.stats["commit_tokens"] += emb.tokens.shape[1]
            return emb.tokens
        run_blocks = functools.partial(self._run_blocks, emb, enc)
        log = functools.partial(self._log_chunk, group)
        with named_range("cache.decide"):
            hidden = self.cache.predict(GroupStep(group, branch, step, num_steps, emb, run_blocks, log))
        return self.model.head(hidden, emb)

    def _commit(self, latents, group: int, branches, noise: float = 0.0) -> None:
        """Freeze a done group's K/V: forward it at timestep 0 (or at ``noise`` * 1000 with that much fresh noise,
        as diffusers' ``addnoise_condition`` conditions a long video's prefix), both branches."""
        f0, f1 = self.schedule.frames[group]
        x = latents[:, :, f0:f1].to(self.transformer.dtype)
        t_value = 0
        if noise > 0:  # one noise draw per prefix (diffusers redraws it every row: equal in distribution)
            gen = torch.Generator("cpu").manual_seed(group)
            eps = torch.randn(x.shape, generator=gen).to(x)
            x, t_value = x * (1.0 - noise) + eps * noise, round(noise * 1000)
        t = torch.full((x.shape[0], f1 - f0), t_value, dtype=torch.long, device=x.device)
        for branch, ctx in branches:
            self.info.branch, self.info.timestep = branch, float(t_value)
            self._forward(x, t, ctx, group, f0, branch, -1, commit_only=True)
            self.recorder.log(Event.CHUNK_DONE, 1.0, chunk=group)

    def _finish(self, latents, group: int, branches, finished: list[int], prefix_noise: float | None = None) -> None:
        """A group is done: freeze its K/V by the runner's ``commit`` mode (a prefix group, ``prefix_noise`` not
        None, is always forwarded) and queue every finished group for KV compression in each branch."""
        finished.append(group)
        if prefix_noise is not None or self.commit == "clean-pass":
            self._commit(latents, group, branches, prefix_noise or 0.0)
        else:  # last-step: the buffer already holds the K/V of the group's last denoising step
            for branch, _ in branches:
                self.info.branch = branch
                self.recorder.log(Event.CHUNK_DONE, 0.0, chunk=group)
        if self.kv is not None:
            for branch, _ in branches:
                self.call.pending[branch] = tuple(finished)

    @torch.inference_mode()
    def denoise(
        self,
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor | None,
        latents: torch.Tensor,
        schedule: GroupSchedule,
        guidance: float,
        progress: ProgressFn | None = None,
        prefix_noise: float = 0.0,
    ) -> torch.Tensor:
        """Run the whole schedule on ``latents`` (B, C, F, H, W) fp32; returns the denoised latents."""
        dtype = self.transformer.dtype
        schedulers = []
        for _ in range(latents.shape[2]):
            s = copy.deepcopy(self.pipe.scheduler)
            s.set_timesteps(schedule.steps, device=latents.device)
            schedulers.append(s)
        branches = [("cond", prompt_embeds)] + ([("uncond", negative_embeds)] if guidance > 1.0 else [])
        self.call.buffer, self.call.pending = KVBuffer(), {}
        self.call.compress = self._compress if self.kv is not None else None
        self.cache.reset()
        self.schedule = schedule
        self.stats = {"group_steps": 0, "commit_passes": 0, "tokens_scheduled": 0, "commit_tokens": 0}
        self.segments.append(self.stats)
        pt, ph, pw = self.transformer.config.patch_size
        self.frame_tokens = (latents.shape[3] // ph) * (latents.shape[4] // pw)
        self.chunk_tokens = self.frame_tokens * (schedule.frames[0][1] - schedule.frames[0][0]) // pt
        finished: list[int] = []
        self.info = StepInfo(num_steps=schedule.steps)
        self.recorder.begin(self.info, len(self.transformer.blocks))
        if self.attention is not None:
            self.attention.setup(len(self.transformer.blocks), self.transformer.config.num_attention_heads)
        b = latents.shape[0]
        originals = self._install()
        try:
            for g in range(schedule.groups):  # a long video's clean prefix: done before the first row
                if schedule.state(0, g) == DONE:
                    self._finish(latents, g, branches, finished, prefix_noise)
            for row in range(schedule.rows):
                for g in range(schedule.groups):
                    if schedule.state(row, g) != COMPUTE:
                        continue
                    f0, f1 = schedule.frames[g]
                    step = schedule.step_of(row, g)
                    t = schedule.timestep(row, g)
                    x_g = latents[:, :, f0:f1].to(dtype)
                    t_g = t.to(latents.device).expand(b, f1 - f0)
                    preds = {}
                    for branch, ctx in branches:
                        self.info.step, self.info.branch, self.info.timestep = row, branch, float(t)
                        preds[branch] = self._forward(x_g, t_g, ctx, g, f0, branch, step)
                        self.stats["tokens_scheduled"] += self.frame_tokens * (f1 - f0) // pt
                    noise = preds["cond"]
                    if "uncond" in preds:
                        noise = preds["uncond"] + guidance * (preds["cond"] - preds["uncond"])
                    for j, frame in enumerate(range(f0, f1)):
                        latents[:, :, frame] = schedulers[frame].step(
                            noise[:, :, j], t, latents[:, :, frame], return_dict=False
                        )[0]
                    self.stats["group_steps"] += 1
                for g in schedule.finishing(row):
                    self._finish(latents, g, branches, finished)
                self.info.branch, self.info.timestep, self.info.chunk = "cond", float("nan"), None
                self.recorder.log(Event.KV_TOKENS, float(self.buffer.tokens()), threshold=float(self.buffer.nbytes()))
                if progress is not None:
                    progress(row + 1, schedule.rows)
            self.cache.export(self.recorder)
        finally:
            for block, proc in zip(self.transformer.blocks, originals, strict=True):
                block.attn1.set_processor(proc)
        return latents

    def generate(
        self,
        prompt: str,
        negative_prompt: str,
        height: int,
        width: int,
        frames: int,
        steps: int,
        guidance: float,
        seed: int,
        ar_step: int,
        causal_block_size: int,
        progress: ProgressFn | None = None,
        output_type: str = "np",
        base_num_frames: int | None = None,
        overlap_history: int | None = None,
        addnoise_condition: float = 0,
        text_tokens: int = 512,
    ):
        """Encode, sample the initial noise as the diffusers pipeline does, denoise, and decode.

        With ``overlap_history`` and ``frames > base_num_frames`` the video is made in diffusers' long-video
        segments; otherwise it is one diffusion-forcing window over all frames.
        """
        pipe = self.pipe
        device = self.transformer.device
        self.segments = []  # the run's windows: one, or a long video's segments
        pe, ne = pipe.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=guidance > 1.0,
            max_sequence_length=text_tokens,  # the model's prompt length, as the pipeline's __call__ gets it
            device=device,
        )
        dtype = self.transformer.dtype
        pe = pe.to(dtype)
        ne = ne.to(dtype) if ne is not None else None
        scale_t, scale_s = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        latent_frames = (frames - 1) // scale_t + 1
        channels, h, w = self.transformer.config.in_channels, height // scale_s, width // scale_s
        gen = torch.Generator("cpu").manual_seed(seed)
        pipe.scheduler.set_timesteps(steps, device=device)
        timesteps = pipe.scheduler.timesteps
        long_video = overlap_history is not None and base_num_frames is not None and frames > base_num_frames
        if not long_video:  # one window over the whole video
            latents = randn_tensor(
                (1, channels, latent_frames, h, w), generator=gen, device=device, dtype=torch.float32
            )
            schedule = build_schedule(timesteps, latent_frames, causal_block_size, ar_step)
            latents = self.denoise(pe, ne, latents, schedule, guidance, progress)
        else:  # diffusers' long-video segments: each window starts from the last overlap frames, clean
            overlap = (overlap_history - 1) // scale_t + 1
            base = (base_num_frames - 1) // scale_t + 1
            if base <= overlap:
                raise ConfigError(f"base_num_frames {base_num_frames} must exceed overlap_history {overlap_history}")
            segments = 1 + (latent_frames - base - 1) // (base - overlap) + 1
            latents = None
            for it in range(segments):
                prefix, window = None, base
                if latents is not None:
                    prefix = latents[:, :, -overlap:]
                    cut = prefix.shape[2] % causal_block_size
                    prefix = prefix[:, :, : prefix.shape[2] - cut]  # whole groups only, as diffusers truncates
                    window = min(latent_frames - (it * (base - overlap) + overlap) + overlap, base)
                seg = randn_tensor((1, channels, window, h, w), generator=gen, device=device, dtype=torch.float32)
                ready = 0 if prefix is None else prefix.shape[2]
                if ready:
                    seg[:, :, :ready] = prefix.to(dtype)
                schedule = build_schedule(timesteps, window, causal_block_size, ar_step, num_pre_ready=ready)
                seg = self.denoise(pe, ne, seg, schedule, guidance, progress, prefix_noise=addnoise_condition / 1000)
                latents = seg if latents is None else torch.cat([latents, seg[:, :, overlap:]], dim=2)
        if output_type == "latent":
            return latents
        return self.decode(latents, output_type)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, output_type: str = "np"):
        vae = self.pipe.vae
        latents = latents.to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type=output_type)


def _work(stats: dict[str, int], layers: int, chunk_tokens: int) -> tuple[float, float]:
    """(executed, uncached) block executions of one window, token-weighted in whole chunks."""
    commits = stats.get("commit_tokens", 0)
    executed = (stats.get("tokens_recomputed", 0) + commits) / chunk_tokens * layers
    return executed, (stats.get("tokens_scheduled", 0) + commits) / chunk_tokens * layers


def work_metrics(segments: list[dict[str, int]], layers: int, chunk_tokens: int) -> dict[str, Any]:
    """Counts of a chunked run from its runner's ``segments`` (one stats dict per window): decisions, and block
    executions against the uncached runner, summed over the windows and per window (``segments``).

    The unit is one block run over one whole chunk's tokens, per CFG branch: a partial recompute of a quarter of
    a chunk's tokens counts a quarter, and so does a short last chunk, in both the executed and the uncached
    count (so the uncached runner itself saves exactly 0). Commit passes (``clean-pass``) and a long video's
    prefix passes run in every run and count on both sides.
    """
    totals = sum(map(Counter, segments), Counter())
    executed, possible = _work(totals, layers, chunk_tokens)
    per_window = []
    for seg in segments:
        done, uncached = _work(seg, layers, chunk_tokens)
        per_window.append({"group_steps": seg["group_steps"], "block_executions": round(done, 2),
                           "block_executions_uncached": round(uncached, 2)})  # fmt: skip
    return {
        "group_steps": totals.get("group_steps", 0),
        "chunk_computes": totals.get(Event.CHUNK_COMPUTE, 0),
        "chunk_reuses": totals.get(Event.CHUNK_REUSE, 0),
        "chunk_partials": totals.get(Event.CHUNK_PARTIAL, 0),
        "chunk_defers": totals.get(Event.CHUNK_DEFER, 0),
        "commit_passes": totals.get("commit_passes", 0),
        "block_executions": round(executed, 2),
        "block_executions_uncached": round(possible, 2),
        "tokens_recomputed": totals.get("tokens_recomputed", 0),
        "tokens_scheduled": totals.get("tokens_scheduled", 0),  # what the uncached runner computes
        "kv_compressions": totals.get("kv_compressions", 0),
        "linear_flops_saved_frac": 1.0 - executed / possible if possible else 0.0,  # attention grows faster
        "segments": per_window,
    }


@contextmanager
def install(
    target: Target, attention: AttentionMethod | None = None, cache: GroupCache | None = None
) -> Iterator[Generation]:
    """A diffusion-forcing run through :class:`ChunkedRunner` with the method's sparse self-attention (None:
    dense), its chunk cache (None: every group step computes) and KV compression where its settings ask for it."""
    pipe, cfg, spec, s = target.pipe, target.cfg, target.spec, target.cfg.settings
    cache = cache if cache is not None else GroupCache()
    kv = KVCompression(s.kv_budget_chunks, s.kv_lambda, s.kv_granularity) if getattr(s, "kv_compress", False) else None
    runner = ChunkedRunner(pipe, cache=cache, recorder=target.recorder, kv=kv, attention=attention,
                           commit=cfg.kv_commit)  # fmt: skip

    def run(progress):
        with torch.inference_mode():
            video = runner.generate(
                cfg.prompt, cfg.negative_prompt, cfg.height, cfg.width, cfg.frames, cfg.steps, cfg.guidance,
                cfg.seed, cfg.ar_step, cfg.causal_block_size, progress=progress,
                base_num_frames=cfg.base_num_frames, overlap_history=cfg.overlap_history,
                addnoise_condition=cfg.addnoise_condition or 0, text_tokens=spec.text_tokens,
            )  # fmt: skip
        extra = work_metrics(runner.segments, len(pipe.transformer.blocks), runner.chunk_tokens)
        extra.update(schedule_rows=runner.schedule.rows, kv_bytes_final=runner.buffer.nbytes(), kv_commit=cfg.kv_commit)
        return video[0], extra

    yield run
