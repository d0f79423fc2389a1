"""`python -m controller.fault_matrix_real`: the fault matrix through the real UR5 driver.

`controller.fault_matrix` measures every fault on fakes in virtual time.
This one runs the REAL `drivers.ur.robot.UR5Robot`, talking RTDE, dashboard
and script port over loopback sockets to the UR simulator (`drivers.ur.sim`),
in real time, with the fake camera and the fake policy on a real
`ComputeExecutor("cpu")`, through `ControllerHarness` (so every run is also
held to the invariants of `controller.invariants`).

Each simulator runs on its own event loop in its own thread, on its own
127.0.x.y address (ur-rtde's port is fixed; so is ours by default): like a
real robot controller, it keeps its own time when the PC's event loop
stalls, so its watchdogs see what a real arm's would.

Each row: ~3 s of normal control, the fault, then what happens after. The
truth comes from the simulator's side, never from the driver under test:

- the arm's joints, program state, status register and script uploads are
  sampled on the simulator's loop (motion after onset, restarts);
- every RTDE sample carries its serial number (see `drivers.ur.sim.record`),
  so each command the simulator receives is traced back, through the
  controller's policy call, to the sample it was computed from and to when
  the simulator produced that sample: a command from state older than
  `max_state_age` is counted however the driver mapped its clock;
- recovery is the first target the simulator received after the fault was
  cleared (or after a person asked for resume).

A row breaks its rule (exit code 1) when the fault was not detected, an
invariant broke, a command was computed from stale state, a person's stop
was undone or the arm moved after it, a stop of the driver's own was not
recovered, or an exit was not bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

from controller import fault_report
from controller.executor import ComputeExecutor
from controller.fault_report import cell_ms, ms
from controller.harness import ControllerHarness
from controller.invariants import PolicyProxy, RobotProxy
from controller.loop_thread import LoopThread
from controller.safety import HoldReason
from drivers.base import JointCommand, RobotState
from drivers.fake import FakeCamera
from drivers.fake.config import FakeCameraConfig
from drivers.ur.config import UR5Config
from drivers.ur.program import ProgramParams
from drivers.ur.robot import UR5Robot
from drivers.ur.sim import SimConfig, UrSimulator
from drivers.ur.sim.arm import MODE_SERVO, RUNTIME_PLAYING, ST_WATCHDOG
from drivers.ur.sim.record import SimRecorder
from policies.fake import FakePolicy

log = logging.getLogger(__name__)

H = HoldReason
T = TypeVar("T")

#: After a person's stop the arm may still decelerate; beyond this it moved (rad).
MOTION_TOLERANCE = 0.01
#: Bound on one row, whatever happens (real time).
ROW_BOUND = 60.0

Who = Literal["person", "protective", "auto_recover", "ours", "input"]


@dataclass(frozen=True)
class Timing:
    """Seconds of each phase of a row (the test shortens them)."""

    warm: float = 3.0  # normal control before the fault
    watch: float = 5.0  # after a person's stop: nothing may move or restart
    fault: float = 3.0  # how long an input fault lasts
    after: float = 2.5  # after the fault is cleared / resume asked


# -------------------------------------------------------------- the simulator's thread


@dataclass(frozen=True, slots=True)
class ArmSample:
    """The simulated arm as sampled on the simulator's own loop (ground truth)."""

    time: float
    q: tuple[float, ...]
    moving: bool
    runtime: int
    status: int
    scripts: int


