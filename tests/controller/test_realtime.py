"""Real-time scheduling of the control loop's thread: granted, refused, restored, and where it applies."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from controller.errors import ConfigError, PolicyError
from controller.executor import Lane
from controller.harness import SimulatedExecutor
from controller.invariants import RobotProxy
from controller.realtime import RealtimeGrant, os_sched, realtime_thread
from controller.runtime import ControllerConfig
from drivers.fake import FakeRobot
from drivers.fake.config import FakeRobotConfig
from policies.fake import FakePolicy
from tests.controller.cli_util import one_error_line, run_cli

NORMAL, FIFO, RESET = 0, 1, 0x40000000


class FakeSched:
    """The calling thread's policy as a pair; `refuse` makes raising it fail as without privilege."""

    fifo = FIFO
    reset_on_fork = RESET

    def __init__(
        self, *, refuse: bool = False, limit: int | None = 0, sticky_reset: bool = False
    ) -> None:
        #: Each thread's (policy, priority), by id (0: the calling thread, here the test's).
        self.threads: dict[int, tuple[int, int]] = {}
        self.refuse = refuse
        self.limit = limit
        #: Like an unprivileged thread: the reset-on-fork flag, once set, cannot be cleared.
        self.sticky_reset = sticky_reset
        self.calls: list[tuple[int, int]] = []

    def get(self, tid: int) -> tuple[int, int]:
        return self.threads.get(tid, (NORMAL, 0))

    def set(self, tid: int, policy: int, priority: int) -> None:
        self.calls.append((policy, priority))
        if self.refuse and policy & FIFO:
            raise PermissionError(1, "Operation not permitted")
        if self.sticky_reset and self.get(tid)[0] & RESET and not policy & RESET:
            raise PermissionError(1, "Operation not permitted")
        self.threads[tid] = (policy, priority)

    @property
    def policy(self) -> tuple[int, int]:
        """The calling thread's."""
        return self.get(0)

    def rtprio_limit(self) -> int | None:
        return self.limit

    @property
    def realtime(self) -> bool:
        return bool(self.policy[0] & FIFO)

    def is_realtime(self, tid: int) -> bool:
        return bool(self.get(tid)[0] & FIFO)


# -- the context manager ------------------------------------------------------------------


def test_granted_while_inside_then_the_previous_policy_back():
    sched = FakeSched()
    with realtime_thread(50, sched) as grant:
        assert sched.policy == (FIFO | RESET, 50)
        assert grant == RealtimeGrant(50, True, grant.detail)
        assert "SCHED_FIFO priority 50" in grant.detail
    assert sched.policy == (NORMAL, 0)


def test_restored_when_the_body_raises():
    sched = FakeSched()
    with pytest.raises(RuntimeError, match="boom"), realtime_thread(10, sched):
        assert sched.realtime
        raise RuntimeError("boom")
    assert sched.policy == (NORMAL, 0)


def test_zero_asks_nothing_of_the_os():
    sched = FakeSched()
    with realtime_thread(0, sched) as grant:
        assert not grant.granted and grant.requested == 0
    assert sched.calls == []


def test_a_refusal_names_the_privilege_and_changes_nothing(caplog):
    sched = FakeSched(refuse=True, limit=0)
    with caplog.at_level(logging.WARNING), realtime_thread(50, sched) as grant:
        assert not sched.realtime
    assert not grant.granted
    assert "CAP_SYS_NICE" in grant.detail
    assert "rtprio limit to at least 50" in grant.detail
    assert "ulimit -r, now 0" in grant.detail
    assert "normal scheduler" in grant.detail
    assert sched.calls == [(FIFO | RESET, 50)]  # no restore of what never changed
    assert grant.detail in caplog.text


def test_a_refusal_with_no_limit_says_unlimited():
    with realtime_thread(5, FakeSched(refuse=True, limit=None)) as grant:
        assert "now unlimited" in grant.detail


def test_an_os_without_sched_fifo_is_not_an_error():
    with realtime_thread(50, None) as grant:
        assert not grant.granted
        assert "needs Linux" in grant.detail


@pytest.mark.parametrize("priority", [-1, 100])
def test_out_of_range_priorities_are_refused(priority):
    with pytest.raises(ValueError, match=r"0\.\.99"), realtime_thread(priority, FakeSched()):
        pass


def test_restore_keeps_the_reset_flag_when_it_cannot_be_cleared():
    sched = FakeSched(sticky_reset=True)
    with realtime_thread(20, sched):
        pass
    assert sched.policy == (NORMAL | RESET, 0)  # the normal policy, flag kept


def test_a_failed_restore_is_logged_not_raised(caplog):
    sched = FakeSched()
    with caplog.at_level(logging.ERROR), realtime_thread(20, sched):
        sched.refuse = True
        sched.sticky_reset = True
        sched.set = _always_refuse  # type: ignore[method-assign]
    assert "could not restore" in caplog.text


