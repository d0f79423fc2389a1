"""`sim-expert`: a scripted demonstrator for the sim world's `reach` tasks.

It cheats on purpose: it reads the privileged `sensor.sim` reading (every
cube's pose), so it needs no vision, and it exists to produce demonstrations
and a reference success rate. What it does follow honestly is the
instruction: `encode_vl` reads which cube is named ("touch the red cube"),
and a mismatch between the instruction and the world's task sends it to the
wrong cube, as it would a learned policy.

Each tick it moves the tool point toward a point just above the named
cube's top face, keeping the tool pointing down, through the arm's
Jacobian at the measured joint positions (`mujoco.mj_jacSite` on the same
MJCF the world simulates, `drivers.sim.model`), solved by damped least
squares (well-behaved near singular poses). The tool's speed is capped, the
joint step is scaled to a fraction of each joint's speed limit, and a little
seeded noise is added to each step so that recorded demonstrations include
small recoveries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from drivers.base import Frame, RobotInfo, RobotState, SensorReading
from drivers.options import option, validate
from policies.base import parse_options
from policies.errors import PolicyConfigError, PolicyError

#: Damping of the least-squares solve (m, rad): bounds joint speeds near singular poses.
_DAMPING = 0.05
#: Gain turning the tool axis's tilt from vertical into an angular speed (1/s).
_TILT_GAIN = 2.0


@dataclass(frozen=True, slots=True)
class SimExpertOptions:
    """The expert's options: `--policy sim-expert --policy-option KEY=VALUE`, or `[policy]` keys."""

    sensor: str = option("sim", help="name of the sensor.sim driver whose reading it uses")
    speed: float = option(0.25, help="top speed of the tool point", unit="m/s", low=0.01, high=1.0)
    gain: float = option(
        2.0, help="rate at which the remaining distance is closed", unit="1/s", low=0.1, high=20.0
    )
    hover: float = option(
        0.01, help="height above the cube's top face it aims at", unit="m", low=0.0, high=0.025
    )
    noise: float = option(
        0.003, help="std dev of the seeded noise on each joint step", unit="rad", low=0.0, high=0.05
    )
    velocity_fraction: float = option(
        0.8, help="fraction of each joint's speed limit a step may use", low=0.05, high=1.0
    )
    horizon: int = option(1, help="rows of each action chunk", low=1, high=64)
    seed: int = option(0, help="seed of the noise", low=0)

    def __post_init__(self) -> None:
        validate(self, error=PolicyConfigError, where="sim-expert: ")


@dataclass(frozen=True, slots=True)
class ExpertFeatures:
    """What the expert takes from the instruction: the colour of the cube to touch."""

    colour: str
    instruction: str


class SimExpertPolicy:
    """Moves the tool point to the named cube using the privileged sensor and the Jacobian."""

    name = "sim-expert"
    Options = SimExpertOptions

    def __init__(self, options: SimExpertOptions | None = None) -> None:
        self.options = options or SimExpertOptions()
        self._rng = np.random.default_rng(self.options.seed)
        self.period = 0.1
        self._model: Any = None
        self._data: Any = None
        self._site = -1
        self._max_step = np.zeros(6)
        self._lower = np.zeros(6)
        self._upper = np.zeros(6)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SimExpertPolicy:
        opts = parse_options(SimExpertOptions, options, what="sim-expert policy")
        return cls(opts)

    def load(self, device: str, robot: RobotInfo, control_period: float) -> None:
        """Build the arm's kinematic model (the world's own MJCF); refuse an arm that is not it."""
        import mujoco

        from drivers.arms import UR5_JOINTS
        from drivers.sim.model import TOOL_SITE, arm_only_xml

        if tuple(robot.joint_names) != UR5_JOINTS:
            raise PolicyConfigError(
                f"sim-expert drives the simulated UR5 (joints {', '.join(UR5_JOINTS)}), got robot"
                f" {robot.name!r} with joints {', '.join(robot.joint_names)}"
            )
        self.period = control_period
        self._model = mujoco.MjModel.from_xml_string(arm_only_xml())
        self._data = mujoco.MjData(self._model)
        self._site = self._model.site(TOOL_SITE).id
        limits = robot.limits
        self._max_step = (
            np.asarray(limits.max_velocity, dtype=np.float64)
            * self.options.velocity_fraction
            * control_period
        )
        self._lower = np.asarray(limits.lower, dtype=np.float64)
        self._upper = np.asarray(limits.upper, dtype=np.float64)

    def encode_vl(self, frames: Sequence[Frame], instruction: str) -> ExpertFeatures:
        """No vision: only which cube the instruction names (exactly one colour word)."""
        from drivers.sim.task import INSTRUCTION, colour_in

        colour = colour_in(instruction)
        if colour is None:
            raise PolicyError(
                f"sim-expert: the instruction {instruction!r} names no single cube colour"
                f" (expected e.g. {INSTRUCTION.format(colour='red')!r})"
            )
        return ExpertFeatures(colour, instruction)

    def act(
        self, features: Any, state: RobotState, sensors: Mapping[str, SensorReading]
    ) -> np.ndarray:
        import mujoco

        from drivers.sim.model import CUBE_HALF
        from drivers.sim.task import ObjectReading

        if self._model is None:
            raise PolicyError("sim-expert: act() before load()")
        if not isinstance(features, ExpertFeatures):
            raise PolicyError(
                f"sim-expert: got features of type {type(features).__name__}, not its own"
            )
        reading = sensors.get(self.options.sensor)
        if reading is None:
            raise PolicyError(
                f"sim-expert needs the object reading of sensor {self.options.sensor!r}"
                f" (add --sensor sim); sensors given: {', '.join(sensors) or 'none'}"
            )
        try:
            objects = ObjectReading.from_values(reading.values)
        except ValueError as exc:
            raise PolicyError(f"sim-expert: sensor {self.options.sensor!r}: {exc}") from None

        q = np.asarray(state.positions, dtype=np.float64)
        m, d = self._model, self._data
        d.qpos[:] = q
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        jacp = np.zeros((3, m.nv))
        jacr = np.zeros((3, m.nv))
        mujoco.mj_jacSite(m, d, jacp, jacr, self._site)
        tool = d.site_xpos[self._site].copy()
        axis = d.site_xmat[self._site].reshape(3, 3)[:, 2]

        cube = objects.cube(features.colour)
        aim = cube.position + np.array([0.0, 0.0, CUBE_HALF + self.options.hover])
        # A cube on the conveyor moves on while this action is carried out: lead it.
        lead = max(state.capture_time - reading.capture_time, 0.0) + self.period
        aim[1] += objects.conveyor_speed * lead

        error = aim - tool
        velocity = self.options.gain * error
        norm = float(np.linalg.norm(velocity))
        if norm > self.options.speed:
            velocity *= self.options.speed / norm
        spin = _TILT_GAIN * np.cross(axis, np.array([0.0, 0.0, -1.0]))
        jac = np.vstack([jacp, jacr])
        twist = np.concatenate([velocity, spin])
        qdot = jac.T @ np.linalg.solve(jac @ jac.T + _DAMPING**2 * np.eye(6), twist)
        step = qdot * self.period
        if self.options.noise:
            step = step + self._rng.normal(0.0, self.options.noise, size=step.shape)
        over = float(np.max(np.abs(step) / self._max_step))
        if over > 1.0:
            step /= over
        rows = np.arange(1, self.options.horizon + 1)[:, None] * step[None, :]
        return np.clip(q[None, :] + rows, self._lower, self._upper)
