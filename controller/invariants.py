"""Invariants every controller run must keep, checked from outside the controller.

The checker does not trust the controller's own bookkeeping (its telemetry,
its hold reasons): it watches the policy and the robot through thin proxies
and judges each command sent against the ground truth of the fakes (when a
state or frame was REALLY captured, which a faulty clock may misreport):

1. nothing is sent before the controller is ACTIVE, nor before one VL encode
   and one action completed;
2. every command came from inputs (state, features, sensor readings) within
   the age limits at the tick that decided it (true ages for the state and
   the frames: a lying clock cannot hide stale data);
3. at most one command per tick, so never more commands than ticks;
4. every command is finite, inside the joint limits, and no farther from the
   measured position it was computed from than the joint speeds allow in one
   period;
5. `robot.stop()` is called on every exit path once the robot was touched,
   and no command is sent after it.

The harness (`controller.harness.ControllerHarness`) wires a checker into
every run and asserts it at the end, so every harness test checks these.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from drivers.base import CameraDriver, Frame, JointCommand, RobotDriver, RobotState, SensorReading

#: Ground-truth entries kept per kind (bounded: a long soak must not grow memory).
_KEPT = 4096


@dataclass(frozen=True, slots=True)
class ActCall:
    """One call of `policy.act`, with the true capture times of its inputs."""

    time: float
    state_true: float
    features_true: float
    positions: np.ndarray
    #: Capture time of the oldest sensor reading handed over (inf: no sensors).
    sensors_true: float = math.inf


@dataclass(slots=True)
class Counts:
    commands: int = 0
    ticks: int = 0
    act_calls: int = 0
    encodes: int = 0
    stops: int = 0
    checked_ages: int = 0


@dataclass(slots=True)
class InvariantChecker:
    """Collects what happened in one run and lists every broken invariant."""

    max_state_age: float
    max_feature_age: float
    max_sensor_age: float
    lower: np.ndarray
    upper: np.ndarray
    max_step: np.ndarray
    #: Slack on ages: the safety filter tolerates this much clock skew by design.
    skew: float = 0.05
    counts: Counts = field(default_factory=Counts)
    violations: list[str] = field(default_factory=list)
    active_since: float | None = None
    robot_touched: bool = False
    _tick_starts: list[float] = field(default_factory=list)
    _acts: list[ActCall] = field(default_factory=list)
    _stop_times: list[float] = field(default_factory=list)
    _last_command_tick: float = -math.inf
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def for_controller(cls, controller: Any) -> Self:
        cfg = controller.config
        limits = controller.robot.info.limits
        max_step = (
            np.asarray(limits.max_velocity, dtype=float) * cfg.safety.velocity_scale * cfg.period
        )
        return cls(
            max_state_age=cfg.safety.max_state_age,
            max_feature_age=cfg.safety.max_feature_age,
            max_sensor_age=cfg.safety.max_sensor_age,
            lower=np.asarray(limits.lower, dtype=float),
            upper=np.asarray(limits.upper, dtype=float),
            max_step=max_step,
            skew=cfg.safety.max_future_skew,
        )

    # -- events ---------------------------------------------------------------
    def event(self, name: str, time: float, detail: Any = None) -> None:
        """Controller observer hook: `tick` and `phase` events."""
        if name == "tick":
            self.counts.ticks += 1
            self._tick_starts.append(time)
            if len(self._tick_starts) > _KEPT:
                del self._tick_starts[: len(self._tick_starts) - _KEPT]
        elif name == "phase" and getattr(detail, "value", detail) == "active":
            self.active_since = time

    def encoded(self) -> None:
        with self._lock:
            self.counts.encodes += 1

    def acted(self, call: ActCall) -> None:
        with self._lock:
            self.counts.act_calls += 1
            self._acts.append(call)
            if len(self._acts) > _KEPT:
                del self._acts[: len(self._acts) - _KEPT]

    def stopped(self, time: float) -> None:
        self.counts.stops += 1
        self._stop_times.append(time)

    def commanded(self, time: float, cmd: JointCommand) -> None:
        """A command the robot accepted at `time`: judge it now, while its inputs are known."""
        self.counts.commands += 1
        where = f"command seq {cmd.seq} at t={time:.4f}"
        if self.active_since is None or time < self.active_since:
            self._violate(f"{where}: sent before the controller was active")
        if self.counts.encodes < 1 or self.counts.act_calls < 2:
            self._violate(f"{where}: sent before one encode and one warm-up action completed")
        if self._stop_times:
            self._violate(f"{where}: sent after robot.stop() at t={self._stop_times[0]:.4f}")
        q = np.asarray(cmd.positions, dtype=float)
        if q.shape != self.lower.shape or not np.all(np.isfinite(q)):
            self._violate(f"{where}: not {self.lower.size} finite joint targets: {q!r}")
            return
        if np.any(q < self.lower - 1e-9) or np.any(q > self.upper + 1e-9):
            self._violate(f"{where}: outside the joint position limits: {q!r}")
        act = self._acts[-1] if self._acts else None
        if act is None:
            self._violate(f"{where}: no policy action preceded it")
            return
        tick = self._tick_before(act.time)
        if tick is None:
            self._violate(f"{where}: no control tick preceded its action")
            return
        if tick <= self._last_command_tick:
            self._violate(f"{where}: a second command in the tick that started at t={tick:.4f}")
        self._last_command_tick = tick
        self.counts.checked_ages += 1
        state_age = tick - act.state_true
        if not state_age <= self.max_state_age + self.skew + 1e-9:
            self._violate(
                f"{where}: computed from state {state_age * 1e3:.1f} ms old at its tick"
                f" (limit {self.max_state_age * 1e3:.0f} ms)"
            )
        feature_age = tick - act.features_true
        if not feature_age <= self.max_feature_age + self.skew + 1e-9:
            self._violate(
                f"{where}: computed from features {feature_age * 1e3:.1f} ms old at its tick"
                f" (limit {self.max_feature_age * 1e3:.0f} ms)"
            )
        sensor_age = tick - act.sensors_true
        if not sensor_age <= self.max_sensor_age + self.skew + 1e-9:
            self._violate(
                f"{where}: computed from a sensor reading {sensor_age * 1e3:.1f} ms old at its"
                f" tick (limit {self.max_sensor_age * 1e3:.0f} ms)"
            )
        step = np.abs(q - act.positions)
        if not np.all(step <= self.max_step + 1e-9):
            self._violate(
                f"{where}: moves {float(np.max(step)):.3f} rad from the state it was computed"
                f" from in one period (limit {float(np.max(self.max_step)):.3f})"
            )

    def finished(self) -> None:
        """The run is over (normally or not): the robot must have been stopped."""
        if self.robot_touched and not self._stop_times:
            self._violate("the run ended without calling robot.stop()")
        if self.counts.commands > self.counts.ticks:
            self._violate(f"{self.counts.commands} commands for {self.counts.ticks} ticks")

    # -- results --------------------------------------------------------------
    def _violate(self, text: str) -> None:
        if len(self.violations) < 1000:
            self.violations.append(text)

    def _tick_before(self, t: float) -> float | None:
        for start in reversed(self._tick_starts):
            if start <= t + 1e-12:
                return start
        return None

    def assert_ok(self) -> None:
        if self.violations:
            shown = "\n  ".join(self.violations[:10])
            more = len(self.violations) - 10
            tail = f"\n  ... and {more} more" if more > 0 else ""
            raise AssertionError(f"controller invariants broken:\n  {shown}{tail}")


# -- proxies ----------------------------------------------------------------------


def _now() -> float:
    return asyncio.get_running_loop().time()


class _Truth:
    """Maps the objects a policy is handed back to the true capture times behind them."""

    def __init__(self, robot: RobotDriver, cameras: Sequence[CameraDriver]) -> None:
        self._robot = robot
        self._cameras = {c.name: c for c in cameras}
        self.features: OrderedDict[int, tuple[Any, float]] = OrderedDict()

    def state_time(self, state: RobotState) -> float:
        fn = getattr(self._robot, "true_capture_time", None)
        true = fn(state) if fn is not None else None
        return state.capture_time if true is None else true

    def frame_time(self, frame: Frame) -> float:
        cam = self._cameras.get(frame.camera)
        fn = getattr(cam, "true_capture_time", None)
        true = fn(frame.seq) if fn is not None else None
        return frame.capture_time if true is None else true

    def remember_features(self, features: Any, true_time: float) -> None:
        self.features[id(features)] = (features, true_time)
        while len(self.features) > 64:
            self.features.popitem(last=False)

    def features_time(self, features: Any) -> float:
        entry = self.features.get(id(features))
        return entry[1] if entry is not None and entry[0] is features else math.nan


class PolicyProxy:
    """A policy that hands every call to `inner`; a subclass overrides what it watches.

    The invariant checker's proxies and the fault matrices' taps are all this
    plus one or two recordings, so the delegation lives here once.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "policy")

    def load(self, device: str, robot: Any, control_period: float) -> None:
        return self.inner.load(device, robot, control_period)

    def encode_vl(self, frames: Sequence[Frame], instruction: str) -> Any:
        return self.inner.encode_vl(frames, instruction)

    def act(self, features: Any, state: RobotState, sensors: Mapping[str, SensorReading]) -> Any:
        return self.inner.act(features, state, sensors)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RobotProxy:
    """A robot driver that hands every call to `inner`; a subclass overrides what it watches."""

    def __init__(self, inner: RobotDriver) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.name = inner.name
        self.info = inner.info

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.__aexit__(*exc)

    def states(self) -> Any:
        return self.inner.states()

    async def command(self, cmd: JointCommand) -> None:
        await self.inner.command(cmd)

    async def hold(self) -> None:
        await self.inner.hold()

    async def stop(self) -> None:
        await self.inner.stop()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RecordingPolicy(PolicyProxy):
    """A policy proxy that records each encode and action for the checker."""

    def __init__(self, inner: Any, checker: InvariantChecker, truth: _Truth, clock: Any) -> None:
        super().__init__(inner)
        self._checker = checker
        self._truth = truth
        self._clock = clock

    def encode_vl(self, frames: Sequence[Frame], instruction: str) -> Any:
        features = super().encode_vl(frames, instruction)
        times = [self._truth.frame_time(f) for f in frames]
        self._truth.remember_features(features, min(times) if times else math.nan)
        self._checker.encoded()
        return features

    def act(self, features: Any, state: RobotState, sensors: Mapping[str, SensorReading]) -> Any:
        self._checker.acted(
            ActCall(
                time=self._clock(),
                state_true=self._truth.state_time(state),
                features_true=self._truth.features_time(features),
                positions=np.asarray(state.positions, dtype=float).copy(),
                sensors_true=min((r.capture_time for r in sensors.values()), default=math.inf),
            )
        )
        return super().act(features, state, sensors)


