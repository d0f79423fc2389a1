"""The fakes are good enough to test a controller against: check they behave like the real thing."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from drivers.base import JointCommand
from drivers.errors import ConnectionLost, DriverConfigError, NotReady
from drivers.fake import FakeCamera, FakeRobot
from drivers.fake.camera import render
from drivers.fake.config import FakeCameraConfig, FakeRobotConfig
from policies.errors import PolicyConfigError
from policies.fake import FakePolicy, Latency

pytestmark = pytest.mark.virtual_clock


async def test_robot_follows_a_target_with_first_order_dynamics(virtual_clock):
    async with FakeRobot(FakeRobotConfig(time_constant=0.1, initial=(0.0,) * 6)) as robot:
        await robot.command(JointCommand(np.full(6, 0.2), duration=0.1, seq=1))
        await asyncio.sleep(0.1)  # one time constant: 63 %
        np.testing.assert_allclose(robot.positions, np.full(6, 0.2 * (1 - np.exp(-1))), rtol=1e-6)
        await asyncio.sleep(1.0)
        np.testing.assert_allclose(robot.positions, np.full(6, 0.2), atol=1e-4)


async def test_robot_speed_is_limited(virtual_clock):
    async with FakeRobot(FakeRobotConfig(time_constant=0.001, initial=(0.0,) * 6)) as robot:
        await robot.command(JointCommand(np.full(6, 3.0), duration=0.1, seq=1))
        await asyncio.sleep(0.1)
        assert np.all(robot.positions <= np.pi * 0.1 + 1e-9)


async def test_robot_streams_state_at_its_rate_with_capture_times(virtual_clock):
    async with FakeRobot(FakeRobotConfig(rate_hz=125, latency=0.004)) as robot:
        states = []
        async for s in robot.states():
            states.append((s, virtual_clock.time()))
            if len(states) == 126:
                break
    times = [s.capture_time for s, _ in states]
    assert np.allclose(np.diff(times), 1 / 125)
    assert all(arrival - s.capture_time == pytest.approx(0.004) for s, arrival in states)


async def test_robot_faults(virtual_clock):
    async with FakeRobot() as robot:
        robot.disconnect()
        with pytest.raises(ConnectionLost):
            await robot.command(JointCommand(np.zeros(6), 0.1, 1))
        robot.reconnect()
        robot.trigger_protective_stop()
        with pytest.raises(NotReady):
            await robot.command(JointCommand(np.zeros(6), 0.1, 2))
        robot.clear_protective_stop()
        await robot.command(JointCommand(np.zeros(6), 0.1, 3))
        assert [c.seq for _, c in robot.commands] == [3]
    assert robot.stops == 1


async def test_camera_shows_motion_and_can_stall(virtual_clock):
    cam = FakeCamera(FakeCameraConfig(fps=10, width=64, height=48))
    frames = []
    async with cam:
        it = cam.frames()
        frames.append(await anext(it))
        cam.stall(1.0)
        t_stall = virtual_clock.time()
        frames.append(await anext(it))
    assert frames[1].capture_time >= t_stall + 1.0
    a, b = frames[0].image, frames[1].image
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, b)  # the disc moved
    assert frames[0].time_source == "synthetic"


def test_render_shows_time_in_the_disc_and_the_sequence_in_the_corner():
    a, b = render(32, 32, 1.5, 3), render(32, 32, 2.5, 3)
    assert not np.array_equal(a, b)  # the disc moves with capture time
    assert np.all(a[0:4, 0:4] == 3) and np.all(render(32, 32, 1.5, 260)[0:4, 0:4] == 4)
    np.testing.assert_array_equal(
        a[4:, 4:], render(32, 32, 1.5, 7)[4:, 4:]
    )  # seq only in the corner


def _whole_frame_render(width: int, height: int, t: float, seq: int) -> np.ndarray:
    """The scene drawn over every pixel: what `render`'s bounding-box drawing must equal."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = (xx * 255 // max(1, width - 1)).astype(np.uint8)
    img[..., 1] = (yy * 255 // max(1, height - 1)).astype(np.uint8)
    img[..., 2] = 64
    cx = width / 2 + 0.3 * width * math.cos(2 * math.pi * 0.25 * t)
    cy = height / 2 + 0.3 * height * math.sin(2 * math.pi * 0.25 * t)
    r = max(2.0, 0.1 * min(width, height))
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (255, 32, 32)
    img[0:4, 0:4] = seq % 256
    return img


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (32, 32), (64, 48), (224, 224), (640, 480)])
def test_render_draws_the_pixels_of_the_whole_frame_formula(size):
    width, height = size
    for t in np.linspace(0.0, 4.0, 23):  # a full turn of the disc, edges and corners included
        np.testing.assert_array_equal(
            render(width, height, float(t), 300), _whole_frame_render(width, height, float(t), 300)
        )
    first = render(width, height, 0.0, 1)
    first[...] = 0  # a frame is the caller's to change: the next one is unaffected
    assert render(width, height, 0.0, 1).any()


