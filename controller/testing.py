"""The async test harness: virtual clock, simulated executor, fakes, a running controller.

Registered as a pytest plugin (entry point `pytest11`), so anyone who installs
this package — a driver-plugin author included — gets, in any pytest-asyncio
test:

* the `virtual_clock` fixture or `@pytest.mark.virtual_clock` marker: the test
  runs on a `VirtualTimeLoop`, where sleeping costs no real time and every
  deadline is hit exactly (trio's autojump clock, for asyncio);
* `fake_robot`, `fake_camera`, `fake_policy`, `sim_executor` fixtures;
* `controller_harness`: builds a `Controller` from fakes (or your own drivers)
  and runs it for N virtual seconds, returning the summary; every run is
  checked against the invariants of `controller.invariants` (no command from
  stale inputs, none before warm-up, one per tick at most, `robot.stop()` on
  every exit path).

Outside pytest, `controller.clock.run_virtual(main)` runs any coroutine on
virtual time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from controller.clock import VirtualClock, VirtualTimeLoop
from controller.harness import ControllerHarness, SimulatedExecutor
from drivers.fake import FakeCamera, FakeRobot
from drivers.fake.config import FakeCameraConfig, FakeRobotConfig
from policies.fake import FakePolicy

__all__ = ["ControllerHarness", "SimulatedExecutor"]

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
    for h in made:
        if h.task is not None:
            h.check()  # a run a test left unfinished is still held to the invariants
