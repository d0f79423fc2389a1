"""The tasks of the simulated world: where the cubes go, what is asked, what counts as success.

Kept apart from the physics so that the scripted expert, the scoring and the
tests read one definition: the instruction's wording and its parsing, the
layout of the privileged sensor's reading, and the success geometry.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from drivers.sim.model import COLOURS, CUBE_HALF

TaskName = Literal["reach", "reach-moving"]
TASKS: tuple[str, ...] = ("reach", "reach-moving")
TargetName = Literal["random", "red", "green", "blue"]

#: The instruction of task `reach`, with the named cube's colour.
INSTRUCTION = "touch the {colour} cube"
#: Success: the tool point within this distance (m) of the named cube's top face.
SUCCESS_DISTANCE = 0.03

#: Where cubes are placed (world frame, m): a band in front of the arm's home
#: reach, inside what a UR5 can touch with its tool pointing down.
REGION_X = (-0.65, -0.35)
REGION_Y = (-0.30, 0.30)
#: Least distance between two cube centres (m), so that "the red cube" is unambiguous
#: in an image and a tool touching one is not touching another.
MIN_SEPARATION = 0.12
#: The conveyor of `reach-moving` carries the cubes along +y and brings a cube
#: that leaves at `CONVEYOR_Y[1]` back in at `CONVEYOR_Y[0]` (a loop belt).
CONVEYOR_Y = (-0.35, 0.35)
#: Default conveyor speed of `reach-moving` (m/s).
DEFAULT_CONVEYOR_SPEED = 0.04

_COLOUR_WORD = re.compile(r"\b(" + "|".join(COLOURS) + r")\b", re.IGNORECASE)


def instruction_for(colour: str) -> str:
    return INSTRUCTION.format(colour=colour)


def colour_in(instruction: str) -> str | None:
    """The one cube colour an instruction names ("touch the red cube" -> "red"), else None.

    None when it names no colour or more than one: a policy must not guess
    which cube was meant.
    """
    found = {m.group(1).lower() for m in _COLOUR_WORD.finditer(instruction)}
    return found.pop() if len(found) == 1 else None


@dataclass(frozen=True, slots=True)
class CubePose:
    """A cube on the table: its centre (m, world frame) and its yaw about z (rad)."""

    colour: str
    x: float
    y: float
    z: float
    yaw: float

    @property
    def position(self) -> np.ndarray:
        return np.array([self.x, self.y, self.z])


def sample_cubes(rng: np.random.Generator) -> tuple[CubePose, ...]:
    """Three cubes at random places in the region, at least `MIN_SEPARATION` apart.

    Rejection sampling from one seeded generator: the same seed gives the same
    layout on every machine (numpy's PCG64 and its uniform draws are stable).
    Distances along y are measured around the conveyor's loop too, so that the
    cubes of `reach-moving` stay apart when one comes back in at the belt's start.
    """
    span = CONVEYOR_Y[1] - CONVEYOR_Y[0]

    def apart(x: float, y: float, c: CubePose) -> bool:
        dy = abs(y - c.y)
        return math.hypot(x - c.x, min(dy, span - dy)) >= MIN_SEPARATION

    placed: list[CubePose] = []
    for colour in COLOURS:
        for _ in range(10_000):
            x = float(rng.uniform(*REGION_X))
            y = float(rng.uniform(*REGION_Y))
            yaw = float(rng.uniform(-math.pi / 4, math.pi / 4))
            if all(apart(x, y, c) for c in placed):
                placed.append(CubePose(colour, x, y, CUBE_HALF, yaw))
                break
        else:  # pragma: no cover - the region holds three cubes many times over
            raise RuntimeError("could not place the cubes apart")
    return tuple(placed)


def conveyor_y(y0: float, speed: float, t: float) -> float:
    """Where the loop belt has carried a cube that started at `y0`, after `t` seconds."""
    lo, hi = CONVEYOR_Y
    return lo + (y0 - lo + speed * t) % (hi - lo)


def distance_to_top_face(point: np.ndarray, cube: CubePose) -> float:
    """Distance (m) from `point` to the cube's top face (the square, not its centre)."""
    dx, dy = float(point[0]) - cube.x, float(point[1]) - cube.y
    c, s = math.cos(cube.yaw), math.sin(cube.yaw)
    u, v = c * dx + s * dy, -s * dx + c * dy  # in the cube's own frame
    ou = max(abs(u) - CUBE_HALF, 0.0)
    ov = max(abs(v) - CUBE_HALF, 0.0)
    dz = float(point[2]) - (cube.z + CUBE_HALF)
    return math.sqrt(ou * ou + ov * ov + dz * dz)


# -- the privileged sensor's reading ---------------------------------------------------

#: Values per cube in a `sensor.sim` reading: centre x, y, z (m) and yaw (rad).
CUBE_FIELDS = ("x", "y", "z", "yaw")
#: The reading: the cubes in `COLOURS` order, then the task's target index
#: (into `COLOURS`), then the conveyor's speed along +y (m/s; 0 for `reach`).
SENSOR_SIZE = len(COLOURS) * len(CUBE_FIELDS) + 2
#: A name per value of the reading ("red.x", ..., "target_index", "conveyor_speed"): what a
#: dataset's `observation.environment_state` calls them.
SENSOR_NAMES: tuple[str, ...] = (
    *(f"{colour}.{field}" for colour in COLOURS for field in CUBE_FIELDS),
    "target_index",
    "conveyor_speed",
)


@dataclass(frozen=True, slots=True)
class ObjectReading:
    """A `sensor.sim` reading, by name instead of by index."""

    cubes: tuple[CubePose, ...]
    target: str
    conveyor_speed: float

    def to_values(self) -> np.ndarray:
        out = [v for c in self.cubes for v in (c.x, c.y, c.z, c.yaw)]
        out += [float(COLOURS.index(self.target)), self.conveyor_speed]
        return np.asarray(out, dtype=np.float64)

    @classmethod
    def from_values(cls, values: np.ndarray) -> ObjectReading:
        """Parse a reading; ValueError (one line) if it is not a `sensor.sim` reading."""
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (SENSOR_SIZE,) or not np.all(np.isfinite(v)):
            raise ValueError(
                f"not a sim object reading: expected {SENSOR_SIZE} finite values, got shape"
                f" {v.shape}"
            )
        n = len(CUBE_FIELDS)
        cubes = tuple(
            CubePose(colour, *(float(x) for x in v[i * n : (i + 1) * n]))
            for i, colour in enumerate(COLOURS)
        )
        index = round(float(v[len(COLOURS) * n]))
        if not 0 <= index < len(COLOURS):
            raise ValueError(f"not a sim object reading: target index {v[len(COLOURS) * n]!r}")
        return cls(cubes, COLOURS[index], float(v[-1]))

    def cube(self, colour: str) -> CubePose:
        return self.cubes[COLOURS.index(colour)]
