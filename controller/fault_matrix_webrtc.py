"""`python -m controller.fault_matrix_webrtc`: the fault matrix through the real WebRTC cameras.

`controller.fault_matrix` measures every fault on fakes in virtual time.
This one runs the REAL WHIP and WHEP camera drivers (`drivers.webrtc`),
receiving real WebRTC video (VP8 over ICE/DTLS/SRTP on loopback) from aiortc
peers, in real time, with the fake robot and the fake policy on a real
`ComputeExecutor("cpu")`, through `ControllerHarness` (so every run is also
held to the invariants of `controller.invariants`; for frames, the capture
times the camera reports are the ones judged).

The peers play the other side as they would on a real cell:

- a WHIP publisher is a process of its own (`python -m drivers.webrtc.testsrc
  publish`), so that it can be SIGKILLed like a crashing camera, and a local
  intruder and an offer flood are processes too (their aiortc work is not
  charged to the controller's process);
- the WHEP media server (`drivers.webrtc.whep_testserver`) runs on an event
  loop in a thread of its own, told to stop sending frames, drop its
  sessions or answer garbage.

Each row: ~3 s of normal control, the fault, then what happens after it.
Rows of a fault that must make the controller hold report when it first
held for a reason that names the fault (detection) and how long after the
fault ended (for a dead publisher: after a new one was started) the first
command went out (recovery). Rows of an attack that must NOT disturb the
controller (the camera stays with its live publisher) report the holds during
the attack, which must be 0, and the HTTP answers the attacker got.

Every frame carries its sender's monotonic time painted into its pixels
(`drivers.webrtc.paint`); the table also reports how old, by that clock,
the frames behind each action really were: a camera that lied about its
capture times would show there.

Full garbage collections are timed as well (`GcPauses`): one stops the
event loop for ~100-150 ms once aiortc's objects are alive, long enough to
skip a tick and let the arm's 100 ms state go stale; a row that held then
says so. `--freeze-gc` calls `gc.freeze()` once the controller is warm, to
measure what doing that in the controller would change.

A row breaks its rule (exit code 1) when a fault was not detected or not
recovered from, an attack got an answer other than the refusal expected or
caused a hold, the camera changed publisher during an attack, an invariant
broke, or the row did not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from controller import fault_report
from controller.executor import ComputeExecutor
from controller.fault_report import cell_ms, ms
from controller.harness import ControllerHarness
from controller.loop_thread import LoopThread
from controller.safety import HoldReason, SafetyConfig
from drivers.base import Frame, JointCommand, RobotState, SensorReading
from drivers.fake import FakeRobot
from drivers.fake.config import FakeRobotConfig
from drivers.webrtc import ice
from drivers.webrtc.paint import read_luma, unwrap
from drivers.webrtc.whep import WhepCamera
from drivers.webrtc.whep_config import WhepCameraConfig
from drivers.webrtc.whep_testserver import WhepTestServer
from drivers.webrtc.whip import WhipCamera
from drivers.webrtc.whip_config import WhipCameraConfig
from drivers.webrtc.whip_server import WhipSession
from policies.fake import FakePolicy

log = logging.getLogger(__name__)

H = HoldReason

#: The feature-age limit of every row: a camera that stops is noticed within it.
MAX_FEATURE_AGE = 0.5
#: How far a row may run past its plan, whatever happens (real time).
ROW_BOUND = 40.0
#: Slack on the painted (true) frame age, as the invariant checker allows the reported one.
TRUE_AGE_SLACK = 0.05
#: The test pattern the peers send (the smallest size whose painted time reads back).
PATTERN_FPS = 15.0
PATTERN_SIZE = "320x240"

Kind = Literal["whip", "whep"]


@dataclass(frozen=True)
class Timing:
    """Seconds of each phase of a row (the test shortens them)."""

    warm: float = 3.0  # normal control before the fault
    fault: float = 3.0  # how long a WHEP fault lasts
    after: float = 2.0  # watched after the fault ended (or the attack)
    recover_within: float = 8.0  # the first command after the fault must come within this


# -------------------------------------------------------------- peers outside the controller


class Child:
    """A peer process (`python -m drivers.webrtc.testsrc ...`) whose JSON lines are collected."""

    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        self.args = args
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr = b""

    async def start(self) -> Child:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "drivers.webrtc.testsrc",
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self._reader = asyncio.create_task(self._read(), name=f"child-{self.name}")
        return self

    async def _read(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        err = asyncio.ensure_future(proc.stderr.read())
        try:
            async for line in proc.stdout:
                with contextlib.suppress(ValueError):
                    item = json.loads(line)
                    self.events.append(item if isinstance(item, dict) else {"value": item})
        finally:
            with contextlib.suppress(Exception):
                self._stderr = await err

    async def wait(self, within: float) -> int:
        """Wait for the process to end (killed after `within` s) and its output to be read;
        its exit status."""
        assert self.proc is not None
        try:
            async with asyncio.timeout(within):
                await self.proc.wait()
        except TimeoutError:
            self.kill()
        status = await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._reader), 5.0)
        return status

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to DELETE its session or say goodbye."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)

    async def close(self) -> None:
        self.kill()
        if self.proc is not None:
            await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5.0)

    def failure(self) -> str | None:
        """The last line of its stderr, if it wrote one (a crash, a bad argument)."""
        lines = self._stderr.decode("utf-8", "replace").strip().splitlines()
        return lines[-1][:200] if lines else None


# -------------------------------------------------------------- taps on the controller side


class GcPauses:
    """Full (generation-2) garbage collections, timed.

    A full collection stops every thread of the process, the event loop
    included, for a time that grows with the number of live objects (aiortc
    alone brings ~60 000; torch and transformers ~240 000: ~100 ms on a
    2-core machine). A hold or a missed tick that coincides with one is
    the collector's doing, and the table says so.
    """

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float]] = []
        self._start = math.nan

    def _callback(self, phase: str, info: Mapping[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._start = time.monotonic()
        else:
            self.pauses.append((self._start, time.monotonic() - self._start))

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def within(self, start: float, end: float) -> list[float]:
        """Durations (s) of the full collections that began between `start` and `end`."""
        return [d for t, d in self.pauses if start <= t <= end]


@dataclass(slots=True)
class Tap:
    """What the controller did: ticks, holds, commands, and the true age of what it acted on."""

    holds: list[tuple[float, str]] = field(default_factory=list)
    #: (start, lateness, ticks missed just before it) of every control tick
    ticks: list[tuple[float, float, int]] = field(default_factory=list)
    #: (time of the action, painted send time of the oldest frame behind it)
    acts: list[tuple[float, float]] = field(default_factory=list)
    command: asyncio.Event = field(default_factory=asyncio.Event)

    def observe(self, event: str, when: float, detail: Any) -> None:
        if event == "hold":
            self.holds.append((when, str(detail)))
        elif event == "tick":
            self.ticks.append((detail.start, detail.lateness, detail.missed_before))


class TapRobot(FakeRobot):
    """The fake arm, telling the row when a command went out (no polling)."""

    def __init__(self, tap: Tap) -> None:
        super().__init__(FakeRobotConfig())
        self._tap = tap

    async def command(self, cmd: JointCommand) -> None:
        await super().command(cmd)
        self._tap.command.set()


class TapPolicy(FakePolicy):
    """The fake policy, reading the sender's clock painted into the frames it encodes.

    Runs on the executor's threads, like any policy: the colour conversion
    that reading the pixels needs never happens on the event loop.
    """

    def __init__(self, tap: Tap) -> None:
        super().__init__(vl_latency=0.03, action_latency=0.005)
        self._tap = tap
        self._painted: OrderedDict[int, tuple[Any, float]] = OrderedDict()
        self._lock = threading.Lock()

    def encode_vl(self, frames: Sequence[Frame], instruction: str) -> Any:
        painted = [_painted_time(f) for f in frames]
        features = super().encode_vl(frames, instruction)
        with self._lock:
            self._painted[id(features)] = (features, min(painted))
            while len(self._painted) > 64:
                self._painted.popitem(last=False)
        return features

    def act(self, features: Any, state: RobotState, sensors: Mapping[str, SensorReading]) -> Any:
        with self._lock:
            entry = self._painted.get(id(features))
        sent = entry[1] if entry is not None and entry[0] is features else math.nan
        self._tap.acts.append((time.monotonic(), sent))
        return super().act(features, state, sensors)


def _painted_time(frame: Frame) -> float:
    """The sender's monotonic time painted into `frame` (NaN if unreadable)."""
    value = read_luma(frame.image[..., 1])  # grey pattern: any channel is the luma
    return math.nan if value is None else unwrap(value, time.monotonic())


