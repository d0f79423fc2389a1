"""The simulated arm and what our control program does to it.

The simulator cannot run URScript; it recognises our control program by its
marker line, reads the `global VLA_*` constants the program was rendered
with, and plays the same state machine in Python at the controller's step
time: servo segments from the commanded position, jump rejection, sequence
acknowledgement, the program's heartbeat watchdog (status 6, then a stop)
backed by UR's RTDE watchdog, `speedj`.

Besides the program it models what a person can do to a real controller, so
the driver's operator-authority rules can be tested: pause, stop, play (which
plays the loaded .urp, never our script), power off/on, brake release, and an
emergency stop and its release.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MARKER = "# vla-controller control program"

# RTDE enums (UR's RTDE guide)
ROBOT_POWER_OFF, ROBOT_POWER_ON, ROBOT_IDLE, ROBOT_RUNNING = 3, 4, 5, 7
SAFETY_NORMAL, SAFETY_PROTECTIVE, SAFETY_ROBOT_EMERGENCY_STOP = 1, 3, 7
RUNTIME_STOPPED, RUNTIME_PLAYING, RUNTIME_PAUSED = 1, 2, 4

# program status written to output_int_register(base + 1); see control.script
ST_HOLDING, ST_SERVOING, ST_REJECTED, ST_STOPPED, ST_SPEED, ST_WATCHDOG = 1, 2, 3, 4, 5, 6
MODE_HOLD, MODE_SERVO, MODE_SPEED, MODE_STOP = 0, 1, 2, 3

UR5_DH_D = (0.089159, 0.0, 0.0, 0.10915, 0.09465, 0.0823)
UR5_DH_A = (0.0, -0.425, -0.39225, 0.0, 0.0, 0.0)
UR5_DH_ALPHA = (math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0)
MAX_JOINT_SPEED = 3.15  # rad/s, UR5 (180 deg/s)
HOME = (0.0, -1.5708, 1.5708, -1.5708, -1.5708, 0.0)


def forward_kinematics(q: np.ndarray) -> np.ndarray:
    """UR5 TCP pose [x, y, z, rx, ry, rz] (rotation vector) from DH parameters."""
    t = np.eye(4)
    for i in range(6):
        ct, st = math.cos(q[i]), math.sin(q[i])
        ca, sa = math.cos(UR5_DH_ALPHA[i]), math.sin(UR5_DH_ALPHA[i])
        t = t @ np.array(
            [
                [ct, -st * ca, st * sa, UR5_DH_A[i] * ct],
                [st, ct * ca, -ct * sa, UR5_DH_A[i] * st],
                [0.0, sa, ca, UR5_DH_D[i]],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
    r = t[:3, :3]
    angle = math.acos(max(-1.0, min(1.0, (np.trace(r) - 1.0) / 2.0)))
    if angle < 1e-9:
        rv = np.zeros(3)
    elif abs(angle - math.pi) < 1e-6:
        axis = np.sqrt(np.maximum((np.diag(r) + 1.0) / 2.0, 0.0))
        rv = axis * angle
    else:
        rv = (
            angle
            / (2 * math.sin(angle))
            * np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
        )
    return np.concatenate([t[:3, 3], rv])


@dataclass
class ParsedProgram:
    """What the simulator reads back out of an uploaded script (the driver's side is
    `drivers.ur.program.ProgramParams`; the simulator parses, it never imports it)."""

    step: float = 0.008
    max_jump: float = 0.35
    lookahead: float = 0.1
    gain: float = 300.0
    watchdog_hz: float = 5.0
    decel: float = 4.0
    reg: int = 24
    #: the script runs its own heartbeat watchdog (input int reg+2, status 6)
    heartbeat: bool = False
    #: UR's RTDE watchdog rate, as the script sets it (`rtde_set_watchdog`)
    rtde_watchdog_hz: float = 5.0

    @classmethod
    def parse(cls, script: str) -> ParsedProgram | None:
        if MARKER not in script:
            return None
        found = dict(re.findall(r"global\s+VLA_([A-Z_]+)\s*=\s*([-0-9.eE]+)", script))
        p = cls()
        for name, value in found.items():
            key = name.lower()
            if hasattr(p, key) and key not in ("heartbeat", "rtde_watchdog_hz"):
                setattr(p, key, int(float(value)) if key == "reg" else float(value))
        p.heartbeat = "read_input_integer_register(VLA_REG + 2)" in script
        m = re.search(r"rtde_set_watchdog\([^,]+,\s*VLA_WATCHDOG_HZ\s*(?:/\s*([0-9.]+))?", script)
        p.rtde_watchdog_hz = p.watchdog_hz / (float(m.group(1)) if m and m.group(1) else 1.0)
        return p


@dataclass
class Program:
    params: ParsedProgram
    cmd_q: np.ndarray
    last_seq: int
    seg_from: np.ndarray
    seg_to: np.ndarray
    seg_t: float = 0.0
    seg_T: float = 0.0
    speed_qd: np.ndarray = field(default_factory=lambda: np.zeros(6))
    mode: int = MODE_HOLD
    status: int = ST_HOLDING
    clock: float = 0.0
    heartbeat: int = 0
    heartbeat_age: float = 0.0
    #: the heartbeat watchdog fired: decelerating (stopj), then `halt`
    tripped: bool = False


class Arm:
    """State of one simulated UR5 controller, advanced by `step(dt)`."""

    def __init__(self, *, powered: bool = True) -> None:
        self.q = np.array(HOME, dtype=float)
        self.qd = np.zeros(6)
        self.target_q = self.q.copy()
        self.robot_mode = ROBOT_RUNNING if powered else ROBOT_POWER_OFF
        self.safety_mode = SAFETY_NORMAL
        self.runtime_state = RUNTIME_STOPPED
        self.program: Program | None = None
        self.program_name = ""
        #: the .urp a person loaded on the pendant; dashboard `play` runs it, not our script
        self.loaded_urp = ""
        self.protective_since: float | None = None
        self.time = 0.0
        self.speed_scaling = 1.0
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self.last_input_time = 0.0
        self.messages: list[tuple[str, int]] = []  # text messages for RTDE clients
        self.acked: list[tuple[float, int]] = []  # (robot time, seq) of every new segment

    # ---------------------------------------------------------------- I/O

    def input_int(self, n: int) -> int:
        return int(self.inputs.get(f"input_int_register_{n}", 0))

    def input_double(self, n: int) -> float:
        return float(self.inputs.get(f"input_double_register_{n}", 0.0))

    def write_inputs(self, values: dict[str, Any]) -> None:
        self.inputs.update(values)
        self.last_input_time = self.time

    def say(self, text: str, level: int = 3) -> None:
        self.messages.append((text, level))

    # ---------------------------------------------------------------- events

    def load_program(self, script: str) -> bool:
        params = ParsedProgram.parse(script)
        if params is None:
            self.stop_program("a new script replaced the program")
            self.say("sim: script not recognised; only the vla-controller program is emulated", 1)
            return False
        if self.robot_mode != ROBOT_RUNNING or self.safety_mode not in (1, 2):
            self.say("sim: cannot start program: robot not running or safety stop", 1)
            return False
        r = params.reg
        seq = self.input_int(r)
        self.program = Program(
            params=params,
            cmd_q=self.q.copy(),
            last_seq=seq,
            seg_from=self.q.copy(),
            seg_to=self.q.copy(),
            heartbeat=self.input_int(r + 2),
        )
        self.outputs[f"output_int_register_{r}"] = seq
        self.outputs[f"output_int_register_{r + 1}"] = ST_HOLDING
        self.runtime_state = RUNTIME_PLAYING
        self.program_name = "vla_control"
        self.last_input_time = max(self.last_input_time, self.time)
        return True

    def stop_program(self, why: str) -> None:
        """The program ends. Like a real controller, its output registers keep their values."""
        if self.program is not None or self.runtime_state != RUNTIME_STOPPED:
            self.say(f"sim: program stopped: {why}", 2)
        self.program = None
        self.program_name = ""
        self.runtime_state = RUNTIME_STOPPED

    # operator actions (dashboard or pendant); each returns False where UR refuses it

    def pause_program(self) -> bool:
        if self.runtime_state != RUNTIME_PLAYING:
            return False
        self.runtime_state = RUNTIME_PAUSED
        self.say("sim: program paused", 2)
        return True

    def play(self) -> bool:
        """Resume a paused program, or start the loaded .urp (a person's, not our script)."""
        if self.robot_mode != ROBOT_RUNNING or self.safety_mode not in (1, 2):
            return False
        if self.runtime_state == RUNTIME_PAUSED:
            self.runtime_state = RUNTIME_PLAYING
            if self.program is not None:
                self.last_input_time = max(self.last_input_time, self.time)
            return True
        if self.runtime_state == RUNTIME_PLAYING or not self.loaded_urp:
            return False
        self.program = None  # a .urp is not ours: the arm just stands while it "runs"
        self.program_name = self.loaded_urp
        self.runtime_state = RUNTIME_PLAYING
        return True

    def power_off(self) -> None:
        self.stop_program("power off")
        self.robot_mode = ROBOT_POWER_OFF

    def power_on(self) -> None:
        if self.robot_mode == ROBOT_POWER_OFF and self.safety_mode in (1, 2):
            self.robot_mode = ROBOT_IDLE

    def brake_release(self) -> None:
        if self.robot_mode in (ROBOT_IDLE, ROBOT_POWER_ON):
            self.robot_mode = ROBOT_RUNNING

    def emergency_stop(self) -> None:
        """The red button: program gone, arm power cut (a stop category 1 in reality)."""
        self.safety_mode = SAFETY_ROBOT_EMERGENCY_STOP
        self.stop_program("emergency stop")
        self.robot_mode = ROBOT_POWER_OFF
        self.say("C262A0: Emergency stop", 1)

    def release_emergency_stop(self) -> None:
        """The button twisted out: safety NORMAL again; the arm stays off until powered on."""
        if self.safety_mode == SAFETY_ROBOT_EMERGENCY_STOP:
            self.safety_mode = SAFETY_NORMAL

    def protective_stop(self) -> None:
        self.safety_mode = SAFETY_PROTECTIVE
        self.protective_since = self.time
        self.stop_program("protective stop")
        self.say("C153A0: Protective Stop", 1)

    def unlock_protective_stop(self, min_delay: float) -> bool:
        if self.safety_mode != SAFETY_PROTECTIVE:
            return True
        assert self.protective_since is not None
        if self.time - self.protective_since < min_delay:
            return False
        self.safety_mode = SAFETY_NORMAL
        self.protective_since = None
        return True

    # ---------------------------------------------------------------- time

    def step(self, dt: float) -> None:
        self.time += dt
        prog = self.program
        if prog is not None and self.runtime_state == RUNTIME_PLAYING:
            # UR's RTDE watchdog (our script sets it as a backstop at half its own rate)
            wd = prog.params.rtde_watchdog_hz
            if wd > 0 and self.time - self.last_input_time > 1.0 / wd:
                self.stop_program("RTDE watchdog: input_int_register not updated in time")
                prog = None
        if prog is None or self.runtime_state != RUNTIME_PLAYING:
            self._coast(dt, 8.0)
        else:
            self._run_program(prog, dt)
        if np.any(np.abs(self.q) > 2 * math.pi):
            self.q = np.clip(self.q, -2 * math.pi, 2 * math.pi)
            self.protective_stop()

    def _coast(self, dt: float, decel: float) -> None:
        mag = np.maximum(np.abs(self.qd) - decel * dt, 0.0)
        self.qd = np.sign(self.qd) * mag
        self.q = self.q + self.qd * dt
        self.target_q = self.q.copy()

    def _run_program(self, prog: Program, dt: float) -> None:
        r = prog.params.reg
        prog.clock += dt
        # the URScript loop runs once per robot step; emulate as many as elapsed
        while prog.clock >= prog.params.step - 1e-12:
            prog.clock -= prog.params.step
            self._program_cycle(prog, r)
            if self.program is not prog:
                return
        if prog.tripped:
            # stopj(decel), then halt: the program ends once the arm stands still
            self._coast(dt, prog.params.decel)
            if not np.any(self.qd):
                self.stop_program("vla_control: watchdog: no heartbeat from the PC")
            return
        if prog.mode == MODE_SPEED:
            self.qd = prog.speed_qd.copy()
            self.q = self.q + self.qd * dt
            prog.cmd_q = self.q.copy()
        elif prog.mode == MODE_STOP:
            self._coast(dt, prog.params.decel)
            prog.cmd_q = self.q.copy()
        else:
            want = prog.cmd_q
            step = np.clip(want - self.q, -MAX_JOINT_SPEED * dt, MAX_JOINT_SPEED * dt)
            self.qd = step / dt if dt > 0 else np.zeros(6)
            self.q = self.q + step
        self.target_q = prog.cmd_q.copy()

    def _program_cycle(self, prog: Program, r: int) -> None:
        if prog.params.heartbeat and not prog.tripped:
            self._heartbeat_watchdog(prog, r)
        if not prog.tripped:
            self._commands(prog, r)

    def _heartbeat_watchdog(self, prog: Program, r: int) -> None:
        p = prog.params
        beat = self.input_int(r + 2)
        if beat != prog.heartbeat:
            prog.heartbeat, prog.heartbeat_age = beat, 0.0
        else:
            prog.heartbeat_age += p.step
        if p.watchdog_hz > 0 and prog.heartbeat_age > 1.0 / p.watchdog_hz:
            prog.tripped = True
            prog.status = ST_WATCHDOG
            self.outputs[f"output_int_register_{r + 1}"] = ST_WATCHDOG
            self.say("vla_control: watchdog: no heartbeat from the PC, stopping", 2)

    def _commands(self, prog: Program, r: int) -> None:
        p = prog.params
        seq, mode = self.input_int(r), self.input_int(r + 1)
        if seq != prog.last_seq:
            prog.last_seq = seq
            target = np.array([self.input_double(r + i) for i in range(6)])
            duration = self.input_double(r + 6)
            if mode == MODE_SERVO:
                if float(np.max(np.abs(target - prog.cmd_q))) > p.max_jump:
                    prog.status = ST_REJECTED
                    self.say(f"vla_control: rejected jump to seq {seq}", 2)
                else:
                    prog.seg_from, prog.seg_to = prog.cmd_q.copy(), target
                    prog.seg_t, prog.seg_T = 0.0, max(duration, p.step)
                    prog.status = ST_SERVOING
            elif mode == MODE_SPEED:
                prog.speed_qd = np.array([self.input_double(r + 7 + i) for i in range(6)])
                prog.status = ST_SPEED
            elif mode == MODE_HOLD:
                prog.seg_from = prog.seg_to = prog.cmd_q.copy()
                prog.seg_T = 0.0
                prog.status = ST_HOLDING
            elif mode == MODE_STOP:
                prog.status = ST_STOPPED
            prog.mode = mode
            self.outputs[f"output_int_register_{r}"] = seq
            self.acked.append((self.time, seq))
        self.outputs[f"output_int_register_{r + 1}"] = prog.status
        if prog.mode in (MODE_SERVO, MODE_HOLD):
            prog.seg_t += p.step
            a = 1.0 if prog.seg_T <= 0 else min(prog.seg_t / prog.seg_T, 1.0)
            prog.cmd_q = prog.seg_from + a * (prog.seg_to - prog.seg_from)
            if a >= 1.0 and prog.status == ST_SERVOING:
                prog.status = ST_HOLDING

    # ---------------------------------------------------------------- readout

    @property
    def safety_status_bits(self) -> int:
        bits = 0
        if self.safety_mode == SAFETY_NORMAL:
            bits |= 1 << 0
        if self.safety_mode == 2:
            bits |= 1 << 1
        if self.safety_mode == SAFETY_PROTECTIVE:
            bits |= 1 << 2 | 1 << 10
        if self.safety_mode == SAFETY_ROBOT_EMERGENCY_STOP:
            bits |= 1 << 6 | 1 << 7 | 1 << 10
        return bits

    @property
    def robot_status_bits(self) -> int:
        bits = 0
        if self.robot_mode >= ROBOT_IDLE:
            bits |= 1 << 0
        if self.runtime_state == RUNTIME_PLAYING:
            bits |= 1 << 1
        return bits