def test_fake_option_errors_are_named():
    with pytest.raises(DriverConfigError, match="fps must be positive"):
        FakeCamera.from_spec("", {"fps": 0})
    with pytest.raises(PolicyConfigError, match=r"vl_latency: cannot read 'soon'"):
        FakePolicy(vl_latency="soon")
    with pytest.raises(PolicyConfigError, match="unknown option"):
        FakePolicy.from_options({"temperature": 1})


def test_latency_distributions_are_seeded():
    def burned(seed: int) -> list[float]:
        spent: list[float] = []
        policy = FakePolicy(vl_latency="normal(0.3, 0.05)", seed=seed, burn=spent.append)
        for _ in range(5):
            policy.encode_vl([], "x")
        return spent

    assert burned(1) == burned(1)  # a seed replays the same latencies
    assert burned(1) != burned(2)
    assert len(set(burned(1))) == 5  # drawn, not fixed
    u = Latency.parse("uniform(0.2, 0.4)")
    rng = np.random.default_rng(0)
    assert all(0.2 <= u.draw(rng) <= 0.4 for _ in range(100))


async def test_robot_joint_count_is_configurable(virtual_clock):
    arm = FakeRobot.from_spec("", {"joints": 7})
    assert arm.info.dof == 7 and arm.info.limits.dof == 7
    assert arm.info.joint_names[0] == "joint_0" and len(set(arm.info.joint_names)) == 7
    async with arm:
        state = await anext(arm.states())
        assert state.positions.shape == (7,) and state.velocities.shape == (7,)
        await arm.command(JointCommand(np.full(7, 0.1), 0.1, seq=1))
        with pytest.raises(ValueError, match="expected 7 joint targets"):
            await arm.command(JointCommand(np.zeros(6), 0.1, seq=2))
        await asyncio.sleep(1.0)
        np.testing.assert_allclose(arm.positions, np.full(7, 0.1), atol=1e-3)
    assert FakeRobot().info.joint_names[0] == "shoulder_pan"  # 6 joints: a UR5
    with pytest.raises(DriverConfigError, match="initial must have 3 joint positions"):
        FakeRobot.from_spec("", {"joints": 3, "initial": [0.0] * 6})
    with pytest.raises(DriverConfigError, match=r"joints must be within 1\.\.64"):
        FakeRobot.from_spec("", {"joints": 0})


async def test_a_seven_joint_arm_runs_under_the_controller(controller_harness, virtual_clock):
    arm = FakeRobot(FakeRobotConfig(joints=7))
    h = controller_harness(robot=arm, policy=FakePolicy(vl_latency=0.1))
    summary = await h.run(3.0)  # the invariants (limits, speed) are checked on 7 joints
    assert summary["actions_sent"] >= 25
    assert {len(cmd.positions) for _, cmd in arm.commands} == {7}


async def test_fakes_close_once_and_tick_on_their_grid(virtual_clock):
    arm = FakeRobot()
    async with arm:
        assert arm.connected
    assert arm.closed and not arm.connected and arm.stops == 1
    await arm.close()  # idempotent
    assert arm.stops == 1
    cam = FakeCamera(FakeCameraConfig(fps=10))
    async with cam:
        t0 = virtual_clock.time()
        it = cam.frames()
        frames = [await anext(it) for _ in range(3)]
        await asyncio.sleep(0.25)  # a slow reader: the camera skips, it does not burst
        late = [await anext(it) for _ in range(2)]
    assert cam.closed
    assert [f.capture_time - t0 for f in frames] == pytest.approx([0.1, 0.2, 0.3])
    # the newest deadline due at once (0.5, late), then back on the grid
    assert [f.capture_time - t0 for f in late] == pytest.approx([0.55, 0.6])
