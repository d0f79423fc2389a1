"""The `Controller`: sensing, VL encoding and control tasks under one TaskGroup.

Lifecycle (ros2_control's, simplified): CONFIGURING (drivers connected,
executor started, policy loaded) -> WARMING_UP (first state, first frame of
every camera, one VL encode and one action computed; nothing is sent) ->
ACTIVE (the control task ticks) -> STOPPING -> STOPPED, or FAILED.

Whatever ends a run (its duration, a signal, cancellation, any task failing)
goes through one `finally:` that calls `robot.stop()` on its own task,
bounded in time, shielded from a second cancellation.

Every timestamp and latency the controller records is read from one clock,
the controller clock (`controller.clock.controller_clock`): the virtual
clock under the harness, CLOCK_MONOTONIC in nanoseconds on real time
(uvloop's `loop.time()` counts whole milliseconds). Drivers keep stamping
with `drivers.base.now()`, the loop's `time()`: the same CLOCK_MONOTONIC, so
an age mixes the two only within the loop clock's resolution (under uvloop a
capture stamp is truncated to the millisecond: an age reads at most 1 ms
older than it is, never younger).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from controller import heap
from controller.action_path import ActionPath, InlineRule, default_inline_bound
from controller.clock import controller_clock, keeps_real_time
from controller.errors import ConfigError, PolicyError, WarmupError, describe
from controller.executor import Executor, Lane
from controller.realtime import MAX_PRIORITY, RealtimeGrant, Sched, os_sched, realtime_thread
from controller.safety import HoldReason, SafetyConfig, SafetyFilter
from controller.scheduler import PeriodicScheduler, Tick
from controller.slot import LatestValue, Stamped, pump
from controller.telemetry import ActionRecord, Telemetry
from controller.vl_latency import PaddedPolicy, padding_for
from drivers.base import (
    CameraDriver,
    Frame,
    JointCommand,
    RobotDriver,
    RobotState,
    SensorDriver,
    SensorReading,
)
from drivers.bounded import within
from drivers.errors import ConnectionLost, NotReady
from drivers.lifecycle import Backoff, Reconnects, reconnect_with_backoff
from drivers.options import Renamed, option, validate
from policies.base import Policy

if TYPE_CHECKING:
    from controller.vl_process import PolicySpec, ProcessVLPolicy

log = logging.getLogger("controller")


#: Longest run accepted (about 115 days): beyond it a typo, not an intent.
MAX_DURATION = 1e7

#: How VL encoding and control interleave (`ControllerConfig.vl_mode`).
VLMode = Literal["async", "sync"]

#: The precise wake's default spin, before the cap below: the timer stage must
#: end before the deadline at p99.9 for the spin to catch it. Measured with
#: `python -m controller.bench wake --hz 100 --spin-ms 0 1 2 3 --event-loop uvloop
#: asyncio --load none thread process` (docs/performance.md, 2 cores): 1 ms covers
#: uvloop and 2 ms asyncio (tick lateness p99 3-6 us, against 0.7-2.2 ms with no
#: spin), unloaded or with the VL encoder in another process; 2 ms covers both.
DEFAULT_SPIN = 0.002
#: ... and at most this fraction of the period, so that at high rates the spin's
#: CPU (the whole spin on uvloop, whose timer fires early) stays a bounded share.
DEFAULT_SPIN_FRACTION = 0.2

#: Where the VL encoder runs (`ControllerConfig.vl_worker`).
VLWorker = Literal["thread", "process"]
#: The process VL worker's nice increment: the encoder is throughput work, the loop
#: latency work. On the 2-core benchmark machine, 100 Hz with the VL saturated, five
#: pairs of 8 s runs gave tick lateness p99 0.07-0.43 ms with 10 against 0.12-1.9 ms
#: without, each pair in its favour, at the same encode rate (20-29 encodes/s).
DEFAULT_VL_WORKER_NICE = 10


class Phase(enum.Enum):
    CONFIGURING = "configuring"
    WARMING_UP = "warming_up"
    ACTIVE = "active"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


_WROTE_STATE = (
    "the policy's act() wrote into the robot state it was given (state.positions changed"
    " in place); it must treat its inputs as read-only (copy before updating in place)"
)


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
    """Settings of one run: the top-level keys of a config file, and its `[safety]` table.

    Each field is the one place its option is defined: type and default here,
    unit, range, help and flag in its `option(...)` metadata, from which the
    TOML parsing, the flags and `--help` are generated (`controller.settings`).
    Every number has a range: none can switch a safeguard off.
    """

    hz: float = option(
        10.0, help="control rate", unit="Hz", low=1.0, high=1000.0, flag=True, metavar="HZ"
    )
    instruction: str = option(
        "pick up the red cube and place it in the bowl",
        help="the language instruction given to the policy",
        pattern=r"(?s).*\S.*",
        accepted="a non-empty string",
        flag=True,
        metavar="TEXT",
    )
    safety: SafetyConfig = option(default_factory=SafetyConfig, help="limits of the safety filter")
    warmup_timeout: float = option(
        30.0,
        help="time allowed for the warm-up (first inputs, one encode, one action)",
        unit="s",
        low=0.01,
        high=600.0,
    )
    stop_timeout: float = option(
        2.0,
        help="time robot.stop(), and each driver's exit, may take before the controller goes"
        " on shutting down without it",
        unit="s",
        low=0.01,
        high=30.0,
    )
    action_timeout: float | None = option(
        None,
        help="time an action may take before the tick holds instead",
        unit="s",
        low=0.0001,
        high=10.0,
        default_text="one control period",
        renamed=(Renamed("action_timeout_ms", unit="ms", per=1000.0),),
    )
    command_timeout: float | None = option(
        None,
        help="time robot.command() / robot.hold() may take; a command that does not return"
        " in time counts as a lost link",
        unit="s",
        low=0.0001,
        high=10.0,
        default_text="half a control period",
    )
    status_interval: float = option(
        5.0,
        help="time between status log lines (0: none)",
        unit="s",
        low=0.1,
        high=3600.0,
        zero_ok=True,
        flag=True,
    )
    max_consecutive_failures: int = option(
        10,
        help="consecutive VL-encode or action failures after which the run fails",
        low=1,
        high=10_000,
    )
    spin: float | None = option(
        None,
        help="end each tick's timer sleep this long before its deadline and wait out the rest"
        " on the precise clock, for sub-millisecond lateness at the price of that CPU"
        " (real time only; 0: the timer alone); less than one control period",
        unit="s",
        low=0.0,
        high=1.0,
        high_open=True,
        flag=True,
        default_text="2 ms, at most a fifth of the period",
        renamed=(Renamed("spin_ms", unit="ms", per=1000.0),),
    )
    action_inline_max: float | None = option(
        None,
        help="run the policy's act on the event loop itself, skipping the action lane's thread"
        " hand-off, while its measured time stays under this (it blocks the loop that long);"
        " 0: always on the action lane",
        unit="s",
        low=0.0,
        high=0.01,
        flag=True,
        default_text="2 ms, at most a fifth of the period",
    )
    #: None: one encode per control period. Features newer than the next tick are
    #: never used, and a free-running encoder only steals CPU and GIL from it.
    vl_max_hz: float | None = option(
        None,
        help="most VL encodes per second (0: as fast as the encoder goes)",
        unit="Hz",
        low=0.1,
        high=1000.0,
        zero_ok=True,
        flag=True,
        metavar="HZ",
        default_text="the control rate",
    )
    #: "async" (the design): encodes run beside the control ticks and their newest
    #: features are reused until fresher ones land. "sync" (the design note's
    #: baseline): each tick encodes the newest frames and then acts on that feature,
    #: so the control rate falls to about 1/(encode time).
    vl_mode: VLMode = option(
        "async",
        help="async: encode beside the ticks and reuse the newest features; sync: every tick"
        " encodes, then acts (the baseline; the rate falls to 1/encode time)",
        flag=True,
    )
    vl_latency: float = option(
        0.0,
        help="pad every VL encode to take at least this long from its start, to emulate a"
        " slower model (a 3B VL on a robot PC); 0: no padding",
        unit="s",
        low=0.0,
        high=10.0,
        flag=True,
    )

    #: "thread" stays the default until the loop and GPU benchmarks (issue 11) have
    #: measured the process lane against it on the machines that matter.
    vl_worker: VLWorker = option(
        "thread",
        help="where the VL encoder runs: thread (the executor's VL lane thread) or process"
        " (a supervised worker process fed through shared memory, which keeps the encoder's"
        " GIL away from the control loop; restarted if it crashes or hangs)",
        flag=True,
    )
    vl_worker_timeout: float | None = option(
        None,
        help="process VL worker: time one encode may take before the worker counts as hung"
        " and is restarted",
        unit="s",
        low=0.01,
        high=600.0,
        flag=True,
        default_text="10 x the slowest encode after a worker's first, at least 2 s; until"
        " then warmup_timeout",
    )

    vl_worker_nice: int = option(
        DEFAULT_VL_WORKER_NICE,
        help="process VL worker: how much lower its CPU priority is than the controller's"
        " (a Unix nice increment, 0-19), so the control loop wins a contended core",
        low=0,
        high=19,
        flag=True,
    )

    #: 0 (off) by default: it needs a privilege, and a real-time thread is the operator's
    #: call, as with ros2_control's node (see `controller.realtime`).
    rt_priority: int = option(
        0,
        help="run the control loop's and the action lane's threads under SCHED_FIFO at this"
        " priority (1-99; Linux; needs root, CAP_SYS_NICE or an rtprio limit, else a warning"
        " and the normal scheduler), so they preempt an encoder on their core at once;"
        " 0: the normal scheduler",
        low=0,
        high=MAX_PRIORITY,
        flag=True,
    )

    def __post_init__(self) -> None:
        validate(self, error=ConfigError)
        if self.spin is not None and not self.spin < self.period:
            raise ConfigError(
                f"spin must be less than one control period ({self.period:g} s), got {self.spin!r}"
            )
        if self.action_inline_max is not None and not self.action_inline_max < 0.5 * self.period:
            raise ConfigError(
                "action_inline_max must be less than half a control period"
                f" ({0.5 * self.period:g} s), got {self.action_inline_max!r}"
            )

    @property
    def wake_spin(self) -> float:
        """The precise wake's spin in seconds, the default resolved."""
        if self.spin is not None:
            return self.spin
        return min(DEFAULT_SPIN, DEFAULT_SPIN_FRACTION * self.period)

    @property
    def inline_bound(self) -> float:
        """The inline `act` bound in seconds, the default resolved."""
        if self.action_inline_max is not None:
            return self.action_inline_max
        return default_inline_bound(self.period)

    @property
    def vl_min_interval(self) -> float:
        rate = self.hz if self.vl_max_hz is None else self.vl_max_hz
        return 1.0 / rate if rate > 0 else 0.0

    @property
    def period(self) -> float:
        return 1.0 / self.hz