class SimThread(LoopThread):
    """A `UrSimulator` on its own event loop in its own thread.

    A real robot controller does not stop when the PC does: in the
    controller's loop the simulator would stall with it, and its watchdogs
    would never see a PC stall. Everything done to the simulator goes through
    `on_sim()`, which runs it on the simulator's loop.
    """

    def __init__(self, config: SimConfig, *, status_register: str, sample_hz: float = 100.0):
        super().__init__(f"ur-sim-{config.host}")
        self.config = config
        self.status_register = status_register
        self.sample_period = 1.0 / sample_hz
        self.track: list[ArmSample] = []
        self.sim: UrSimulator | None = None
        self.recorder: SimRecorder | None = None
        self._sampler: asyncio.Task[None] | None = None

    async def _setup(self) -> None:
        sim = UrSimulator(self.config)
        await sim.start()
        self.sim, self.recorder = sim, sim.record()
        self._sampler = asyncio.create_task(self._sample(sim), name="arm-sampler")

    async def _teardown(self) -> None:
        assert self.sim is not None and self._sampler is not None
        self._sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sampler
        await self.sim.close()

    async def _sample(self, sim: UrSimulator) -> None:
        loop = asyncio.get_running_loop()
        while True:
            a = sim.arm
            self.track.append(
                ArmSample(
                    time=loop.time(),
                    q=tuple(float(x) for x in a.q),
                    moving=bool(np.any(a.qd)),
                    runtime=a.runtime_state,
                    status=int(a.outputs.get(self.status_register, 0)),
                    scripts=sim.scripts_received,
                )
            )
            await asyncio.sleep(self.sample_period)

    async def on_sim(self, fn: Callable[[UrSimulator], T]) -> T:
        """Run `fn(sim)` on the simulator's loop (its fault methods need that loop)."""
        sim = self.sim
        assert sim is not None

        async def job() -> T:
            return fn(sim)

        return await self.call(job)


# -------------------------------------------------------------- taps on the controller side


@dataclass(frozen=True, slots=True)
class ActTaken:
    """One `policy.act` call: when, and which simulator sample its state was."""

    time: float
    serial: int | None


@dataclass(slots=True)
class Tap:
    """What the controller did, as seen at the policy and robot interfaces."""

    last_act: ActTaken | None = None
    #: every command the controller asked the robot to send, by its exact target
    attempts: dict[tuple[float, ...], ActTaken | None] = field(default_factory=dict)
    #: (time, target) of every command the driver accepted
    accepted: list[tuple[float, tuple[float, ...]]] = field(default_factory=list)
    holds: list[tuple[float, str]] = field(default_factory=list)

    def observe(self, event: str, _time: float, detail: Any) -> None:
        if event == "hold":
            self.holds.append((time.monotonic(), str(detail)))


class TapPolicy(PolicyProxy):
    """Records which simulator sample each action was computed from (by its serial tag)."""

    def __init__(self, inner: FakePolicy, tap: Tap) -> None:
        super().__init__(inner)
        self._tap = tap

    def act(self, features: Any, state: RobotState, sensors: Mapping[str, Any]) -> Any:
        # time.monotonic() is the simulator loop's clock too (standard asyncio loops)
        self._tap.last_act = ActTaken(time.monotonic(), SimRecorder.serial_of(state.tcp_force))
        return super().act(features, state, sensors)


class TapRobot(RobotProxy):
    """The UR5 driver, with each command's target and originating action written down."""

    def __init__(self, inner: UR5Robot, tap: Tap) -> None:
        super().__init__(inner)
        self._tap = tap

    async def command(self, cmd: JointCommand) -> None:
        key = tuple(float(x) for x in np.asarray(cmd.positions, dtype=float))
        self._tap.attempts[key] = self._tap.last_act
        await super().command(cmd)
        self._tap.accepted.append((time.monotonic(), key))


# -------------------------------------------------------------- rows


@dataclass
class Rig:
    """One row's running parts, handed to the fault's script."""

    sim: SimThread
    harness: ControllerHarness
    robot: UR5Robot
    timing: Timing
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks[name] = time.monotonic() if at is None else at

    async def do(self, fn: Callable[[UrSimulator], Any]) -> Any:
        return await self.sim.on_sim(fn)


Script = Callable[[Rig], Awaitable[None]]
Step = Callable[[UrSimulator], Any]


@dataclass(frozen=True)
class RealFault:
    name: str
    what: str
    #: who stopped the arm, which decides the row's rule
    who: Who
    detected_by: tuple[HoldReason, ...]
    play: Script
    recovery: str
    robot_options: Mapping[str, Any] = field(default_factory=dict)


def dash(line: str) -> Step:
    return lambda sim: sim.dashboard(line)


