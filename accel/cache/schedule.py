"""The diffusion-forcing schedule at group ("chunk") level (METHODS 2).

Built with diffusers' own ``SkyReelsV2DiffusionForcingPipeline.generate_timestep_matrix`` on
``ceil(frames / causal_block_size)`` whole groups, so a trailing partial group is scheduled like the
others (diffusers' pipeline floors the group count and silently leaves those frames as noise).
Per row and group the template index is 0 (waiting), 1..S (compute step ``k-1``), S+1 (done).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

WAITING, COMPUTE, DONE = "waiting", "compute", "done"


@dataclass(frozen=True)
class GroupSchedule:
    """Which group denoises at which timestep in each row (iteration) of the loop."""

    timesteps: torch.Tensor  # (S,) scheduler timesteps
    index: torch.Tensor  # (R, G) template index per row and group
    update: torch.Tensor  # (R, G) bool: the group takes a denoising step in this row
    frames: tuple[tuple[int, int], ...]  # latent frame range of each group

    @property
    def rows(self) -> int:
        return self.index.shape[0]

    @property
    def groups(self) -> int:
        return len(self.frames)

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def state(self, row: int, group: int) -> str:
        k = int(self.index[row, group])
        if bool(self.update[row, group]):
            return COMPUTE
        return DONE if k > self.steps else WAITING

    def step_of(self, row: int, group: int) -> int:
        """The group's own step counter (0-based) in this row."""
        return int(self.index[row, group]) - 1

    def timestep(self, row: int, group: int) -> torch.Tensor:
        return self.timesteps[self.step_of(row, group)]

    def finishing(self, row: int) -> list[int]:
        """Groups whose last denoising step is in this row."""
        return [g for g in range(self.groups) if self.update[row, g] and self.step_of(row, g) == self.steps - 1]


def build_schedule(
    timesteps: torch.Tensor, latent_frames: int, causal_block_size: int, ar_step: int, num_pre_ready: int = 0
) -> GroupSchedule:
    """Group schedule for ``latent_frames`` frames in groups of ``causal_block_size`` (the last may be short).

    The first ``num_pre_ready`` frames (a long video's clean prefix, whole groups) start done.
    """
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    if causal_block_size < 1 or ar_step < 0:
        raise ValueError(f"causal_block_size must be >= 1 and ar_step >= 0, got {causal_block_size}, {ar_step}")
    groups = math.ceil(latent_frames / causal_block_size)
    padded = groups * causal_block_size
    _, index, update, _ = SkyReelsV2DiffusionForcingPipeline.generate_timestep_matrix(
        None, padded, timesteps.cpu(), padded, ar_step, num_pre_ready, causal_block_size
    )
    frames = tuple((g * causal_block_size, min((g + 1) * causal_block_size, latent_frames)) for g in range(groups))
    return GroupSchedule(
        timesteps=timesteps.cpu(),
        index=index[:, ::causal_block_size].clone(),
        update=update[:, ::causal_block_size].clone(),
        frames=frames,
    )