class TimedWhipCamera(WhipCamera):
    """The WHIP camera, with the time each new publisher's offer was accepted written down."""

    def __init__(self, **options: Any) -> None:
        super().__init__(WhipCameraConfig(address="127.0.0.1:0/front", **options))
        self.offered: list[float] = []

    def session_offered(self, session: WhipSession) -> None:
        self.offered.append(time.monotonic())
        super().session_offered(session)


# -------------------------------------------------------------- rows


@dataclass
class Rig:
    """One row's running parts, handed to the fault's script."""

    harness: ControllerHarness
    camera: TimedWhipCamera | WhepCamera
    tap: Tap
    timing: Timing
    publisher: Child | None = None
    whep: WhepTestServer | None = None
    whep_loop: LoopThread | None = None
    children: list[Child] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    #: what the attacker or the server answered, for the table
    answers: dict[str, Any] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic()

    async def child(self, name: str, *args: str) -> Child:
        child = Child(name, *args)
        self.children.append(child)
        return await child.start()

    async def on_server(self, fn: Callable[[WhepTestServer], Any]) -> Any:
        """Run `fn(server)` on the WHEP server's own loop (awaited if it is a coroutine)."""
        assert self.whep is not None and self.whep_loop is not None
        server = self.whep

        async def job() -> Any:
            out = fn(server)
            return await out if asyncio.iscoroutine(out) else out

        return await self.whep_loop.call(job)

    async def recovered(self, since: float, within: float) -> float | None:
        """Wait for the controller to act again: a command after `since` AND after it held
        for the fault (a command still in flight at the onset is no recovery).

        Returns the command's time, or None after `within` s.
        """
        robot = self.harness.robot
        assert isinstance(robot, TapRobot)
        onset = self.marks.get("onset", since)
        deadline = time.monotonic() + within
        while True:
            held = next((t for t, _ in self.tap.holds if t >= onset), None)
            if held is not None:
                t0 = max(since, held)
                after = next((c for c, _ in robot.commands if c > t0), None)
                if after is not None:
                    return after
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.tap.command.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.1)):  # holds come without an event
                    await self.tap.command.wait()

    @property
    def whip(self) -> TimedWhipCamera:
        assert isinstance(self.camera, TimedWhipCamera)
        return self.camera