async def _unlock_on_pendant(rig: Rig) -> None:
    """The person unlocks the protective stop (UR refuses before 5 s)."""
    reply = ""
    for _ in range(30):
        reply = await rig.do(dash("unlock protective stop"))
        if "releasing" in reply:
            return
        await asyncio.sleep(0.1)  # UR's 5 s are counted on the robot's clock
    raise RuntimeError(f"the protective stop could not be unlocked: {reply!r}")


def person(steps: Sequence[Step], before_resume: Script | None = None) -> Script:
    """A person's stop, one step a second; nothing may move or restart while they watch;
    then they ask the controller to resume (`Controller.request_resume()`)."""

    async def play(rig: Rig) -> None:
        rig.mark("onset")
        for i, step in enumerate(steps):
            if i:
                await asyncio.sleep(1.0)
            await rig.do(step)
        # at least `watch` s from onset, and 3 s after the last step (brakes released...)
        await asyncio.sleep(max(rig.timing.watch - (len(steps) - 1), 3.0))
        rig.mark("window_end")
        if before_resume is not None:
            await before_resume(rig)
            # the person then turns to the controller: resume() judges the arm on the
            # driver's newest sample, which must postdate the unlock (a resume in the same
            # few ms is refused as still stopped, and nothing happens)
            await asyncio.sleep(0.5)
        rig.mark("clear")
        rig.mark("resume")
        rig.harness.controller.request_resume()
        await asyncio.sleep(rig.timing.after)

    return play


def input_fault(inject: Step, clear: Step) -> Script:
    async def play(rig: Rig) -> None:
        rig.mark("onset")
        await rig.do(inject)
        await asyncio.sleep(rig.timing.fault)
        rig.mark("window_end")
        rig.mark("clear")
        await rig.do(clear)
        await asyncio.sleep(rig.timing.after)

    return play


async def _protective_auto(rig: Rig) -> None:
    rig.mark("onset")
    rig.mark("clear")  # nobody clears it: recovery counts from the stop itself
    await rig.do(UrSimulator.protective_stop)
    await asyncio.sleep(5.0 + rig.timing.after + 1.0)
    rig.mark("window_end")


def _stall_the_loop(rig: Rig, seconds: float) -> None:
    """THE FAULT UNDER TEST, not a bug: block the controller's event loop like a GC pause or
    a swapping machine would, so no heartbeat leaves the PC for `seconds`."""
    rig.mark("onset")
    time.sleep(seconds)
    rig.mark("clear")


async def _pc_stall(rig: Rig) -> None:
    asyncio.get_running_loop().call_soon(_stall_the_loop, rig, 1.0)
    await asyncio.sleep(0)  # the callback runs (and blocks the loop) before we go on
    rig.mark("window_end")
    await asyncio.sleep(rig.timing.after + 1.5)


async def _link_drop(rig: Rig) -> None:
    rig.mark("onset")
    await rig.do(lambda sim: sim.drop_links(refuse_for=1.0))
    await asyncio.sleep(1.0)
    rig.mark("clear")
    rig.mark("window_end")
    await asyncio.sleep(rig.timing.after + 1.5)


def _thaw(sim: UrSimulator) -> None:
    sim.frozen_timestamp = None


