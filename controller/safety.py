"""The safety filter between the policy and the arm.

Two questions every tick. Before the policy runs: are the inputs fresh enough
to act on (feature age, state age, robot ready)? After: is the action sane
(finite, inside joint position limits, reachable within one period at the
allowed joint speeds)? Any "no" becomes a hold, counted by reason; the arm is
never sent a guess.

Velocity is checked against the MEASURED joint positions, not the last
command: after a hold the policy's target may be far away, and the filter
must not let the arm jump there in one period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from controller.errors import ConfigError
from controller.slot import Stamped
from drivers.base import JointLimits, RobotState

LimitMode = Literal["clamp", "reject"]


@dataclass(frozen=True, slots=True)
class SafetyConfig:
    """Limits of the filter. Ages are in seconds of the controller clock."""

    max_feature_age: float = 1.0
    max_state_age: float = 0.1
    limit_mode: LimitMode = "clamp"
    #: Fraction of each joint's speed limit the filter lets a command use.
    velocity_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_feature_age", "max_state_age"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"safety.{name} must be a positive number of seconds, got {value!r}"
                )
        if self.limit_mode not in ("clamp", "reject"):
            raise ConfigError(
                f"safety.limit_mode must be 'clamp' or 'reject', got {self.limit_mode!r}"
            )
        if not (0 < self.velocity_scale <= 1):
            raise ConfigError(
                f"safety.velocity_scale must be in (0, 1], got {self.velocity_scale!r}"
            )


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one tick: send `positions`, or hold for `reason`."""

    positions: np.ndarray | None
    reason: str | None = None
    clamped: bool = False

    @property
    def send(self) -> bool:
        return self.positions is not None


class SafetyFilter:
    def __init__(self, config: SafetyConfig, limits: JointLimits, period: float) -> None:
        self.config = config
        self.limits = limits
        self.period = period
        self._lower = np.asarray(limits.lower, dtype=np.float64)
        self._upper = np.asarray(limits.upper, dtype=np.float64)
        self._max_step = (
            np.asarray(limits.max_velocity, dtype=np.float64) * config.velocity_scale * period
        )

    def check_inputs(
        self,
        now: float,
        features: Stamped[Any] | None,
        state: Stamped[RobotState] | None,
    ) -> str | None:
        """Return why the controller must hold before even asking the policy, or None."""
        if state is None:
            return "no_state"
        if state.age(now) > self.config.max_state_age:
            return "state_stale"
        if not state.value.ready:
            return "robot_not_ready"
        if features is None:
            return "no_features"
        if features.age(now) > self.config.max_feature_age:
            return "features_stale"
        return None

    def filter_action(self, chunk: Any, state: RobotState) -> Verdict:
        """Pick the chunk's first action and make it safe, or say why it cannot be."""
        try:
            arr = np.asarray(chunk, dtype=np.float64)
        except (TypeError, ValueError):
            return Verdict(None, "action_malformed")
        dof = self.limits.dof
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != dof or arr.shape[0] < 1:
            return Verdict(None, "action_malformed")
        target = arr[0]
        if not np.all(np.isfinite(target)):
            return Verdict(None, "action_not_finite")
        clamped = False
        outside = (target < self._lower) | (target > self._upper)
        if np.any(outside):
            if self.config.limit_mode == "reject":
                return Verdict(None, "position_limit")
            target = np.clip(target, self._lower, self._upper)
            clamped = True
        current = np.asarray(state.positions, dtype=np.float64)
        step = target - current
        too_fast = np.abs(step) > self._max_step
        if np.any(too_fast):
            if self.config.limit_mode == "reject":
                return Verdict(None, "velocity_limit")
            target = current + np.clip(step, -self._max_step, self._max_step)
            clamped = True
        return Verdict(target, None, clamped)
