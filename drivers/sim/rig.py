"""The sim drivers of one world, built together: `robot.sim`, a `camera.sim` per view and,
optionally, the privileged `sensor.sim`.

Collection and evaluation both need exactly this set for each episode; built here once,
so that a constructor failing midway always gives back the shares of the world the
drivers built before it took.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.sim.camera import SimCamera
from drivers.sim.config import SimCameraConfig, SimRobotConfig, SimSensorConfig
from drivers.sim.robot import SimRobot
from drivers.sim.sensor import SimSensor
from drivers.sim.world import SimWorld, WorldConfig


@dataclass(frozen=True, slots=True)
class SimRig:
    robot: SimRobot
    cameras: tuple[SimCamera, ...]
    sensor: SimSensor | None

    @property
    def world(self) -> SimWorld:
        return self.robot.world

    @property
    def sensors(self) -> list[SimSensor]:
        return [self.sensor] if self.sensor is not None else []

    async def close(self) -> None:
        """Give back every driver's share of the world (the world closes with the last)."""
        for driver in (self.robot, *self.cameras, *self.sensors):
            await driver.close()


async def build_rig(
    world: str,
    options: WorldConfig,
    *,
    views: Sequence[str],
    size: int,
    fps: float,
    sensor: bool,
) -> SimRig:
    """The drivers of world `world`; if one cannot be built, those built are closed first."""
    made: list[SimRobot | SimCamera | SimSensor] = []
    try:
        robot = SimRobot(SimRobotConfig(world=world, options=options))
        made.append(robot)
        cameras = []
        for view in views:
            config = SimCameraConfig(
                view=view,  # type: ignore[arg-type]
                world=world,
                width=size,
                height=size,
                fps=fps,
            )
            cameras.append(SimCamera(config))
            made.append(cameras[-1])
        privileged = SimSensor(SimSensorConfig(world=world)) if sensor else None
    except BaseException:
        for driver in made:
            await driver.close()
        raise
    return SimRig(robot, tuple(cameras), privileged)