Script = Callable[[Rig], Awaitable[None]]


@dataclass(frozen=True)
class WebRtcFault:
    name: str
    what: str
    camera: Kind
    #: True: the controller must hold (detect it); False: it must not notice at all
    must_hold: bool
    detected_by: tuple[HoldReason, ...]
    play: Script
    recovery: str


async def _publisher_killed(rig: Rig) -> None:
    """SIGKILL the publisher; start a new one at once, as a supervisor would."""
    assert rig.publisher is not None
    cam = rig.whip
    assert cam.server is not None
    refused0 = cam.server.refused[409]
    rig.mark("onset")
    rig.publisher.kill()
    rig.mark("clear")  # recovery counts from the new publisher's start
    await rig.child(
        "publisher-2", "publish", cam.url, "--fps", f"{PATTERN_FPS:g}", "--size", PATTERN_SIZE
    )
    await rig.recovered(rig.marks["clear"], rig.timing.recover_within)
    rig.mark("window_end")
    rig.answers["new_publisher_409s"] = cam.server.refused[409] - refused0 if cam.server else None
    accepted = [t for t in cam.offered if t >= rig.marks["clear"]]
    rig.answers["new_publisher_201_ms"] = (
        round((accepted[0] - rig.marks["clear"]) * 1e3, 1) if accepted else None
    )
    rig.answers["publishers_admitted"] = cam.sessions_started
    await asyncio.sleep(rig.timing.after)


