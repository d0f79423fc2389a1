"""The `Controller`: sensing, VL encoding and control tasks under one TaskGroup.

Lifecycle (ros2_control's, simplified): CONFIGURING (drivers connected,
executor started, policy loaded) -> WARMING_UP (first state, first frame of
every camera, one VL encode and one action computed; nothing is sent) ->
ACTIVE (the control task ticks) -> STOPPING -> STOPPED, or FAILED.

Whatever ends a run (its duration, a signal, cancellation, any task failing)
goes through one `finally:` that calls `robot.stop()` on its own task,
bounded in time, shielded from a second cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.errors import ConfigError, PolicyError, WarmupError
from controller.executor import Executor, Lane
from controller.safety import SafetyConfig, SafetyFilter
from controller.scheduler import PeriodicScheduler, Tick
from controller.slot import LatestValue, Stamped
from controller.telemetry import ActionRecord, Telemetry
from drivers.base import (
    CameraDriver,
    Frame,
    JointCommand,
    RobotDriver,
    RobotState,
    SensorDriver,
    SensorReading,
)
from drivers.errors import ConnectionLost, DriverError, NotReady
from policies.base import Policy

log = logging.getLogger("controller")


class Phase(enum.Enum):
    CONFIGURING = "configuring"
    WARMING_UP = "warming_up"
    ACTIVE = "active"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class _FailureStreak:
    """Consecutive failures of one stage: tolerated (logged, counted) up to a limit, then fatal."""

    def __init__(self, what: str, limit: int, telemetry: Telemetry) -> None:
        self.what = what
        self.limit = limit
        self.telemetry = telemetry
        self.count = 0

    def failed(self, exc: Exception, kind: str) -> None:
        self.count += 1
        self.telemetry.error(kind)
        if self.count >= self.limit:
            raise PolicyError(
                f"{self.what} failed {self.count} times in a row; last: {exc!r}"
            ) from exc
        log.warning("%s failed (%d in a row): %r", self.what, self.count, exc)

    def succeeded(self) -> None:
        self.count = 0


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    hz: float = 10.0
    instruction: str = "pick up the red cube and place it in the bowl"
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    #: Seconds allowed for the warm-up (first inputs, one encode, one action).
    warmup_timeout: float = 30.0
    #: Seconds `robot.stop()` may take before the controller gives up waiting.
    stop_timeout: float = 2.0
    #: Seconds an action may take before the tick holds instead (default: one period).
    action_timeout: float | None = None
    #: Seconds between status log lines (0: none).
    status_interval: float = 5.0
    #: Consecutive VL-encode / action failures after which the run fails.
    max_consecutive_failures: int = 10
    #: Busy-wait this long before each deadline (real clock only).
    spin: float = 0.0
    #: Most VL encodes per second (None: one per control period; 0: as fast
    #: as the encoder goes). Features newer than the next tick are never
    #: used, and a free-running encoder only steals CPU and GIL from it.
    vl_max_hz: float | None = None

    def __post_init__(self) -> None:
        if not (
            isinstance(self.hz, (int, float)) and math.isfinite(self.hz) and 0 < self.hz <= 1000
        ):
            raise ConfigError(f"hz must be a number in (0, 1000], got {self.hz!r}")
        for name in ("warmup_timeout", "stop_timeout"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0):
                raise ConfigError(f"{name} must be a positive number of seconds, got {v!r}")
        if self.action_timeout is not None and not self.action_timeout > 0:
            raise ConfigError(f"action_timeout must be positive, got {self.action_timeout!r}")
        if self.status_interval < 0:
            raise ConfigError(f"status_interval must be >= 0, got {self.status_interval!r}")
        if self.max_consecutive_failures < 1:
            raise ConfigError("max_consecutive_failures must be >= 1")
        if not (0 <= self.spin < 1.0 / self.hz):
            raise ConfigError(f"spin must be in [0, period), got {self.spin!r}")
        if self.vl_max_hz is not None and not (
            self.vl_max_hz >= 0 and math.isfinite(self.vl_max_hz)
        ):
            raise ConfigError(f"vl_max_hz must be >= 0 (0: unlimited), got {self.vl_max_hz!r}")

    @property
    def vl_min_interval(self) -> float:
        rate = self.hz if self.vl_max_hz is None else self.vl_max_hz
        return 1.0 / rate if rate > 0 else 0.0

    @property
    def period(self) -> float:
        return 1.0 / self.hz


class Controller:
    """Runs one policy on one robot with any number of cameras and sensors."""

    def __init__(
        self,
        config: ControllerConfig,
        *,
        robot: RobotDriver,
        cameras: Sequence[CameraDriver],
        policy: Policy,
        executor: Executor,
        sensors: Sequence[SensorDriver] = (),
    ) -> None:
        if not cameras:
            raise ConfigError("at least one camera is needed: the policy encodes images")
        names = [c.name for c in cameras]
        if len(set(names)) != len(names):
            raise ConfigError(f"camera names must be unique, got {names}")
        self.config = config
        self.robot = robot
        self.cameras = list(cameras)
        self.sensors = list(sensors)
        self.policy = policy
        self.executor = executor
        self.telemetry = Telemetry(config.period)
        self.frames: dict[str, LatestValue[Frame]] = {n: LatestValue(f"frame:{n}") for n in names}
        self.state: LatestValue[RobotState] = LatestValue("state")
        self.sensor_slots: dict[str, LatestValue[SensorReading]] = {
            s.name: LatestValue(f"sensor:{s.name}") for s in self.sensors
        }
        self.features: LatestValue[Any] = LatestValue("features")
        self.phase = Phase.CONFIGURING
        self.scheduler = PeriodicScheduler(
            config.period,
            spin=config.spin,
            on_tick_done=lambda _t, work: self.telemetry.tick_done(work),
            on_missed=self.telemetry.missed_ticks,
        )
        self._stop_requested = asyncio.Event()
        self._stop_reason = ""
        self._safety: SafetyFilter | None = None
        self._holding: str | None = None
        self._seq = 0
        self.robot_stops = 0

    # -- lifecycle ---------------------------------------------------------
    def _set_phase(self, phase: Phase) -> None:
        if phase is not self.phase:
            log.info("phase %s -> %s", self.phase.value, phase.value)
            self.phase = phase

    def request_stop(self, reason: str = "requested") -> None:
        """Ask a running controller to stop (signal handlers call this); safe from any callback."""
        if not self._stop_requested.is_set():
            self._stop_reason = reason
            log.info("stop requested: %s", reason)
            self._stop_requested.set()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def run(self, duration: float | None = None) -> dict[str, Any]:
        """Connect, warm up, control until `duration` elapses or a stop is requested.

        Returns the telemetry summary. Raises whatever ended the run
        abnormally, after the robot has been stopped.
        """
        if duration is not None and not duration > 0:
            raise ConfigError(f"duration must be positive, got {duration!r}")
        try:
            async with contextlib.AsyncExitStack() as stack:
                await self.executor.start()
                stack.push_async_callback(self.executor.close)
                await stack.enter_async_context(self.robot)
                try:
                    for cam in self.cameras:
                        await stack.enter_async_context(cam)
                    for sensor in self.sensors:
                        await stack.enter_async_context(sensor)
                    info = self.robot.info
                    self._safety = SafetyFilter(self.config.safety, info.limits, self.config.period)
                    await self.executor.run(
                        Lane.VL, self.policy.load, self.executor.device, info, self.config.period
                    )
                    await self._supervise(duration)
                finally:
                    # First thing on the way out, before cameras and links close.
                    await self._stop_robot()
        except BaseException:
            self._set_phase(Phase.FAILED)
            raise
        finally:
            if self.telemetry.started is not None and self.telemetry.ended is None:
                self.telemetry.ended = self._now()
        self._set_phase(Phase.STOPPED)
        return self.telemetry.summary()

    async def _supervise(self, duration: float | None) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._camera_task(c), name=f"camera:{c.name}")
                    for c in self.cameras
                ]
                tasks += [
                    tg.create_task(self._sensor_task(s), name=f"sensor:{s.name}")
                    for s in self.sensors
                ]
                tasks.append(tg.create_task(self._state_task(), name="state"))
                tasks.append(tg.create_task(self._vl_task(), name="vl"))
                stop = tg.create_task(self._stop_requested.wait(), name="stop-request")
                tasks.append(stop)
                self._set_phase(Phase.WARMING_UP)
                warm = tg.create_task(self._warmup(), name="warmup")
                tasks.append(warm)
                await asyncio.wait({warm, stop}, return_when=asyncio.FIRST_COMPLETED)
                if warm.done() and not stop.done():
                    warm.result()
                    self._set_phase(Phase.ACTIVE)
                    start = self._now()
                    self.telemetry.started = start
                    until = None if duration is None else start + duration
                    tasks.append(tg.create_task(self._control_task(start, until), name="control"))
                    if self.config.status_interval:
                        tasks.append(tg.create_task(self._status_task(), name="status"))
                    await stop
                self._set_phase(Phase.STOPPING)
                if self.telemetry.started is not None:
                    self.telemetry.ended = self._now()
                for t in tasks:
                    t.cancel()
        except BaseExceptionGroup as group:
            # Unwrap a single failure so callers (and the CLI) see the real error.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def _stop_robot(self) -> None:
        """Stop the arm on a task of its own, bounded, surviving a second cancellation."""
        self._set_phase(Phase.STOPPING)
        self.robot_stops += 1
        stop = asyncio.ensure_future(self.robot.stop())
        try:
            async with asyncio.timeout(self.config.stop_timeout):
                await asyncio.shield(stop)
        except TimeoutError:
            log.error("robot.stop() did not return within %.1f s", self.config.stop_timeout)
        except DriverError as exc:
            log.error("robot.stop() failed: %s", exc)

    # -- warm-up -----------------------------------------------------------
    async def _warmup(self) -> None:
        """Nothing moves before one encode and one action have completed."""
        waiting = "first robot state"
        try:
            async with asyncio.timeout(self.config.warmup_timeout):
                await self.state.wait_newer(0)
                waiting = "a first frame from every camera"
                for slot in self.frames.values():
                    await slot.wait_newer(0)
                for name, sslot in self.sensor_slots.items():
                    waiting = f"a first reading of sensor {name}"
                    await sslot.wait_newer(0)
                # The first encode is often slow (lazy CUDA/oneDNN init); wait
                # for features fresh enough to act on, so ACTIVE starts acting.
                waiting = "a first VL encode"
                feats = await self.features.wait_newer(0)
                while feats.age(self._now()) > self.config.safety.max_feature_age:
                    waiting = "VL features younger than max_feature_age"
                    feats = await self.features.wait_newer(feats.version)
                waiting = "a first action"
                state = self.state.latest()
                assert state is not None
                chunk = await self.executor.run(
                    Lane.ACTION, self.policy.act, feats.value, state.value, self._sensor_values()
                )
                assert self._safety is not None
                verdict = self._safety.filter_action(chunk, state.value)
                if verdict.reason in ("action_malformed", "action_not_finite"):
                    raise WarmupError(
                        f"the policy's first action is unusable ({verdict.reason}): {np.asarray(chunk)!r:.200}"
                    )
        except TimeoutError:
            raise WarmupError(
                f"warm-up timed out after {self.config.warmup_timeout} s waiting for {waiting}"
            ) from None
        log.info("warm-up done: state, frames, features and one action are ready")

    # -- sensing -----------------------------------------------------------
    async def _stream(self, what: str, stream_factory: Any, publish: Any) -> None:
        """Pump a driver stream into a slot; a lost link is retried, other errors end the run."""
        backoff = 0.1
        while True:
            try:
                async for item in stream_factory():
                    publish(item)
                    backoff = 0.1
                log.warning("%s: stream ended; restarting in %.1f s", what, backoff)
            except ConnectionLost as exc:
                self.telemetry.error(f"{what}_connection_lost")
                log.warning("%s: connection lost (%s); retrying in %.1f s", what, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _camera_task(self, cam: CameraDriver) -> None:
        slot = self.frames[cam.name]
        await self._stream(
            f"camera {cam.name}", cam.frames, lambda f: slot.publish(f, f.capture_time)
        )

    async def _state_task(self) -> None:
        await self._stream(
            "robot", self.robot.states, lambda s: self.state.publish(s, s.capture_time)
        )

    async def _sensor_task(self, sensor: SensorDriver) -> None:
        slot = self.sensor_slots[sensor.name]
        await self._stream(
            f"sensor {sensor.name}", sensor.readings, lambda r: slot.publish(r, r.capture_time)
        )

    def _sensor_values(self) -> Mapping[str, SensorReading]:
        out = {}
        for name, slot in self.sensor_slots.items():
            st = slot.latest()
            if st is not None:
                out[name] = st.value
        return out

    # -- VL encoding -------------------------------------------------------
    async def _wait_for_new_frames(self, seen: dict[str, int]) -> dict[str, Stamped[Frame]]:
        """Newest frame of every camera, once every camera has one and at least one is new."""
        while True:
            latest = {name: slot.latest() for name, slot in self.frames.items()}
            if all(s is not None for s in latest.values()) and any(
                s.version > seen.get(name, 0) for name, s in latest.items() if s is not None
            ):
                return latest  # type: ignore[return-value]
            waiters = [
                asyncio.ensure_future(slot.wait_newer(max(seen.get(name, 0), slot.version)))
                for name, slot in self.frames.items()
            ]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    async def _vl_task(self) -> None:
        """Encode the NEWEST frames, publish, repeat: never a queue of old frames."""
        seen: dict[str, int] = {}
        failures = _FailureStreak(
            "VL encoding", self.config.max_consecutive_failures, self.telemetry
        )
        next_start = -math.inf
        while True:
            pause = next_start - self._now()
            if pause > 0:
                await asyncio.sleep(pause)
            stamped = await self._wait_for_new_frames(seen)
            seen = {name: s.version for name, s in stamped.items()}
            frames = [s.value for s in stamped.values()]
            source_time = min(f.capture_time for f in frames)
            start = self._now()
            next_start = start + self.config.vl_min_interval
            try:
                feats = await self.executor.run(
                    Lane.VL, self.policy.encode_vl, frames, self.config.instruction
                )
            except Exception as exc:
                failures.failed(exc, "vl_encode")
                await asyncio.sleep(min(0.1 * 2**failures.count, 2.0))
                continue
            failures.succeeded()
            end = self._now()
            self.telemetry.vl_encoded(end - start, start - source_time)
            self.features.publish(feats, source_time, now=end)

    # -- control -----------------------------------------------------------
    async def _hold(self, reason: str) -> None:
        new_episode = self._holding is None
        self.telemetry.hold(reason, new_episode=new_episode)
        if new_episode:
            log.warning("holding: %s", reason)
            self._holding = reason
            try:
                await self.robot.hold()
            except (ConnectionLost, NotReady) as exc:
                log.warning("robot.hold() failed while holding for %s: %s", reason, exc)

    async def _control_task(self, start: float, until: float | None) -> None:
        assert self._safety is not None
        action_timeout = self.config.action_timeout or self.config.period
        failures = _FailureStreak(
            "action prediction", self.config.max_consecutive_failures, self.telemetry
        )
        async for tick in self.scheduler.ticks(start=start, until=until):
            self.telemetry.tick(tick.lateness)
            await self._control_step(tick, action_timeout, failures)
        self.request_stop("duration elapsed")

    async def _control_step(
        self, tick: Tick, action_timeout: float, failures: _FailureStreak
    ) -> None:
        assert self._safety is not None
        now = self._now()
        feats = self.features.latest()
        state = self.state.latest()
        reason = self._safety.check_inputs(now, feats, state)
        if reason is not None:
            await self._hold(reason)
            return
        assert feats is not None and state is not None
        t0 = self._now()
        try:
            async with asyncio.timeout(action_timeout):
                chunk = await self.executor.run(
                    Lane.ACTION, self.policy.act, feats.value, state.value, self._sensor_values()
                )
        except TimeoutError:
            self.telemetry.error("action_timeout")
            await self._hold("action_timeout")
            return
        except Exception as exc:
            failures.failed(exc, "action")
            await self._hold("action_error")
            return
        failures.succeeded()
        latency = self._now() - t0
        verdict = self._safety.filter_action(chunk, state.value)
        if not verdict.send:
            await self._hold(verdict.reason or "rejected")
            return
        assert verdict.positions is not None
        self._seq += 1
        cmd = JointCommand(positions=verdict.positions, duration=self.config.period, seq=self._seq)
        try:
            await self.robot.command(cmd)
        except ConnectionLost:
            self.telemetry.error("command_connection_lost")
            await self._hold("robot_disconnected")
            return
        except NotReady:
            await self._hold("robot_not_ready")
            return
        if self._holding is not None:
            log.info("resuming after hold (%s)", self._holding)
            self._holding = None
        reuse = self.telemetry.feature_used(feats.version)
        self.telemetry.action(
            ActionRecord(
                tick=tick.index,
                time=now,
                seq=self._seq,
                feature_version=feats.version,
                feature_age=feats.age(now),
                state_age=state.age(now),
                reuse=reuse,
                latency=latency,
                clamped=verdict.clamped,
            )
        )
        return

    async def _status_task(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_interval)
            log.info("status %s", self.telemetry.status_line())
