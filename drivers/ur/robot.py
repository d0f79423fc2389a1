"""The UR5 `RobotDriver`: RTDE state in, input registers out, our program in between.

One supervisor task owns the link: it connects, uploads the control program,
streams states and reconnects with backoff (`reconnect_with_backoff`) when
anything goes wrong, so a dropped cable or a garbled packet never ends the
controller's run. States carry the controller clock (`drivers.base.now()`),
mapped from the robot's RTDE `timestamp` by `ClockMap`, and are handed to
`states()` and to the driver's own waits through one `LatestValue`.

Operator authority: the driver restarts its program on its own only after a
stop it caused itself, and only on positive evidence of that: the program's
status register says WATCHDOG (the program stopped the arm because the
driver's heartbeat stopped: a PC stall, a lost link). A program that stopped
without that evidence was stopped by someone else (a dashboard or pendant
stop, pause, power cycle, protective or emergency stop): the driver latches
"not ready" with a mode saying what happened, and only `resume()` (or, for a
protective stop alone, `auto_recover`) starts the program again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, Self

import numpy as np

from drivers.arms import UR5_JOINTS as JOINT_NAMES
from drivers.arms import UR5_LIMITS
from drivers.base import (
    ConfiguredDriver,
    JointCommand,
    RobotInfo,
    RobotState,
    now,
)
from drivers.errors import ConnectionLost, DriverError, NotReady, ProtocolError
from drivers.lifecycle import Backoff, Lifecycle, Reconnects, cancel_bounded, reconnect_with_backoff
from drivers.newest import LatestValue, SlotClosed
from drivers.ur import program
from drivers.ur.config import UR5Config
from drivers.ur.dashboard import DashboardClient
from drivers.ur.rtde_client import RtdeClient

log = logging.getLogger(__name__)

OUTPUTS = (
    "timestamp",
    "actual_q",
    "actual_qd",
    "target_q",
    "actual_TCP_pose",
    "actual_TCP_force",
    "robot_mode",
    "safety_mode",
    "runtime_state",
    "robot_status_bits",
    "safety_status_bits",
    "speed_scaling",
)

ROBOT_MODES = {
    -1: "NO_CONTROLLER",
    0: "DISCONNECTED",
    1: "CONFIRM_SAFETY",
    2: "BOOTING",
    3: "POWER_OFF",
    4: "POWER_ON",
    5: "IDLE",
    6: "BACKDRIVE",
    7: "RUNNING",
    8: "UPDATING_FIRMWARE",
}
SAFETY_MODES = {
    1: "NORMAL",
    2: "REDUCED",
    3: "PROTECTIVE_STOP",
    4: "RECOVERY",
    5: "SAFEGUARD_STOP",
    6: "SYSTEM_EMERGENCY_STOP",
    7: "ROBOT_EMERGENCY_STOP",
    8: "VIOLATION",
    9: "FAULT",
    10: "VALIDATE_JOINT_ID",
    11: "UNDEFINED",
    12: "AUTOMATIC_MODE_SAFEGUARD_STOP",
    13: "SYSTEM_THREE_POSITION_ENABLING_STOP",
}
RUNTIME_STATES = {
    0: "STOPPING",
    1: "STOPPED",
    2: "PLAYING",
    3: "PAUSING",
    4: "PAUSED",
    5: "RESUMING",
}
# safety_status_bits 2..10: protective, recovery, safeguard, e-stops, violation, fault, stopped
SAFETY_STOP_BITS = 0b111_1111_1100
ROBOT_RUNNING, SAFETY_PROTECTIVE, RUNTIME_PLAYING = 7, 3, 2

#: How far beyond its position limits a joint reading may be before the state counts as
#: implausible (a reading, not a target: encoders overshoot a little at a limit).
JOINT_LIMIT_MARGIN = 0.2  # rad
#: A measured joint speed above this multiple of the arm's limit is not a measurement.
SPEED_PLAUSIBLE_FACTOR = 2.0
#: Starts of our program in a row that its watchdog may stop before it is given up.
START_ATTEMPTS = 3


def arm_fault(values: dict[str, Any]) -> str | None:
    """Why the arm itself refuses motion, or None when it is RUNNING with safety NORMAL/REDUCED.

    Safety first: an emergency stop also cuts the power, and the stop is the news.
    """
    robot_mode = int(values["robot_mode"])
    safety_mode = int(values["safety_mode"])
    if safety_mode not in (1, 2):
        return f"SAFETY {SAFETY_MODES.get(safety_mode, safety_mode)}"
    bits = int(values["safety_status_bits"])
    if bits & SAFETY_STOP_BITS:
        return f"SAFETY_STOP bits 0x{bits:x}"
    if robot_mode != ROBOT_RUNNING:
        return f"ROBOT_MODE {ROBOT_MODES.get(robot_mode, robot_mode)}"
    return None


def assess(values: dict[str, Any], status_register: str) -> tuple[bool, str]:
    """(ready, mode text) from one RTDE sample: any reason to refuse motion makes it not ready."""
    fault = arm_fault(values)
    if fault is not None:
        return False, fault
    runtime = int(values["runtime_state"])
    if runtime != RUNTIME_PLAYING:
        return False, f"PROGRAM {RUNTIME_STATES.get(runtime, runtime)}"
    status = int(values.get(status_register, 0))
    if status == program.STATUS_WATCHDOG:
        return False, "WATCHDOG: the program is stopping the arm (no heartbeat)"
    return True, "RUNNING" if status in (0, 1, 2, 5) else program.STATUS_NAMES.get(
        status, "RUNNING"
    )


def _vector(values: dict[str, Any], name: str) -> tuple[np.ndarray, str | None]:
    """(6-vector, problem) for one state field; a wrong shape reads as NaNs, never as data."""
    try:
        v = np.asarray(values[name], dtype=float)
    except (KeyError, TypeError, ValueError):
        return np.full(6, np.nan), f"{name} missing or not numbers"
    if v.shape != (6,):
        return np.full(6, np.nan), f"{name} has shape {v.shape}, expected (6,)"
    if not np.all(np.isfinite(v)):
        return v, f"{name} not finite"
    return v, None


def validate(values: dict[str, Any]) -> tuple[dict[str, np.ndarray], str | None]:
    """The state's vectors and the first reason they cannot be trusted (None: plausible).

    A NaN or a joint far outside its range is a fault of the link or the
    controller, never a position to servo from: such a state is not ready.
    """
    out: dict[str, np.ndarray] = {}
    problem: str | None = None
    for name in ("actual_q", "actual_qd", "actual_TCP_pose", "actual_TCP_force"):
        out[name], why = _vector(values, name)
        problem = problem or why
    if problem is None:
        q, qd = out["actual_q"], out["actual_qd"]
        lo = UR5_LIMITS.lower - JOINT_LIMIT_MARGIN
        hi = UR5_LIMITS.upper + JOINT_LIMIT_MARGIN
        bad = np.flatnonzero((q < lo) | (q > hi))
        if bad.size:
            j = int(bad[0])
            problem = (
                f"actual_q implausible: joint {j} at {q[j]:.3f} rad, beyond"
                f" [{lo[j]:.3f}, {hi[j]:.3f}]"
            )
        fast = np.flatnonzero(np.abs(qd) > SPEED_PLAUSIBLE_FACTOR * UR5_LIMITS.max_velocity)
        if problem is None and fast.size:
            j = int(fast[0])
            problem = f"actual_qd implausible: joint {j} at {qd[j]:.3f} rad/s"
    return out, problem


def _seq_reached(ack: int, seq: int) -> bool:
    """ack is seq or newer, on the 31-bit wrapping sequence the driver sends."""
    return ((ack - seq) & 0x7FFFFFFF) < (1 << 30)


class ClockMap:
    """Maps the robot's RTDE `timestamp` to the controller clock, so that delay shows as age.

    offset = arrival - device time. The smallest offset is the best estimate
    (the least transport delay), so a smaller one is taken at once. A larger
    one is followed only at `drift_bound` seconds per second of device time:
    real oscillators drift by less than 100 ppm, so the default 1e-4 tracks
    any real drift, but a steady or growing extra delay on the link is not
    absorbed into the offset and shows up as state age, and a frozen device
    clock reads as ever older.

    The mapping is re-learnt only when the robot controller restarted: its
    clock went backwards, or, on the first sample of a new RTDE session, it
    lags the old mapping by more than `RESTART_GAP` (a controller that
    rebooted while the link was down for longer than its new uptime; no link
    delay can be that long, since a session's handshake must finish within
    `connect_timeout` <= 60 s). A reconnect alone keeps the mapping, so a
    delay that appeared with (or caused) the reconnect is still seen as age.

    A non-finite or negative device time never touches the mapping: it maps
    to NaN, which the controller treats as stale.

    Limit: one-way timestamps cannot see the delay that is already there when
    the mapping is first learnt (the driver's first sample, or the first after
    a controller restart); it is the baseline every later age is measured from.
    """

    DRIFT_BOUND = 1e-4  # s per s of device time
    RESTART_GAP = 120.0  # s

    def __init__(self, drift_bound: float = DRIFT_BOUND) -> None:
        if not (math.isfinite(drift_bound) and 0.0 <= drift_bound < 0.01):
            raise ValueError(f"ClockMap: drift_bound {drift_bound!r} outside [0, 0.01) s/s")
        self.drift_bound = drift_bound
        self.offset: float | None = None
        self.relearned = 0
        self._last_device = -math.inf
        self._new_session = False

    def new_session(self) -> None:
        """The next sample is a new session's first: it may show a restarted controller."""
        self._new_session = True

    def to_controller(self, device_time: float, arrival: float) -> float:
        if not (math.isfinite(device_time) and device_time >= 0.0 and math.isfinite(arrival)):
            return math.nan
        d = arrival - device_time
        restarted = (
            self._new_session and self.offset is not None and (d - self.offset > self.RESTART_GAP)
        )
        self._new_session = False
        if self.offset is None or device_time < self._last_device or restarted:
            self.offset = d
            self.relearned += 1
        else:
            grown = self.offset + self.drift_bound * (device_time - self._last_device)
            self.offset = min(d, grown)
        self._last_device = device_time
        # offset <= arrival - device_time, but the sum can round one ulp past
        # `arrival`: a capture is never later than its arrival.
        return min(device_time + self.offset, arrival)