ROWS: tuple[RealFault, ...] = (
    RealFault(
        "dashboard_stop",
        "a person sends `stop` to the dashboard mid-run",
        "person",
        (H.ROBOT_NOT_READY,),
        person([dash("stop")]),
        "person: request_resume()",
    ),
    RealFault(
        "dashboard_pause",
        "a person sends `pause` to the dashboard",
        "person",
        (H.ROBOT_NOT_READY,),
        person([dash("pause")]),
        "person: request_resume()",
    ),
    RealFault(
        "power_cycle",
        "`power off`, `power on`, `brake release` (1 s apart)",
        "person",
        (H.ROBOT_NOT_READY,),
        person([dash("power off"), dash("power on"), dash("brake release")]),
        "person: request_resume()",
    ),
    RealFault(
        "emergency_stop",
        "e-stop pressed, released, `power on`, `brake release` (1 s apart)",
        "person",
        (H.ROBOT_NOT_READY,),
        person(
            [
                UrSimulator.emergency_stop,
                UrSimulator.release_emergency_stop,
                dash("power on"),
                dash("brake release"),
            ]
        ),
        "person: request_resume()",
    ),
    RealFault(
        "protective_stop",
        "protective stop, auto_recover off",
        "protective",
        (H.ROBOT_NOT_READY,),
        person([UrSimulator.protective_stop], before_resume=_unlock_on_pendant),
        "person: unlock on pendant, request_resume()",
    ),
    RealFault(
        "protective_stop_auto",
        "protective stop, auto_recover on",
        "auto_recover",
        (H.ROBOT_NOT_READY,),
        _protective_auto,
        "automatic (auto_recover, after UR's 5 s)",
        {"auto_recover": True},
    ),
    RealFault(
        "pc_stall",
        "the controller's event loop blocked 1 s",
        "ours",
        (H.STATE_STALE, H.ROBOT_NOT_READY, H.ROBOT_DISCONNECTED),
        _pc_stall,
        "automatic (a stop of our own)",
    ),
    RealFault(
        "link_drop",
        "RTDE sockets dropped, refused for 1 s",
        "ours",
        (H.STATE_STALE, H.ROBOT_DISCONNECTED, H.ROBOT_NOT_READY),
        _link_drop,
        "automatic (reconnect, our program restarted)",
    ),
    RealFault(
        "delay_steady",
        "0.3 s added to every RTDE packet",
        "input",
        (H.STATE_STALE,),
        input_fault(lambda sim: sim.delay_link(0.3), lambda sim: sim.delay_link(0.0)),
        "delay removed",
    ),
    RealFault(
        "timestamp_frozen",
        "RTDE timestamp stops advancing",
        "input",
        (H.STATE_STALE,),
        input_fault(UrSimulator.freeze_timestamp, _thaw),
        "clock runs again",
    ),
    RealFault(
        "timestamp_nan",
        "RTDE timestamp is NaN",
        "input",
        (H.STATE_CLOCK_INVALID,),
        input_fault(
            lambda sim: sim.corrupt_next(10**9, timestamp=math.nan),
            lambda sim: sim.corrupt_next(0),
        ),
        "valid timestamps again",
    ),
    RealFault(
        "joints_nan",
        "actual_q is NaN",
        "input",
        (H.STATE_INVALID,),
        input_fault(
            lambda sim: sim.corrupt_next(10**9, actual_q=[math.nan] * 6),
            lambda sim: sim.corrupt_next(0),
        ),
        "valid joints again",
    ),
)

ROW_NAMES = tuple(r.name for r in ROWS)


# -------------------------------------------------------------- measuring one row


@dataclass
class Row:
    fault: str
    what: str
    who: str
    expected: list[str]
    detected_as: list[str]
    detection_ms: float | None
    motion_rad: float | None
    restarted_by_driver: bool
    restart_ms: float | None
    recovery_ms: float | None
    recovery_needs: str
    #: targets the simulator took between onset (+ grace) and the fault's end
    commands_during_fault: int
    #: targets traced back to the simulator sample their action was computed from
    traced_commands: int
    #: ... of which computed from state the simulator produced > max_state_age before
    stale_commands: int
    #: servo targets the simulator took that the controller never commanded
    unexplained_targets: int
    max_state_age_at_act_ms: float | None
    #: first time after onset the program was not PLAYING or its watchdog had fired
    program_stopped_ms: float | None
    #: from when on the arm stood still until control resumed
    arm_still_ms: float | None
    #: first time after onset the program's heartbeat watchdog fired (PC silent too long)
    watchdog_fired_ms: float | None
    #: RTDE sessions the driver reopened during the row
    reconnects: int
    #: the controller's own view of its loop: ticks skipped, worst tick lateness
    missed_ticks: int
    tick_lateness_max_ms: float | None
    violations: list[str]
    broken: list[str]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.broken


def _hosts() -> Iterator[str]:
    """Loopback addresses for simulators: a range of our own (pid-based), away from 127.0.0.x."""
    second = 100 + os.getpid() % 100
    for k in itertools.count():
        yield f"127.0.{second}.{2 + k % 250}"


_HOSTS = _hosts()