class RecordingRobot(RobotProxy):
    """A robot proxy that tells the checker about accepted commands and stops.

    Their times are read from `clock`, the one the policy's calls and the
    controller's tick events are stamped with, since the checker compares them.
    """

    def __init__(
        self, inner: RobotDriver, checker: InvariantChecker, clock: Callable[[], float] = _now
    ) -> None:
        super().__init__(inner)
        self._checker = checker
        self._clock = clock

    async def __aenter__(self) -> Self:
        self._checker.robot_touched = True
        return await super().__aenter__()

    async def command(self, cmd: JointCommand) -> None:
        await super().command(cmd)
        self._checker.commanded(self._clock(), cmd)

    async def stop(self) -> None:
        self._checker.stopped(self._clock())
        await super().stop()


def instrument(
    controller: Any, cameras: Sequence[CameraDriver], clock: Callable[[], float]
) -> InvariantChecker:
    """Put recording proxies around a (not yet running) controller's policy and robot.

    `clock` must be the controller clock: the checker compares the times it
    stamps with the controller's tick events.
    """
    checker = InvariantChecker.for_controller(controller)
    truth = _Truth(controller.robot, cameras)
    controller.policy = RecordingPolicy(controller.policy, checker, truth, clock)
    controller.robot = RecordingRobot(controller.robot, checker, clock)
    controller.observers.append(checker.event)
    return checker
