"""The async test harness: virtual clock, simulated executor, fakes, a running controller.

Registered as a pytest plugin (entry point `pytest11`), so anyone who installs
this package — a driver-plugin author included — gets, in any pytest-asyncio
test:

* the `virtual_clock` fixture or `@pytest.mark.virtual_clock` marker: the test
  runs on a `VirtualTimeLoop`, where sleeping costs no real time and every
  deadline is hit exactly (trio's autojump clock, for asyncio);
* `fake_robot`, `fake_camera`, `fake_policy`, `sim_executor` fixtures;
* `controller_harness`: builds a `Controller` from fakes (or your own drivers)
  and runs it for N virtual seconds, returning the summary.

Outside pytest, `controller.clock.run_virtual(main)` runs any coroutine on
virtual time.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pytest

from controller.clock import VirtualClock, VirtualTimeLoop
from controller.executor import Lane
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
    """

    def __init__(self, device: str = "sim") -> None:
        self.device = device
        self._locks = {lane: asyncio.Lock() for lane in Lane}
        self.jobs = {lane: 0 for lane in Lane}
        self.closed = False

    def charge(self, seconds: float) -> None:
        """Called by a fake model from inside a job: this job takes `seconds` more."""
        cost = _job_cost.get()
        if cost is None:
            raise RuntimeError("SimulatedExecutor.charge() called outside a job")
        cost.append(seconds)

    async def start(self) -> str:
        return self.device

    async def run(self, lane: Lane, fn: Callable[..., T], *args: Any) -> T:
        if self.closed:
            raise RuntimeError("executor closed")
        async with self._locks[lane]:
            self.jobs[lane] += 1
            cost: list[float] = []
            token = _job_cost.set(cost)
            try:
                result = fn(*args)
            except Exception:
                await asyncio.sleep(sum(cost))
                raise
            finally:
                _job_cost.reset(token)
            await asyncio.sleep(sum(cost))
            return result

    async def close(self) -> None:
        self.closed = True


class ControllerHarness:
    """Builds a controller from fakes (any part replaceable) and runs it on the current loop."""

    def __init__(
        self,
        *,
        robot: RobotDriver | None = None,
        cameras: Sequence[CameraDriver] | None = None,
        policy: Policy | None = None,
        sensors: Sequence[SensorDriver] = (),
        executor: Any | None = None,
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
        self.controller = Controller(
            self.config,
            robot=self.robot,
            cameras=self.cameras,
            policy=self.policy,
            executor=self.executor,
            sensors=sensors,
        )
        self.task: asyncio.Task[dict[str, Any]] | None = None

    @property
    def telemetry(self) -> Any:
        return self.controller.telemetry

    async def run(self, duration: float) -> dict[str, Any]:
        """Run to completion for `duration` seconds of control; returns the summary."""
        return await self.controller.run(duration)

    def start(self, duration: float | None = None) -> asyncio.Task[dict[str, Any]]:
        """Run in the background; `await harness.until_active()` before poking the fakes."""
        self.task = asyncio.create_task(self.controller.run(duration), name="controller")
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


# -- pytest plugin ------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "virtual_clock: run this asyncio test on the controller's virtual-time loop"
    )


def _wants_virtual(item: Any) -> bool:
    if item.get_closest_marker("virtual_clock") is not None:
        return True
    return "virtual_clock" in getattr(item, "fixturenames", ())


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: Any
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """pytest-asyncio hook: virtual-time loop for tests that ask for it, the stock loop otherwise."""
    if _wants_virtual(item):
        return {"virtual": lambda: VirtualTimeLoop(VirtualClock())}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
async def virtual_clock() -> VirtualClock:
    """The running loop's virtual clock (the test runs on virtual time)."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualTimeLoop):
        raise RuntimeError("virtual_clock needs the VirtualTimeLoop (is pytest-asyncio installed?)")
    return loop.clock


@pytest.fixture
def fake_robot() -> FakeRobot:
    return FakeRobot(FakeRobotConfig())


@pytest.fixture
def fake_camera() -> FakeCamera:
    return FakeCamera(FakeCameraConfig())


@pytest.fixture
def sim_executor() -> SimulatedExecutor:
    return SimulatedExecutor()


@pytest.fixture
def fake_policy(sim_executor: SimulatedExecutor) -> FakePolicy:
    return FakePolicy(burn=sim_executor.charge)


@pytest.fixture
async def controller_harness() -> Any:
    """A factory: `controller_harness(**overrides) -> ControllerHarness`; stops what it started."""
    made: list[ControllerHarness] = []

    def make(**kwargs: Any) -> ControllerHarness:
        h = ControllerHarness(**kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        if h.task is not None and not h.task.done():
            h.task.cancel()
            try:
                await h.task
            except (asyncio.CancelledError, Exception):
                pass
