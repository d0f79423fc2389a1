"""`within`: a bound armed only when the call waits, and otherwise the same as `asyncio.timeout`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

import drivers.bounded as bounded
from drivers.bounded import within

pytestmark = pytest.mark.virtual_clock


@pytest.fixture
def armed(monkeypatch) -> list[float]:
    """Every bound `within` arms (the seconds), by counting its `asyncio.timeout` calls."""
    calls: list[float] = []
    real = asyncio.timeout

    def counting(delay: float | None) -> Any:
        calls.append(delay)
        return real(delay)

    monkeypatch.setattr(bounded.asyncio, "timeout", counting)
    return calls


async def returns_at_once(value: int) -> int:
    return value


async def test_a_call_that_never_waits_arms_no_timer(virtual_clock, armed):
    assert await within(returns_at_once(7), 0.1) == 7
    assert armed == []


async def test_an_error_raised_before_any_wait_propagates_as_is(virtual_clock, armed):
    async def refuses() -> None:
        raise ConnectionError("link down")

    with pytest.raises(ConnectionError, match="link down"):
        await within(refuses(), 0.1)
    assert armed == []


async def test_a_call_that_waits_is_bounded_and_returns_its_value(virtual_clock, armed):
    async def waits() -> str:
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # a bare yield too
        await asyncio.sleep(0.01)
        return "done"

    assert await within(waits(), 0.1) == "done"
    assert armed == [0.1]


async def test_a_hung_call_times_out_and_its_cleanup_runs(virtual_clock):
    cleaned = []

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(True)

    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        await within(hangs(), 0.25)
    assert loop.time() - start == pytest.approx(0.25)
    assert cleaned == [True]


async def test_a_call_may_wait_again_while_it_is_cancelled(virtual_clock):
    """Its cleanup awaits (a driver closing a socket): the bound's cancellation waits for it."""
    steps = []

    async def slow_cleanup() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            steps.append("cancelled")
            await asyncio.sleep(0.01)
            steps.append("cleaned")
            raise

    with pytest.raises(TimeoutError):
        await within(slow_cleanup(), 0.1)
    assert steps == ["cancelled", "cleaned"]


async def test_a_caller_cancelled_meanwhile_is_cancelled_not_timed_out(virtual_clock):
    reached = asyncio.Event()
    cleaned = []

    async def waits() -> None:
        reached.set()
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append(True)

    task = asyncio.ensure_future(within(waits(), 5.0))
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]


async def test_a_future_is_awaited_under_the_bound(virtual_clock, armed):
    fut = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, fut.set_result, 3)
    assert await within(fut, 0.1) == 3
    assert armed == [0.1]
    never = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await within(never, 0.1)


async def test_a_call_that_swallows_the_cancellation_returns_its_value(virtual_clock):
    """As with `asyncio.timeout`: a call that catches the cancellation and returns is not a timeout."""

    async def stubborn() -> str:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        return "kept"

    async def reference() -> str:
        async with asyncio.timeout(0.1):
            return await stubborn()

    assert await within(stubborn(), 0.1) == await reference()
