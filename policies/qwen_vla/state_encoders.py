"""Small MLPs for the robot state and the auxiliary sensors.

Each normalises its input with statistics stored as buffers (so they travel
in the safetensors file beside the weights and cannot be forgotten at
deployment), then maps it to the action expert's width.
"""

from __future__ import annotations

import torch
from torch import nn

from policies.qwen_vla.config import NormStats


class NormalizedMLP(nn.Module):
    """(x - mean) / std -> Linear -> GELU -> Linear -> LayerNorm."""

    def __init__(self, in_dim: int, out_dim: int, stats: NormStats | None = None) -> None:
        super().__init__()
        stats = stats or NormStats.identity(in_dim)
        if stats.dim != in_dim:
            raise ValueError(f"norm stats have {stats.dim} entries, input has {in_dim}")
        self.register_buffer("mean", torch.tensor(stats.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(stats.std, dtype=torch.float32))
        self.net = nn.Sequential(
            nn.Linear(in_dim, out_dim),
            nn.GELU(),
            nn.Linear(out_dim, out_dim),
            nn.LayerNorm(out_dim),
        )

    @property
    def in_dim(self) -> int:
        return int(self.mean.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class RobotStateEncoder(NormalizedMLP):
    """Joint positions (and optionally velocities) -> (B, model_dim)."""


class SensorEncoder(NormalizedMLP):
    """Concatenated sensor values (force/torque, gripper, ...) -> (B, model_dim)."""