def _foreign(cam: TimedWhipCamera) -> list[tuple[str, str]]:
    """(label, headers) of the intruder's attempts: a rebinding name, a foreign page, the right Host."""
    assert cam.server is not None
    port = cam.server.bound_port
    return [
        ("foreign Host", f"Host=evil.example:{port}"),
        ("foreign Origin", f"Origin=http://evil.example:{port}"),
        ("right Host", f"Host=127.0.0.1:{port}"),
    ]


#: What each intruder attempt must get: the guard's 403, then the live publisher's 409.
INTRUDER_EXPECTED = {"foreign Host": 403, "foreign Origin": 403, "right Host": 409}


async def _intruder(rig: Rig) -> None:
    cam = rig.whip
    session = cam.session
    attempts = _foreign(cam)
    args = ["intrude", cam.url, "--hold", "2"]
    for _, headers in attempts:
        args += ["--attempt", headers]
    rig.mark("onset")
    child = await rig.child("intruder", *args)
    await child.wait(20.0)
    # frames from the live publisher must keep coming after the attack, too
    await asyncio.sleep(rig.timing.after)
    rig.mark("window_end")
    rig.mark("clear")
    got = [e for e in child.events if e.get("event") == "answer"]
    rig.answers["statuses"] = {
        label: (got[i]["status"] if i < len(got) else None) for i, (label, _) in enumerate(attempts)
    }
    if child.failure() and len(got) < len(attempts):
        rig.answers["error"] = child.failure()
    rig.answers["kept_publisher"] = cam.session is session and session is not None
    rig.answers["publishers_admitted"] = cam.sessions_started


async def _flood(rig: Rig) -> None:
    cam = rig.whip
    session = cam.session
    rig.mark("onset")
    child = await rig.child("flood", "flood", cam.url, "--offers", "100", "--over", "2")
    await child.wait(30.0)
    await asyncio.sleep(rig.timing.after)
    rig.mark("window_end")
    rig.mark("clear")
    histogram = next((e for e in child.events if "event" not in e), None)
    rig.answers["statuses"] = histogram
    if histogram is None:
        rig.answers["error"] = child.failure() or "the flood printed no statuses"
    rig.answers["kept_publisher"] = cam.session is session and session is not None
    rig.answers["publishers_admitted"] = cam.sessions_started


def _set_paused(paused: bool) -> Callable[[WhepTestServer], None]:
    def apply(server: WhepTestServer) -> None:
        server.paused = paused

    return apply


async def _whep_silent(rig: Rig) -> None:
    rig.mark("onset")
    await rig.on_server(_set_paused(True))
    await asyncio.sleep(rig.timing.fault)
    rig.mark("clear")
    await rig.on_server(_set_paused(False))
    await rig.recovered(rig.marks["clear"], rig.timing.recover_within)
    rig.mark("window_end")
    await asyncio.sleep(rig.timing.after)


#: What the broken server answers, in turn (the cheap ones of `whep_testserver.MISBEHAVIOURS`).
GARBAGE = ("garbage_answer", "non_utf8_answer", "non_utf8_error", "not_found")


def _break(server: WhepTestServer) -> Awaitable[int]:
    server.broken = GARBAGE
    server.served.clear()
    return server.drop_sessions()


def _mend(server: WhepTestServer) -> list[str]:
    server.broken = ()
    return list(server.served)


async def _whep_garbage(rig: Rig) -> None:
    rig.mark("onset")
    await rig.on_server(_break)
    await asyncio.sleep(rig.timing.fault)
    rig.mark("clear")
    rig.answers["server_answers_while_broken"] = await rig.on_server(_mend)
    await rig.recovered(rig.marks["clear"], rig.timing.recover_within)
    rig.mark("window_end")
    await asyncio.sleep(rig.timing.after)