@dataclass(frozen=True, slots=True)
class ActionSent:
    """The "action" observer event: a command the robot accepted, and what it was decided on.

    `frames` are the newest frame of every camera when the tick decided (the
    observation a dataset pairs with the action; the VL features the policy
    used may be older, by their feature age), and `sensors` the readings the
    policy acted on (a recording's privileged environment state). A recorder
    keeps references only: nothing here is copied on the control path.
    """

    tick: int
    command: JointCommand
    state: RobotState
    frames: Mapping[str, Frame]
    sensors: Mapping[str, SensorReading] = field(default_factory=dict)


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
        clock: Callable[[], float] | None = None,
        policy_spec: PolicySpec | None = None,
        sched: Sched | None = None,
    ) -> None:
        """`clock` replaces the controller clock (tests); by default it is the running loop's
        (`controller.clock.controller_clock`), chosen when `run()` starts.
        `sched` replaces the OS's thread scheduling calls behind `rt_priority` (tests); by
        default they are the OS's, used only on a loop that keeps real time.
        `policy_spec`: the policy's plugin name and options, which `vl_worker = "process"`
        needs to build the policy's VL part again in the worker process.
        """
        if not cameras:
            raise ConfigError("at least one camera is needed: the policy encodes images")
        names = [c.name for c in cameras]
        if len(set(names)) != len(names):
            raise ConfigError(f"camera names must be unique, got {names}")
        self.config = config
        self.robot = robot
        self.cameras = list(cameras)
        self.sensors = list(sensors)
        #: With `vl_worker = "process"`, the policy's encodes go to a worker process this
        #: controller starts (at load) and stops (on every exit path).
        self.vl_worker: ProcessVLPolicy | None = None
        if config.vl_worker == "process":
            policy = self.vl_worker = _process_lane(config, policy, policy_spec, executor)
        #: With `vl_latency`, every encode is padded to take that long (virtual time on the
        #: test harness's executor, a sleep on the VL lane's thread on the real one).
        self.policy: Policy = (
            PaddedPolicy(policy, config.vl_latency, padding_for(executor))
            if config.vl_latency > 0
            else policy
        )
        self.executor = executor
        self.telemetry = Telemetry(config.period)
        self.frames: dict[str, LatestValue[Frame]] = {n: LatestValue(f"frame:{n}") for n in names}
        self.state: LatestValue[RobotState] = LatestValue("state")
        self.sensor_slots: dict[str, LatestValue[SensorReading]] = {
            s.name: LatestValue(f"sensor:{s.name}") for s in self.sensors
        }
        self.features: LatestValue[Any] = LatestValue("features")
        self.phase = Phase.CONFIGURING
        self._clock_override = clock
        self._clock: Callable[[], float] | None = clock
        self.scheduler = PeriodicScheduler(
            config.period,
            clock=clock,
            spin=config.wake_spin,
            on_tick_done=lambda _t, work: self.telemetry.tick_done(work),
            on_missed=self.telemetry.missed_ticks,
        )
        #: Where each action runs: inline while `act` is measured short, else the action lane.
        self.actions = ActionPath(
            executor,
            InlineRule(config.inline_bound),
            clock=self._now,
            on_switch=self._action_path_switched,
        )
        self._stop_requested = asyncio.Event()
        self._stop_reason = ""
        self._run_task: asyncio.Task[Any] | None = None
        #: Callbacks `(event, time, detail)` for "phase" changes, "tick" starts, "hold"
        #: ticks and "action" (an `ActionSent`) after each command the robot accepted
        #: (the invariant checker, the fault matrix and the recorder listen). They run
        #: on the control task: they must return at once.
        self.observers: list[Callable[[str, float, Any], None]] = []
        self._cancelled_for_stop = False
        self._resumes: set[asyncio.Future[bool]] = set()
        self._safety: SafetyFilter | None = None
        self._holding: HoldReason | None = None
        self._seq = 0
        #: A state whose positions the policy's `act` wrote into: never acted on again.
        self._written_state: RobotState | None = None
        self.robot_stops = 0
        self._vl_failures = _FailureStreak(
            "VL encoding", config.max_consecutive_failures, self.telemetry
        )
        #: Sync mode: the tick's encode, kept across ticks while it outlives its wait.
        self._tick_encode: asyncio.Future[Stamped[Any] | None] | None = None
        #: This run holds the heap frozen (`controller.heap`): released when the run ends.
        self._holds_heap = False
        self._sched = sched
        #: The control path's real-time scheduling while ticking: left right after the
        #: robot's stop (which goes out at the same priority).
        self._realtime = contextlib.ExitStack()

    @property
    def sync(self) -> bool:
        """Whether each tick encodes its own features (`vl_mode = "sync"`)."""
        return self.config.vl_mode == "sync"

    # -- lifecycle ---------------------------------------------------------
    def _set_phase(self, phase: Phase) -> None:
        if phase is not self.phase:
            log.info("phase %s -> %s", self.phase.value, phase.value)
            self.phase = phase
            self._notify("phase", phase)

    def _notify(self, event: str, detail: Any) -> None:
        for observer in self.observers:
            observer(event, self._now(), detail)

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the controller to stop, in any phase; safe from any callback on the loop.

        While connecting or loading (which can take many seconds) the phase
        is cancelled at once; once warming up or active, the run winds down
        through its normal path. Either way the robot is stopped.
        """
        if self._stop_requested.is_set():
            return
        self._stop_reason = reason
        log.info("stop requested: %s (while %s)", reason, self.phase.value)
        self._stop_requested.set()
        task = self._run_task
        if self.phase is Phase.CONFIGURING and task is not None and not task.done():
            self._cancelled_for_stop = True
            task.cancel(f"stop requested: {reason}")

    def request_resume(self) -> None:
        """An operator asks the robot to resume after a stop it did not cause (e.g. SIGUSR1).

        The controller never does this on its own: a person stopped the arm,
        so only a person may start it again. Drivers that can restart
        themselves expose `async resume()` (the UR5 restarts its program
        holding where the arm is); the controller then acts again as soon as
        the robot reports ready and the inputs are fresh.
        """
        if self.phase is not Phase.ACTIVE and self.phase is not Phase.WARMING_UP:
            log.warning("resume ignored while %s", self.phase.value)
            return
        task = asyncio.ensure_future(self.resume_robot())
        self._resumes.add(task)
        task.add_done_callback(self._resumes.discard)

    async def resume_robot(self) -> bool:
        """Call the robot's `resume()`, bounded; True when it accepted. Errors are logged."""
        resume = getattr(self.robot, "resume", None)
        if resume is None:
            log.warning("robot %s has no resume(): resume it on the robot itself", self.robot.name)
            return False
        log.info("operator resume requested")
        try:
            async with asyncio.timeout(max(5.0, self.config.stop_timeout)):
                await resume()
        except TimeoutError:
            log.error("robot.resume() did not finish within its bound")
            return False
        except (NotReady, ConnectionLost) as exc:
            log.error("robot refused to resume: %s", exc)
            return False
        log.info("robot resumed; acting again once its state is ready and fresh")
        return True

    @property
    def stop_reason(self) -> str:
        return self._stop_reason

    def _now(self) -> float:
        """The controller clock (see the module docstring)."""
        clock = self._clock
        if clock is None:
            clock = self._clock = controller_clock()
        return clock()

    def _action_path_switched(self, inline: bool) -> None:
        self.telemetry.action_path(inline)
        log.info(
            "policy act %s (its mean time %.3f ms, bound %.3f ms)",
            "now runs inline on the loop" if inline else "back on the action lane",
            (self.actions.ewma or 0.0) * 1e3,
            self.actions.rule.bound * 1e3,
        )

    async def run(self, duration: float | None = None) -> dict[str, Any]:
        """Connect, warm up, control until `duration` elapses or a stop is requested.

        Returns the telemetry summary. Raises whatever ended the run
        abnormally, after the robot has been stopped. Every step on the way
        out (the robot stop, each driver's exit, the executor's close) is
        bounded by `stop_timeout`, so a wedged driver cannot hang the exit.
        """
        if duration is not None and not (
            isinstance(duration, (int, float)) and 0 < duration <= MAX_DURATION
        ):
            raise ConfigError(
                f"duration must be a number of seconds in (0, {MAX_DURATION:g}], got {duration!r}"
            )
        self._run_task = asyncio.current_task()
        # The clock of the loop this run is on (a controller may be run on several loops).
        self._clock = self._clock_override or controller_clock()
        robot_touched = False
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    try:
                        await self.executor.start()
                        stack.push_async_callback(
                            self._bounded, "executor close", self.executor.close
                        )
                        if self.vl_worker is not None:  # closed before the executor
                            stack.push_async_callback(
                                self._bounded, "VL worker close", self.vl_worker.aclose
                            )
                        robot_touched = True  # from here on, every exit stops the robot
                        await self._enter(stack, self.robot, "robot")
                        for cam in self.cameras:
                            await self._enter(stack, cam, f"camera {cam.name}")
                        for sensor in self.sensors:
                            await self._enter(stack, sensor, f"sensor {sensor.name}")
                        info = self.robot.info
                        self._safety = SafetyFilter(
                            self.config.safety, info.limits, self.config.period
                        )
                        await self.executor.run(
                            Lane.VL,
                            self.policy.load,
                            self.executor.device,
                            info,
                            self.config.period,
                        )
                    except asyncio.CancelledError:
                        if not self._take_stop_cancellation():
                            raise
                        log.info("stopped while %s", self.phase.value)
                    else:
                        await self._supervise(duration)
                finally:
                    # First thing on the way out, before cameras and links close.
                    if robot_touched:
                        await self._stop_robot()
                    # The stop went out at the control path's priority; the rest of the
                    # way out (drivers, the executor's lanes) does not need it.
                    self._realtime.close()
        except BaseException:
            self._set_phase(Phase.FAILED)
            raise
        finally:
            self._realtime.close()
            self._run_task = None
            if self._holds_heap:  # thawed, or this run's cycles would never be collected
                self._holds_heap = False
                heap.release()
            if self.telemetry.started is not None and self.telemetry.ended is None:
                self.telemetry.ended = self._now()
        self._set_phase(Phase.STOPPED)
        return self.telemetry.summary()

    def _take_stop_cancellation(self) -> bool:
        """True when the CancelledError being handled is our own early stop (then absorbed)."""
        task = asyncio.current_task()
        if not self._cancelled_for_stop or task is None:
            return False
        self._cancelled_for_stop = False
        # Only our cancel() is pending: absorb it. Anyone else's still propagates.
        return task.uncancel() == 0

    async def _enter(self, stack: contextlib.AsyncExitStack, driver: Any, what: str) -> None:
        """Connect a driver and register its bounded exit.

        A driver whose `__aenter__` raises (or is cancelled by a stop) must
        release what it took itself, as for any context manager.
        """
        await driver.__aenter__()
        stack.push_async_callback(self._bounded, f"{what} exit", driver.__aexit__, None, None, None)

    async def _bounded(self, what: str, fn: Any, *args: Any) -> None:
        """Await `fn(*args)` for at most `stop_timeout`; a failure or a hang is logged, not raised.

        The shutdown goes on either way: a camera that cannot close must not
        keep the process (and the operator) waiting forever.
        """
        task = asyncio.ensure_future(fn(*args))
        try:
            await self._await_bounded(task)
        except TimeoutError:
            self.telemetry.error("exit_timeout")
            log.error("%s did not finish within %.1f s; going on", what, self.config.stop_timeout)
            task.cancel()
        except Exception as exc:
            self.telemetry.error("exit_error")
            log.error("%s failed: %s: %s", what, type(exc).__name__, exc)

    async def _await_bounded(self, task: asyncio.Future[Any]) -> Any:
        """Wait for `task` up to `stop_timeout`, even through cancellations of our own task.

        A second Ctrl-C cancels the caller while the arm is being stopped;
        the stop must still get its time, so the cancellation is held back
        until the task finishes or the bound runs out, then re-raised.
        """
        deadline = self._now() + self.config.stop_timeout
        cancelled = False
        try:
            while True:
                remaining = deadline - self._now()
                if remaining <= 0:
                    raise TimeoutError
                try:
                    async with asyncio.timeout(remaining):
                        return await asyncio.shield(task)
                except asyncio.CancelledError:
                    if task.done():
                        raise  # the task itself was cancelled
                    cancelled = True
                    current = asyncio.current_task()
                    if current is not None:
                        current.uncancel()
        finally:
            if cancelled:
                current = asyncio.current_task()
                if current is not None:
                    current.cancel()

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
                if not self.sync:  # in sync mode each tick encodes (and the warm-up once)
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
                    await self._enter_realtime()
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

    async def _enter_realtime(self) -> None:
        """Real-time scheduling for the control path's threads from the first tick (`rt_priority`).

        The loop's thread, then the action lane's (where `act` runs when it is
        not inline: the tick waits for it, so it must not wait behind the
        encoder for a CPU). Only on a loop that keeps real time (or with a
        `sched` the test gave): a test process on virtual time must not turn
        its own threads real-time.
        """
        priority = self.config.rt_priority
        sched = self._sched
        if sched is None and priority:
            if not keeps_real_time(asyncio.get_running_loop()):
                self.telemetry.realtime = RealtimeGrant(
                    priority, False, "not applied: the loop runs on virtual time"
                ).as_dict()
                return
            sched = os_sched()
        grant = self._realtime.enter_context(realtime_thread(priority, sched))
        if grant.granted:
            own = lane = threading.get_native_id()
            try:  # the lane is idle after the warm-up; one that does not answer stays as it is
                async with asyncio.timeout(max(self.config.period, 0.1)):
                    lane = await self.executor.run(Lane.ACTION, threading.get_native_id)
            except Exception as exc:  # a timeout, or an executor that cannot say
                log.warning(
                    "real-time scheduling: the action lane's thread left as it is (%s)",
                    describe(exc),
                )
            if lane != own:  # a lane of its own, not this thread
                also = self._realtime.enter_context(
                    realtime_thread(priority, sched, tid=lane, what="the action lane's thread")
                )
                if also.granted:
                    grant = RealtimeGrant(
                        priority, True, f"{grant.detail} and the action lane's thread"
                    )
        self.telemetry.realtime = grant.as_dict()

    @staticmethod
    def _freeze_heap() -> None:
        """Move everything loaded so far out of the garbage collector's sight.

        torch, transformers, aiortc and av leave ~240,000 tracked objects; a
        full collection over them stopped the loop for 105-150 ms (longer
        than a period: a missed tick and a stale state) whenever the
        allocation counters triggered one mid-run. Frozen objects are never
        collected, which is what a long-lived model and its drivers want
        while the run is active; later garbage is collected as usual, in
        ~2 ms. The heap is thawed when the run ends (`controller.heap`).
        """
        heap.freeze()

    async def _stop_robot(self) -> None:
        """Stop the arm on a task of its own, bounded, surviving a second cancellation."""
        self._set_phase(Phase.STOPPING)
        self.robot_stops += 1
        stop = asyncio.ensure_future(self.robot.stop())
        try:
            await self._await_bounded(stop)
        except TimeoutError:
            self.telemetry.error("robot_stop_timeout")
            log.error("robot.stop() did not return within %.1f s", self.config.stop_timeout)
        except Exception as exc:
            self.telemetry.error("robot_stop_error")
            log.error("robot.stop() failed: %s: %s", type(exc).__name__, exc)

    # -- warm-up -----------------------------------------------------------
    async def _warmup(self) -> None:
        """Nothing moves before one encode and one action have completed."""
        waiting = "a first robot state"
        assert self._safety is not None
        safety = self._safety
        try:
            async with asyncio.timeout(self.config.warmup_timeout):
                stamped = await self.state.wait_newer(0)
                while (why := self._state_unusable(stamped)) is not None:
                    waiting = f"a valid, fresh robot state (the last one: {why})"
                    stamped = await self.state.wait_newer(stamped.version)
                waiting = "a first frame from every camera"
                for slot in self.frames.values():
                    await slot.wait_newer(0)
                for name, sslot in self.sensor_slots.items():
                    waiting = f"a first reading of sensor {name}"
                    await sslot.wait_newer(0)
                # The first encode is often slow (lazy CUDA/oneDNN init); wait
                # for features fresh enough to act on, so ACTIVE starts acting.
                waiting = "a first VL encode"
                feats = await self._first_features()
                while not feats.age(self._now()) <= self.config.safety.max_feature_age:
                    waiting = "VL features younger than max_feature_age, with valid capture times"
                    feats = await self._first_features(feats.version)
                waiting = "a first action"
                state = self.state.latest()
                assert state is not None
                measured = safety.measured(state.value)
                chunk = await self.actions.warm_up(
                    self.policy.act, feats.value, state.value, self._sensor_values()
                )
                if safety.measured(state.value) != measured:
                    raise WarmupError(_WROTE_STATE)
                verdict = safety.filter_action(chunk, state.value)
                if verdict.reason in (HoldReason.ACTION_MALFORMED, HoldReason.ACTION_NOT_FINITE):
                    raise WarmupError(
                        f"the policy's first action is unusable ({verdict.reason}): {np.asarray(chunk)!r:.200}"
                    )
                # Last, with everything loaded and the first encode done: the
                # collection blocks the loop (~0.1 s with torch loaded), so
                # ACTIVE starts on a state captured after it, not a stale one.
                waiting = "a fresh robot state after the heap was frozen"
                if not self._holds_heap:  # first: no other run's end thaws it meanwhile
                    heap.hold()
                    self._holds_heap = True
                self._freeze_heap()
                stamped = await self.state.wait_newer(self.state.version)
                while self._state_unusable(stamped) is not None:
                    stamped = await self.state.wait_newer(stamped.version)
        except TimeoutError:
            raise WarmupError(
                f"warm-up timed out after {self.config.warmup_timeout} s waiting for {waiting}"
            ) from None
        log.info("warm-up done: state, frames, features and one action are ready")

    async def _first_features(self, seen: int = 0) -> Stamped[Any]:
        """Warm-up: features newer than version `seen`.

        Async mode waits for the VL task's next encode; sync mode has no VL
        task, so it encodes the newest frames itself, retrying a failed
        encode with the VL task's backoff and failure limit.
        """
        if not self.sync:
            return await self.features.wait_newer(seen)
        while True:
            feats = await self._encode(self._newest_frames(), self._vl_failures)
            if feats is not None:
                return feats
            await asyncio.sleep(min(0.1 * 2**self._vl_failures.count, 2.0))

    def _state_unusable(self, stamped: Stamped[RobotState]) -> str | None:
        """Why this state cannot be acted on (stale, bad clock, implausible), or None.

        Readiness is not asked for here: an arm may start stopped and be
        enabled later, and the control task holds until it is.
        """
        assert self._safety is not None
        reason = self._safety.check_inputs(self._now(), None, stamped)
        if reason in (None, HoldReason.ROBOT_NOT_READY, HoldReason.NO_FEATURES):
            return None
        if reason is HoldReason.STATE_INVALID:
            return self._safety.state_problem(stamped.value)
        return reason.value

    # -- sensing -----------------------------------------------------------
    async def _stream(
        self,
        what: str,
        items: Callable[[], AsyncIterator[T]],
        slot: LatestValue[T],
        source_time: Callable[[T], float],
    ) -> None:
        """Pump a driver stream into its slot; a lost link is retried, other errors end the run.

        A stream that ends, or raises `ConnectionLost`, is restarted after a
        backoff (`reconnect_with_backoff`: jittered, capped at 2 s, back to
        0.1 s once a value arrived), and the slot ages meanwhile, so the
        safety filter holds. Any other exception is a driver's failure and
        ends the run: the robot is stopped and the CLI exits 1.
        """

        async def session(link: Reconnects) -> None:
            await pump(items(), slot, source_time, lambda _: link.healthy())

        def lost(exc: BaseException | None) -> None:
            if exc is not None:
                self.telemetry.error(f"{what}_connection_lost")

        await reconnect_with_backoff(
            session,
            what=what,
            backoff=STREAM_BACKOFF,
            logger=log,
            retry=(ConnectionLost,),
            on_failure=lost,
        )

    async def _camera_task(self, cam: CameraDriver) -> None:
        await self._stream(f"camera {cam.name}", cam.frames, self.frames[cam.name], _capture_time)

    async def _state_task(self) -> None:
        await self._stream("robot", self.robot.states, self.state, _capture_time)

    async def _sensor_task(self, sensor: SensorDriver) -> None:
        slot = self.sensor_slots[sensor.name]
        await self._stream(f"sensor {sensor.name}", sensor.readings, slot, _capture_time)

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

    def _newest_frames(self) -> dict[str, Stamped[Frame]]:
        """The newest frame of every camera (the warm-up saw one from each before any encode)."""
        latest = {name: slot.latest() for name, slot in self.frames.items()}
        missing = [name for name, s in latest.items() if s is None]
        if missing:
            raise RuntimeError(f"no frame yet from camera(s) {', '.join(missing)}")
        return latest  # type: ignore[return-value]

    async def _encode(
        self, stamped: Mapping[str, Stamped[Frame]], failures: _FailureStreak
    ) -> Stamped[Any] | None:
        """Encode these frames on the VL lane and publish the features; None if the encode failed.

        A failure is counted in `failures`, which raises once too many came
        in a row (the run then fails, as for any policy error).
        """
        frames = [s.value for s in stamped.values()]
        # The oldest input decides the age; a frame whose capture time is
        # not a number makes the features' age unknown, i.e. stale.
        times = [f.capture_time for f in frames]
        source_time = min(times) if all(math.isfinite(t) for t in times) else math.nan
        start = self._now()
        try:
            feats = await self.executor.run(
                Lane.VL, self.policy.encode_vl, frames, self.config.instruction
            )
        except Exception as exc:
            kind = getattr(exc, "telemetry_kind", None)  # a VL worker crash or hang
            if isinstance(kind, str):
                self.telemetry.error(kind)
            failures.failed(exc, "vl_encode")
            return None
        failures.succeeded()
        end = self._now()
        self.telemetry.vl_encoded(end - start, start - source_time)
        self.features.publish(feats, source_time, now=end)
        return self.features.latest()

    async def _vl_task(self) -> None:
        """Encode the NEWEST frames, publish, repeat: never a queue of old frames (async mode)."""
        seen: dict[str, int] = {}
        failures = self._vl_failures
        next_start = -math.inf
        while True:
            pause = next_start - self._now()
            if pause > 0:
                await asyncio.sleep(pause)
            stamped = await self._wait_for_new_frames(seen)
            seen = {name: s.version for name, s in stamped.items()}
            next_start = self._now() + self.config.vl_min_interval
            if await self._encode(stamped, failures) is None:
                await asyncio.sleep(min(0.1 * 2**failures.count, 2.0))

    async def _tick_features(self) -> HoldReason | None:
        """Sync mode: encode the newest frames now; None once fresh features are published.

        The wait is bounded by `max_feature_age` (features from an encode that
        took longer would be too old to act on anyway), so a hung encoder
        makes the ticks hold rather than stop. An encode that outlives its
        wait is not repeated: the next tick waits on the same one (the VL
        lane runs one job at a time), then starts afresh.
        """
        if self._tick_encode is None:
            self._tick_encode = asyncio.ensure_future(
                self._encode(self._newest_frames(), self._vl_failures)
            )
        encode = self._tick_encode
        done, _ = await asyncio.wait({encode}, timeout=self.config.safety.max_feature_age)
        if not done:
            self.telemetry.error("vl_encode_overdue")
            return HoldReason.FEATURES_STALE
        self._tick_encode = None
        if encode.result() is None:  # raises once failures are too many in a row
            return HoldReason.VL_ERROR
        return None

    # -- control -----------------------------------------------------------
    def _hold_detail(self, reason: HoldReason) -> str:
        """What an operator needs next to a hold reason: the robot's mode, the bad value."""
        latest = self.state.latest()
        if latest is None:
            return ""
        if reason is HoldReason.ROBOT_NOT_READY:
            return f" ({latest.value.mode})"
        if reason is HoldReason.STATE_INVALID and latest.value is self._written_state:
            return " (the policy's act wrote into it; waiting for the next sample)"
        if reason is HoldReason.STATE_INVALID and self._safety is not None:
            return f" ({self._safety.state_problem(latest.value)})"
        return ""

    async def _hold(self, reason: HoldReason) -> None:
        new_episode = self._holding is None
        self.telemetry.hold(reason.value, new_episode=new_episode)
        if self.observers:
            self._notify("hold", reason)
        if reason is not self._holding:
            log.warning("holding: %s%s", reason.value, self._hold_detail(reason))
        self._holding = reason
        if new_episode:
            try:
                await within(self.robot.hold(), self._command_timeout)
            except TimeoutError:
                self.telemetry.error("hold_timeout")
                log.warning("robot.hold() did not return within %.3f s", self._command_timeout)
            except (ConnectionLost, NotReady) as exc:
                log.warning("robot.hold() failed while holding for %s: %s", reason.value, exc)

    @property
    def _command_timeout(self) -> float:
        return self.config.command_timeout or 0.5 * self.config.period

    async def _control_task(self, start: float, until: float | None) -> None:
        assert self._safety is not None
        action_timeout = self.config.action_timeout or self.config.period
        failures = _FailureStreak(
            "action prediction", self.config.max_consecutive_failures, self.telemetry
        )
        try:
            async for tick in self.scheduler.ticks(start=start, until=until):
                self.telemetry.tick(tick.lateness, tick.spin)
                if self.observers:
                    self._notify("tick", tick)
                if self.sync:
                    why = await self._tick_features()
                    if why is not None:
                        await self._hold(why)
                        continue
                await self._control_step(tick, action_timeout, failures)
        finally:
            if self._tick_encode is not None:
                self._tick_encode.cancel()
                self._tick_encode = None
        self.request_stop("duration elapsed")

    async def _control_step(
        self, tick: Tick, action_timeout: float, failures: _FailureStreak
    ) -> None:
        assert self._safety is not None
        now = self._now()
        feats = self.features.latest()
        state = self.state.latest()
        sensors = {name: slot.latest() for name, slot in self.sensor_slots.items()}
        observed = (
            {
                name: s.value
                for name, slot in self.frames.items()
                if (s := slot.latest()) is not None
            }
            if self.observers
            else None
        )
        reason = self._safety.check_inputs(now, feats, state, sensors)
        if reason is None and state is not None and state.value is self._written_state:
            reason = HoldReason.STATE_INVALID
        if reason is not None:
            await self._hold(reason)
            return
        assert feats is not None and state is not None
        # The positions the checks accepted, copied before `act` is handed the state:
        # the step limit is judged from these (`SafetyFilter.measured`).
        measured = self._safety.measured(state.value)
        sensor_values = {name: st.value for name, st in sensors.items() if st is not None}
        t0 = self._now()
        try:
            acted = await self.actions.run(
                self.policy.act, feats.value, state.value, sensor_values, within=action_timeout
            )
        except TimeoutError:  # on the lane, or an inline act that returned too late
            self.telemetry.error("action_timeout")
            await self._hold(HoldReason.ACTION_TIMEOUT)
            return
        except Exception as exc:
            failures.failed(exc, "action")
            await self._hold(HoldReason.ACTION_ERROR)
            return
        latency = self._now() - t0
        if self._safety.measured(state.value) != measured:
            # Its action came from positions it changed itself, and the state object
            # stays in the slot until the next sample: neither is used again.
            self._written_state = state.value
            failures.failed(PolicyError(_WROTE_STATE), "action")
            await self._hold(HoldReason.ACTION_ERROR)
            return
        failures.succeeded()
        chunk = acted.value
        verdict = self._safety.filter_action(chunk, state.value, measured)
        if not verdict.send:
            await self._hold(verdict.reason or HoldReason.ACTION_MALFORMED)
            return
        assert verdict.positions is not None
        self._seq += 1
        cmd = JointCommand(positions=verdict.positions, duration=self.config.period, seq=self._seq)
        try:
            # Bounded, with the timer armed only if the command waits (`drivers.bounded`).
            await within(self.robot.command(cmd), self._command_timeout)
        except TimeoutError:
            self.telemetry.error("command_timeout")
            await self._hold(HoldReason.ROBOT_DISCONNECTED)
            return
        except ConnectionLost:
            self.telemetry.error("command_connection_lost")
            await self._hold(HoldReason.ROBOT_DISCONNECTED)
            return
        except NotReady:
            await self._hold(HoldReason.ROBOT_NOT_READY)
            return
        if self._holding is not None:
            log.info("resuming after hold (%s)", self._holding.value)
            self._holding = None
        if observed is not None:
            self._notify(
                "action", ActionSent(tick.index, cmd, state.value, observed, sensor_values)
            )
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
                compute=acted.compute,
                inline=acted.inline,
            )
        )

    async def _status_task(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_interval)
            log.info("status %s", self.telemetry.status_line())


# -- the process VL lane ----------------------------------------------------


def _process_lane(
    config: ControllerConfig, policy: Policy, spec: PolicySpec | None, executor: Executor
) -> ProcessVLPolicy:
    """`policy` with its encodes in a worker process that builds its own copy from `spec`."""
    from controller.vl_process import ProcessVLPolicy

    if spec is None:
        raise ConfigError(
            "vl_worker = process needs the policy's name and options (policy_spec) to build it"
            " in the worker process; use vl_worker = thread for a policy object built by hand"
        )
    return ProcessVLPolicy(
        spec,
        inner=policy,
        timeout=config.vl_worker_timeout,
        first_timeout=config.warmup_timeout,
        cpu_threads=getattr(executor, "cpu_threads", None),
        nice=config.vl_worker_nice,
    )


# -- sensing helpers --------------------------------------------------------

T = TypeVar("T")

#: Restarts of a driver stream that ended or lost its link: 0.1 s, doubling to 2 s.
STREAM_BACKOFF = Backoff(initial=0.1, maximum=2.0)


def _capture_time(item: Frame | RobotState | SensorReading) -> float:
    """What a slot ages a driver's value by: when the device captured it."""
    return item.capture_time