class UR5Robot(Lifecycle, ConfiguredDriver):
    kind: ClassVar[str] = "robot"
    Config: ClassVar[type] = UR5Config
    spec_field: ClassVar[str | None] = "host"

    def __init__(self, config: UR5Config | None = None) -> None:
        self.config = config or UR5Config()
        self.name = self.config.name
        self.info = RobotInfo(name=self.name, joint_names=JOINT_NAMES, limits=UR5_LIMITS)
        self.params = self.config.program
        self.clock = ClockMap()
        self.connects = 0
        self.commands_sent = 0
        #: the supervisor's reconnects: sessions that failed (any type), the last error
        self.reconnects = Reconnects()
        #: program starts, by the driver itself or through resume()
        self.program_starts = 0
        self._client: RtdeClient | None = None
        self._inputs: dict[str, object] | None = None
        self._seq = 0
        self._heartbeat = 0
        self._last_send = -math.inf
        #: the newest state, for states() and for the driver's own waits
        self._states: LatestValue[RobotState] = LatestValue(f"{self.name} state")
        #: the raw RTDE sample behind the newest state
        self._latest_values: dict[str, Any] | None = None
        self._last_valid_q: np.ndarray | None = None
        self._invalid: str | None = None
        self._connected = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._recovery_kind = ""
        # operator authority (see the module docstring)
        self._latch: str | None = None
        self._program_seen = False  # our program confirmed running (it acked our start)
        self._had_program = False  # ... at least once: a later stop needs explaining
        self._await_seq: int | None = None  # the start we wait to see acknowledged

    # ---------------------------------------------------------------- lifecycle

    @property
    def session_failures(self) -> int:
        """Sessions that ended in an error (any type): reconnects go on regardless."""
        return self.reconnects.failures

    @property
    def latest_state(self) -> RobotState | None:
        """The newest state published (None before the first), without consuming it."""
        stamped = self._states.peek()
        return None if stamped is None else stamped.value

    async def __aenter__(self) -> Self:
        self._supervisor = self.spawn(self._supervise(), "rtde")
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await self._connected.wait()
        except TimeoutError:
            await self.close()
            raise ConnectionLost(
                f"{self.name}: no RTDE link to {self.config.host} within"
                f" {self.config.connect_timeout:g} s (last error:"
                f" {self.reconnects.last_error or 'not connected yet'})"
            ) from None
        except BaseException:
            # Cancelled (an operator's stop while connecting) or failed: a context
            # manager whose enter raises gets no exit, so take nothing with us.
            await self.close()
            raise
        return self

    async def _leave_safe(self) -> None:
        await self.stop()  # `async with` ends here, then in close()

    async def _release(self) -> None:
        """After the link's tasks ended (`Lifecycle.close`: safe twice, bounded; the
        supervisor's cancellation closed the socket): end the states() iterators."""
        self._recovery = self._supervisor = None
        self._states.close()

    # ---------------------------------------------------------------- RobotDriver

    async def states(self) -> AsyncIterator[RobotState]:
        """Each newest state once (none is queued); ends when the driver closes."""
        async for stamped in self._states.stream():
            yield stamped.value

    async def command(self, cmd: JointCommand) -> None:
        client = self._client
        if client is None or not client.connected or self._inputs is None:
            raise ConnectionLost(f"{self.name}: RTDE link down, command {cmd.seq} not sent")
        state = self.latest_state
        if state is None or not state.ready:
            raise NotReady(f"{self.name}: {state.mode if state else 'no state yet'}")
        q = np.asarray(cmd.positions, dtype=float)
        if q.shape != (6,) or not np.all(np.isfinite(q)):
            raise ValueError(f"{self.name}: expected 6 finite joint targets, got {cmd.positions!r}")
        duration = max(float(cmd.duration), self.params.step)
        if self.config.control_mode == "speedj":
            if cmd.velocities is not None:
                qd = np.asarray(cmd.velocities, dtype=float)
            else:
                qd = (q - state.positions) / duration
            if qd.shape != (6,) or not np.all(np.isfinite(qd)):
                raise ValueError(f"{self.name}: expected 6 finite joint speeds, got {qd!r}")
            qd = np.clip(qd, -UR5_LIMITS.max_velocity, UR5_LIMITS.max_velocity)
            values = self.params.inputs(
                self._next_seq(), program.MODE_SPEED, list(state.positions), duration, list(qd)
            )
        else:
            values = self.params.inputs(self._next_seq(), program.MODE_SERVO, list(q), duration)
        await self._send(client, values)
        self.commands_sent += 1

    async def hold(self) -> None:
        client = self._client
        q = self._last_valid_q
        if client is None or not client.connected:
            raise ConnectionLost(f"{self.name}: RTDE link down, cannot hold")
        if q is None:
            raise NotReady(f"{self.name}: no valid joint positions yet, cannot hold")
        # The program holds where it is commanded; the target is only carried along.
        await self._send(
            client, self.params.inputs(self._next_seq(), program.MODE_HOLD, list(q), 0.0)
        )

    async def stop(self) -> None:
        """Ask the program to decelerate (stopj) and wait briefly for its acknowledgement.

        Bounded by `stop_timeout` whatever the link does (half-open, dead, slow);
        never raises. Without our program running there is nothing to wait for.
        """
        try:
            async with asyncio.timeout(self.config.stop_timeout):
                client = self._client
                q = self._last_valid_q
                if client is None or not client.connected or q is None:
                    log.warning(
                        "%s: stop() with the link down; the robot's watchdog stops it", self.name
                    )
                    return
                seq = self._next_seq()
                await self._send(client, self.params.inputs(seq, program.MODE_STOP, list(q), 0))
                if not self._program_seen:
                    return

                def acked() -> bool:
                    latest = self._latest_values
                    return latest is not None and int(latest.get(self.params.ack_name, -1)) == seq

                await self._wait_for(acked, self.config.stop_timeout)
        except SlotClosed:
            log.warning("%s: stop() not acknowledged: the driver closed meanwhile", self.name)
        except TimeoutError:
            log.warning(
                "%s: stop() not acknowledged within %.2f s", self.name, self.config.stop_timeout
            )
        except (DriverError, OSError) as exc:
            log.warning("%s: stop() failed: %s", self.name, exc)

    async def resume(self) -> None:
        """Start our program again after a stop the driver did not cause (operator-facing).

        The arm must be RUNNING with safety NORMAL/REDUCED: the person who
        stopped it powers on, releases the brakes or unlocks on the pendant
        first; this only hands control back. The program starts holding where
        the arm is, never from a target left in the registers. Returns once the
        program acknowledged its start; raises NotReady (with the reason) or
        ConnectionLost otherwise.
        """
        # Judge the arm on a sample newer than the request: a person who just
        # unlocked on the pendant must not be refused on a sample from before.
        before = self._latest_values
        try:
            await self._wait_for(lambda: self._latest_values is not before, self.config.stale_after)
        except SlotClosed:
            raise ConnectionLost(f"{self.name}: closed, cannot resume") from None
        except TimeoutError:
            raise ConnectionLost(
                f"{self.name}: no RTDE data for {self.config.stale_after:g} s, cannot resume"
            ) from None
        client = self._client
        values = self._latest_values
        if client is None or not client.connected or values is None:
            raise ConnectionLost(f"{self.name}: RTDE link down, cannot resume")
        if self._recovery is not None:
            raise NotReady(f"{self.name}: cannot resume: an automatic restart is in progress")
        fault = arm_fault(values)
        if fault is not None:
            raise NotReady(
                f"{self.name}: cannot resume: {fault}; the arm must be RUNNING with safety"
                " NORMAL (power on, release the brakes or unlock the protective stop first)"
            )
        if self._invalid is not None:
            raise NotReady(f"{self.name}: cannot resume: {self._invalid}")
        if self._latch is None and self._program_seen:
            return  # our program runs: nothing to resume
        log.warning(
            "%s: resume requested (%s); starting the program from where the arm is",
            self.name,
            self._latch or "program not running",
        )
        self._latch = None
        # waited for, not awaited: a new session may cancel the start, not our caller
        await asyncio.wait({self._spawn_start("resume")})
        if not self._program_seen:
            raise NotReady(f"{self.name}: resume failed: {self._latch or 'program not running'}")

    # ---------------------------------------------------------------- internals

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        return self._seq

    async def _send(self, client: RtdeClient, values: dict[str, object]) -> None:
        # Every write carries a new heartbeat, keepalives included: the program's
        # watchdog sees the PC alive only through it.
        self._heartbeat = (self._heartbeat + 1) & 0x7FFFFFFF
        values = {**values, self.params.heartbeat_name: self._heartbeat}
        self._inputs = values
        await client.send(values)
        self._last_send = now()

    async def _wait_for(self, cond: Callable[[], bool], limit: float) -> None:
        """Wait (bounded) until `cond()` holds, re-checking on every new sample.

        Raises TimeoutError after `limit` s, `SlotClosed` once the driver closed.
        The waits never consume a state: `states()` still sees every newest one.
        """
        async with asyncio.timeout(limit):
            version = self._states.version
            while not cond():
                version = (await self._states.wait_newer(version, mark_read=False)).version

    async def _supervise(self) -> None:
        cfg = self.config
        await reconnect_with_backoff(
            self._session,
            what=f"{self.name}: RTDE link",
            backoff=Backoff(cfg.reconnect_min, cfg.reconnect_max),
            logger=log,
            stats=self.reconnects,
        )

    async def _session(self, link: Reconnects) -> None:
        """One RTDE session, from connect until the link dies (it never returns otherwise)."""
        cfg = self.config
        client = RtdeClient(cfg.host, cfg.rtde_port, timeout=cfg.connect_timeout)
        keepalive: asyncio.Task[None] | None = None
        try:
            await client.connect()
            await client.setup_outputs(
                [*OUTPUTS, self.params.ack_name, self.params.status_name], cfg.frequency
            )
            await client.setup_inputs(self.params.input_names)
            await client.start()
            self.clock.new_session()  # it may reach a restarted controller
            if self._recovery is not None:  # decided on the old session's samples: void
                await cancel_bounded(self._recovery, f"{self.name}: restart")
                self._recovery = None
            self._program_seen = False
            self._await_seq = None
            async with asyncio.timeout(cfg.stale_after + cfg.connect_timeout):
                first = await client.receive()
            self._publish(first)
            # Keep the registers' sequence number so the program sees no new target; hold here.
            seq = int(first.get(self.params.ack_name, 0))
            self._seq = max(self._seq, seq)
            q = self._last_valid_q
            await self._send(
                client,
                self.params.inputs(
                    self._seq, program.MODE_HOLD, list(q if q is not None else np.zeros(6)), 0
                ),
            )
            if cfg.use_dashboard:
                await self._prepare_arm(client.controller_version[0])
                if cfg.power_on:
                    await self._await_running(client)
            start = self._may_start_on_connect(self._latest_values or first)
            self._client = client
            self.connects += 1
            self._connected.set()
            link.healthy()
            if start:
                self._spawn_start("connect")
            keepalive = self.spawn(self._keepalive(client), "keepalive")
            while True:
                try:
                    async with asyncio.timeout(cfg.stale_after):
                        values = await client.receive()
                except TimeoutError:
                    raise ConnectionLost(
                        f"{self.name}: no RTDE data for {cfg.stale_after:g} s"
                    ) from None
                self._publish(values)
        finally:
            self._client = None
            self._connected.clear()
            if keepalive is not None:
                await cancel_bounded(keepalive, f"{self.name}: keepalive")
            await client.close()

    async def _await_running(self, client: RtdeClient) -> None:
        """After our own power-on: give the arm `connect_timeout` to reach RUNNING."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.connect_timeout):
                while self._latest_values is None or arm_fault(self._latest_values) is not None:
                    self._publish(await client.receive())

    def _may_start_on_connect(self, values: dict[str, Any]) -> bool:
        """Start (or restart) our program at the start of a session? Only where the driver
        knows the program is not running because of the driver itself."""
        if self._latch is not None:
            log.warning("%s: connected; %s (still latched)", self.name, self._latch)
            return False
        fault = arm_fault(values)
        if fault is not None:
            self._set_latch(
                f"{fault} at connect"
                if not self._had_program
                else f"{fault} (happened while the RTDE link was down)"
            )
            return False
        if not self._had_program:
            return True  # the first start: the person starting the controller asked for it
        runtime = int(values["runtime_state"])
        status = int(values.get(self.params.status_name, 0))
        if runtime == RUNTIME_PLAYING or status == program.STATUS_WATCHDOG:
            return True  # our program still runs, or our watchdog stopped it: a reconnect of ours
        self._set_latch(
            f"PROGRAM {RUNTIME_STATES.get(runtime, runtime)} while the RTDE link was down,"
            " not by the driver's watchdog"
        )
        return False

    async def _start_program(self, client: RtdeClient) -> None:
        """Upload our program, holding where the arm is; seen running once it acks `seq`."""
        cfg = self.config
        q = self._last_valid_q
        if q is None:
            raise NotReady(f"{self.name}: no valid joint positions to start the program from")
        seq = self._next_seq()
        await self._send(client, self.params.inputs(seq, program.MODE_HOLD, list(q), 0))
        self._program_seen = False
        self._await_seq = seq
        await program.upload(
            cfg.host, program.render(self.params), port=cfg.script_port, limit_s=cfg.connect_timeout
        )
        self.program_starts += 1

    async def _prepare_arm(self, major: int) -> None:
        """Remote-control check and optional power-on; a missing, silent or garbled
        dashboard is only a warning, but one that says Local control fails the connect."""
        cfg = self.config
        # The dashboard gets a third of the connect budget: a silent one must not use up
        # the time the RTDE link and the upload need.
        limit = cfg.connect_timeout / 3
        try:
            async with asyncio.timeout(limit):
                async with DashboardClient(cfg.host, cfg.dashboard_port, timeout=limit) as dash:
                    if major >= 5 and await dash.is_in_remote_control() is False:
                        raise DriverError(
                            f"{self.name}: the robot is in Local control; switch it to Remote"
                            " Control on the teach pendant so it accepts our program"
                        )
                    if cfg.power_on:
                        await dash.power_on()
                        await dash.brake_release()
        except (ConnectionLost, ProtocolError, TimeoutError) as exc:
            log.warning(
                "%s: dashboard unavailable (%s); continuing without it",
                self.name,
                exc or f"no answer within {limit:g} s",
            )

    async def _keepalive(self, client: RtdeClient) -> None:
        period = 1.0 / self.config.keepalive_hz
        failures = 0
        while True:
            await asyncio.sleep(period)
            if self._inputs is not None and now() - self._last_send >= period * 0.9:
                try:
                    await self._send(client, self._inputs)
                except ConnectionLost:
                    return  # the session sees the dead link and reconnects
                except Exception as exc:  # keep the heartbeat alive through a bug
                    failures += 1
                    if failures == 1 or failures % 100 == 0:
                        log.error(
                            "%s: keepalive send failed with %s: %s (%d so far)",
                            self.name,
                            type(exc).__name__,
                            exc,
                            failures,
                        )

    def _set_latch(self, what: str) -> None:
        """Someone else stopped the arm: not ready until resume(). Logged once."""
        self._latch = what
        self._program_seen = False
        self._await_seq = None
        log.warning("%s: %s: resume needed", self.name, what)

    def _publish(self, values: dict[str, Any]) -> None:
        arrival = now()
        vectors, invalid = validate(values)
        try:
            device_time = float(values["timestamp"])
        except (KeyError, TypeError, ValueError):
            device_time = math.nan
        capture = self.clock.to_controller(device_time, arrival)
        if invalid is None and not math.isfinite(capture):
            invalid = f"device timestamp {device_time!r} not usable"
        if invalid != self._invalid:
            if invalid is not None:
                log.warning("%s: invalid robot state: %s; holding", self.name, invalid)
            else:
                log.info("%s: robot state valid again", self.name)
            self._invalid = invalid
        if invalid is None:
            self._last_valid_q = vectors["actual_q"]
        self._track_program(values)
        live_ready, live_mode = assess(values, self.params.status_name)
        if invalid is not None:
            ready, mode = False, f"INVALID STATE: {invalid}"
        elif self._latch is not None:
            ready = False
            mode = f"{self._latch}: resume needed"
            if not live_ready and live_mode not in self._latch:
                mode += f" (now {live_mode})"
        elif self._recovery is not None:
            ready, mode = False, f"{_START_TEXT.get(self._recovery_kind, 'STARTING')}"
            if not live_ready:
                mode += f" ({live_mode})"
        elif not self._program_seen:
            ready, mode = False, live_mode if not live_ready else "PROGRAM STARTING"
        else:
            ready, mode = live_ready, live_mode
        state = RobotState(
            positions=vectors["actual_q"],
            velocities=vectors["actual_qd"],
            capture_time=capture,
            ready=ready,
            mode=mode,
            tcp_pose=vectors["actual_TCP_pose"],
            tcp_force=vectors["actual_TCP_force"],
            time_source="device",
        )
        self._latest_values = values
        if not self._states.closed:
            self._states.publish(state, capture, now=arrival)

    def _track_program(self, values: dict[str, Any]) -> None:
        """Confirm our program's start, and explain its end the moment it happens."""
        runtime = int(values["runtime_state"])
        status = int(values.get(self.params.status_name, 0))
        fault = arm_fault(values)
        if self._await_seq is not None:
            ack = int(values.get(self.params.ack_name, -1))
            if (
                fault is None
                and runtime == RUNTIME_PLAYING
                and status != program.STATUS_WATCHDOG
                and _seq_reached(ack, self._await_seq)
            ):
                self._await_seq = None
                self._program_seen = self._had_program = True
            return
        if not self._program_seen or self._latch is not None:
            return
        if fault is None and runtime == RUNTIME_PLAYING and status != program.STATUS_WATCHDOG:
            return  # running normally
        # Our program just stopped, or the arm under it did: who did it?
        self._program_seen = False
        client = self._client
        if status == program.STATUS_WATCHDOG:
            log.warning(
                "%s: the program's watchdog stopped the arm (no heartbeat reached the"
                " robot for %.2f s); restarting it from where the arm is",
                self.name,
                1.0 / self.config.watchdog_hz,
            )
            kind = "watchdog"
        elif (
            int(values["safety_mode"]) == SAFETY_PROTECTIVE
            and int(values["robot_mode"]) == ROBOT_RUNNING
            and self.config.auto_recover
        ):
            log.warning(
                "%s: protective stop; auto_recover unlocks it in %.1f s",
                self.name,
                self.config.unlock_wait,
            )
            kind = "protective"
        else:
            self._set_latch(_describe_stop(values, fault))
            return
        if client is None or self._recovery is not None:
            return  # the next session decides, from the status register
        self._spawn_start(kind)

    def _spawn_start(self, kind: str) -> asyncio.Task[None]:
        self._recovery_kind = kind
        task = self.spawn(self._start(kind), f"start-{kind}")
        self._recovery = task
        return task

    async def _start(self, kind: str) -> None:
        """Start our program and see it acknowledge the start.

        kind: "connect" (a session's start), "resume" (an operator's resume()),
        "watchdog" (our own stop: wait for the program to end first),
        "protective" (`auto_recover`: wait UR's unlock delay and unlock first).
        A program that our watchdog stops again before it is seen running (the
        heartbeat still does not reach the robot) is started again, a few
        times; anything else that happens meanwhile latches, and so does a failure.
        """
        cfg = self.config
        try:
            if kind == "protective":
                await asyncio.sleep(cfg.unlock_wait)
                async with DashboardClient(
                    cfg.host, cfg.dashboard_port, timeout=cfg.connect_timeout
                ) as dash:
                    for _ in range(3):
                        if await dash.unlock_protective_stop(wait=0.0):
                            break
                        await asyncio.sleep(1.0)
            for attempt in range(1, START_ATTEMPTS + 1):
                if kind in ("watchdog", "protective") or attempt > 1:
                    # the old program must have ended (a watchdog stop decelerates first)
                    # and the arm be RUNNING / NORMAL again, on fresh samples
                    with contextlib.suppress(TimeoutError):
                        await self._wait_for(self._settled, 2.0 + cfg.stale_after)
                client, values = self._client, self._latest_values
                if client is None or values is None:
                    return  # link lost: the next session decides from the status register
                fault = arm_fault(values)
                if fault is not None or (
                    kind in ("watchdog", "protective")
                    and int(values["runtime_state"]) == RUNTIME_PLAYING
                ):
                    self._set_latch(
                        f"{fault or 'PROGRAM still PLAYING'} (not caused by the"
                        f" driver) before its {_START_TEXT[kind].lower()}"
                    )
                    return
                await self._start_program(client)
                try:
                    await self._wait_for(lambda: self._program_seen, cfg.connect_timeout)
                except TimeoutError:
                    values = self._latest_values or values
                    if int(values.get(self.params.status_name, 0)) == program.STATUS_WATCHDOG:
                        log.warning(
                            "%s: the started program was stopped by its watchdog (no"
                            " heartbeat reaches the robot); attempt %d of %d",
                            self.name,
                            attempt,
                            START_ATTEMPTS,
                        )
                        continue
                    break
                log.info("%s: program %s", self.name, _START_TEXT[kind].lower())
                return
            self._set_latch(f"the program did not start ({_START_TEXT[kind].lower()})")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error(
                "%s: %s failed with %s: %s",
                self.name,
                _START_TEXT[kind].lower(),
                type(exc).__name__,
                exc,
            )
            self._set_latch(f"{_START_TEXT[kind].lower()} failed ({exc})")
        finally:
            if self._recovery is asyncio.current_task():
                self._recovery = None

    def _settled(self) -> bool:
        v = self._latest_values
        return v is not None and arm_fault(v) is None and int(v["runtime_state"]) != RUNTIME_PLAYING


_START_TEXT = {
    "connect": "PROGRAM STARTING",
    "resume": "PROGRAM STARTING on resume",
    "watchdog": "RESTARTING after our watchdog stop",
    "protective": "RECOVERING from a protective stop (auto_recover)",
}


def _describe_stop(values: dict[str, Any], fault: str | None) -> str:
    """What stopped our program, in the words the mode text and the log use."""
    if fault is not None:
        return f"{fault} (not caused by the driver)"
    runtime = int(values["runtime_state"])
    name = RUNTIME_STATES.get(runtime, str(runtime))
    if name in ("PAUSING", "PAUSED"):
        return "PROGRAM PAUSED by operator"
    return f"PROGRAM {name} by operator"
