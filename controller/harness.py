"""The test harness without pytest: a simulated executor and a controller built from fakes.

`ControllerHarness` builds a `Controller` from the fakes (any part
replaceable by your own driver or policy), runs it on the current loop
(virtual time under the pytest plugin, `controller.clock.run_virtual`
elsewhere) and checks the invariants of `controller.invariants` on every
run: a harness test fails if the controller sent a command it must not
have, whatever the test itself asserts. `controller.testing` wraps this in
pytest fixtures; the fault matrix and the soak use it directly.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from controller.clock import VirtualTimeLoop
from controller.executor import Lane, LaneBusy
from controller.invariants import InvariantChecker, instrument
from controller.runtime import Controller, ControllerConfig
from drivers.base import CameraDriver, RobotDriver, SensorDriver
from drivers.fake import FakeCamera, FakeRobot
from drivers.fake.config import FakeCameraConfig, FakeRobotConfig
from policies.base import Policy
from policies.fake import FakePolicy

T = TypeVar("T")

_job_cost: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "_job_cost", default=None
)


class SimulatedExecutor:
    """An executor whose jobs cost virtual time, for tests on the virtual clock.

    Each lane runs one job at a time, like the real worker threads; a job runs
    inline (fakes are cheap) and then occupies its lane for the seconds it
    `charge()`d, so a 300 ms fake encode blocks the VL lane, and only it, for
    300 virtual ms.

    `handoff` (seconds, or a function drawing them per job) adds what
    reaching a worker thread and coming back costs to every lane job, without
    counting it in the job's own time: a contended GIL makes each of the two
    hand-offs wait up to its 5 ms switch interval. `run_inline` runs a job
    with no hand-off and blocks the loop for its cost, as a real inline call
    does: the virtual clock jumps by the cost with nothing else running.
    """

    def __init__(self, device: str = "sim", *, handoff: float | Callable[[], float] = 0.0) -> None:
        self.device = device
        self.handoff = handoff
        self._locks = {lane: asyncio.Lock() for lane in Lane}
        self.jobs = {lane: 0 for lane in Lane}
        self.closed = False

    def charge(self, seconds: float) -> None:
        """Called by a fake model from inside a job: this job takes `seconds` more."""
        cost = _job_cost.get()
        if cost is None:
            raise RuntimeError("SimulatedExecutor.charge() called outside a job")
        cost.append(seconds)

    def charged(self) -> float:
        """Called from inside a job: the seconds it has charged so far (VL latency padding)."""
        cost = _job_cost.get()
        if cost is None:
            raise RuntimeError("SimulatedExecutor.charged() called outside a job")
        return sum(cost)

    async def start(self) -> str:
        return self.device

    async def run(self, lane: Lane, fn: Callable[..., T], *args: Any) -> T:
        return (await self.run_timed(lane, fn, *args))[0]

    def _handoff(self) -> float:
        return self.handoff() if callable(self.handoff) else self.handoff

    async def run_timed(self, lane: Lane, fn: Callable[..., T], *args: Any) -> tuple[T, float]:
        """`run`, also returning the job's own cost (the hand-off excluded)."""
        if self.closed:
            raise RuntimeError("executor closed")
        async with self._locks[lane]:
            self.jobs[lane] += 1
            handoff = self._handoff()
            cost: list[float] = []
            token = _job_cost.set(cost)
            try:
                result = fn(*args)
            except Exception:
                await asyncio.sleep(sum(cost) + handoff)
                raise
            finally:
                _job_cost.reset(token)
            await asyncio.sleep(sum(cost) + handoff)
            return result, sum(cost)

    def run_inline(self, lane: Lane, fn: Callable[..., T], *args: Any) -> tuple[T, float]:
        """Run a job on the loop, blocking it for the job's cost (`LaneBusy` if the lane works)."""
        if self.closed:
            raise RuntimeError("executor closed")
        if self._locks[lane].locked():
            raise LaneBusy(f"the {lane.value} lane is still running a job")
        self.jobs[lane] += 1
        cost: list[float] = []
        token = _job_cost.set(cost)
        try:
            result = fn(*args)
        finally:
            _job_cost.reset(token)
            _block(sum(cost))
        return result, sum(cost)

    async def close(self) -> None:
        self.closed = True