def _controller_parts(robot: UR5Robot, tap: Tap, **config: Any) -> ControllerHarness:
    policy = TapPolicy(FakePolicy(vl_latency=0.05, action_latency=0.005, amplitude=0.2), tap)
    config.setdefault("stop_timeout", 1.0)
    config.setdefault("warmup_timeout", 20.0)
    harness = ControllerHarness(
        robot=TapRobot(robot, tap),
        cameras=[FakeCamera(FakeCameraConfig())],
        policy=policy,  # type: ignore[arg-type]
        executor=ComputeExecutor("cpu"),
        **config,
    )
    harness.controller.observers.append(tap.observe)
    return harness


async def _start_sim(params: ProgramParams) -> tuple[str, SimThread]:
    """A simulator on the first free address of our range."""
    last: OSError | None = None
    for _ in range(20):
        host = next(_HOSTS)
        sim = SimThread(SimConfig(host=host), status_register=params.status_name)
        try:
            await sim.__aenter__()
        except OSError as exc:  # address in use by someone else's run
            last = exc
            await sim.__aexit__(None, None, None)
            continue
        return host, sim
    raise RuntimeError(f"no free loopback address for a simulator: {last}")


async def _finish(harness: ControllerHarness) -> tuple[list[str], str | None]:
    """Stop the run: (the invariants it broke, how the run failed or None)."""
    error = None
    try:
        async with asyncio.timeout(15.0):
            await harness.stop()
    except AssertionError:
        pass  # the harness asserts the invariants at the end: they are read below
    except Exception as exc:
        error = f"the run ended with {type(exc).__name__}: {exc}"
    assert harness.checker is not None
    return list(harness.checker.violations), error


async def measure(
    fault: RealFault,
    timing: Timing = Timing(),
    *,
    prepare: Callable[[UR5Robot], None] | None = None,
) -> Row:
    """Run one fault through the real driver and the simulator; judge it from the simulator.

    `prepare` may alter the driver before it connects (tests use it to plant a
    defect and prove the simulator's view catches what the driver hides).
    """
    host, sim = await _start_sim(UR5Config(host="sim", **fault.robot_options).program)
    error: str | None = None
    try:
        robot = UR5Robot.from_spec("", {"host": host, **fault.robot_options})
        if prepare is not None:
            prepare(robot)
        tap = Tap()
        harness = _controller_parts(robot, tap)
        rig = Rig(sim, harness, robot, timing)
        harness.start(None)
        violations: list[str] = []
        try:
            async with asyncio.timeout(ROW_BOUND):
                await harness.until_active()
                await asyncio.sleep(timing.warm)
                await fault.play(rig)
        except Exception as exc:  # a row that fails to run is reported, not raised
            error = f"{type(exc).__name__}: {exc}"
            log.error("row %s failed to run: %s", fault.name, error)
        finally:
            violations, ended_with = await _finish(harness)
            error = error or ended_with
    finally:
        await sim.__aexit__(None, None, None)
    return judge(fault, rig, tap, sim, violations, error)


def _servo_targets(recorder: SimRecorder, params: ProgramParams) -> list[tuple[float, tuple]]:
    """(time taken, target) of every new servo target the simulator's registers received."""
    r = params.reg
    seq_name, mode_name = f"input_int_register_{r}", f"input_int_register_{r + 1}"
    out = []
    last_seq: int | None = None
    for taken in list(recorder.inputs):
        v = taken.values
        seq = v.get(seq_name)
        if seq == last_seq:
            continue  # a keepalive: the same registers again
        last_seq = seq
        if v.get(mode_name) == MODE_SERVO:
            target = tuple(float(v[f"input_double_register_{r + i}"]) for i in range(6))
            out.append((taken.time, target))
    return out


