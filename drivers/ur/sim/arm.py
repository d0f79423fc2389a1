"""The simulated arm and what our control program does to it.

The simulator cannot run URScript; it recognises our control program by its
marker line, reads the `global VLA_*` constants the program was rendered
with, and plays the same state machine in Python at the controller's step
time: servo segments from the commanded position, jump rejection, sequence
acknowledgement, the RTDE watchdog that stops the program, `speedj`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MARKER = "# vla-controller control program"

# RTDE enums (UR's RTDE guide)
ROBOT_POWER_OFF, ROBOT_IDLE, ROBOT_RUNNING = 3, 5, 7
SAFETY_NORMAL, SAFETY_PROTECTIVE = 1, 3
RUNTIME_STOPPED, RUNTIME_PLAYING = 1, 2

# program status written to output_int_register(base + 1); see control.script
ST_HOLDING, ST_SERVOING, ST_REJECTED, ST_STOPPED, ST_SPEED = 1, 2, 3, 4, 5
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
        rv = angle / (2 * math.sin(angle)) * np.array(
            [r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]
        )
    return np.concatenate([t[:3, 3], rv])


@dataclass
class ProgramParams:
    step: float = 0.008
    max_jump: float = 0.35
    lookahead: float = 0.1
    gain: float = 300.0
    watchdog_hz: float = 5.0
    decel: float = 4.0
    reg: int = 24

    @classmethod
    def parse(cls, script: str) -> ProgramParams | None:
        if MARKER not in script:
            return None
        found = dict(re.findall(r"global\s+VLA_([A-Z_]+)\s*=\s*([-0-9.eE]+)", script))
        p = cls()
        for name, value in found.items():
            key = name.lower()
            if hasattr(p, key):
                setattr(p, key, int(float(value)) if key == "reg" else float(value))
        return p


@dataclass
class Program:
    params: ProgramParams
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
        params = ProgramParams.parse(script)
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
        )
        self.outputs[f"output_int_register_{r}"] = seq
        self.outputs[f"output_int_register_{r + 1}"] = ST_HOLDING
        self.runtime_state = RUNTIME_PLAYING
        self.program_name = "vla_control"
        self.last_input_time = max(self.last_input_time, self.time)
        return True

    def stop_program(self, why: str) -> None:
        if self.program is not None:
            self.outputs[f"output_int_register_{self.program.params.reg + 1}"] = ST_STOPPED
            self.say(f"sim: program stopped: {why}", 2)
        self.program = None
        self.runtime_state = RUNTIME_STOPPED

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
        if prog is not None:
            wd = prog.params.watchdog_hz
            if wd > 0 and self.time - self.last_input_time > 1.0 / wd:
                self.stop_program("RTDE watchdog: input_int_register not updated in time")
                prog = None
        if prog is None:
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
        return bits

    @property
    def robot_status_bits(self) -> int:
        bits = 0
        if self.robot_mode >= ROBOT_IDLE:
            bits |= 1 << 0
        if self.runtime_state == RUNTIME_PLAYING:
            bits |= 1 << 1
        return bits
