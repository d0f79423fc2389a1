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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from controller.errors import ConfigError
from controller.slot import Stamped
from drivers.base import JointLimits, RobotState, SensorReading
from drivers.options import option, validate

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
    #: `vl_mode = "sync"` only: the tick's own VL encode failed (no older features are reused).
    VL_ERROR = "vl_error"
    ACTION_TIMEOUT = "action_timeout"
    ACTION_ERROR = "action_error"
    ACTION_MALFORMED = "action_malformed"
    ACTION_NOT_FINITE = "action_not_finite"
    POSITION_LIMIT = "position_limit"
    VELOCITY_LIMIT = "velocity_limit"
    ROBOT_DISCONNECTED = "robot_disconnected"


@dataclass(frozen=True, slots=True)
class SafetyConfig:
    """Limits of the filter (the `[safety]` table). Ages are in seconds of the controller clock.

    Upper bounds exist so that no value can switch an interlock off: a
    `max_state_age` of 1e308 would accept state from any time.
    """

    max_feature_age: float = option(
        1.0,
        help="hold when the newest VL features are older than this",
        unit="s",
        low=0.0,
        low_open=True,
        high=10.0,
        flag=True,
    )
    max_state_age: float = option(
        0.1,
        help="hold when the newest robot state is older than this",
        unit="s",
        low=0.0,
        low_open=True,
        high=1.0,
        flag=True,
    )
    max_sensor_age: float = option(
        0.5,
        help="hold when the newest reading of any sensor is older than this",
        unit="s",
        low=0.0,
        low_open=True,
        high=5.0,
    )
    limit_mode: LimitMode = option(
        "clamp",
        help="what the joint position and velocity limits do to an action: clamp it, or hold",
        flag=True,
    )
    velocity_scale: float = option(
        1.0,
        help="fraction of each joint's speed limit a command may use",
        low=0.0,
        low_open=True,
        high=1.0,
    )
    max_future_skew: float = option(
        0.05,
        help="how far ahead of the controller clock a capture time may be (clock-mapping noise)",
        unit="s",
        low=0.0,
        high=0.5,
    )
    position_margin: float = option(
        0.2,
        help="how far outside its position limits a MEASURED joint may read before the state"
        " is implausible",
        unit="rad",
        low=0.0,
        high=1.0,
    )

    def __post_init__(self) -> None:
        validate(self, error=ConfigError, where="safety.")


# -- the input rules --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inputs:
    """What one tick is about to act on, as the input rules see it."""

    now: float
    features: Stamped[Any] | None
    state: Stamped[RobotState] | None
    sensors: Mapping[str, Stamped[SensorReading] | None]


class InputRule(Protocol):
    """One question asked before the policy runs: a hold reason, or None for "no objection".

    Rules run in order and the first objection is the hold, so a rule may rely
    on what the rules before it established (that there is a state, that it
    is fresh and plausible). A new rule is one class here, its place in
    `INPUT_RULES`, and the `SafetyConfig` field its limit lives in.
    """

    def check(self, inputs: Inputs, f: SafetyFilter) -> HoldReason | None: ...


def age_reason(
    now: float, source_time: float, limit: float, skew: float, clock: HoldReason, stale: HoldReason
) -> HoldReason | None:
    """`clock` when a capture time is not finite or more than `skew` in the future, `stale`
    when it is older than `limit`; compared so that a NaN age is stale, never fresh."""
    if not math.isfinite(source_time):
        return clock
    age = now - source_time
    if age < -skew:
        return clock
    if not age <= limit:
        return stale
    return None


@dataclass(frozen=True, slots=True)
class Present:
    """The input has been received at least once."""

    input: Literal["state", "features"]
    missing: HoldReason

    def check(self, inputs: Inputs, f: SafetyFilter) -> HoldReason | None:
        return self.missing if getattr(inputs, self.input) is None else None