def judge(
    fault: RealFault,
    rig: Rig,
    tap: Tap,
    sim: SimThread,
    violations: list[str],
    error: str | None,
) -> Row:
    """The row's figures and broken rules, from the simulator's records and the taps."""
    config = rig.harness.config
    max_state_age = config.safety.max_state_age
    # the slack on ages the invariant checker allows too (clock skew by design)
    age_slack = config.safety.max_future_skew
    # commands this long after onset may still come from state captured before it
    onset_grace = max_state_age + age_slack + config.period
    marks = rig.marks
    recorder = sim.recorder
    assert recorder is not None
    track = list(sim.track)
    onset = marks.get("onset", math.inf)
    clear = marks.get("clear", math.inf)
    window_end = marks.get("window_end", clear)
    resume = marks.get("resume")
    expected = {r.value for r in fault.detected_by}
    broken: list[str] = []

    targets = _servo_targets(recorder, rig.robot.params)
    stale = unexplained = 0
    ages: list[float] = []
    for _, target in targets:
        if target not in tap.attempts:
            unexplained += 1
            continue
        act = tap.attempts[target]
        sample = recorder.sample(act.serial) if act is not None and act.serial else None
        if act is None or sample is None:
            unexplained += 1
            continue
        age = act.time - sample.produced
        ages.append(age)
        if not age <= max_state_age + age_slack:
            stale += 1
    in_fault = [t for t, _ in targets if onset + onset_grace <= t < clear]
    # Recovered: the arm took a target after the fault was cleared (or resume asked) AND
    # after the controller first held for it.
    seen = fault_report.timeline(tap.holds, expected, (t for t, _ in targets), onset, clear)
    detection, recovery, recovered_at = seen.detection, seen.recovery, seen.recovered_at
    # what the controller held for, from the onset until the arm took a target again
    first_reason = seen.holds[0][1] if seen.holds and seen.first_hold < recovered_at else None
    held_as = ([first_reason] if first_reason else []) + [
        r for r, _ in seen.during.most_common() if r != first_reason
    ]

    before = [s for s in track if s.time <= onset]
    q0 = np.asarray(before[-1].q if before else track[0].q) if track else None
    # the arm's motion from the onset until control resumed (or the watch ended)
    watched = [s for s in track if onset <= s.time <= min(window_end, recovered_at)]
    motion = (
        float(max(np.max(np.abs(np.asarray(s.q) - q0)) for s in watched))
        if watched and q0 is not None
        else None
    )
    scripts0 = before[-1].scripts if before else 0
    restarts = [s for s in track if s.time > onset and s.scripts > scripts0]
    restart_at = restarts[0].time if restarts else None
    # a program PLAYING again after it stopped, before a person asked (scripts or not)
    stopped = next((s.time for s in track if s.time > onset and s.runtime != RUNTIME_PLAYING), None)
    replay_at = next(
        (
            s.time
            for s in track
            if stopped is not None and s.time > stopped and s.runtime == RUNTIME_PLAYING
        ),
        None,
    )
    before_resume = resume if resume is not None else math.inf
    restarted = (restart_at is not None and restart_at < before_resume) or (
        replay_at is not None and replay_at < before_resume
    )
    # the arm standing still from then on until control resumed (a stop, not a pause in motion)
    arm_still = None
    for s in track:
        if onset <= s.time <= min(window_end, recovered_at):
            if s.moving:
                arm_still = None
            elif arm_still is None:
                arm_still = s.time
    watchdog = next((s.time for s in track if s.time > onset and s.status == ST_WATCHDOG), None)
    summary = rig.harness.telemetry.summary()
    prog_stop = next(
        (
            s.time
            for s in track
            if s.time > onset and (s.status == ST_WATCHDOG or s.runtime != RUNTIME_PLAYING)
        ),
        None,
    )

    if error is not None:
        broken.append(f"did not run: {error}")
    if detection is None:
        broken.append(f"not detected as {'/'.join(sorted(expected))}")
    if violations:
        broken.append(f"{len(violations)} invariant(s) broken")
    if stale:
        broken.append(f"{stale} command(s) from stale state (simulator's clock)")
    if unexplained:
        broken.append(f"{unexplained} target(s) the controller did not command")
    if recovery is None:
        broken.append("never recovered")
    if fault.who in ("person", "protective", "input") and in_fault:
        broken.append(f"{len(in_fault)} command(s) reached the arm during the fault")
    if fault.who in ("person", "protective"):
        if restarted:
            broken.append("a stop the driver did not cause was undone automatically")
        if motion is None or motion > MOTION_TOLERANCE:
            broken.append(
                f"the arm moved after the stop ({motion:.4f} rad)"
                if motion is not None
                else "the arm was not sampled"
            )
    if fault.who == "auto_recover":
        if restart_at is None:
            broken.append("auto_recover did not restart the program")
        elif restart_at - onset < 5.0:
            broken.append(f"restarted {restart_at - onset:.2f} s after a protective stop (< 5 s)")
    if fault.who == "ours" and restart_at is None:
        broken.append("the driver did not restart its own program")
    if fault.name == "pc_stall":
        # the program's heartbeat watchdog, plus a few robot steps and the deceleration
        bound = 1.0 / rig.robot.config.watchdog_hz + 0.3
        if prog_stop is None or prog_stop - onset > bound:
            broken.append(f"the program did not stop within {bound:.2f} s of the stall")
        if arm_still is None or arm_still - onset > bound:
            broken.append(f"the arm was not standing still within {bound:.2f} s of the stall")

    return Row(
        fault=fault.name,
        what=fault.what,
        who=fault.who,
        expected=sorted(expected),
        detected_as=held_as,
        detection_ms=ms(detection),
        motion_rad=None if motion is None else round(motion, 5),
        restarted_by_driver=restarted if fault.who in ("person", "protective") else bool(restarts),
        restart_ms=ms(None if restart_at is None else restart_at - onset),
        recovery_ms=ms(recovery),
        recovery_needs=fault.recovery,
        commands_during_fault=len(in_fault),
        traced_commands=len(ages),
        stale_commands=stale,
        unexplained_targets=unexplained,
        max_state_age_at_act_ms=ms(max(ages)) if ages else None,
        program_stopped_ms=ms(None if prog_stop is None else prog_stop - onset),
        arm_still_ms=ms(None if arm_still is None else arm_still - onset),
        watchdog_fired_ms=ms(None if watchdog is None else watchdog - onset),
        reconnects=max(rig.robot.connects - 1, 0),
        missed_ticks=int(summary.get("missed_ticks") or 0),
        tick_lateness_max_ms=(summary.get("tick_lateness_ms") or {}).get("max"),
        violations=violations[:20],
        broken=broken,
    )