ROWS: tuple[WebRtcFault, ...] = (
    WebRtcFault(
        "whip_publisher_killed",
        "the WHIP publisher process is SIGKILLed (no DELETE; its peer just vanishes);"
        " a new one is started at once",
        "whip",
        True,
        (H.FEATURES_STALE,),
        _publisher_killed,
        "a new publisher (409 until the dead one's frames are watchdog_s = 2 s old)",
    ),
    WebRtcFault(
        "whip_intruder",
        "a local process POSTs a live offer with a foreign Host, a foreign Origin,"
        " then the right Host, while the publisher is live",
        "whip",
        False,
        (),
        _intruder,
        "nothing: the camera stays with its publisher",
    ),
    WebRtcFault(
        "whip_offer_flood",
        "a local process POSTs 100 valid offers in 2 s while the publisher is live",
        "whip",
        False,
        (),
        _flood,
        "nothing: the camera stays with its publisher",
    ),
    WebRtcFault(
        "whep_source_silent",
        "the WHEP server keeps the session up but sends no frames for 3 s",
        "whep",
        True,
        (H.FEATURES_STALE,),
        _whep_silent,
        "frames again (the camera reconnects on its own)",
    ),
    WebRtcFault(
        "whep_server_garbage",
        "the WHEP server drops its sessions and answers garbage (4 kinds in turn) for 3 s,"
        " then behaves",
        "whep",
        True,
        (H.FEATURES_STALE,),
        _whep_garbage,
        "the server behaving (the camera's reconnect loop retries with backoff)",
    ),
)

ROW_NAMES = tuple(r.name for r in ROWS)


# -------------------------------------------------------------- measuring one row


@dataclass
class Row:
    fault: str
    what: str
    must_hold: bool
    expected: list[str]
    detected_as: list[str]
    detection_ms: float | None
    #: holds from the onset to the end of the window (the rule for attacks: 0), by reason
    holds_during: int
    holds_by_reason: dict[str, int]
    commands_during: int
    ticks_during: int
    #: the last command after the onset before the controller held (ms after the onset)
    last_command_ms: float | None
    recovery_ms: float | None
    recovery_needs: str
    #: what the attacker got, or what the server answered
    answers: dict[str, Any]
    #: the camera's own counters at the end of the row
    camera: dict[str, Any]
    #: ticks skipped and worst tick lateness from the onset to the end of the window
    missed_ticks: int
    tick_lateness_max_ms: float | None
    #: the same before the fault, for comparison on a noisy machine
    tick_lateness_max_before_ms: float | None
    #: by the sender's painted clock: the oldest frame behind any action, and how many
    #: actions came from frames older than max_feature_age (+ slack)
    true_frame_age_max_ms: float | None
    actions_from_old_frames: int
    #: actions whose frames' painted time could not be read (not judged by the clock above)
    actions_unreadable: int
    #: full garbage collections from the onset to the end of the window (ms each)
    gc_pauses_ms: list[float]
    violations: list[str]
    broken: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.broken


def make_row(fault: WebRtcFault, **measured: Any) -> Row:
    """A row of `fault` with what was measured (nothing measured: a row that did not run)."""
    empty: dict[str, Any] = {
        "detected_as": [],
        "detection_ms": None,
        "holds_during": 0,
        "holds_by_reason": {},
        "commands_during": 0,
        "ticks_during": 0,
        "last_command_ms": None,
        "recovery_ms": None,
        "answers": {},
        "camera": {},
        "missed_ticks": 0,
        "tick_lateness_max_ms": None,
        "tick_lateness_max_before_ms": None,
        "true_frame_age_max_ms": None,
        "actions_from_old_frames": 0,
        "actions_unreadable": 0,
        "gc_pauses_ms": [],
        "violations": [],
    }
    return Row(
        fault=fault.name,
        what=fault.what,
        must_hold=fault.must_hold,
        expected=sorted(r.value for r in fault.detected_by),
        recovery_needs=fault.recovery,
        **(empty | measured),
    )


