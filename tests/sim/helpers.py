"""Building the three sim drivers of one world, and running expert episodes on the harness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.harness import ControllerHarness
from drivers.sim.camera import SimCamera
from drivers.sim.config import SimCameraConfig, SimRobotConfig, SimSensorConfig
from drivers.sim.robot import SimRobot
from drivers.sim.sensor import SimSensor
from drivers.sim.world import Outcome, SimWorld, WorldConfig
from policies.sim_expert import SimExpertOptions, SimExpertPolicy

#: Tests render tiny images: the pixels matter only for determinism, not for a policy.
TINY = 16


@dataclass
class Parts:
    robot: SimRobot
    camera: SimCamera
    sensor: SimSensor

    @property
    def world(self) -> SimWorld:
        return self.robot.world


def parts(name: str, *, size: int = TINY, fps: float = 5.0, **world: Any) -> Parts:
    """robot.sim, camera.sim (the top view) and sensor.sim of the world `name`."""
    robot = SimRobot(SimRobotConfig(world=name, options=WorldConfig(**world)))
    camera = SimCamera(SimCameraConfig(view="top", world=name, width=size, height=size, fps=fps))
    sensor = SimSensor(SimSensorConfig(world=name))
    return Parts(robot, camera, sensor)


async def expert_episode(
    name: str,
    *,
    seed: int,
    task: str = "reach",
    instruction: str | None = None,
    until_success: bool = True,
    **expert: Any,
) -> tuple[Outcome, dict[str, Any], SimWorld]:
    """One episode of the expert through the harness (invariants checked), on the current loop.

    With `until_success` the run is stopped at the first tick after the
    world judged success (the outcome is final then), to keep tests short:
    a controller observer sees every tick.
    """
    p = parts(name, seed=seed, task=task)
    world = p.world
    episode = world.episode()
    h = ControllerHarness(
        robot=p.robot,
        cameras=[p.camera],
        sensors=[p.sensor],
        policy=SimExpertPolicy(SimExpertOptions(seed=seed, **expert)),
        instruction=instruction or episode.instruction,
    )
    if until_success:

        def stop_on_success(event: str, time: float, detail: Any = None) -> None:
            if event == "tick" and world.success():
                h.controller.request_stop("touched")

        h.controller.observers.append(stop_on_success)
    summary = await h.run(episode.limit)
    return world.outcome(), summary, world
