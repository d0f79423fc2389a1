"""The controller's fail-safe behaviour, on the virtual clock (issue 8's findings).

Each scenario injects a fault a real link or operator produces and checks
what reached the arm. Every run is also held to `controller.invariants` by
the harness (no command from inputs beyond the age limits judged by the
fakes' TRUE capture times, none before warm-up, stop on every exit).
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from controller.errors import ConfigError, PolicyError, WarmupError
from controller.faults import WedgeableRobot
from controller.runtime import ControllerConfig, Phase
from controller.safety import HoldReason, SafetyConfig, SafetyFilter
from controller.slot import Stamped
from drivers.arms import UR5_LIMITS
from drivers.base import RobotState
from drivers.fake import FakeCamera, FakeForceSensor, FakeRobot
from drivers.fake.config import FakeCameraConfig, FakeForceSensorConfig, FakeRobotConfig
from policies.fake import FakePolicy

virtual = pytest.mark.virtual_clock


def _commands_between(robot: FakeRobot, t0: float, t1: float) -> int:
    return sum(1 for t, _ in robot.commands if t0 <= t < t1)


def _now() -> float:
    return asyncio.get_running_loop().time()


async def _active_for(h, at: float = 1.0, duration: float | None = 10) -> float:
    """Start a run of `duration` s (None: until stopped); return `at` s after it went active."""
    h.start(duration)
    await h.until_active()
    await asyncio.sleep(at)
    return _now()


async def _run_with_fault(h, start_fault, stop_fault, *, at=2.0, lasting=3.0, duration=10):
    """Run `duration` s; inject a fault `at` s after going active, clear it `lasting` s later.

    Returns (summary, t_on, t_off).
    """
    t_on = await _active_for(h, at, duration)
    start_fault()
    await asyncio.sleep(lasting)
    t_off = _now()
    stop_fault()
    summary = await h.task
    return summary, t_on, t_off


# -- state validity and age ------------------------------------------------------------


@virtual
async def test_nan_joint_positions_hold_instead_of_commanding(controller_harness):
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot)
    s, t_on, t_off = await _run_with_fault(
        h, lambda: robot.nan_positions(True), lambda: robot.nan_positions(False)
    )
    # Before the fix the velocity clamp compared against NaN and let jumps through.
    assert _commands_between(robot, t_on + 0.1, t_off) == 0
    assert s["holds"].get("state_invalid", 0) >= 25
    assert _commands_between(robot, t_off + 0.2, t_off + 4) > 30  # resumes on valid state
    for _, cmd in robot.commands:
        assert np.all(np.isfinite(cmd.positions))


@virtual
@pytest.mark.parametrize(
    ("fault", "reason"),
    [("nan", "state_clock_invalid"), ("frozen", "state_stale"), ("ahead", "state_clock_invalid")],
)
async def test_a_broken_robot_clock_reads_as_stale_never_as_fresh(
    controller_harness, fault, reason
):
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot)
    s, t_on, t_off = await _run_with_fault(
        h, lambda: robot.clock_fault(fault), lambda: robot.clock_fault(None)
    )
    # A frozen clock goes stale after max_state_age; the others at once.
    assert _commands_between(robot, t_on + 0.2, t_off) == 0
    assert s["holds"].get(reason, 0) >= 25
    assert _commands_between(robot, t_off + 0.2, t_off + 4) > 30


@virtual
async def test_one_nan_timestamp_does_not_switch_the_age_interlock_off(controller_harness):
    """A NaN age compared with `>` is False: before the fix, stale state then passed for good."""
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot)
    await _active_for(h)
    robot.clock_fault("nan")
    await asyncio.sleep(0.02)
    robot.clock_fault(None)
    await asyncio.sleep(1.0)
    robot.set_latency(0.3)  # honestly stamped, but 300 ms old on arrival
    t_late = _now()
    await asyncio.sleep(3.0)
    robot.set_latency(0.0)
    s = await h.task
    assert _commands_between(robot, t_late + 0.15, t_late + 3.0) == 0
    assert s["holds"].get("state_stale", 0) >= 25


@virtual
@pytest.mark.parametrize("fault", ["nan", "frozen", "ahead"])
async def test_a_broken_camera_clock_makes_features_unusable(controller_harness, fault):
    cam = FakeCamera(FakeCameraConfig())
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot, cameras=[cam], safety=SafetyConfig(max_feature_age=0.8))
    s, t_on, t_off = await _run_with_fault(
        h, lambda: cam.clock_fault(fault), lambda: cam.clock_fault(None)
    )
    assert _commands_between(robot, t_on + 1.0, t_off) == 0
    expected = "features_stale" if fault == "frozen" else "features_clock_invalid"
    assert s["holds"].get(expected, 0) >= 20
    assert _commands_between(robot, t_off + 1.5, t_off + 4) > 20


@virtual
@pytest.mark.parametrize("fault", ["stall", "nan"])
async def test_stale_or_invalid_sensor_readings_hold(controller_harness, fault):
    sensor = FakeForceSensor(FakeForceSensorConfig())
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot, sensors=[sensor])

    def start() -> None:
        if fault == "stall":
            sensor.stall(3.0)
        else:
            sensor.nan_values(True)

    s, t_on, t_off = await _run_with_fault(h, start, lambda: sensor.nan_values(False))
    expected = "sensor_stale" if fault == "stall" else "sensor_invalid"
    assert _commands_between(robot, t_on + 0.6, t_off) == 0
    assert s["holds"].get(expected, 0) >= 20


@virtual
async def test_operator_stop_holds_until_the_operator_resumes(controller_harness):
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot)
    s, t_stop, _ = await _run_with_fault(
        h, robot.operator_stop, robot.operator_resume, at=1.0, lasting=5.0, duration=12
    )
    assert _commands_between(robot, t_stop, t_stop + 5.0) == 0
    assert s["holds"].get("robot_not_ready", 0) >= 45
    assert _commands_between(robot, t_stop + 5.2, t_stop + 10) > 30


def test_safety_filter_ages_compare_so_that_nan_is_stale():
    f = SafetyFilter(SafetyConfig(), UR5_LIMITS, 0.1)
    q = np.zeros(6)
    ok = RobotState(positions=q, velocities=q, capture_time=10.0)
    feats = Stamped("f", 1, 10.0, 10.0)
    assert f.check_inputs(10.0, feats, Stamped(ok, 1, 10.0, 10.0)) is None
    assert f.check_inputs(10.0, feats, Stamped(ok, 1, math.nan, 10.0)) == "state_clock_invalid"
    assert f.check_inputs(10.0, feats, Stamped(ok, 1, math.inf, 10.0)) == "state_clock_invalid"
    assert f.check_inputs(10.0, feats, Stamped(ok, 1, 10.5, 10.0)) == "state_clock_invalid"
    assert f.check_inputs(10.0, Stamped("f", 1, math.nan, 10.0), Stamped(ok, 1, 10.0, 10.0)) == (
        HoldReason.FEATURES_CLOCK_INVALID
    )
    bad = RobotState(positions=np.array([0, math.nan, 0, 0, 0, 0.0]), velocities=q, capture_time=10)
    assert f.check_inputs(10.0, feats, Stamped(bad, 1, 10.0, 10.0)) == "state_invalid"
    far = RobotState(positions=np.full(6, 9.0), velocities=q, capture_time=10.0)
    assert f.check_inputs(10.0, feats, Stamped(far, 1, 10.0, 10.0)) == "state_invalid"
    short = RobotState(positions=np.zeros(5), velocities=np.zeros(5), capture_time=10.0)
    assert f.check_inputs(10.0, feats, Stamped(short, 1, 10.0, 10.0)) == "state_invalid"
    # And the action filter never clamps against a NaN measurement.
    assert f.filter_action(np.zeros((1, 6)), bad).reason == "state_invalid"


# -- values that would switch an interlock off ---------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_feature_age": 1e308},
        {"max_state_age": 1e308},
        {"max_state_age": math.nan},
        {"max_sensor_age": math.inf},
        {"velocity_scale": 2.0},
        {"max_future_skew": 10.0},
    ],
)
def test_safety_limits_that_disable_an_interlock_are_refused(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        SafetyConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hz": 1e-300},
        {"hz": math.nan},
        {"vl_max_hz": 1e-300},
        {"stop_timeout": 1e308},
        {"warmup_timeout": math.inf},
        {"action_timeout": 1e9},
        {"command_timeout": -1.0},
        {"status_interval": 1e-9},
        {"max_consecutive_failures": 0},
    ],
)
def test_controller_settings_outside_their_range_are_refused(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        ControllerConfig(**kwargs)


# -- exits -----------------------------------------------------------------------------


@virtual
async def test_a_stop_that_never_returns_cannot_hang_the_exit(controller_harness):
    robot = FakeRobot(FakeRobotConfig(stop_hangs=True))
    h = controller_harness(robot=robot, stop_timeout=0.5)
    loop = asyncio.get_running_loop()
    s = await h.run(3)
    # Two bounded waits at most: the controller's stop and the driver's own exit.
    assert robot.stops >= 1
    assert loop.time() - (h.telemetry.ended or 0) <= 2 * 0.5 + 0.01
    assert s["errors"].get("robot_stop_timeout") == 1
    assert s["errors"].get("exit_timeout") == 1


@virtual
async def test_stop_requested_while_connecting_ends_the_connect_and_stops_the_robot(
    controller_harness,
):
    robot = FakeRobot(FakeRobotConfig(connect_delay=30))
    h = controller_harness(robot=robot)
    loop = asyncio.get_running_loop()
    h.start(10)
    await asyncio.sleep(1.0)
    assert h.controller.phase is Phase.CONFIGURING
    t_req = loop.time()
    h.controller.request_stop("signal SIGTERM")
    s = await h.task
    assert loop.time() - t_req < 0.01  # not the 29 s left of the connect
    assert robot.stops == 1
    assert s["actions_sent"] == 0
    assert h.controller.phase is Phase.STOPPED


class _SlowLoadPolicy(FakePolicy):
    def load(self, device, robot, control_period):
        self.burn(60.0)  # a 60 s model load, in virtual time
        super().load(device, robot, control_period)


@virtual
async def test_stop_requested_while_the_policy_loads_is_honoured_at_once(controller_harness):
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot, policy=_SlowLoadPolicy())
    loop = asyncio.get_running_loop()
    h.start(10)
    await asyncio.sleep(5.0)
    t_req = loop.time()
    h.controller.request_stop("signal SIGINT")
    s = await h.task
    assert loop.time() - t_req < 0.01
    assert robot.stops >= 1
    assert s["actions_sent"] == 0


@virtual
async def test_a_second_cancel_while_stopping_still_lets_the_stop_finish(controller_harness):
    class SlowStopRobot(FakeRobot):
        stop_finished = False

        async def stop(self) -> None:
            await asyncio.sleep(0.3)
            await super().stop()
            self.stop_finished = True

    robot = SlowStopRobot(FakeRobotConfig())
    h = controller_harness(robot=robot, stop_timeout=1.0)
    await _active_for(h, duration=None)
    h.controller.request_stop("first Ctrl-C")
    await asyncio.sleep(0.1)  # now inside robot.stop()
    h.task.cancel()  # second Ctrl-C
    with pytest.raises(asyncio.CancelledError):
        await h.task
    assert robot.stop_finished


@virtual
async def test_a_command_that_never_returns_is_a_lost_link_not_a_hung_loop(controller_harness):
    robot = WedgeableRobot(FakeRobotConfig())
    h = controller_harness(robot=robot)
    await _active_for(h, duration=6)
    robot.wedged = True
    s = await h.task  # ends on time: the control task was never stuck
    assert s["errors"].get("command_timeout", 0) >= 40
    assert s["holds"].get("robot_disconnected", 0) >= 40
    assert s["missed_ticks"] == 0  # half a period at most per command: the tick still fits


@virtual
async def test_only_an_explicit_resume_restarts_after_an_operator_stop(controller_harness):
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot)
    # what SIGUSR1 does in the CLI: Controller.request_resume()
    _, t_stop, t_resume = await _run_with_fault(
        h, robot.operator_stop, h.controller.request_resume, at=1.0, lasting=4.0, duration=12
    )
    assert robot.resumes == 1
    assert _commands_between(robot, t_stop, t_resume) == 0
    assert _commands_between(robot, t_resume, t_resume + 1.0) > 5


@virtual
async def test_resume_is_refused_during_a_protective_stop(controller_harness, caplog):
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot)
    t_stop = await _active_for(h, duration=6)
    robot.trigger_protective_stop()
    assert await h.controller.resume_robot() is False
    await h.task
    assert robot.resumes == 0
    assert _commands_between(robot, t_stop, t_stop + 10) == 0
    assert "robot refused to resume" in caplog.text


@virtual
async def test_the_heap_loaded_before_active_is_frozen_out_of_full_collections(
    controller_harness,
):
    import gc

    gc.unfreeze()
    h = controller_harness()
    h.start(2)
    await h.until_active()
    assert gc.get_freeze_count() > 0  # models and drivers loaded: no full GC walks them
    await h.task
    # Thawed at the end: frozen cycles are never collected, so a process running one
    # controller after another (controller.collect) kept every run's objects.
    assert gc.get_freeze_count() == 0


@virtual
async def test_a_finished_run_can_be_collected():
    """The controller is full of reference cycles (observers, tasks, telemetry): once its
    run ended and nothing refers to it, a collection frees it with its ~8 MB of rings."""
    import gc
    import weakref

    from controller.harness import ControllerHarness

    h = ControllerHarness()  # not the fixture's: that one keeps its harnesses
    await h.run(1)
    ref = weakref.ref(h.controller)
    del h
    gc.collect()
    assert ref() is None


@virtual
async def test_the_first_active_tick_never_sees_a_state_from_before_the_gc_pause(
    controller_harness, virtual_clock, monkeypatch
):
    """Freezing the heap blocks the loop (~0.1 s with torch loaded): ACTIVE must start after it."""
    from controller.runtime import Controller

    def blocking_freeze() -> None:
        virtual_clock.advance(0.15)  # the loop was blocked this long, as by a full collection

    monkeypatch.setattr(Controller, "_freeze_heap", staticmethod(blocking_freeze))
    h = controller_harness()
    s = await h.run(2)
    assert s["holds"] == {}
    assert s["actions_sent"] == s["ticks"] == 20


@virtual
async def test_a_hold_that_never_returns_is_bounded_too(controller_harness):
    """A wedged link wedges `hold()` as well: each hold episode costs at most command_timeout."""

    class WedgedHold(WedgeableRobot):
        async def hold(self) -> None:
            if self.wedged:
                await asyncio.Event().wait()
            await super().hold()

    robot = WedgedHold(FakeRobotConfig())
    h = controller_harness(robot=robot)
    await _active_for(h, duration=6)
    robot.wedged = True
    s = await h.task  # ends on time: neither the command nor the hold stuck the control task
    assert s["errors"].get("hold_timeout", 0) >= 1
    assert s["errors"].get("command_timeout", 0) >= 20
    assert s["holds"].get("robot_disconnected", 0) >= 20


class _WritesState(FakePolicy):
    """A policy that, from its `start`-th call, writes its target into `state.positions`."""

    def __init__(self, start: int) -> None:
        super().__init__()
        self.start = start
        self.calls = 0

    def act(self, features, state, sensors):
        self.calls += 1
        if self.calls < self.start:
            return super().act(features, state, sensors)
        target = np.asarray(state.positions, dtype=np.float64) + 0.5  # far beyond one step
        state.positions[:] = target  # then the jump would look like no step at all
        return target[None, :]


@virtual
async def test_a_policy_that_writes_into_the_state_is_stopped_at_warm_up(controller_harness):
    h = controller_harness(policy=_WritesState(start=1))
    with pytest.raises(WarmupError, match=r"act\(\) wrote into the robot state"):
        await h.run(2)
    assert not h.robot.commands


@virtual
async def test_a_policy_that_writes_into_the_state_never_gets_a_command_out(controller_harness):
    """The step limit is judged from a copy of the positions the checks accepted, and a
    policy caught writing into its state holds the tick and counts as a failing policy:
    no command is computed from positions it changed (the harness's invariants judge
    every step from the state as it was before `act`), and the run ends naming why."""
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot, policy=_WritesState(start=20))
    with pytest.raises(PolicyError, match=r"act\(\) wrote into the robot state"):
        await h.run(10)
    s = h.controller.telemetry.summary()
    assert s["holds"].get("action_error", 0) == h.config.max_consecutive_failures - 1
    assert s["errors"].get("action") == h.config.max_consecutive_failures