def _always_refuse(tid: int, policy: int, priority: int) -> None:
    raise PermissionError(1, "Operation not permitted")


# -- the OS's own calls --------------------------------------------------------------------


@pytest.mark.skipif(os_sched() is None, reason="no SCHED_FIFO on this OS")
def test_on_the_os_only_the_thread_changes_and_its_children_get_the_normal_policy():
    """In a thread of its own (never the test runner's): granted where privileged, else named."""
    seen: dict[str, Any] = {}

    def child() -> None:
        seen["child"] = os.sched_getscheduler(0)

    def body() -> None:
        before = os.sched_getscheduler(0)
        with realtime_thread(1, os_sched()) as grant:
            seen["grant"] = grant
            seen["inside"] = os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
            t = threading.Thread(target=child)
            t.start()
            t.join()
        seen["after"] = os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
        seen["before"] = before

    t = threading.Thread(target=body)
    t.start()
    t.join()
    main = os.sched_getscheduler(0)
    grant = seen["grant"]
    if grant.granted:
        assert seen["inside"] == os.SCHED_FIFO
        assert seen["child"] == os.SCHED_OTHER  # SCHED_RESET_ON_FORK
    else:
        assert "rtprio limit" in grant.detail
        assert seen["inside"] == seen["before"]
    assert seen["after"] == seen["before"]
    assert os.sched_getscheduler(0) == main  # the runner's thread never changed


# -- the controller ---------------------------------------------------------------------------


class StopWatch(RobotProxy):
    """Records whether the loop thread was real-time when the robot was stopped."""

    def __init__(self, sched: FakeSched) -> None:
        super().__init__(FakeRobot(FakeRobotConfig()))
        self.sched = sched
        self.stopped_realtime: list[bool] = []

    async def stop(self) -> None:
        self.stopped_realtime.append(self.sched.realtime)
        await super().stop()


@pytest.mark.virtual_clock
async def test_the_loop_ticks_real_time_and_stops_the_robot_before_leaving_it(
    controller_harness, virtual_clock
):
    sched = FakeSched()
    robot = StopWatch(sched)
    h = controller_harness(robot=robot, sched=sched, rt_priority=40)
    during: list[bool] = []
    h.controller.observers.append(
        lambda event, _t, _d: during.append(sched.realtime) if event == "tick" else None
    )
    s = await h.run(1)
    assert during and all(during)
    assert robot.stopped_realtime == [True]  # the stop went out at the same priority
    assert sched.policy == (NORMAL, 0)
    assert s["realtime"]["granted"] is True and s["realtime"]["requested"] == 40


@pytest.mark.virtual_clock
async def test_not_before_the_first_tick(controller_harness, virtual_clock):
    """Loading and warming up run at the normal priority: a slow load never holds a core."""
    sched = FakeSched()
    at_load: list[bool] = []
    policy = FakePolicy()
    load = policy.load

    def watched_load(*args: Any) -> Any:
        at_load.append(sched.realtime)
        return load(*args)

    policy.load = watched_load  # type: ignore[method-assign]
    h = controller_harness(policy=policy, sched=sched, rt_priority=40)
    await h.run(0.5)
    assert at_load == [False]


@pytest.mark.virtual_clock
async def test_restored_when_the_run_fails(controller_harness, virtual_clock):
    sched = FakeSched()
    policy = FakePolicy(vl_latency=0.05)
    h = controller_harness(policy=policy, sched=sched, rt_priority=40, max_consecutive_failures=3)
    h.start(30)
    await h.until_active()
    await asyncio.sleep(0.5)
    assert sched.realtime
    policy.fail_next_encodes = 100  # the VL lane fails until the run gives up
    with pytest.raises(PolicyError, match="VL encoding"):
        await h.task
    assert sched.policy == (NORMAL, 0)


@pytest.mark.virtual_clock
async def test_on_virtual_time_the_test_process_is_never_made_real_time(
    controller_harness, virtual_clock
):
    before = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    s = await controller_harness(rt_priority=40).run(0.5)
    assert s["realtime"] == {
        "requested": 40,
        "granted": False,
        "detail": "not applied: the loop runs on virtual time",
    }
    if before is not None:
        assert os.sched_getscheduler(0) == before


@pytest.mark.virtual_clock
async def test_off_by_default(controller_harness, virtual_clock):
    sched = FakeSched()
    s = await controller_harness(sched=sched).run(0.5)
    assert sched.calls == []
    assert s["realtime"]["requested"] == 0 and not s["realtime"]["granted"]


@pytest.mark.parametrize("value", [-1, 100, 1.5, True])
def test_the_setting_is_a_priority(value):
    with pytest.raises(ConfigError, match="rt_priority"):
        ControllerConfig(rt_priority=value)


def test_the_cli_flag_names_a_bad_priority(capsys):
    code, _, err = run_cli(capsys, "--rt-priority", "120", "--duration", "1")
    line = one_error_line(err)
    assert code != 0
    assert "rt-priority" in line and "120" in line


