"""robot.sim behaves as an arm: a servo within the speed limits, refusals of bad targets,
stops and holds that stay stopped, a person's stop that only a resume undoes."""

from __future__ import annotations

import asyncio
import math

import mujoco
import numpy as np
import pytest

from drivers.arms import UR5_HOME, UR5_LIMITS
from drivers.base import JointCommand
from drivers.errors import NotReady
from drivers.sim.config import SimRobotConfig
from drivers.sim.model import TIMESTEP, dh_forward_kinematics
from drivers.sim.robot import SimRobot
from drivers.sim.world import STOP_DECELERATION

pytestmark = pytest.mark.virtual_clock

HOME = np.array(UR5_HOME)
VMAX = np.asarray(UR5_LIMITS.max_velocity)


async def _record(robot: SimRobot, seconds: float, rate: float = 250.0) -> list:
    """Samples of the arm every 1/rate s for `seconds` (virtual)."""
    out = []
    for _ in range(round(seconds * rate)):
        await asyncio.sleep(1 / rate)
        out.append(await robot.world.sample_arm())
    return out


async def test_a_command_moves_the_arm_there_within_the_speed_limits(world_name):
    target = HOME + np.array([1.5, 0.4, -0.5, 0.3, 1.0, -2.0])
    async with SimRobot(SimRobotConfig(world=world_name)) as robot:
        await robot.command(JointCommand(target, duration=0.1, seq=1))
        samples = await _record(robot, 2.0)
    q = np.array([s.positions for s in samples])
    qd = np.array([s.velocities for s in samples])
    # The servo's reference never exceeds the limit; the simulated joint overshoots
    # it by at most a few percent when the reference stops accelerating.
    assert np.all(np.abs(qd) <= VMAX * 1.03)
    assert np.max(np.abs(qd[:, 5])) > 0.9 * VMAX[5]  # the far joint did travel at full speed
    # wrist_3 travels 2 rad: at pi rad/s it cannot be there before ~0.64 s + ramps.
    t_reach = next(i for i, x in enumerate(np.abs(q[:, 5] - target[5])) if x < 0.01) / 250
    assert 2.0 / VMAX[5] <= t_reach <= 2.0 / VMAX[5] + 0.5
    np.testing.assert_allclose(q[-1], target, atol=2e-3)
    assert np.all(np.abs(qd[-1]) < 0.01)
    assert all(s.ready and s.mode == "RUNNING" for s in samples)
    # The state's tool pose (UR's x, y, z, rotation vector) is the DH forward kinematics
    # of its joint positions.
    for s in samples[::50]:
        pose = dh_forward_kinematics(s.positions)
        np.testing.assert_allclose(s.tool_pose[:3], pose[:3, 3], atol=1e-9)
        rotvec = s.tool_pose[3:]
        angle = float(np.linalg.norm(rotvec))
        assert angle <= math.pi + 1e-9
        quat, mat = np.empty(4), np.empty(9)
        mujoco.mju_axisAngle2Quat(quat, rotvec / angle, angle)
        mujoco.mju_quat2Mat(mat, quat)
        np.testing.assert_allclose(mat.reshape(3, 3), pose[:3, :3], atol=1e-9)


async def test_a_slow_command_is_spread_over_its_duration(world_name):
    target = HOME + np.array([0.05, 0, 0, 0, 0, 0])
    async with SimRobot(SimRobotConfig(world=world_name)) as robot:
        await robot.command(JointCommand(target, duration=0.5, seq=1))
        samples = await _record(robot, 0.8, rate=10)
    q0 = np.array([s.positions[0] for s in samples]) - HOME[0]
    assert q0[2] == pytest.approx(0.03, abs=2e-3)  # 3/5 of the way at 0.3 s ...
    assert q0[-1] == pytest.approx(0.05, abs=1e-3)  # ... there after the duration


@pytest.mark.parametrize(
    "bad",
    [
        np.full(6, math.nan),
        np.array([0, -1.57, 1.57, -1.57, math.inf, 0]),
        np.zeros(5),
        HOME + np.array([0, 0, 0, 0, 0, 7.0]),  # beyond +2 pi
    ],
)
async def test_bad_targets_are_refused_and_the_arm_keeps_its_goal(world_name, bad):
    goal = HOME + 0.2
    async with SimRobot(SimRobotConfig(world=world_name)) as robot:
        await robot.command(JointCommand(goal, duration=0.1, seq=1))
        with pytest.raises(ValueError) as info:
            await robot.command(JointCommand(bad, duration=0.1, seq=2))
        assert "\n" not in str(info.value)
        samples = await _record(robot, 1.0, rate=20)
    assert all(np.all(np.isfinite(s.positions)) for s in samples)
    np.testing.assert_allclose(samples[-1].positions, goal, atol=2e-3)