@dataclass(frozen=True, slots=True)
class Fresh:
    """The input's capture time is believable and within the limit named by `limit`."""

    input: Literal["state", "features"]
    #: The `SafetyConfig` field holding the age limit.
    limit: str
    clock: HoldReason
    stale: HoldReason

    def check(self, inputs: Inputs, f: SafetyFilter) -> HoldReason | None:
        stamped: Stamped[Any] | None = getattr(inputs, self.input)
        assert stamped is not None  # a `Present` rule runs first
        cfg = f.config
        limit = getattr(cfg, self.limit)
        return age_reason(
            inputs.now, stamped.source_time, limit, cfg.max_future_skew, self.clock, self.stale
        )


class StatePlausible:
    """The measured joint values can be true (finite, right count, inside the arm's range)."""

    def check(self, inputs: Inputs, f: SafetyFilter) -> HoldReason | None:
        assert inputs.state is not None
        return HoldReason.STATE_INVALID if f.state_problem(inputs.state.value) else None


class RobotReady:
    """The robot says it accepts motion (not stopped by a person or by itself)."""

    def check(self, inputs: Inputs, f: SafetyFilter) -> HoldReason | None:
        assert inputs.state is not None
        return None if inputs.state.value.ready is True else HoldReason.ROBOT_NOT_READY


class SensorsUsable:
    """Every sensor has a reading, believable in time, within `max_sensor_age`, and finite.

    One rule for all sensors, each checked fully before the next, so the
    first sensor with a problem names the hold.
    """

    def check(self, inputs: Inputs, f: SafetyFilter) -> HoldReason | None:
        cfg = f.config
        for reading in inputs.sensors.values():
            if reading is None:
                return HoldReason.SENSOR_MISSING
            reason = age_reason(
                inputs.now,
                reading.source_time,
                cfg.max_sensor_age,
                cfg.max_future_skew,
                HoldReason.SENSOR_CLOCK_INVALID,
                HoldReason.SENSOR_STALE,
            )
            if reason is not None:
                return reason
            try:
                finite = bool(np.all(np.isfinite(np.asarray(reading.value.values, dtype=float))))
            except (TypeError, ValueError):
                finite = False
            if not finite:
                return HoldReason.SENSOR_INVALID
        return None


_SENSORS = SensorsUsable()

