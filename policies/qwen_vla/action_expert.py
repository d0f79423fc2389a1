"""The action expert: pooled VL feature (+ state, + sensors) -> action chunk.

Two heads, chosen by config:
* `regression`: one MLP pass straight to the chunk (the seed's model).
* `flow`: flow matching; a velocity network integrated with a few Euler
  steps from Gaussian noise (t=0) to the chunk (t=1). The noise comes from a
  generator seeded per call, so inference is reproducible and needs no shared
  RNG state between threads.
Outputs are in the normalised action space; `policy.py` maps them to joint
targets according to the config's action space.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from policies.qwen_vla.config import VLAConfig
from policies.qwen_vla.state_encoders import RobotStateEncoder, SensorEncoder

#: Most parameters an action model may have (2 GB in float32). It runs every
#: control tick, so a real one is a few million; the bound stops a config.json
#: whose sizes are each in range but multiply to more than the machine holds.
MAX_PARAMETERS = 500_000_000
#: Width of the flow head's time embedding.
TIME_DIM = 32


def _linear(i: int, o: int) -> int:
    return i * o + o


def _mlp_parameters(i: int, h: int, o: int) -> int:
    return _linear(i, h) + _linear(h, h) + _linear(h, o)


def parameter_count(config: VLAConfig) -> int:
    """Parameters `ActionModel(config)` will have, computed without allocating any.

    Mirrors the module definitions below (a test compares it with a built
    model for every head and input combination).
    """
    d = config.model_dim
    out = config.horizon * config.action_dim
    n_inputs = 1 + int(config.robot_state_enabled) + int(config.sensor_enabled)
    count = 2 * config.vl_hidden + _linear(config.vl_hidden, d)  # vl_proj
    count += _mlp_parameters(n_inputs * d, d, d)  # fuse
    head_in = d if config.head == "regression" else out + TIME_DIM + d
    count += _mlp_parameters(head_in, d, out)
    encoder = _linear(0, d) + _linear(d, d) + 2 * d  # NormalizedMLP without its input weights
    if config.robot_state_enabled:
        count += encoder + config.state_dim * d
    if config.sensor_enabled:
        count += encoder + config.sensor_dim * d
    return count


def check_parameter_budget(config: VLAConfig) -> int:
    """`parameter_count(config)`, or ValueError when it exceeds `MAX_PARAMETERS`."""
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"the action model would have {count:,} parameters (model_dim {config.model_dim},"
            f" vl_hidden {config.vl_hidden}, horizon {config.horizon}, action_dim"
            f" {config.action_dim}); at most {MAX_PARAMETERS:,} are accepted"
        )
    return count


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.GELU(),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Linear(hidden, out_dim),
    )


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of flow time t in [0, 1] -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
    angles = t[:, None].to(torch.float32) * 1000.0 * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ActionExpert(nn.Module):
    """Fuses the conditioning vectors and produces (B, horizon, action_dim)."""

    def __init__(self, config: VLAConfig) -> None:
        super().__init__()
        d = config.model_dim
        self.horizon = config.horizon
        self.action_dim = config.action_dim
        self.head_kind = config.head
        self.flow_steps = config.flow_steps
        self.flow_seed = config.flow_seed
        n_inputs = 1 + int(config.robot_state_enabled) + int(config.sensor_enabled)
        self.vl_proj = nn.Sequential(nn.LayerNorm(config.vl_hidden), nn.Linear(config.vl_hidden, d))
        self.fuse = _mlp(n_inputs * d, d, d)
        out = config.horizon * config.action_dim
        if config.head == "regression":
            self.head = _mlp(d, d, out)
        else:
            self.time_dim = TIME_DIM
            self.head = _mlp(out + self.time_dim + d, d, out)

    def condition(self, vl: torch.Tensor, extra: list[torch.Tensor]) -> torch.Tensor:
        """vl (B, 1, H) + encoded state/sensors (B, d) each -> (B, d)."""
        parts = [self.vl_proj(vl[:, 0, :]), *extra]
        return self.fuse(torch.cat(parts, dim=-1))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Flow head's velocity field v(x_t, t | cond), x flattened (B, horizon*action_dim)."""
        return self.head(torch.cat([x, time_embedding(t, self.time_dim), cond], dim=-1))

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        b = cond.shape[0]
        n = self.horizon * self.action_dim
        if self.head_kind == "regression":
            flat = self.head(cond)
        else:
            gen = torch.Generator(device=cond.device).manual_seed(self.flow_seed)
            flat = torch.randn(b, n, generator=gen, device=cond.device, dtype=cond.dtype)
            dt = 1.0 / self.flow_steps
            for k in range(self.flow_steps):
                t = torch.full((b,), k * dt, device=cond.device)
                flat = flat + dt * self.velocity(flat, t, cond)
        return flat.view(b, self.horizon, self.action_dim)


class ActionModel(nn.Module):
    """Everything `act` runs: optional state and sensor encoders + the expert.

    Kept apart from the VL model so the action thread and the VL thread
    never share a module.
    """

    def __init__(self, config: VLAConfig) -> None:
        # Before any allocation: sizes from a config.json are untrusted input.
        check_parameter_budget(config)
        super().__init__()
        self.config = config
        d = config.model_dim
        self.robot_state = (
            RobotStateEncoder(config.state_dim, d, config.state_norm)
            if config.robot_state_enabled
            else None
        )
        self.sensor = (
            SensorEncoder(config.sensor_dim, d, config.sensor_norm)
            if config.sensor_enabled
            else None
        )
        self.expert = ActionExpert(config)

    def condition(
        self,
        vl: torch.Tensor,
        state: torch.Tensor | None = None,
        sensors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The expert's conditioning vector (B, model_dim): what training's flow loss
        and `forward` both start from."""
        extra: list[torch.Tensor] = []
        if self.robot_state is not None:
            if state is None:
                raise ValueError("this model needs the robot state")
            extra.append(self.robot_state(state))
        if self.sensor is not None:
            if sensors is None:
                raise ValueError("this model needs sensor values")
            extra.append(self.sensor(sensors))
        return self.expert.condition(vl, extra)

    def forward(
        self,
        vl: torch.Tensor,
        state: torch.Tensor | None = None,
        sensors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """-> (B, horizon, action_dim), normalised action space."""
        return self.expert(self.condition(vl, state, sensors))