# -- the action lane's thread -------------------------------------------------------------------


class OwnLaneThread(SimulatedExecutor):
    """The simulated executor, reporting a thread of its own for the action lane (as the real one)."""

    LANE = 424242

    async def run_timed(self, lane: Lane, fn: Any, *args: Any) -> tuple[Any, float]:
        if fn is threading.get_native_id:
            return (self.LANE if lane is Lane.ACTION else threading.get_native_id()), 0.0
        return await super().run_timed(lane, fn, *args)


@pytest.mark.virtual_clock
async def test_the_action_lane_runs_real_time_too_and_gets_its_policy_back(
    controller_harness, virtual_clock
):
    """When `act` goes to the lane the tick waits for it: the lane must not wait for a CPU."""
    sched = FakeSched()
    robot = StopWatch(sched)
    h = controller_harness(executor=OwnLaneThread(), robot=robot, sched=sched, rt_priority=40)
    lane: list[bool] = []
    h.controller.observers.append(
        lambda event, _t, _d: (
            lane.append(sched.is_realtime(OwnLaneThread.LANE)) if event == "tick" else None
        )
    )
    s = await h.run(1)
    assert lane and all(lane)
    assert sched.get(OwnLaneThread.LANE) == (NORMAL, 0)
    assert "and the action lane's thread" in s["realtime"]["detail"]


@pytest.mark.virtual_clock
async def test_a_lane_on_the_loops_own_thread_is_not_asked_twice(controller_harness, virtual_clock):
    sched = FakeSched()
    s = await controller_harness(sched=sched, rt_priority=40).run(0.5)  # jobs run on the loop
    assert sched.calls == [(FIFO | RESET, 40), (NORMAL, 0)]
    assert "action lane" not in s["realtime"]["detail"]


@pytest.mark.skipif(os_sched() is None, reason="no SCHED_FIFO on this OS")
def test_a_real_run_makes_the_loop_and_action_lane_threads_real_time_then_normal_again():
    """Real time, the real executor, the OS's own calls: granted where privileged, else named."""
    from controller.executor import ComputeExecutor
    from controller.harness import ControllerHarness

    seen: list[tuple[int, int]] = []
    lanes: dict[str, int] = {}

    async def main() -> dict[str, Any]:
        executor = ComputeExecutor("cpu")
        h = ControllerHarness(
            executor=executor,
            policy=FakePolicy(vl_latency=0.01, action_latency=0.001, burn=lambda _s: None),
            rt_priority=1,
            hz=20,
            spin=0,
            check_invariants=False,
        )

        def on_tick(event: str, _t: float, _d: Any) -> None:
            if event == "tick" and "action" in lanes:
                seen.append((os.sched_getscheduler(0), os.sched_getscheduler(lanes["action"])))

        async def find_lane() -> None:
            await h.until_active()
            lanes["action"] = await executor.run(Lane.ACTION, threading.get_native_id)

        h.controller.observers.append(on_tick)
        finder = asyncio.ensure_future(find_lane())
        summary = await h.run(0.5)
        await finder
        lanes["loop after"] = os.sched_getscheduler(0)
        return summary

    def body() -> dict[str, Any]:
        return asyncio.run(main())

    with ThreadPoolExecutor(1) as pool:  # never the test runner's own thread
        summary = pool.submit(body).result(timeout=60)
    grant = summary["realtime"]
    reset = getattr(os, "SCHED_RESET_ON_FORK", 0)
    assert seen
    assert lanes["loop after"] == os.SCHED_OTHER  # the loop's thread is normal again
    if grant["granted"]:
        assert "and the action lane's thread" in grant["detail"]
        assert all(loop & ~reset == os.SCHED_FIFO for loop, _ in seen)
        assert all(lane & ~reset == os.SCHED_FIFO for _, lane in seen)
    else:
        assert "rtprio limit" in grant["detail"]
        assert all(loop == lane == os.SCHED_OTHER for loop, lane in seen)


class LaneCannotSay(SimulatedExecutor):
    """An executor whose action lane fails the thread-id question (and nothing else)."""

    async def run_timed(self, lane: Lane, fn: Any, *args: Any) -> tuple[Any, float]:
        if fn is threading.get_native_id:
            raise RuntimeError("lane gone")
        return await super().run_timed(lane, fn, *args)


@pytest.mark.virtual_clock
async def test_a_lane_that_cannot_say_its_thread_is_left_as_it_is_and_the_run_goes_on(
    controller_harness, virtual_clock, caplog
):
    sched = FakeSched()
    h = controller_harness(executor=LaneCannotSay(), sched=sched, rt_priority=40)
    with caplog.at_level(logging.WARNING):
        s = await h.run(1)
    assert s["ticks"] == 10 and s["realtime"]["granted"]
    assert "action lane" not in s["realtime"]["detail"]
    assert "left as it is (RuntimeError: lane gone)" in caplog.text
    assert sched.policy == (NORMAL, 0)
