"""The UR5 `RobotDriver`: RTDE state in, input registers out, our program in between.

One supervisor task owns the link: it connects, uploads the control program,
streams states and reconnects with backoff when anything goes wrong, so a
dropped cable or a garbled packet never ends the controller's run. States
carry the controller clock (`drivers.base.now()`), mapped from the robot's
RTDE `timestamp` by `ClockMap`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
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
from drivers.ur import program
from drivers.ur.config import UR5Config
from drivers.ur.dashboard import DashboardClient
from drivers.ur.rtde_client import RtdeClient

log = logging.getLogger(__name__)

OUTPUTS = (
    "timestamp", "actual_q", "actual_qd", "target_q", "actual_TCP_pose", "actual_TCP_force",
    "robot_mode", "safety_mode", "runtime_state", "robot_status_bits", "safety_status_bits",
    "speed_scaling",
)

ROBOT_MODES = {-1: "NO_CONTROLLER", 0: "DISCONNECTED", 1: "CONFIRM_SAFETY", 2: "BOOTING",
               3: "POWER_OFF", 4: "POWER_ON", 5: "IDLE", 6: "BACKDRIVE", 7: "RUNNING",
               8: "UPDATING_FIRMWARE"}
SAFETY_MODES = {1: "NORMAL", 2: "REDUCED", 3: "PROTECTIVE_STOP", 4: "RECOVERY",
                5: "SAFEGUARD_STOP", 6: "SYSTEM_EMERGENCY_STOP", 7: "ROBOT_EMERGENCY_STOP",
                8: "VIOLATION", 9: "FAULT", 10: "VALIDATE_JOINT_ID", 11: "UNDEFINED",
                12: "AUTOMATIC_MODE_SAFEGUARD_STOP", 13: "SYSTEM_THREE_POSITION_ENABLING_STOP"}
RUNTIME_STATES = {0: "STOPPING", 1: "STOPPED", 2: "PLAYING", 3: "PAUSING", 4: "PAUSED",
                  5: "RESUMING"}
# safety_status_bits 2..10: protective, recovery, safeguard, e-stops, violation, fault, stopped
SAFETY_STOP_BITS = 0b111_1111_1100


def assess(values: dict[str, Any], status_register: str) -> tuple[bool, str]:
    """(ready, mode text) from one RTDE sample: any reason to refuse motion makes it not ready."""
    robot_mode = int(values["robot_mode"])
    safety_mode = int(values["safety_mode"])
    if robot_mode != 7:
        return False, f"ROBOT_MODE {ROBOT_MODES.get(robot_mode, robot_mode)}"
    if safety_mode not in (1, 2):
        return False, f"SAFETY {SAFETY_MODES.get(safety_mode, safety_mode)}"
    bits = int(values["safety_status_bits"])
    if bits & SAFETY_STOP_BITS:
        return False, f"SAFETY_STOP bits 0x{bits:x}"
    runtime = int(values["runtime_state"])
    if runtime != 2:
        return False, f"PROGRAM {RUNTIME_STATES.get(runtime, runtime)}"
    status = int(values.get(status_register, 0))
    return True, "RUNNING" if status in (0, 1, 2, 5) else program.STATUS_NAMES.get(status, "RUNNING")


class ClockMap:
    """Maps the robot's RTDE `timestamp` to the controller clock.

    offset = arrival - device time. The smallest offset seen is the best
    estimate (least transport delay), so a smaller one is taken at once;
    larger ones are followed only slowly, to track clock drift without
    letting a delayed packet move the estimate. A robot restart (time going
    backwards, or a jump of more than a second) starts over.
    """

    def __init__(self, drift_gain: float = 1e-3) -> None:
        self.offset: float | None = None
        self.drift_gain = drift_gain
        self._last_device = -math.inf

    def to_controller(self, device_time: float, arrival: float) -> float:
        d = arrival - device_time
        if self.offset is None or device_time < self._last_device or abs(d - self.offset) > 1.0:
            self.offset = d
        elif d < self.offset:
            self.offset = d
        else:
            self.offset += self.drift_gain * (d - self.offset)
        self._last_device = device_time
        return device_time + self.offset


class UR5Robot(ConfiguredDriver):
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
        self._client: RtdeClient | None = None
        self._inputs: dict[str, object] | None = None
        self._seq = 0
        self._last_send = -math.inf
        self._latest: RobotState | None = None
        self._latest_values: dict[str, Any] | None = None
        self._new_state = asyncio.Event()
        self._connected = asyncio.Event()
        self._last_error: str = "not connected yet"
        self._supervisor: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        self._closed = False
        self._supervisor = asyncio.create_task(self._supervise(), name=f"{self.name}-rtde")
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await self._connected.wait()
        except TimeoutError:
            await self.close()
            raise ConnectionLost(
                f"{self.name}: no RTDE link to {self.config.host} within"
                f" {self.config.connect_timeout:g} s (last error: {self._last_error})"
            ) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        await self.close()

    async def close(self) -> None:
        """Cancel the link's tasks and close the socket; safe to call twice."""
        self._closed = True
        for task in (self._recovery, self._supervisor):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._recovery = self._supervisor = None
        self._new_state.set()  # wake states() iterators so they can see the close

    # ---------------------------------------------------------------- RobotDriver

    async def states(self) -> AsyncIterator[RobotState]:
        last: RobotState | None = None
        while not self._closed:
            state = self._latest
            if state is not None and state is not last:
                last = state
                yield state
                continue
            event = self._new_state
            await event.wait()

    async def command(self, cmd: JointCommand) -> None:
        client = self._client
        if client is None or not client.connected or self._inputs is None:
            raise ConnectionLost(f"{self.name}: RTDE link down, command {cmd.seq} not sent")
        state = self._latest
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
        if client is None or not client.connected or self._latest is None:
            raise ConnectionLost(f"{self.name}: RTDE link down, cannot hold")
        values = self.params.inputs(
            self._next_seq(), program.MODE_HOLD, list(self._latest.positions), 0.0
        )
        await self._send(client, values)

    async def stop(self) -> None:
        """Ask the program to decelerate (stopj) and wait briefly for its acknowledgement."""
        try:
            async with asyncio.timeout(self.config.stop_timeout):
                client = self._client
                if client is None or not client.connected or self._latest is None:
                    log.warning("%s: stop() with the link down; the robot's watchdog stops it",
                                self.name)
                    return
                seq = self._next_seq()
                values = self.params.inputs(seq, program.MODE_STOP, list(self._latest.positions), 0)
                await self._send(client, values)
                while True:
                    latest = self._latest_values
                    if latest is not None and int(latest.get(self.params.ack_name, -1)) == seq:
                        return
                    await self._new_state.wait()
        except TimeoutError:
            log.warning("%s: stop() not acknowledged within %.2f s", self.name,
                        self.config.stop_timeout)
        except (DriverError, OSError) as exc:
            log.warning("%s: stop() failed: %s", self.name, exc)

    # ---------------------------------------------------------------- internals

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        return self._seq

    async def _send(self, client: RtdeClient, values: dict[str, object]) -> None:
        self._inputs = values
        await client.send(values)
        self._last_send = now()

    async def _supervise(self) -> None:
        backoff = self.config.reconnect_min
        while not self._closed:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (DriverError, OSError) as exc:
                self._last_error = str(exc)
                log.warning("%s: RTDE link lost: %s; reconnecting in %.2f s", self.name, exc,
                            backoff)
            if self._connected.is_set():
                backoff = self.config.reconnect_min
            self._connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.reconnect_max)

    async def _session(self) -> None:
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
            async with asyncio.timeout(cfg.stale_after + cfg.connect_timeout):
                first = await client.receive()
            self._publish(first)
            # Keep the registers' sequence number so the program sees no new target; hold here.
            seq = int(first.get(self.params.ack_name, 0))
            self._seq = max(self._seq, seq)
            await self._send(
                client, self.params.inputs(self._seq, program.MODE_HOLD, list(first["actual_q"]), 0)
            )
            if cfg.use_dashboard:
                await self._prepare_arm(client.controller_version[0])
            await program.upload(cfg.host, program.render(self.params), port=cfg.script_port,
                                 limit_s=cfg.connect_timeout)
            self._client = client
            self.connects += 1
            self._connected.set()
            keepalive = asyncio.create_task(self._keepalive(client), name=f"{self.name}-keepalive")
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
            if keepalive is not None:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive
            await client.close()

    async def _prepare_arm(self, major: int) -> None:
        """Remote-control check and optional power-on; a missing dashboard is only a warning."""
        cfg = self.config
        try:
            async with DashboardClient(cfg.host, cfg.dashboard_port,
                                       timeout=cfg.connect_timeout) as dash:
                if major >= 5 and await dash.is_in_remote_control() is False:
                    raise DriverError(
                        f"{self.name}: the robot is in Local control; switch it to Remote"
                        " Control on the teach pendant so it accepts our program"
                    )
                if cfg.power_on:
                    await dash.power_on()
                    await dash.brake_release()
        except ConnectionLost as exc:
            log.warning("%s: dashboard unavailable (%s); continuing without it", self.name, exc)

    async def _keepalive(self, client: RtdeClient) -> None:
        period = 1.0 / self.config.keepalive_hz
        while True:
            await asyncio.sleep(period)
            if self._inputs is not None and now() - self._last_send >= period * 0.9:
                try:
                    await self._send(client, self._inputs)
                except ConnectionLost:
                    return

    def _publish(self, values: dict[str, Any]) -> None:
        arrival = now()
        ready, mode = assess(values, self.params.status_name)
        state = RobotState(
            positions=np.asarray(values["actual_q"], dtype=float),
            velocities=np.asarray(values["actual_qd"], dtype=float),
            capture_time=self.clock.to_controller(float(values["timestamp"]), arrival),
            ready=ready,
            mode=mode,
            tcp_pose=np.asarray(values["actual_TCP_pose"], dtype=float),
            tcp_force=np.asarray(values["actual_TCP_force"], dtype=float),
            time_source="device",
        )
        self._latest, self._latest_values = state, values
        event, self._new_state = self._new_state, asyncio.Event()
        event.set()
        # A program stopped while the arm is fine (watchdog after a PC stall) is restarted
        # from where the arm is; unlocking a protective stop is left to `auto_recover`.
        restartable = (int(values["robot_mode"]) == 7 and int(values["safety_mode"]) in (1, 2)
                       and int(values["runtime_state"]) != 2)
        if (not ready and (self.config.auto_recover or restartable)
                and self._recovery is None and self._client is not None):
            self._recovery = asyncio.create_task(self._recover(), name=f"{self.name}-recovery")

    async def _recover(self) -> None:
        """Protective stop: wait UR's 5 s, unlock, restart the program from the actual position.

        The program starts holding where the arm is and ignores the sequence number
        already in the registers, so a stale target is never resumed.
        """
        cfg = self.config
        try:
            values = self._latest_values or {}
            if cfg.auto_recover and int(values.get("safety_mode", 1)) == 3:
                log.warning("%s: protective stop; unlocking in %.1f s", self.name, cfg.unlock_wait)
                async with DashboardClient(cfg.host, cfg.dashboard_port,
                                           timeout=cfg.connect_timeout) as dash:
                    for _ in range(3):
                        if await dash.unlock_protective_stop(wait=cfg.unlock_wait):
                            break
            await asyncio.sleep(2.0 / cfg.frequency * 4)
            values = self._latest_values or {}
            client = self._client
            if (client is not None and int(values.get("robot_mode", 0)) == 7
                    and int(values.get("safety_mode", 0)) in (1, 2)
                    and int(values.get("runtime_state", 0)) != 2):
                await self._send(client, self.params.inputs(
                    self._next_seq(), program.MODE_HOLD, list(values["actual_q"]), 0))
                await program.upload(cfg.host, program.render(self.params),
                                     port=cfg.script_port, limit_s=cfg.connect_timeout)
                log.info("%s: program restarted after recovery", self.name)
                await asyncio.sleep(0.5)
        except (DriverError, OSError, ProtocolError) as exc:
            log.warning("%s: automatic recovery failed: %s", self.name, exc)
            await asyncio.sleep(1.0)
        finally:
            self._recovery = None