def _block(seconds: float) -> None:
    """The loop is blocked for `seconds`: virtual time passes with nothing else running."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, VirtualTimeLoop):
        loop.clock.advance(seconds)
    elif seconds > 0:
        time.sleep(seconds)  # a real loop: blocked for real, as an inline job blocks it


class ControllerHarness:
    """Builds a controller from fakes (any part replaceable) and runs it on the current loop.

    `clock` replaces the controller clock (default: the running loop's, see
    `controller.clock.controller_clock`), `sched` the OS's thread scheduling
    calls behind `rt_priority` (`controller.realtime.Sched`); the other
    keywords are settings.
    """

    def __init__(
        self,
        *,
        robot: RobotDriver | None = None,
        cameras: Sequence[CameraDriver] | None = None,
        policy: Policy | None = None,
        sensors: Sequence[SensorDriver] = (),
        executor: Any | None = None,
        check_invariants: bool = True,
        clock: Callable[[], float] | None = None,
        policy_spec: Any | None = None,
        sched: Any | None = None,
        **config: Any,
    ) -> None:
        self.executor = executor or SimulatedExecutor()
        self.robot = robot or FakeRobot(FakeRobotConfig())
        self.cameras = list(cameras) if cameras is not None else [FakeCamera(FakeCameraConfig())]
        self.policy = policy or FakePolicy()
        if isinstance(self.executor, SimulatedExecutor) and isinstance(self.policy, FakePolicy):
            self.policy.burn = self.executor.charge
        config.setdefault("status_interval", 0)
        self.config = ControllerConfig(**config)
        self.sensors = list(sensors)
        self.controller = Controller(
            self.config,
            robot=self.robot,
            cameras=self.cameras,
            policy=self.policy,
            executor=self.executor,
            sensors=self.sensors,
            clock=clock,
            policy_spec=policy_spec,
            sched=sched,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Judges every command against the fakes' ground truth (see controller.invariants).
        self.checker: InvariantChecker | None = (
            instrument(self.controller, self.cameras, self._clock) if check_invariants else None
        )
        self._checked = False
        self.task: asyncio.Task[dict[str, Any]] | None = None

    def _clock(self) -> float:
        """The controller clock (the invariant checker compares with the controller's ticks)."""
        assert self._loop is not None, "the harness clock is read before the run started"
        return self.controller._now()

    def check(self) -> None:
        """Assert the invariants of the finished run (done by `run()` and `stop()` already)."""
        if self.checker is None or self._checked:
            return
        self._checked = True
        self.checker.finished()
        self.checker.assert_ok()

    async def _run_checked(self, duration: float | None) -> dict[str, Any]:
        self._loop = asyncio.get_running_loop()
        try:
            return await self.controller.run(duration)
        finally:
            self.check()

    @property
    def telemetry(self) -> Any:
        return self.controller.telemetry

    async def run(self, duration: float) -> dict[str, Any]:
        """Run to completion for `duration` seconds of control; returns the summary.

        Raises AssertionError if the run broke an invariant.
        """
        return await self._run_checked(duration)

    def start(self, duration: float | None = None) -> asyncio.Task[dict[str, Any]]:
        """Run in the background; `await harness.until_active()` before poking the fakes."""
        self.task = asyncio.create_task(self._run_checked(duration), name="controller")
        return self.task

    async def until_active(self) -> None:
        """Wait until the controller is ACTIVE (wrap in `asyncio.timeout` to bound it)."""
        from controller.runtime import Phase

        while self.controller.phase is not Phase.ACTIVE:
            if self.task is not None and self.task.done():
                self.task.result()
                raise RuntimeError("controller ended before becoming active")
            await asyncio.sleep(0.01)

    async def stop(self) -> dict[str, Any]:
        self.controller.request_stop("harness")
        assert self.task is not None
        return await self.task