def judge(fault: WebRtcFault, row: Row) -> list[str]:
    """The row's rule: what, if anything, it broke (an empty list: it kept it)."""
    broken: list[str] = []
    if row.error is not None:
        broken.append(f"did not run: {row.error}")
    if row.violations:
        broken.append(f"{len(row.violations)} invariant(s) broken")
    if row.actions_from_old_frames:
        broken.append(
            f"{row.actions_from_old_frames} action(s) from frames older than"
            f" {MAX_FEATURE_AGE * 1e3:.0f} ms by the sender's clock"
        )
    if fault.must_hold:
        if row.detection_ms is None:
            broken.append(f"not detected as {'/'.join(row.expected)}")
        if row.recovery_ms is None:
            broken.append("never recovered")
    else:
        if row.holds_during:
            stalled = max(row.gc_pauses_ms, default=0.0)
            cause = f" (a full GC pause stalled the loop {stalled:.0f} ms)" if stalled >= 50 else ""
            broken.append(
                f"{row.holds_during} hold(s) during the attack"
                f" ({', '.join(row.detected_as)}){cause}"
            )
        if not row.commands_during:
            broken.append("no command during the attack")
        if row.answers.get("kept_publisher") is not True:
            broken.append("the camera changed publisher")
        if row.answers.get("publishers_admitted") != 1:
            broken.append(f"{row.answers.get('publishers_admitted')} publishers admitted")
        if "error" in row.answers:
            broken.append(f"the attacker failed: {row.answers['error']}")
    if fault.name == "whip_intruder":
        got = row.answers.get("statuses") or {}
        wrong = {k: v for k, v in got.items() if v != INTRUDER_EXPECTED.get(k)}
        if wrong or set(got) != set(INTRUDER_EXPECTED):
            broken.append(f"intruder answers {got} (expected {INTRUDER_EXPECTED})")
    if fault.name == "whip_offer_flood":
        got = row.answers.get("statuses") or {}
        if not got or set(got) - {"409", "429"}:
            broken.append(f"flood answers {got} (expected only 409 and 429)")
    if fault.name == "whip_publisher_killed" and row.answers.get("publishers_admitted") != 2:
        broken.append("the new publisher was not admitted")
    if fault.name == "whep_server_garbage":
        served = row.answers.get("server_answers_while_broken") or []
        if not any(s != "answer" for s in served):
            broken.append("the camera never met the broken server (no garbage was served)")
        if row.camera.get("fatal"):
            broken.append(f"the camera gave up: {row.camera['fatal']}")
    return broken


def _make_camera(
    fault: WebRtcFault, whep_url: str | None, options: Mapping[str, Any]
) -> TimedWhipCamera | WhepCamera:
    if fault.camera == "whip":
        return TimedWhipCamera(**options)
    assert whep_url is not None
    return WhepCamera(WhepCameraConfig(url=whep_url, **options))


def _camera_facts(cam: TimedWhipCamera | WhepCamera) -> dict[str, Any]:
    facts: dict[str, Any] = {"stale_events": cam.stale_events}
    if isinstance(cam, WhepCamera):
        facts |= {
            "connects": cam.connects,
            "failures": cam.failures,
            "last_error": cam.last_error,
            "fatal": None if cam.fatal is None else str(cam.fatal)[:200],
        }
    else:
        facts |= {
            "publishers_admitted": cam.sessions_started,
            "refused_candidates": cam.refused_candidates,
        }
    return facts


async def _until(pred: Callable[[], bool], within: float, what: str) -> None:
    for _ in range(max(1, int(within / 0.02))):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no {what} within {within:g} s")


async def _run_row(
    fault: WebRtcFault,
    timing: Timing,
    options: Mapping[str, Any],
    freeze_gc: bool,
    rig_out: list[Rig],
) -> None:
    tap = Tap()
    async with contextlib.AsyncExitStack() as stack:
        whep: WhepTestServer | None = None
        loop_thread: LoopThread | None = None
        if fault.camera == "whep":
            loop_thread = await stack.enter_async_context(LoopThread("whep-server"))
            w, h = (int(x) for x in PATTERN_SIZE.split("x"))
            whep = WhepTestServer("wrist", fps=PATTERN_FPS, size=(w, h))
            await loop_thread.call(whep.start)
            server, lt = whep, loop_thread
            stack.push_async_callback(lambda: lt.call(server.stop))
        camera = _make_camera(fault, whep.url if whep is not None else None, options)
        harness = ControllerHarness(
            robot=TapRobot(tap),
            cameras=[camera],
            policy=TapPolicy(tap),
            executor=ComputeExecutor("cpu"),
            safety=SafetyConfig(max_feature_age=MAX_FEATURE_AGE),
            warmup_timeout=20.0,
            stop_timeout=1.0,
        )
        harness.controller.observers.append(tap.observe)
        rig = Rig(harness, camera, tap, timing, whep=whep, whep_loop=loop_thread)
        rig_out.append(rig)

        async def close_children() -> None:
            await asyncio.gather(*(c.close() for c in rig.children), return_exceptions=True)

        async def stop_controller() -> None:
            """On a row that failed half-way: the controller stops before its peers go."""
            if harness.task is not None and not harness.task.done():
                harness.controller.request_stop("row failed")
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(harness.task, 10.0)

        stack.push_async_callback(close_children)
        stack.push_async_callback(stop_controller)
        task = harness.start(None)
        if isinstance(camera, TimedWhipCamera):
            await _until(lambda: camera.server is not None or task.done(), 20.0, "WHIP server")
            rig.publisher = await rig.child(
                "publisher",
                "publish",
                camera.url,
                "--fps",
                f"{PATTERN_FPS:g}",
                "--size",
                PATTERN_SIZE,
            )
        async with asyncio.timeout(30.0):
            await harness.until_active()
        if freeze_gc:
            # what the controller could do once warm (see GcPauses): every object alive now
            # leaves the collector's view, so a full collection no longer scans it
            gc.freeze()
        rig.mark("active")
        await asyncio.sleep(timing.warm)
        rig.mark("warm_end")
        await fault.play(rig)
        rig.mark("end")
        # the controller stops (and the invariants are judged) before the peers go
        with contextlib.suppress(AssertionError):
            await harness.stop()


