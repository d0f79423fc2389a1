"""The simulated UR controller: RTDE (30004), dashboard (29999), script port (30002).

One object owns the arm model, the tick task and the three listeners, so a
test starts and stops the whole controller with one `async with`. Fault
injection is a handful of methods and flags used by the tests and the CLI:
link faults (drop, stall, delay, corrupt samples, a frozen clock, lost
inputs, a half-open link, text floods) and a person's actions (`dashboard()`
lines, the emergency stop and its release, a protective stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drivers.ur import transport as ur_transport
from drivers.ur.sim import codec
from drivers.ur.sim.arm import (
    RUNTIME_PAUSED,
    RUNTIME_PLAYING,
    Arm,
    forward_kinematics,
)
from drivers.ur.sim.record import TAG_FIELD, SimRecorder

log = logging.getLogger(__name__)

_ROBOT_MODES = {
    -1: "NO_CONTROLLER",
    0: "DISCONNECTED",
    1: "CONFIRM_SAFETY",
    2: "BOOTING",
    3: "POWER_OFF",
    4: "POWER_ON",
    5: "IDLE",
    6: "BACKDRIVE",
    7: "RUNNING",
}
_SAFETY_MODES = {
    1: "NORMAL",
    2: "REDUCED",
    3: "PROTECTIVE_STOP",
    4: "RECOVERY",
    5: "SAFEGUARD_STOP",
    6: "SYSTEM_EMERGENCY_STOP",
    7: "ROBOT_EMERGENCY_STOP",
}


def _v6(a: np.ndarray) -> list[float]:
    return [float(x) for x in a]


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    rtde_port: int = 30004
    dashboard_port: int = 29999
    script_port: int = 30002
    frequency: float = 125.0
    version: tuple[int, int, int, int] = (5, 11, 0, 0)
    max_protocol: int = 2
    powered: bool = True
    unlock_delay: float = 5.0
    remote_control: bool = True


@dataclass
class _Session:
    writer: asyncio.StreamWriter
    protocol: int = 1
    next_rid: int = 1
    out_recipe: codec.SimRecipe | None = None
    in_recipe: codec.SimRecipe | None = None
    inputs_taken: list[str] = field(default_factory=list)
    frequency: float = 125.0
    streaming: bool = False
    next_send: float = 0.0
    held: list[bytes] = field(default_factory=list)
    #: bytes waiting out `link_delay`, with the time each may leave (in order)
    late: deque[tuple[float, bytes]] = field(default_factory=deque)


class UrSimulator:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.arm = Arm(powered=self.config.powered)
        self.sessions: list[_Session] = []
        self.data_paused_until = 0.0
        self.refuse_until = 0.0
        self.split_packets = False
        self.coalesce = 1
        #: fault: every outgoing RTDE byte leaves this many seconds late (a slow link)
        self.link_delay = 0.0
        #: fault: the RTDE `timestamp` output stops advancing (a frozen device clock)
        self.frozen_timestamp: float | None = None
        #: fault: the next N data packets carry these values instead of the real ones
        self.corrupt: dict[str, Any] = {}
        self.corrupt_packets = 0
        self.inputs_ignored_until = 0.0
        self.silent = False
        self.inputs_received = 0
        self.scripts_received = 0
        #: ground truth of what was sent and taken, while recording (see `record()`)
        self.recorder: SimRecorder | None = None
        self._servers: list[asyncio.Server | ur_transport.MemoryServer] = []
        self._tick_task: asyncio.Task[None] | None = None
        self._conn_tasks: set[asyncio.Task[Any]] = set()

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> UrSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        c = self.config
        try:
            for port, handler in (
                (c.rtde_port, self._rtde_client),
                (c.dashboard_port, self._dashboard_client),
                (c.script_port, self._script_client),
            ):
                self._servers.append(
                    await ur_transport.start_server(self._track(handler), c.host, port)
                )
        except BaseException:
            await self.close()
            raise
        self._tick_task = asyncio.create_task(self._ticks(), name="ur-sim-ticks")
        log.info(
            "UR simulator on %s (RTDE %d, dashboard %d, script %d, %g Hz)",
            c.host,
            c.rtde_port,
            c.dashboard_port,
            c.script_port,
            c.frequency,
        )

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
            self._tick_task = None
        for s in list(self.sessions):
            s.writer.transport.abort()
        tasks = list(self._conn_tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _track(self, handler: Any) -> Any:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._conn_tasks.add(task)
            try:
                await handler(reader, writer)
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                self._conn_tasks.discard(task)
                writer.transport.abort()

        return run

    # ---------------------------------------------------------------- faults

    def drop_links(self, refuse_for: float = 0.0) -> None:
        """Abort every RTDE connection; refuse new ones for `refuse_for` seconds."""
        loop = asyncio.get_running_loop()
        self.refuse_until = loop.time() + refuse_for
        for s in list(self.sessions):
            s.writer.transport.abort()

    def stop_data(self, seconds: float) -> None:
        """Keep the links up but send no data packets for a while."""
        self.data_paused_until = asyncio.get_running_loop().time() + seconds

    def protective_stop(self) -> None:
        self.arm.protective_stop()

    def send_raw(self, data: bytes) -> None:
        """Write arbitrary bytes (e.g. a malformed packet) to every RTDE client."""
        for s in list(self.sessions):
            s.writer.transport.write(data)

    def send_text(self, message: str, level: int = 3) -> None:
        self.arm.say(message, level)

    def delay_link(self, seconds: float) -> None:
        """From now on, deliver every RTDE packet `seconds` late (order kept).

        Order is kept when the delay changes too, as on a TCP link: after a
        smaller delay (or none), new bytes still leave after the ones already
        waiting, never overtaking them.
        """
        self.link_delay = seconds

    def record(self, recorder: SimRecorder | None = None) -> SimRecorder:
        """Start logging samples sent and inputs taken, tagging each sample with its serial.

        The ground truth a test judges the driver's clock mapping against
        (see `drivers.ur.sim.record`). Returns the recorder.
        """
        self.recorder = recorder or SimRecorder()
        return self.recorder

    def freeze_timestamp(self) -> None:
        """The robot's clock stops: `timestamp` repeats its current value from now on."""
        self.frozen_timestamp = self.arm.time

    def corrupt_next(self, packets: int = 1, **values: Any) -> None:
        """Send `values` (e.g. timestamp=nan, actual_q=[nan]*6) in the next `packets` samples."""
        self.corrupt, self.corrupt_packets = values, packets

    def ignore_inputs(self, seconds: float) -> None:
        """Inputs from RTDE clients are lost for a while (the PC looks silent to the robot)."""
        self.inputs_ignored_until = asyncio.get_running_loop().time() + seconds

    def go_silent(self) -> None:
        """A half-open link: connections stay up, but nothing is read or sent any more."""
        self.silent = True
        for s in list(self.sessions):
            s.writer.transport.pause_reading()

    # operator actions a test plays as the person at the robot

    def dashboard(self, command: str) -> str:
        """What the same line sent to port 29999 would do (stop, pause, play, power off, ...)."""
        return self._dashboard(command)

    def emergency_stop(self) -> None:
        """Press the red button (no dashboard can do that on a real UR)."""
        self.arm.emergency_stop()

    def release_emergency_stop(self) -> None:
        self.arm.release_emergency_stop()

    # ---------------------------------------------------------------- ticks

    async def _ticks(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.config.frequency
        start = loop.time()
        k = 0
        while True:
            k += 1
            deadline = start + k * period
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.5:  # far behind (machine stalled): skip, do not burst
                start, k = loop.time(), 0
            self.arm.step(period)
            if not self.silent:
                self._broadcast(loop.time())

    def _broadcast(self, now: float) -> None:
        messages, self.arm.messages = self.arm.messages, []
        corrupt = self.corrupt if self.corrupt_packets > 0 else {}
        sent_sample = False
        recorder = self.recorder
        serial = 0
        for s in list(self.sessions):
            out = b"".join(codec.text_message(m, "sim", lvl, s.protocol) for m, lvl in messages)
            if s.streaming and s.out_recipe is not None and now >= self.data_paused_until:
                if now + 1e-4 >= s.next_send:
                    s.next_send = max(s.next_send + 1.0 / s.frequency, now)
                    values = [
                        corrupt[n] if n in corrupt else self._output(n) for n in s.out_recipe.names
                    ]
                    if recorder is not None:
                        serial = serial or self._record_sample(recorder, now, corrupt)
                        values = [
                            SimRecorder.tagged(v, serial)
                            if n == TAG_FIELD and n not in corrupt
                            else v
                            for n, v in zip(s.out_recipe.names, values, strict=True)
                        ]
                    sent_sample = True
                    s.held.append(s.out_recipe.pack(values, s.protocol >= 2))
                    if len(s.held) >= self.coalesce:
                        out += b"".join(s.held)
                        s.held.clear()
            if not out:
                continue
            transport = s.writer.transport
            if transport.is_closing():
                continue
            if transport.get_write_buffer_size() > 1 << 20:
                log.warning("sim: RTDE client does not drain its data; dropping it")
                transport.abort()
                continue
            if self.link_delay > 0 or s.late:
                self._write_delayed(s, out)
            elif self.split_packets and len(out) > 4:
                cut = len(out) // 2
                transport.write(out[:cut])
                asyncio.get_running_loop().call_later(0.001, self._late_write, s, out[cut:])
            else:
                transport.write(out)
        if sent_sample and self.corrupt_packets > 0:
            self.corrupt_packets -= 1

    def _record_sample(self, recorder: SimRecorder, now: float, corrupt: dict[str, Any]) -> int:
        serial = recorder.next_serial()
        timestamp = corrupt["timestamp"] if "timestamp" in corrupt else self._output("timestamp")
        recorder.sample_sent(serial, now, timestamp)
        return serial

    @staticmethod
    def _late_write(s: _Session, data: bytes) -> None:
        if not s.writer.transport.is_closing():
            s.writer.transport.write(data)

    def _write_delayed(self, s: _Session, data: bytes) -> None:
        """Send `data` `link_delay` from now, but never before bytes already waiting."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self.link_delay
        if s.late:
            due = max(due, s.late[-1][0])
        s.late.append((due, data))
        if len(s.late) == 1:
            loop.call_at(due, self._drain_late, s)

    def _drain_late(self, s: _Session) -> None:
        loop = asyncio.get_running_loop()
        while s.late and s.late[0][0] <= loop.time() + 1e-4:  # a timer may fire a hair early
            _, data = s.late.popleft()
            self._late_write(s, data)
        if s.late:
            loop.call_at(s.late[0][0], self._drain_late, s)

    # ---------------------------------------------------------------- RTDE

    def _output_type(self, name: str) -> str | None:
        if name in _OUTPUT_TYPES:
            return _OUTPUT_TYPES[name]
        for prefix, typ, hi in _REGISTERS:
            if name.startswith(prefix):
                tail = name[len(prefix) :]
                if tail.isdigit() and int(tail) <= hi:
                    return typ
        return None

    def _output(self, name: str) -> Any:
        a = self.arm
        match name:
            case "timestamp":
                return a.time if self.frozen_timestamp is None else self.frozen_timestamp
            case "actual_q":
                return _v6(a.q)
            case "actual_qd":
                return _v6(a.qd)
            case "target_q":
                return _v6(a.target_q)
            case "target_qd":
                return _v6(a.qd)
            case "actual_TCP_pose" | "target_TCP_pose":
                return _v6(forward_kinematics(a.q))
            case "robot_mode":
                return a.robot_mode
            case "safety_mode" | "safety_status":
                return a.safety_mode
            case "runtime_state":
                return a.runtime_state
            case "robot_status_bits":
                return a.robot_status_bits
            case "safety_status_bits":
                return a.safety_status_bits
            case "speed_scaling" | "target_speed_fraction":
                return a.speed_scaling
            case "joint_mode":
                return [255] * 6  # JOINT_RUNNING_MODE
            case "joint_temperatures":
                return [35.0] * 6
        if name.startswith("input_"):
            return a.inputs.get(name, _ZERO[self._output_type(name) or "DOUBLE"])
        return a.outputs.get(name, _ZERO[self._output_type(name) or "DOUBLE"])

    async def _rtde_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if asyncio.get_running_loop().time() < self.refuse_until:
            return
        s = _Session(writer=writer)
        self.sessions.append(s)
        if self.silent:
            writer.transport.pause_reading()
        buf = bytearray()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                buf += data
                try:
                    for kind, body in codec.split_stream(buf):
                        reply = self._rtde_request(s, kind, body)
                        if reply and (self.link_delay > 0 or s.late):
                            self._write_delayed(s, reply)
                        elif reply:
                            writer.write(reply)
                except codec.SimProtocolError as exc:
                    writer.write(codec.text_message(f"RTDE: {exc}", "sim", 1, s.protocol))
                    return
                await writer.drain()
        finally:
            self.sessions.remove(s)

    def _rtde_request(self, s: _Session, kind: int, body: bytes) -> bytes:
        if kind == codec.V:
            wanted = codec.read_protocol_request(body)
            ok = 1 <= wanted <= self.config.max_protocol
            if ok:
                s.protocol = wanted
            return codec.flag(codec.V, ok)
        if kind == codec.v:
            return codec.version_reply(self.config.version)
        if kind == codec.O:
            freq, names = codec.read_output_setup(body, s.protocol)
            kinds = [self._output_type(n) or "NOT_FOUND" for n in names]
            ok = bool(names) and "NOT_FOUND" not in kinds and 0 < freq <= self.config.frequency
            if freq > self.config.frequency:
                s.protocol >= 2 and self.arm.say(
                    f"RTDE: frequency {freq:g} above the controller's {self.config.frequency:g}", 1
                )
            rid = 0
            if ok:
                rid = s.next_rid
                s.next_rid += 1
                s.out_recipe = codec.SimRecipe(rid, names, kinds)
                s.frequency = freq
            return codec.frame(codec.O, codec.setup_reply(rid if s.protocol >= 2 else None, kinds))
        if kind == codec.I:
            names = codec.read_input_setup(body)
            taken = {n for other in self.sessions if other is not s for n in other.inputs_taken}
            kinds = []
            for n in names:
                typ = self._output_type(n) if n.startswith(("input_", "speed_slider")) else None
                kinds.append("IN_USE" if n in taken else (typ or "NOT_FOUND"))
            ok = bool(names) and all(k not in ("IN_USE", "NOT_FOUND") for k in kinds)
            rid = 0
            if ok:
                rid = s.next_rid
                s.next_rid += 1
                s.in_recipe = codec.SimRecipe(rid, names, kinds)
                s.inputs_taken = list(names)
            return codec.frame(codec.I, codec.setup_reply(rid, kinds))
        if kind == codec.S:
            ok = s.out_recipe is not None or s.in_recipe is not None
            s.streaming = ok
            s.next_send = 0.0
            return codec.flag(codec.S, ok)
        if kind == codec.P:
            s.streaming = False
            return codec.flag(codec.P, True)
        if kind == codec.U:
            if s.in_recipe is None:
                raise codec.SimProtocolError("data packet before an input recipe")
            if asyncio.get_running_loop().time() < self.inputs_ignored_until:
                return b""
            values = s.in_recipe.unpack(body)
            self.arm.write_inputs(values)
            self.inputs_received += 1
            if self.recorder is not None:
                self.recorder.inputs_taken(asyncio.get_running_loop().time(), values)
            return b""
        if kind == codec.M:
            return b""
        raise codec.SimProtocolError(f"unknown packet type {kind}")

    # ---------------------------------------------------------------- script port

    async def _script_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        chunks: list[bytes] = []
        while True:
            try:
                async with asyncio.timeout(2.0):
                    data = await reader.read(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
            text = b"".join(chunks).decode("utf-8", "replace")
            if text.rstrip().endswith("end") and "\nend" in text:
                break
        script = b"".join(chunks).decode("utf-8", "replace")
        if script.strip():
            self.scripts_received += 1
            self.arm.load_program(script)

    # ---------------------------------------------------------------- dashboard

    async def _dashboard_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"Connected: Universal Robots Dashboard Server\n")
        while True:
            line = await reader.readline()
            if not line:
                return
            command = line.decode("utf-8", "replace").strip()
            reply = self._dashboard(command)
            writer.write(reply.encode() + b"\n")
            await writer.drain()
            if command == "quit":
                return

    def _dashboard(self, command: str) -> str:
        a = self.arm
        if command.startswith("load "):
            a.loaded_urp = command[5:].strip()
            return f"Loading program: {a.loaded_urp}"
        match command:
            case "power on":
                a.power_on()
                return "Powering on"
            case "power off":
                a.power_off()
                return "Powering off"
            case "brake release":
                a.brake_release()
                return "Brake releasing"
            case "stop":
                if a.runtime_state not in (RUNTIME_PLAYING, RUNTIME_PAUSED):
                    return "Failed to execute: stop"
                a.stop_program("dashboard stop")
                return "Stopped"
            case "pause":
                return "Pausing program" if a.pause_program() else "Failed to execute: pause"
            case "play":
                return "Starting program" if a.play() else "Failed to execute: play"
            case "unlock protective stop":
                if a.unlock_protective_stop(self.config.unlock_delay):
                    return "Protective stop releasing"
                return (
                    "Cannot unlock protective stop until 5s after occurrence. "
                    "Always inspect cause of protective stop before unlocking"
                )
            case "close safety popup":
                return "closing safety popup"
            case "close popup":
                return "closing popup"
            case "robotmode":
                return f"Robotmode: {_ROBOT_MODES.get(a.robot_mode, str(a.robot_mode))}"
            case "safetystatus":
                return f"Safetystatus: {_SAFETY_MODES.get(a.safety_mode, str(a.safety_mode))}"
            case "safetymode":
                return f"Safetymode: {_SAFETY_MODES.get(a.safety_mode, str(a.safety_mode))}"
            case "programState":
                state = {RUNTIME_PLAYING: "PLAYING", RUNTIME_PAUSED: "PAUSED"}.get(
                    a.runtime_state, "STOPPED"
                )
                return f"{state} {a.program_name or '<unnamed>'}"
            case "is in remote control":
                return "true" if self.config.remote_control else "false"
            case "PolyscopeVersion":
                return "URSoftware " + ".".join(map(str, self.config.version[:3])) + " (sim)"
            case "quit":
                return "Disconnected"
        return f"could not understand: '{command}'"


_ZERO = {
    "BOOL": False,
    "UINT8": 0,
    "UINT32": 0,
    "UINT64": 0,
    "INT32": 0,
    "DOUBLE": 0.0,
    "VECTOR3D": [0.0] * 3,
    "VECTOR6D": [0.0] * 6,
    "VECTOR6INT32": [0] * 6,
    "VECTOR6UINT32": [0] * 6,
}

_REGISTERS = (
    ("output_int_register_", "INT32", 47),
    ("output_double_register_", "DOUBLE", 47),
    ("output_bit_register_", "BOOL", 127),
    ("input_int_register_", "INT32", 47),
    ("input_double_register_", "DOUBLE", 47),
    ("input_bit_register_", "BOOL", 127),
)

_OUTPUT_TYPES = {
    **dict.fromkeys(
        [
            "timestamp",
            "actual_execution_time",
            "speed_scaling",
            "target_speed_fraction",
            "actual_momentum",
            "actual_main_voltage",
            "actual_robot_voltage",
            "actual_robot_current",
            "standard_analog_input0",
            "standard_analog_input1",
            "standard_analog_output0",
            "standard_analog_output1",
            "io_current",
            "tool_analog_input0",
            "tool_analog_input1",
            "tool_output_current",
            "tool_temperature",
            "tcp_force_scalar",
            "payload",
            "speed_slider_fraction",
            "joint_position_deviation_ratio",
            "collision_detection_ratio",
        ],
        "DOUBLE",
    ),
    **dict.fromkeys(
        [
            "target_q",
            "target_qd",
            "target_qdd",
            "target_current",
            "target_moment",
            "actual_q",
            "actual_qd",
            "actual_current",
            "joint_control_output",
            "actual_TCP_pose",
            "actual_TCP_speed",
            "actual_TCP_force",
            "target_TCP_pose",
            "target_TCP_speed",
            "joint_temperatures",
            "actual_joint_voltage",
            "payload_inertia",
            "ft_raw_wrench",
            "actual_current_window",
            "actual_current_as_torque",
        ],
        "VECTOR6D",
    ),
    **dict.fromkeys(
        ["actual_tool_accelerometer", "payload_cog", "elbow_position", "elbow_velocity"], "VECTOR3D"
    ),
    **dict.fromkeys(["robot_mode", "safety_mode", "safety_status", "tool_output_voltage"], "INT32"),
    **dict.fromkeys(
        [
            "runtime_state",
            "robot_status_bits",
            "safety_status_bits",
            "analog_io_types",
            "tool_mode",
            "tool_analog_input_types",
            "output_bit_registers0_to_31",
            "output_bit_registers32_to_63",
            "input_bit_registers0_to_31",
            "input_bit_registers32_to_63",
            "script_control_line",
            "speed_slider_mask",
        ],
        "UINT32",
    ),
    **dict.fromkeys(["actual_digital_input_bits", "actual_digital_output_bits"], "UINT64"),
    "joint_mode": "VECTOR6INT32",
}
