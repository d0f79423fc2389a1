"""The safety filter between the policy and the arm.

Two questions every tick. Before the policy runs: are the inputs valid and
fresh enough to act on (state, features, sensors: finite, plausible, ages
inside their limits, robot ready)? After: is the action sane (finite, inside
joint position limits, reachable within one period at the allowed joint
speeds)? Any "no" becomes a hold, counted by a `HoldReason`; the arm is never
sent a guess.

Every comparison is written so that NaN fails it: `not (age <= limit)` is
true for a NaN age, where `age > limit` would be false and would switch the
interlock off. An age that cannot be computed (a NaN or infinite capture
time) or that is negative beyond a small skew (a capture "in the future",
i.e. a broken clock mapping) is a clock fault, and the tick holds.

Velocity is checked against the MEASURED joint positions, not the last
command: after a hold the policy's target may be far away, and the filter
must not let the arm jump there in one period.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from controller.errors import ConfigError
from controller.slot import Stamped
from drivers.base import JointLimits, RobotState, SensorReading

LimitMode = Literal["clamp", "reject"]


class HoldReason(enum.StrEnum):
    """Why a tick sent a hold instead of a command (telemetry counts these by value)."""

    NO_STATE = "no_state"
    STATE_CLOCK_INVALID = "state_clock_invalid"
    STATE_STALE = "state_stale"
    STATE_INVALID = "state_invalid"
    ROBOT_NOT_READY = "robot_not_ready"
    NO_FEATURES = "no_features"
    FEATURES_CLOCK_INVALID = "features_clock_invalid"
    FEATURES_STALE = "features_stale"
    SENSOR_MISSING = "sensor_missing"
    SENSOR_CLOCK_INVALID = "sensor_clock_invalid"
    SENSOR_STALE = "sensor_stale"
    SENSOR_INVALID = "sensor_invalid"
    ACTION_TIMEOUT = "action_timeout"
    ACTION_ERROR = "action_error"
    ACTION_MALFORMED = "action_malformed"
    ACTION_NOT_FINITE = "action_not_finite"
    POSITION_LIMIT = "position_limit"
    VELOCITY_LIMIT = "velocity_limit"
    ROBOT_DISCONNECTED = "robot_disconnected"


#: The holds of one kind of input: (its capture time cannot be believed, it is too old).
_AgeReasons = tuple[HoldReason, HoldReason]
_STATE_AGE: _AgeReasons = (HoldReason.STATE_CLOCK_INVALID, HoldReason.STATE_STALE)
_FEATURES_AGE: _AgeReasons = (HoldReason.FEATURES_CLOCK_INVALID, HoldReason.FEATURES_STALE)
_SENSOR_AGE: _AgeReasons = (HoldReason.SENSOR_CLOCK_INVALID, HoldReason.SENSOR_STALE)


def _in_range(value: Any, low: float, high: float, *, low_open: bool = True) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    above = value > low if low_open else value >= low
    return above and value <= high and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class SafetyConfig:
    """Limits of the filter. Ages are in seconds of the controller clock.

    Upper bounds exist so that no value can switch an interlock off: a
    `max_state_age` of 1e308 would accept state from any time.
    """

    max_feature_age: float = 1.0
    max_state_age: float = 0.1
    #: Hold when the newest reading of any sensor is older than this.
    max_sensor_age: float = 0.5
    limit_mode: LimitMode = "clamp"
    #: Fraction of each joint's speed limit the filter lets a command use.
    velocity_scale: float = 1.0
    #: How far ahead of the controller clock a capture time may be (clock-mapping noise).
    max_future_skew: float = 0.05
    #: How far outside its position limits a MEASURED joint may read before the state is implausible.
    position_margin: float = 0.2

    def __post_init__(self) -> None:
        for name, high in (
            ("max_feature_age", 10.0),
            ("max_state_age", 1.0),
            ("max_sensor_age", 5.0),
        ):
            value = getattr(self, name)
            if not _in_range(value, 0.0, high):
                raise ConfigError(
                    f"safety.{name} must be a number of seconds in (0, {high:g}], got {value!r}"
                )
        if self.limit_mode not in ("clamp", "reject"):
            raise ConfigError(
                f"safety.limit_mode must be 'clamp' or 'reject', got {self.limit_mode!r}"
            )
        if not _in_range(self.velocity_scale, 0.0, 1.0):
            raise ConfigError(
                f"safety.velocity_scale must be in (0, 1], got {self.velocity_scale!r}"
            )
        if not _in_range(self.max_future_skew, 0.0, 0.5, low_open=False):
            raise ConfigError(
                f"safety.max_future_skew must be in [0, 0.5] s, got {self.max_future_skew!r}"
            )
        if not _in_range(self.position_margin, 0.0, 1.0, low_open=False):
            raise ConfigError(
                f"safety.position_margin must be in [0, 1] rad, got {self.position_margin!r}"
            )


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one tick: send `positions`, or hold for `reason`."""

    positions: np.ndarray | None
    reason: HoldReason | None = None
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
        self._max_velocity = np.asarray(limits.max_velocity, dtype=np.float64)
        self._max_step = self._max_velocity * config.velocity_scale * period

    # -- inputs --------------------------------------------------------------
    def _age_reason(
        self, now: float, source_time: float, limit: float, reasons: _AgeReasons
    ) -> HoldReason | None:
        """Hold for the clock when the capture time is not finite or in the future, for age when
        it is older than `limit`; compared so that a NaN age is stale, never fresh."""
        clock, stale = reasons
        if not math.isfinite(source_time):
            return clock
        age = now - source_time
        if age < -self.config.max_future_skew:
            return clock
        if not age <= limit:
            return stale
        return None

    def state_problem(self, state: RobotState) -> str | None:
        """Why a state's values cannot be true (None: plausible)."""
        dof = self.limits.dof
        try:
            q = np.asarray(state.positions, dtype=np.float64)
            qd = np.asarray(state.velocities, dtype=np.float64)
        except (TypeError, ValueError):
            return "joint values are not numbers"
        if q.shape != (dof,) or qd.shape != (dof,):
            return f"expected {dof} joint positions and velocities, got {q.shape} and {qd.shape}"
        if not (np.all(np.isfinite(q)) and np.all(np.isfinite(qd))):
            return "non-finite joint positions or velocities"
        margin = self.config.position_margin
        if np.any(q < self._lower - margin) or np.any(q > self._upper + margin):
            return "joint positions outside the arm's range"
        if np.any(np.abs(qd) > 2.0 * self._max_velocity + 0.1):
            return "joint velocities beyond what the arm can do"
        return None

    def check_inputs(
        self,
        now: float,
        features: Stamped[Any] | None,
        state: Stamped[RobotState] | None,
        sensors: Mapping[str, Stamped[SensorReading] | None] | None = None,
    ) -> HoldReason | None:
        """Return why the controller must hold before even asking the policy, or None."""
        cfg = self.config
        if state is None:
            return HoldReason.NO_STATE
        reason = self._age_reason(now, state.source_time, cfg.max_state_age, _STATE_AGE)
        if reason is not None:
            return reason
        if self.state_problem(state.value) is not None:
            return HoldReason.STATE_INVALID
        if state.value.ready is not True:
            return HoldReason.ROBOT_NOT_READY
        if features is None:
            return HoldReason.NO_FEATURES
        reason = self._age_reason(now, features.source_time, cfg.max_feature_age, _FEATURES_AGE)
        if reason is not None:
            return reason
        for reading in (sensors or {}).values():
            if reading is None:
                return HoldReason.SENSOR_MISSING
            reason = self._age_reason(now, reading.source_time, cfg.max_sensor_age, _SENSOR_AGE)
            if reason is not None:
                return reason
            try:
                finite = bool(np.all(np.isfinite(np.asarray(reading.value.values, dtype=float))))
            except (TypeError, ValueError):
                finite = False
            if not finite:
                return HoldReason.SENSOR_INVALID
        return None

    # -- action ----------------------------------------------------------------
    def filter_action(self, chunk: Any, state: RobotState) -> Verdict:
        """Pick the chunk's first action and make it safe, or say why it cannot be."""
        if self.state_problem(state) is not None:
            return Verdict(None, HoldReason.STATE_INVALID)
        try:
            arr = np.asarray(chunk, dtype=np.float64)
        except (TypeError, ValueError):
            return Verdict(None, HoldReason.ACTION_MALFORMED)
        dof = self.limits.dof
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != dof or arr.shape[0] < 1:
            return Verdict(None, HoldReason.ACTION_MALFORMED)
        target = arr[0]
        if not np.all(np.isfinite(target)):
            return Verdict(None, HoldReason.ACTION_NOT_FINITE)
        clamped = False
        outside = (target < self._lower) | (target > self._upper)
        if np.any(outside):
            if self.config.limit_mode == "reject":
                return Verdict(None, HoldReason.POSITION_LIMIT)
            target = np.clip(target, self._lower, self._upper)
            clamped = True
        current = np.asarray(state.positions, dtype=np.float64)
        step = target - current
        too_fast = ~(np.abs(step) <= self._max_step)
        if np.any(too_fast):
            if self.config.limit_mode == "reject":
                return Verdict(None, HoldReason.VELOCITY_LIMIT)
            target = current + np.clip(step, -self._max_step, self._max_step)
            clamped = True
        if not np.all(np.isfinite(target)):  # unreachable after the checks above; kept as a guard
            return Verdict(None, HoldReason.ACTION_NOT_FINITE)
        return Verdict(target, None, clamped)