async def measure(
    fault: WebRtcFault,
    timing: Timing = Timing(),
    camera_options: Mapping[str, Any] | None = None,
    *,
    freeze_gc: bool = False,
) -> Row:
    """Run one row and judge it; `camera_options` change the camera's defaults (tests)."""
    rigs: list[Rig] = []
    error: str | None = None
    gc_watch = GcPauses()
    try:
        async with asyncio.timeout(
            timing.warm + timing.fault + timing.after + timing.recover_within + ROW_BOUND
        ):
            with gc_watch:
                await _run_row(fault, timing, camera_options or {}, freeze_gc, rigs)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
        log.exception("row %s failed", fault.name)
    if not rigs:
        row = make_row(fault, error=error or "no rig was built")
        row.broken = judge(fault, row)
        return row
    rig = rigs[0]
    tap = rig.tap
    harness = rig.harness
    checker = harness.checker
    violations = list(checker.violations) if checker is not None else []

    marks = rig.marks
    onset = marks.get("onset", math.inf)
    clear = marks.get("clear", math.inf)
    window_end = marks.get("window_end", marks.get("end", math.inf))
    expected = {r.value for r in fault.detected_by}
    robot = harness.robot
    sent = [t for t, _ in robot.commands] if isinstance(robot, FakeRobot) else []
    # an attack must not make the controller hold: no recovery to measure
    seen = fault_report.timeline(tap.holds, expected, sent if fault.must_hold else (), onset, clear)
    holds = seen.holds
    before_hold = [t for t in sent if onset <= t <= seen.first_hold]
    window = [x for x in tap.ticks if onset <= x[0] <= window_end]
    before = [x for x in tap.ticks if marks.get("active", math.inf) <= x[0] < onset]
    ages = [t - s for t, s in tap.acts if math.isfinite(s)]

    row = make_row(
        fault,
        detected_as=[r for r, _ in seen.during.most_common()],
        detection_ms=ms(seen.detection),
        holds_during=sum(1 for t, _ in holds if t <= window_end),
        holds_by_reason=dict(Counter(r for t, r in holds if t <= window_end)),
        commands_during=sum(1 for t in sent if onset <= t <= window_end),
        ticks_during=len(window),
        last_command_ms=ms(max(before_hold) - onset) if before_hold else None,
        recovery_ms=ms(seen.recovery),
        answers=rig.answers,
        camera=_camera_facts(rig.camera),
        missed_ticks=sum(m for _, _, m in window),
        tick_lateness_max_ms=ms(max((x[1] for x in window), default=None)),
        tick_lateness_max_before_ms=ms(max((x[1] for x in before), default=None)),
        true_frame_age_max_ms=ms(max(ages)) if ages else None,
        actions_from_old_frames=sum(1 for a in ages if a > MAX_FEATURE_AGE + TRUE_AGE_SLACK),
        actions_unreadable=sum(1 for _, s in tap.acts if not math.isfinite(s)),
        gc_pauses_ms=[round(d * 1e3, 1) for d in gc_watch.within(onset, window_end)],
        violations=violations[:20],
        error=error,
    )
    row.broken = judge(fault, row)
    return row