@pytest.mark.parametrize("how", ["stop", "hold"])
async def test_stop_and_hold_bring_the_arm_to_rest_and_keep_it_there(world_name, how):
    target = HOME + np.array([2.0, 0, 0, 0, 0, 2.0])
    async with SimRobot(SimRobotConfig(world=world_name)) as robot:
        await robot.command(JointCommand(target, duration=0.1, seq=1))
        await asyncio.sleep(0.4)  # full speed by now
        moving = await robot.world.sample_arm()
        assert np.max(np.abs(moving.velocities)) > 0.9 * VMAX[0]
        await (robot.stop() if how == "stop" else robot.hold())
        samples = await _record(robot, 2.0, rate=50)
        if how == "stop":
            await robot.stop()  # a second stop is harmless
    bound = VMAX[0] / STOP_DECELERATION + 0.2  # decelerating, then the servo settling
    at_rest = [i for i, s in enumerate(samples) if np.max(np.abs(s.velocities)) < 1e-3]
    assert at_rest and at_rest[0] / 50 <= bound
    rest = np.array([s.positions for s in samples[at_rest[0] :]])
    assert np.max(np.ptp(rest, axis=0)) < 1e-4  # it stays where it stopped
    assert np.all(np.abs(rest[-1] - target)[[0, 5]] > 0.5)  # well short of the old target
    assert all(s.ready for s in samples)
    # ... and leaving `async with` stops it once more.
    assert (robot.world.stops, robot.world.holds) == ((3, 0) if how == "stop" else (1, 1))


async def test_hold_is_ready_to_resume_on_the_next_command(world_name):
    async with SimRobot(SimRobotConfig(world=world_name)) as robot:
        await robot.hold()
        await robot.command(JointCommand(HOME + 0.1, duration=0.1, seq=1))
        samples = await _record(robot, 0.5, rate=10)
    np.testing.assert_allclose(samples[-1].positions, HOME + 0.1, atol=2e-3)


async def test_a_persons_stop_is_final_until_resumed_and_never_resumes_the_old_target(
    world_name,
):
    target = HOME + np.array([1.5, 0, 0, 0, 0, 0])
    async with SimRobot(SimRobotConfig(world=world_name)) as robot:
        states = robot.states()
        await robot.command(JointCommand(target, duration=0.1, seq=1))
        await asyncio.sleep(0.3)
        robot.operator_stop()
        await asyncio.sleep(0.5)
        state = await anext(states)
        assert not state.ready and "operator" in state.mode
        with pytest.raises(NotReady, match="resume needed"):
            await robot.command(JointCommand(target, duration=0.1, seq=2))
        stopped_at = state.positions
        await robot.resume()
        await asyncio.sleep(1.0)
        state = await anext(states)
        await states.aclose()
    assert state.ready
    np.testing.assert_allclose(state.positions, stopped_at, atol=1e-4)  # still there


async def test_a_physics_fault_stops_the_arm_for_good(world_name):
    async with SimRobot(SimRobotConfig(world=world_name)) as robot:
        await robot.command(JointCommand(HOME + 0.5, duration=0.1, seq=1))
        await asyncio.sleep(0.2)
        await robot.world.inject_fault()
        samples = await _record(robot, 0.5, rate=20)
        with pytest.raises(NotReady, match="simulation fault"):
            await robot.command(JointCommand(HOME, duration=0.1, seq=2))
        with pytest.raises(NotReady, match="cannot resume"):
            await robot.resume()
    last = samples[-1]
    assert not last.ready and last.mode.startswith("FAULT")
    assert np.all(np.isfinite(last.positions)) and not np.any(last.velocities)
    assert np.all(np.abs(last.positions - HOME) > 0.05)  # where it was: no jump to zero


async def test_states_stream_at_the_rate_stamped_with_world_time(world_name, virtual_clock):
    async with SimRobot(SimRobotConfig(world=world_name, rate_hz=125)) as robot:
        states = robot.states()
        got = []
        for _ in range(126):
            s = await anext(states)
            got.append((s, virtual_clock.time()))
        await states.aclose()
    times = np.array([s.capture_time for s, _ in got])
    np.testing.assert_allclose(np.diff(times), 1 / 125, atol=TIMESTEP + 1e-9)
    assert all(0 <= now - s.capture_time < TIMESTEP + 1e-9 for s, now in got)
    assert all(s.time_source == "synthetic" and s.tcp_pose.shape == (6,) for s, _ in got)


async def test_stop_after_close_returns_at_once(world_name):
    robot = SimRobot(SimRobotConfig(world=world_name))
    async with robot:
        pass
    await robot.stop()
    assert robot.world.closed