# -------------------------------------------------------------- the exit row


@dataclass
class ExitRow(fault_report.ExitRow):
    """The exit row's figures, and what it left running and broke."""

    driver_tasks_left: list[str]
    violations: list[str]
    broken: list[str]

    @property
    def ok(self) -> bool:
        return not self.broken


async def exit_row() -> ExitRow:
    """SIGTERM-equivalent `request_stop` while the UR5 connects to a host that never answers."""

    connecting = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connecting.set()
        with contextlib.suppress(OSError):
            await reader.read()  # accepts, never says a word
        writer.close()

    server: asyncio.Server | None = None
    for _ in range(20):
        host = next(_HOSTS)
        try:
            server = await asyncio.start_server(silent, host, 30004)
            break
        except OSError:
            continue
    if server is None:
        raise RuntimeError("no free loopback address for the silent host")
    bound = 1.0
    robot = UR5Robot.from_spec("", {"host": host, "connect_timeout": 30.0})
    tap = Tap()
    harness = _controller_parts(robot, tap, stop_timeout=0.5)
    try:
        task = harness.start(10.0)
        async with asyncio.timeout(20.0):
            await connecting.wait()  # the driver is in its RTDE handshake
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        harness.controller.request_stop("signal SIGTERM")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(35.0):
                await asyncio.shield(task)
        ended = time.monotonic() - t0
        await asyncio.sleep(0.2)  # give a cleaned-up driver time to show it
        left = sorted(
            t.get_name()
            for t in asyncio.all_tasks()
            if t.get_name().startswith(f"{robot.name}-") and not t.done()
        )
        violations, error = await _finish(harness)
    finally:
        await robot.close()  # whatever the run left behind, this matrix cleans up
        server.close()
    stops = harness.controller.robot_stops
    broken = []
    if ended > bound:
        broken.append(f"ended {ended:.2f} s after the stop request (bound {bound:g} s)")
    if stops < 1:
        broken.append("robot.stop() never called")
    if left:
        broken.append(f"driver tasks still running after the run: {', '.join(left)}")
    if violations:
        broken.append(f"{len(violations)} invariant(s) broken")
    if error is not None:
        broken.append(error)
    return ExitRow(
        "request_stop (SIGTERM) while connecting to a host that accepts and never answers",
        round(ended * 1e3, 1),
        stops,
        bound * 1e3,
        left,
        violations,
        broken,
    )