# -------------------------------------------------------------- the matrix


async def run_matrix(
    names: Sequence[str] | None = None, timing: Timing = Timing(), *, freeze_gc: bool = False
) -> dict[str, Any]:
    rows = []
    with ice.host_addresses(["127.0.0.1"]):  # loopback only: aioice skips it on its own
        for fault in ROWS:
            if names and fault.name not in names:
                continue
            log.info("row %s: %s", fault.name, fault.what)
            t0 = time.monotonic()
            row = await measure(fault, timing, freeze_gc=freeze_gc)
            log.info("row %s took %.1f s", fault.name, time.monotonic() - t0)
            rows.append(row)
    return {
        "settings": {
            "max_feature_age_s": MAX_FEATURE_AGE,
            "pattern": f"{PATTERN_SIZE} at {PATTERN_FPS:g} fps, VP8",
            "timing": asdict(timing),
            "gc_frozen_after_warmup": freeze_gc,
        },
        "faults": [asdict(r) | {"ok": r.ok} for r in rows],
    }


def _answers(r: Mapping[str, Any]) -> str:
    a = r["answers"]
    if r["fault"] == "whip_publisher_killed":
        return (
            f"new publisher: {a.get('new_publisher_409s')} x 409, then 201 at"
            f" {cell_ms(a.get('new_publisher_201_ms'))} ms"
        )
    if "server_answers_while_broken" in a:
        return "server served " + (", ".join(a["server_answers_while_broken"]) or "nothing")
    if isinstance(a.get("statuses"), dict):
        return ", ".join(f"{k}: {v}" for k, v in a["statuses"].items())
    return ""


def _notes(r: Mapping[str, Any]) -> str:
    notes = [n for n in [_answers(r)] if n]
    if r["must_hold"]:
        notes.append(f"last cmd {cell_ms(r['last_command_ms'])} ms after onset")
    else:
        notes.append(f"{r['commands_during']} cmd in {r['ticks_during']} ticks")
    c = r["camera"]
    if "connects" in c:
        notes.append(f"camera: {c['connects']} session(s), {c['failures']} failed attempt(s)")
    notes.append(
        f"missed ticks {r['missed_ticks']}, lateness max {cell_ms(r['tick_lateness_max_ms'])} ms"
        f" (before: {cell_ms(r['tick_lateness_max_before_ms'])})"
    )
    if r["gc_pauses_ms"]:
        notes.append(f"full GC pauses {', '.join(f'{d:.0f}' for d in r['gc_pauses_ms'])} ms")
    if r["true_frame_age_max_ms"] is not None:
        notes.append(f"oldest frame acted on {r['true_frame_age_max_ms']:.0f} ms (sender's clock)")
    if r["actions_unreadable"]:
        notes.append(f"{r['actions_unreadable']} action(s) from frames whose clock was unreadable")
    return "; ".join(notes)


def to_markdown(result: Mapping[str, Any]) -> str:
    columns = [
        fault_report.FAULT,
        fault_report.HELD_AS,
        fault_report.DETECTION,
        fault_report.Column(
            "holds during (must be 0)",
            lambda row: "-" if row["must_hold"] else str(row["holds_during"]),
        ),
        fault_report.RECOVERY,
        fault_report.RECOVERY_NEEDS,
        fault_report.INVARIANTS,
        fault_report.Column("measured", _notes),
        fault_report.VERDICT,
    ]
    return "\n".join(fault_report.table(columns, result["faults"]))


def main(argv: Sequence[str] | None = None) -> int:
    p = fault_report.tool_parser("python -m controller.fault_matrix_webrtc", __doc__, verbose=True)
    p.add_argument(
        "--freeze-gc",
        action="store_true",
        help="gc.freeze() once the controller is warm, to measure what that would change"
        " (the controller does not do it itself)",
    )
    args = fault_report.parse(p, argv, ROW_NAMES)
    return fault_report.run_real_time(
        p,
        args,
        lambda: run_matrix(args.row, freeze_gc=args.freeze_gc),
        to_markdown,
        verbose_level=logging.INFO,
    )


if __name__ == "__main__":
    sys.exit(main())
