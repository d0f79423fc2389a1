"""The world: seeded layouts, identical replays, cubes that move only on the conveyor, one
clear line for every bad option, and a missing OpenGL named with its fix."""

from __future__ import annotations

import asyncio
import math
import threading

import mujoco
import numpy as np
import pytest

import drivers.sim.world as world_module
from drivers import registry
from drivers.base import JointCommand
from drivers.errors import DriverConfigError
from drivers.sim.camera import SimCamera
from drivers.sim.config import SimCameraConfig, SimRobotConfig, SimSensorConfig
from drivers.sim.model import COLOURS, CUBE_HALF, TIMESTEP
from drivers.sim.robot import SimRobot
from drivers.sim.sensor import SimSensor
from drivers.sim.task import (
    CONVEYOR_Y,
    MIN_SEPARATION,
    REGION_X,
    REGION_Y,
    CubePose,
    ObjectReading,
    distance_to_top_face,
)
from drivers.sim.world import SimRenderError, SimWorld, WorldConfig, plan_episode

from .helpers import parts

pytestmark = pytest.mark.virtual_clock


# -- episodes from a seed --------------------------------------------------------------


def test_a_seed_fixes_the_layout_and_the_named_cube():
    a, b = SimWorld(WorldConfig(seed=11)), SimWorld(WorldConfig(seed=11))
    assert a.episode().cubes == b.episode().cubes and a.episode().target == b.episode().target
    assert a.episode() == plan_episode(WorldConfig(seed=11))  # known before a world is built
    layouts = {plan_episode(WorldConfig(seed=s)).cubes for s in range(30)}
    assert len(layouts) == 30
    targets = {plan_episode(WorldConfig(seed=s)).target for s in range(30)}
    assert targets == set(COLOURS)  # every colour gets asked for
    # Fixing the named cube leaves the seed's layout as it was.
    assert plan_episode(WorldConfig(seed=11, target="blue")).cubes == a.episode().cubes


def test_layouts_are_on_the_table_apart_and_reachable():
    for seed in range(500):
        ep = plan_episode(WorldConfig(seed=seed))
        assert [c.colour for c in ep.cubes] == list(COLOURS)
        for c in ep.cubes:
            assert REGION_X[0] <= c.x <= REGION_X[1] and REGION_Y[0] <= c.y <= REGION_Y[1]
            assert c.z == CUBE_HALF
        for i, c in enumerate(ep.cubes):
            for d in ep.cubes[i + 1 :]:
                assert math.hypot(c.x - d.x, c.y - d.y) >= MIN_SEPARATION


def test_the_instruction_names_the_target_and_a_fixed_target_is_honoured():
    ep = SimWorld(WorldConfig(seed=3, target="green")).episode()
    assert ep.target == "green" and ep.instruction == "touch the green cube"
    ep = SimWorld(WorldConfig(seed=3)).episode()
    assert ep.instruction == f"touch the {ep.target} cube"
    assert (ep.task, ep.limit, ep.conveyor_speed) == ("reach", 10.0, 0.0)


def test_distance_to_the_top_face():
    cube = CubePose("red", 0.0, 0.0, CUBE_HALF, 0.0)
    top = 2 * CUBE_HALF
    assert distance_to_top_face(np.array([0.0, 0.0, top + 0.02]), cube) == pytest.approx(0.02)
    # Above the face's edge counts as above the face; beside it, the distance is to the edge.
    assert distance_to_top_face(np.array([0.019, 0.0, top]), cube) == pytest.approx(0.0)
    assert distance_to_top_face(np.array([0.05, 0.0, top]), cube) == pytest.approx(0.03)
    turned = CubePose("red", 0.0, 0.0, CUBE_HALF, math.pi / 4)  # its corner points along x
    assert distance_to_top_face(np.array([0.028, 0.0, top]), turned) == pytest.approx(0.0)


# -- replays ---------------------------------------------------------------------------


async def _replay(name: str, seed: int, *, task: str = "reach") -> tuple[list, list, list]:
    """Commands at fixed virtual times; states, object readings and top-view pixels seen."""
    p = parts(name, seed=seed, task=task, size=24)
    states, objects, images = [], [], []
    async with p.robot, p.camera, p.sensor:
        frames = p.camera.frames()
        readings = p.sensor.readings()
        for k in range(6):
            target = np.array([0.2 * k, -1.3, 1.5, -1.7, -1.4, 0.1 * k])
            await p.robot.command(JointCommand(target, duration=0.1, seq=k))
            await asyncio.sleep(0.25)
            s = await p.world.sample_arm()
            states.append(np.concatenate([s.positions, s.velocities]))
            objects.append((await anext(readings)).values)
            images.append((await anext(frames)).image)
        await frames.aclose()
        await readings.aclose()
    return states, objects, images


async def test_same_seed_same_world_same_pixels(world_name):
    a = await _replay(world_name + "a", 5)
    b = await _replay(world_name + "b", 5)
    c = await _replay(world_name + "c", 6)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1][0], c[1][0])  # another seed: other cube places
    assert not np.array_equal(a[2][0], c[2][0])  # ... and other pixels
    assert a[2][0].shape == (24, 24, 3) and a[2][0].dtype == np.uint8
    assert not np.array_equal(a[2][0], a[2][-1])  # the arm moved in the picture