# -------------------------------------------------------------- the matrix


async def run_matrix(
    names: Sequence[str] | None = None, *, timing: Timing = Timing(), exits: bool = True
) -> dict[str, Any]:
    rows = []
    for fault in ROWS:
        if names and fault.name not in names:
            continue
        log.info("row %s: %s", fault.name, fault.what)
        rows.append(await measure(fault, timing))
    out: dict[str, Any] = {"faults": [asdict(r) | {"ok": r.ok} for r in rows]}
    if exits:
        e = await exit_row()
        out["exits"] = [asdict(e) | {"ok": e.ok}]
    else:
        out["exits"] = []
    return out


def _motion(r: Mapping[str, Any]) -> str:
    return "-" if r["motion_rad"] is None else f"{r['motion_rad']:.4f}"


def _restarted(r: Mapping[str, Any]) -> str:
    if not r["restarted_by_driver"]:
        return "no"
    when = f" at {cell_ms(r['restart_ms'])} ms" if r["restart_ms"] is not None else ""
    if r["who"] in ("person", "protective"):
        return "YES" + when
    if r["who"] == "auto_recover":
        return "yes, auto_recover" + when
    why = []
    if r["watchdog_fired_ms"] is not None:
        why.append(f"our watchdog fired at {cell_ms(r['watchdog_fired_ms'])} ms")
    if r["reconnects"]:
        why.append(f"{r['reconnects']} reconnect(s)")
    return f"yes{when}, our own stop ({', '.join(why) or 'cause not seen'})"


def _notes(r: Mapping[str, Any]) -> str:
    notes = [
        f"{r['commands_during_fault']} cmd in fault",
        f"{r['stale_commands']} of {r['traced_commands']} from stale state",
    ]
    if r["max_state_age_at_act_ms"] is not None:
        notes.append(f"max true state age at act {r['max_state_age_at_act_ms']:.0f} ms")
    if r["fault"] == "pc_stall":
        notes.append(
            f"program's watchdog fired at {cell_ms(r['program_stopped_ms'])} ms,"
            f" arm still from {cell_ms(r['arm_still_ms'])} ms"
        )
    elif r["who"] in ("person", "protective") and r["arm_still_ms"] is not None:
        notes.append(f"arm still from {r['arm_still_ms']:.0f} ms")
    if r["missed_ticks"]:
        notes.append(
            f"controller missed {r['missed_ticks']} tick(s), worst lateness"
            f" {cell_ms(r['tick_lateness_max_ms'])} ms"
        )
    return "; ".join(notes)


def to_markdown(result: Mapping[str, Any]) -> str:
    lines = fault_report.table(
        [
            fault_report.FAULT,
            fault_report.HELD_AS,
            fault_report.DETECTION,
            fault_report.Column("arm motion after onset (rad)", _motion),
            fault_report.Column("restarted by driver?", _restarted),
            fault_report.RECOVERY,
            fault_report.RECOVERY_NEEDS,
            fault_report.INVARIANTS,
            fault_report.Column("simulator's view", _notes),
            fault_report.VERDICT,
        ],
        result["faults"],
    )
    if result.get("exits"):
        exit_columns = [
            *fault_report.EXIT_COLUMNS,
            fault_report.Column(
                "driver tasks left", lambda e: ", ".join(e["driver_tasks_left"]) or "none"
            ),
            fault_report.VERDICT,
        ]
        lines += ["", *fault_report.table(exit_columns, result["exits"])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = fault_report.tool_parser("python -m controller.fault_matrix_real", __doc__, verbose=True)
    p.add_argument("--no-exit-row", action="store_true", help="skip the exit row")
    args = fault_report.parse(p, argv, ROW_NAMES)
    return fault_report.run_real_time(
        p,
        args,
        lambda: run_matrix(args.row, exits=not args.no_exit_row),
        to_markdown,
        verbose_level=logging.WARNING,
    )


if __name__ == "__main__":
    sys.exit(main())