#: The input rules of every tick, in the order they are asked.
INPUT_RULES: tuple[InputRule, ...] = (
    Present("state", HoldReason.NO_STATE),
    Fresh("state", "max_state_age", HoldReason.STATE_CLOCK_INVALID, HoldReason.STATE_STALE),
    StatePlausible(),
    RobotReady(),
    Present("features", HoldReason.NO_FEATURES),
    Fresh(
        "features",
        "max_feature_age",
        HoldReason.FEATURES_CLOCK_INVALID,
        HoldReason.FEATURES_STALE,
    ),
    _SENSORS,
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
    def __init__(
        self,
        config: SafetyConfig,
        limits: JointLimits,
        period: float,
        rules: Sequence[InputRule] | None = None,
    ) -> None:
        self.config = config
        #: The questions asked before the policy runs, in order (default: `INPUT_RULES`).
        self.rules: tuple[InputRule, ...] = tuple(INPUT_RULES if rules is None else rules)
        #: The default rules, which `_inputs_usable` may answer for (custom ones always run).
        self._default_rules = self.rules == INPUT_RULES
        self.limits = limits
        self.period = period
        self._lower = np.asarray(limits.lower, dtype=np.float64)
        self._upper = np.asarray(limits.upper, dtype=np.float64)
        self._max_velocity = np.asarray(limits.max_velocity, dtype=np.float64)
        self._max_step = self._max_velocity * config.velocity_scale * period
        # The fast paths' bounds, as Python floats (see `_within`): what a plausible state
        # (positions, then velocities) and a sendable action may be. An infinite limit
        # becomes the largest finite float, so only finite values are ever within.
        big = float(np.finfo(np.float64).max)
        speed = 2.0 * self._max_velocity + 0.1
        margin = config.position_margin
        self._state_low = _finite(np.concatenate((self._lower - margin, -speed)), big)
        self._state_high = _finite(np.concatenate((self._upper + margin, speed)), big)
        self._position_low = self._state_low[: limits.dof]
        self._position_high = self._state_high[: limits.dof]
        self._action_low = _finite(self._lower, big)
        self._action_high = _finite(self._upper, big)
        self._step_bound = _finite(self._max_step, big)

    # -- inputs --------------------------------------------------------------
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
        if _within(q.tolist() + qd.tolist(), self._state_low, self._state_high):
            return None
        # Not plausible (the fast check only ever accepts): say why.
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
        """Return why the controller must hold before even asking the policy, or None.

        The rules run in order and the first objection is the hold.
        """
        if self._default_rules and _inputs_usable(now, features, state, self):
            # The fast path accepted state and features; the sensors' rule is the last of
            # the defaults, so asking it alone gives the answer the whole list would.
            if not sensors:
                return None
            return _SENSORS.check(Inputs(now, features, state, sensors), self)
        inputs = Inputs(now, features, state, sensors or {})
        for rule in self.rules:
            reason = rule.check(inputs, self)
            if reason is not None:
                return reason
        return None

    # -- action ----------------------------------------------------------------
    def measured(self, state: RobotState) -> list[float]:
        """The state's joint positions as a copy, taken when the input checks accepted it.

        Why: `act` is handed the state object itself, and a policy that
        writes into `state.positions` (a bug, an in-place update in someone's
        pre-processing) would otherwise move the very positions the step
        limit is judged from: writing its target there makes any jump look
        like no step at all. The controller takes this copy before `act` and
        gives it to `filter_action`. Call only on a state `check_inputs`
        accepted (its positions are `dof` finite numbers).
        """
        return np.asarray(state.positions, dtype=np.float64).tolist()

    def filter_action(
        self, chunk: Any, state: RobotState, measured: Sequence[float] | None = None
    ) -> Verdict:
        """Pick the chunk's first action and make it safe, or say why it cannot be.

        `measured`: the positions from `measured(state)` taken before `act`
        ran; without it the state's positions are read (and checked) now.
        """
        if measured is None:
            if self.state_problem(state) is not None:
                return Verdict(None, HoldReason.STATE_INVALID)
            measured = self.measured(state)
        elif not (
            len(measured) == self.limits.dof
            and _within(measured, self._position_low, self._position_high)
        ):
            return Verdict(None, HoldReason.STATE_INVALID)
        first = _first_row(chunk, self.limits.dof)
        if first is not None and _sendable(first, measured, self):
            # A new array from the very floats just checked: what goes out is what was
            # judged, whatever the policy later does to its own chunk.
            return Verdict(np.array(first, dtype=np.float64), None, False)
        try:
            arr = np.asarray(chunk, dtype=np.float64)
        except (TypeError, ValueError):
            return Verdict(None, HoldReason.ACTION_MALFORMED)
        dof = self.limits.dof
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != dof or arr.shape[0] < 1:
            return Verdict(None, HoldReason.ACTION_MALFORMED)
        target = arr[0].copy()
        if _sendable(target.tolist(), measured, self):  # a chunk the fast path cannot read
            return Verdict(target, None, False)
        current = np.asarray(measured, dtype=np.float64)
        # Something to refuse or clamp (the fast check only ever accepts): find out what.
        if not np.all(np.isfinite(target)):
            return Verdict(None, HoldReason.ACTION_NOT_FINITE)
        clamped = False
        outside = (target < self._lower) | (target > self._upper)
        if np.any(outside):
            if self.config.limit_mode == "reject":
                return Verdict(None, HoldReason.POSITION_LIMIT)
            target = np.clip(target, self._lower, self._upper)
            clamped = True
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


# -- the fast paths ---------------------------------------------------------------
#
# Why: every tick asks both questions, and on 6 joints numpy's per-call cost
# is all there is: about fifteen array calls per tick. `python -m
# controller.bench tick-cost` ("both, in a tick's order") on the 2-core
# benchmark machine: 80 us back to back and 310 us after a 10 ms sleep, as
# a tick runs them (the caches have gone cold by then), with numpy alone;
# 8 and 124 us with these fast paths, a large part of the controller's
# overhead per tick (issue 11).
#
# Each fast path only ever ACCEPTS: every value inside closed, finite bounds
# (NaN fails every comparison; an infinite limit is replaced by the largest
# finite float, so infinity fails too). Anything else falls through to the
# numpy checks, which decide and name the problem exactly as before.


def _finite(bounds: np.ndarray, big: float) -> list[float]:
    return np.clip(np.nan_to_num(bounds, nan=0.0, posinf=big, neginf=-big), -big, big).tolist()


def _within(values: Sequence[float], low: list[float], high: list[float]) -> bool:
    """Every value finite and inside its closed bounds (False for NaN, never an error)."""
    for v, lo, hi in zip(values, low, high, strict=True):
        if not lo <= v <= hi:
            return False
    return True


def _sendable(target: list[float], current: Sequence[float], f: SafetyFilter) -> bool:
    """The action needs no clamp and no refusal: finite, inside the position limits,
    and within one period's step of the measured positions."""
    for t, c, lo, hi, step in zip(
        target, current, f._action_low, f._action_high, f._step_bound, strict=True
    ):
        if not (lo <= t <= hi and -step <= t - c <= step):
            return False
    return True


#: Floating dtypes whose `tolist()` gives Python floats the fast paths may compare.
_FLOATS = frozenset("efd")


def _floats(values: Any, dof: int) -> list[float] | None:
    """`values` as `dof` Python floats when it is a 1-D floating ndarray of that length."""
    if type(values) is not np.ndarray or values.shape != (dof,) or values.dtype.char not in _FLOATS:
        return None
    return values.tolist()


def _inputs_usable(
    now: float, features: Stamped[Any] | None, state: Stamped[RobotState] | None, f: SafetyFilter
) -> bool:
    """The default rules on state and features in one pass: True only if none objects.

    Why: each rule is a call through `InputRule`, with an `Inputs` to build
    and the state's arrays read through numpy; on a tick's cold cache that
    was most of `check_inputs`' cost. This asks the same questions in a
    straight line, on plain floats, and only ever accepts: both capture times
    within `[-max_future_skew, limit]` of now (False for NaN and infinities),
    the robot ready, and every joint position and velocity inside the
    plausible range (as `state_problem`). Any "no", or a state whose values
    are not floating ndarrays of the arm's length, falls through to the rules,
    which name the hold.
    """
    if state is None or features is None:
        return False
    cfg = f.config
    early = -cfg.max_future_skew
    if not early <= now - state.source_time <= cfg.max_state_age:
        return False
    value = state.value
    if value.ready is not True:
        return False
    dof = f.limits.dof
    q = _floats(value.positions, dof)
    qd = _floats(value.velocities, dof)
    if q is None or qd is None or not _within(q + qd, f._state_low, f._state_high):
        return False
    return early <= now - features.source_time <= cfg.max_feature_age


def _first_row(chunk: Any, dof: int) -> list[float] | None:
    """The chunk's first action as Python floats, when the chunk is a floating ndarray of
    shape `(horizon, dof)` or `(dof,)`; None for anything the numpy path must judge."""
    if type(chunk) is not np.ndarray or chunk.dtype.char not in _FLOATS:
        return None
    if chunk.ndim == 2 and chunk.shape[0] >= 1 and chunk.shape[1] == dof:
        return chunk[0].tolist()
    if chunk.shape == (dof,):
        return chunk.tolist()
    return None