async def test_reach_moving_cubes_ride_the_conveyor_and_reach_cubes_stay(world_name):
    for task, speed in (("reach-moving", 0.05), ("reach", 0.0)):
        name = f"{world_name}-{task}"
        options = WorldConfig(task=task, seed=2, conveyor_speed=speed if speed else None)
        async with SimSensor(SimSensorConfig(world=name, options=options)) as sensor:
            t0, first = await sensor.world.objects()
            await asyncio.sleep(2.0)
            t1, later = await sensor.world.objects()
        assert t1 - t0 == pytest.approx(2.0, abs=TIMESTEP)
        span = CONVEYOR_Y[1] - CONVEYOR_Y[0]
        for a, b in zip(first.cubes, later.cubes, strict=True):
            assert (b.x, b.z, b.yaw) == (a.x, a.z, a.yaw)
            moved = (b.y - a.y) % span
            assert moved == pytest.approx(speed * (t1 - t0), abs=1e-9)
        assert later.conveyor_speed == speed
        assert ObjectReading.from_values(later.to_values()) == later


async def test_world_time_follows_the_controller_clock(world_name, virtual_clock):
    async with SimRobot(SimRobotConfig(world=world_name)) as robot:
        start = virtual_clock.time()
        await asyncio.sleep(3.7)
        s = await robot.world.sample_arm()
    assert s.time == pytest.approx(start + 3.7, abs=TIMESTEP)
    assert s.time <= start + 3.7
    assert robot.world.outcome().elapsed == pytest.approx(3.7, abs=TIMESTEP)


# -- bad input: one clear line each ----------------------------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"task": "pick"}, ["task", "'pick'", "'reach', 'reach-moving'"]),
        ({"target": "purple"}, ["target", "'purple'", "'red'"]),
        ({"seed": -1}, ["seed", "-1"]),
        ({"conveyor_speed": 2.0, "task": "reach-moving"}, ["conveyor_speed", "0.5"]),
        ({"conveyor_speed": 0.1}, ["conveyor_speed", "reach-moving"]),
        ({"episode_limit": 0}, ["episode_limit", "0.1"]),
    ],
)
def test_bad_world_options_are_one_clear_line(world_name, options, words):
    with pytest.raises(DriverConfigError) as info:
        SimRobot.from_spec(world_name, options)
    text = str(info.value)
    assert "\n" not in text
    for word in words:
        assert word in text, text


def test_bad_view_and_sizes_are_one_clear_line(world_name):
    with pytest.raises(DriverConfigError, match="'side' is not one of 'front', 'top', 'wrist'"):
        SimCamera.from_spec("side", {"world": world_name})
    with pytest.raises(DriverConfigError, match=r"width must be an integer in \[8, 1024\]"):
        SimCamera.from_spec("top", {"world": world_name, "width": 4096})


async def test_drivers_of_one_world_must_agree(world_name):
    robot = SimRobot.from_spec(world_name, {"seed": 4, "task": "reach-moving"})
    try:
        with pytest.raises(DriverConfigError, match="seed=5 here but 4 on another"):
            SimSensor.from_spec(world_name, {"seed": 5})
        camera = SimCamera.from_spec("front", {"world": world_name, "seed": 4, "width": 16})
        sensor = SimSensor.from_spec(world_name, {})  # sets nothing: takes the world's
        assert camera.world is robot.world is sensor.world
        assert robot.world.episode().task == "reach-moving"
        with pytest.raises(DriverConfigError, match="already runs with seed=4, not 6"):
            SimSensor.from_spec(world_name, {"seed": 6})
        for driver in (camera, sensor):
            await driver.close()
    finally:
        await robot.close()


def test_the_entry_points_name_the_sim_drivers():
    """pyproject.toml registers the drivers under the names the CLI uses (checked by loading
    what each entry point names: the installed metadata may predate this package)."""
    import importlib
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    drivers = project["entry-points"][registry.DRIVER_GROUP]
    policies = project["entry-points"]["controller.policies"]
    expected = {"robot.sim": SimRobot, "camera.sim": SimCamera, "sensor.sim": SimSensor}
    for name, cls in expected.items():
        module, attr = drivers[name].split(":")
        assert getattr(importlib.import_module(module), attr) is cls
        assert cls.kind == name.split(".")[0]
    module, attr = policies["sim-expert"].split(":")
    assert getattr(importlib.import_module(module), attr).name == "sim-expert"


# -- a machine without OpenGL ----------------------------------------------------------


async def test_a_missing_gl_fails_at_connect_with_the_fix(world_name, monkeypatch):
    def no_gl(model, width, height):
        raise mujoco.FatalError(
            "an OpenGL platform library has not been loaded into this process, this most"
            " likely means that a valid OpenGL context has not been created"
        )

    monkeypatch.setattr(world_module, "_new_renderer", no_gl)
    camera = SimCamera(SimCameraConfig(world=world_name, width=16, height=16))
    with pytest.raises(SimRenderError) as info:
        async with camera:
            pass
    text = str(info.value)
    assert "\n" not in text
    assert "MUJOCO_GL=" in text and "apt install libegl1" in text and "FatalError" in text
    assert camera.closed  # the failed connect released the world


async def test_frames_come_at_the_cameras_rate_rendered_off_the_loop(world_name, monkeypatch):
    threads: set[str] = set()
    render = SimWorld._render

    def recording(self, *args):
        threads.add(threading.current_thread().name)
        return render(self, *args)

    monkeypatch.setattr(SimWorld, "_render", recording)
    camera = SimCamera(SimCameraConfig(view="front", world=world_name, width=20, height=12, fps=4))
    async with camera:
        frames = camera.frames()
        got = [await anext(frames) for _ in range(5)]
        await frames.aclose()
    assert [f.seq for f in got] == [0, 1, 2, 3, 4] and camera.name == "front"
    np.testing.assert_allclose(np.diff([f.capture_time for f in got]), 0.25, atol=TIMESTEP)
    assert all(f.image.shape == (12, 20, 3) and f.camera == "front" for f in got)
    assert threads == {f"sim-{world_name}-render_0"}  # one thread of its own, not the loop's
