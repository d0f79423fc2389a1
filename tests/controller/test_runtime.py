"""Controller behaviour on the virtual clock: reuse, holds, stops, warm-up, failures."""

from __future__ import annotations

import asyncio
import itertools
import math

import numpy as np
import pytest

from controller.errors import PolicyError, WarmupError
from controller.runtime import Phase
from controller.safety import SafetyConfig
from drivers.fake import FakeCamera, FakeRobot
from drivers.fake.config import FakeCameraConfig, FakeRobotConfig
from policies.fake import FakePolicy

pytestmark = pytest.mark.virtual_clock


async def test_300ms_encode_at_10hz_reuses_each_feature_three_times(
    controller_harness, virtual_clock
):
    h = controller_harness(policy=FakePolicy(vl_latency=0.3, action_latency=0.015))
    s = await h.run(60)
    assert s["ticks"] == 600
    assert s["missed_ticks"] == 0
    assert s["ticks_on_time"] == 600
    assert s["actions_sent"] == 600
    assert s["holds"] == {}
    assert 2.9 <= s["reuse"]["mean"] <= 3.0
    assert s["reuse"]["max"] == 3
    # Every action carries the age of the features and state it used.
    actions = list(h.telemetry.actions)
    assert len(actions) == 600
    assert all(math.isfinite(a.feature_age) and a.feature_age >= 0 for a in actions)
    assert all(0 <= a.state_age <= 0.1 for a in actions)
    # Features are at most one encode + one reuse cycle + one frame old.
    assert max(a.feature_age for a in actions) <= 0.3 + 0.3 + 1 / 30 + 1e-6


async def test_vl_task_encodes_the_newest_frame_not_a_queue(controller_harness, virtual_clock):
    h = controller_harness(policy=FakePolicy(vl_latency=0.5))
    s = await h.run(20)
    # At 30 fps, a 500 ms encode skips ~15 frames; the next encode starts on a
    # frame at most one frame period old, never on a backlog.
    assert s["vl_frame_age_at_encode_ms"]["max"] <= 1000 / 30 + 1e-6
    assert h.controller.frames["fake"].replaced_unread > 100


@pytest.mark.parametrize("seed", [4])
def test_a_60s_run_is_virtual_and_deterministic(seed):
    """Virtual time: the clock jumps instead of sleeping, and two runs are identical."""
    from controller.clock import run_virtual
    from controller.harness import ControllerHarness

    async def once() -> tuple[int, list[tuple[int, float, float]]]:
        loop = asyncio.get_running_loop()
        h = ControllerHarness(policy=FakePolicy(vl_latency="normal(0.3, 0.02)", seed=seed))
        await h.run(60)
        assert loop.time() - 1000.0 >= 60
        actions = [(a.feature_version, a.feature_age, a.state_age) for a in h.telemetry.actions]
        return loop.clock.jumps, actions  # type: ignore[attr-defined]

    (jumps, first), (_, second) = run_virtual(once), run_virtual(once)
    assert jumps > 1000  # it jumped from deadline to deadline, it did not wait
    assert len(first) == 600 and first == second


async def test_camera_stall_holds_within_max_feature_age_and_resumes(
    controller_harness, virtual_clock
):
    cam = FakeCamera(FakeCameraConfig())
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(cameras=[cam], robot=robot, safety=SafetyConfig(max_feature_age=1.0))
    h.start(20)
    await h.until_active()
    await asyncio.sleep(2.0)
    stall_at = virtual_clock.time()
    cam.stall(3.0)
    await asyncio.sleep(5.0)
    s = await h.task
    holds = s["holds"]
    assert holds.get("features_stale", 0) > 0
    sent_times = [t for t, _ in robot.commands]
    # The last command before the gap was decided (at its tick's start) within
    # max_feature_age of the stall, and left one 15 ms act later...
    before = [t for t in sent_times if t < stall_at + 3.0]
    assert before and before[-1] <= stall_at + 1.0 + 0.015 + 1e-6
    # ...and commands resume once frames flow and a fresh encode lands.
    after = [t for t in sent_times if t > stall_at + 3.0]
    assert after and after[0] <= stall_at + 3.0 + 0.3 + 0.2 + 1e-6
    assert h.controller.telemetry.hold_episodes == 1


async def test_robot_disconnect_stops_commands_until_it_returns(controller_harness, virtual_clock):
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot)
    h.start(10)
    await h.until_active()
    await asyncio.sleep(2.0)
    robot.disconnect()
    down = virtual_clock.time()
    await asyncio.sleep(3.0)
    up = virtual_clock.time()
    robot.reconnect()
    s = await h.task
    assert not [t for t, _ in robot.commands if down < t < up]
    assert s["holds"].get("state_stale", 0) >= 25
    assert [t for t, _ in robot.commands if t > up]


async def test_protective_stop_holds_and_resumes_when_cleared(controller_harness, virtual_clock):
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot)
    h.start(10)
    await h.until_active()
    await asyncio.sleep(1.0)
    robot.trigger_protective_stop()
    await asyncio.sleep(2.0)
    robot.clear_protective_stop()
    s = await h.task
    assert s["holds"].get("robot_not_ready", 0) >= 15
    assert s["actions_sent"] >= 60


