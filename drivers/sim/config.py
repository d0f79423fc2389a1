"""Config dataclasses of the sim drivers (beside the drivers, LeRobot style).

Each carries `world` (the name of the world it joins) and, inline, the
world's own options (`task`, `seed`, `target`, `conveyor_speed`,
`episode_limit`: see `drivers.sim.world.WorldConfig`), so that any of the
three drivers can set them from its TOML table or `--robot-option`; the
drivers of one world must agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drivers.errors import DriverConfigError
from drivers.options import option, validate
from drivers.sim.model import MAX_IMAGE
from drivers.sim.world import WorldConfig

ViewName = Literal["front", "top", "wrist"]

_WORLD_HELP = "name of the sim world this driver joins (one world per name, shared)"
_OPTIONS_HELP = "the world's options (task, seed, target, conveyor_speed, episode_limit)"


@dataclass(frozen=True, slots=True)
class SimRobotConfig:
    world: str = option("default", help=_WORLD_HELP, pattern=r"\S+", accepted="a non-empty name")
    name: str = option("sim", help="the robot's name in logs")
    rate_hz: float = option(
        125.0, help="joint states per second (a UR CB3 streams 125)", unit="Hz", low=1, high=1000
    )
    options: WorldConfig = option(default_factory=WorldConfig, help=_OPTIONS_HELP, inline=True)

    def __post_init__(self) -> None:
        validate(self, error=DriverConfigError)


@dataclass(frozen=True, slots=True)
class SimCameraConfig:
    view: ViewName = option("front", help="which view: front, top, or wrist (on the tool flange)")
    #: The frames' camera name; default: the view's name.
    name: str | None = option(
        None, help="the camera's name (frames carry it)", default_text="the view"
    )
    world: str = option("default", help=_WORLD_HELP, pattern=r"\S+", accepted="a non-empty name")
    width: int = option(224, help="image width", unit="px", low=8, high=MAX_IMAGE)
    height: int = option(224, help="image height", unit="px", low=8, high=MAX_IMAGE)
    fps: float = option(
        10.0,
        help="frames rendered per second (each costs a render; the controller encodes at most"
        " one per control tick)",
        unit="Hz",
        low=0.1,
        high=120,
    )
    options: WorldConfig = option(default_factory=WorldConfig, help=_OPTIONS_HELP, inline=True)

    def __post_init__(self) -> None:
        validate(self, error=DriverConfigError)


@dataclass(frozen=True, slots=True)
class SimSensorConfig:
    world: str = option("default", help=_WORLD_HELP, pattern=r"\S+", accepted="a non-empty name")
    name: str = option("sim", help="the sensor's name (policies look it up by this)")
    rate_hz: float = option(30.0, help="readings per second", unit="Hz", low=1, high=1000)
    options: WorldConfig = option(default_factory=WorldConfig, help=_OPTIONS_HELP, inline=True)

    def __post_init__(self) -> None:
        validate(self, error=DriverConfigError)