async def test_cancelled_run_calls_robot_stop(controller_harness, virtual_clock):
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot)
    task = h.start(None)
    await h.until_active()
    await asyncio.sleep(1.0)
    stops_before = robot.stops
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert robot.stops > stops_before
    assert h.controller.phase is Phase.FAILED
    # The arm was told to stay where it is.
    np.testing.assert_allclose(robot.target, robot.positions, atol=1e-9)


async def test_a_failing_policy_ends_the_run_with_the_robot_stopped(
    controller_harness, virtual_clock
):
    class Broken(FakePolicy):
        def act(self, features, state, sensors):
            raise RuntimeError("boom")

    robot = FakeRobot(FakeRobotConfig())
    policy = Broken()
    h = controller_harness(robot=robot, policy=policy)
    # The warm-up computes one action: a policy that cannot act never starts.
    with pytest.raises(RuntimeError, match="boom"):
        await h.run(10)
    assert robot.stops >= 1
    assert not robot.commands


async def test_repeated_action_failures_after_start_stop_the_run(controller_harness, virtual_clock):
    class Flaky(FakePolicy):
        def act(self, features, state, sensors):
            if self.actions >= 5:
                self.actions += 1
                raise RuntimeError("gpu fell off")
            return super().act(features, state, sensors)

    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot, policy=Flaky(), max_consecutive_failures=3)
    with pytest.raises(PolicyError, match="3 times in a row"):
        await h.run(30)
    assert robot.stops >= 1
    assert 1 <= len(robot.commands) <= 5


async def test_vl_failures_hold_the_robot_then_recover(controller_harness, virtual_clock):
    policy = FakePolicy(vl_latency=0.3)
    h = controller_harness(policy=policy)
    h.start(15)
    await h.until_active()
    policy.fail_next_encodes = 5  # ~6 s of back-off: features go stale
    s = await h.task
    assert s["errors"].get("vl_encode") == 5
    assert s["holds"].get("features_stale", 0) > 0
    assert s["actions_sent"] > 50


async def test_nothing_moves_before_warmup_and_warmup_times_out(controller_harness, virtual_clock):
    class DeadCamera(FakeCamera):
        async def frames(self):
            await asyncio.Event().wait()
            yield  # pragma: no cover

    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(
        robot=robot, cameras=[DeadCamera(FakeCameraConfig())], warmup_timeout=5.0
    )
    with pytest.raises(WarmupError, match="first frame"):
        await h.run(10)
    assert not robot.commands
    assert robot.stops >= 1


async def test_slow_action_holds_instead_of_acting_late(controller_harness, virtual_clock):
    policy = FakePolicy(vl_latency=0.3, action_latency=0.05)
    h = controller_harness(policy=policy, action_timeout=0.02, warmup_timeout=5.0)
    s = await h.run(3)
    assert s["actions_sent"] == 0
    assert s["holds"].get("action_timeout") == s["ticks"]


async def test_overrunning_ticks_are_skipped_and_counted_not_burst(
    controller_harness, virtual_clock
):
    # 150 ms actions at 10 Hz with a generous action timeout: every tick overruns.
    policy = FakePolicy(vl_latency=0.3, action_latency=0.15)
    h = controller_harness(policy=policy, action_timeout=1.0)
    s = await h.run(10)
    assert s["missed_ticks"] >= 45
    starts = [a.time for a in h.telemetry.actions]
    assert all(b - a >= 0.2 - 1e-9 for a, b in itertools.pairwise(starts))


async def test_sensor_readings_reach_the_policy(controller_harness, virtual_clock):
    from drivers.fake import FakeForceSensor

    seen = []

    class Spy(FakePolicy):
        def act(self, features, state, sensors):
            seen.append(dict(sensors))
            return super().act(features, state, sensors)

    h = controller_harness(policy=Spy(), sensors=[FakeForceSensor()])
    await h.run(2)
    assert seen and all("ft" in s and s["ft"].values.shape == (6,) for s in seen[1:])


async def test_a_fast_encoder_is_paced_to_the_control_rate(controller_harness, virtual_clock):
    h = controller_harness(policy=FakePolicy(vl_latency=0.01))
    s = await h.run(10)
    # warm-up encodes plus one per control period, not one per camera frame
    assert 95 <= s["vl_encodes"] <= 105
    assert s["reuse"]["max"] == 1
    free = controller_harness(policy=FakePolicy(vl_latency=0.01), vl_max_hz=0)
    s = await free.run(10)
    assert s["vl_encodes"] >= 250  # every new 30 fps frame


async def test_a_slow_first_encode_does_not_start_with_stale_features(
    controller_harness, virtual_clock
):
    class SlowStart(FakePolicy):
        def encode_vl(self, frames, instruction):
            if self.encodes == 0:
                self.burn(2.0)  # lazy kernel init, like a first CUDA encode
            return super().encode_vl(frames, instruction)

    h = controller_harness(policy=SlowStart(vl_latency=0.3))
    s = await h.run(5)
    assert s["holds"] == {}
    assert s["actions_sent"] == 50


async def test_warmup_waits_for_every_sensor(controller_harness, virtual_clock):
    from drivers.fake import FakeForceSensor

    class Silent(FakeForceSensor):
        async def readings(self):
            await asyncio.Event().wait()
            yield  # pragma: no cover

    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot, sensors=[Silent()], warmup_timeout=3.0)
    with pytest.raises(WarmupError, match="sensor ft"):
        await h.run(5)
    assert not robot.commands
