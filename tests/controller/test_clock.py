from __future__ import annotations

import asyncio
import time

import pytest

from controller.clock import (
    VirtualTimeLoop,
    controller_clock,
    keeps_real_time,
    precise_time,
    run_virtual,
)


@pytest.mark.virtual_clock
async def test_an_hour_of_sleep_costs_no_real_time(virtual_clock):
    t_real = time.perf_counter()
    start = virtual_clock.time()
    await asyncio.sleep(3600)
    assert virtual_clock.time() - start == pytest.approx(3600)
    assert time.perf_counter() - t_real < 5


async def test_thread_work_costs_no_virtual_time(virtual_clock):
    start = virtual_clock.time()
    await asyncio.to_thread(time.sleep, 0.05)
    assert virtual_clock.time() == start


def test_run_virtual_outside_pytest():
    async def main():
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        t = loop.time()
        await asyncio.gather(asyncio.sleep(10), asyncio.sleep(5))
        return loop.time() - t

    assert run_virtual(main) == pytest.approx(10)


async def test_plain_tests_keep_the_real_loop():
    assert not isinstance(asyncio.get_running_loop(), VirtualTimeLoop)


# -- the controller clock -------------------------------------------------------


async def test_the_controller_clock_is_the_virtual_one_under_the_harness(virtual_clock):
    loop = asyncio.get_running_loop()
    assert not keeps_real_time(loop)
    clock = controller_clock()
    assert clock() == virtual_clock.time()
    await asyncio.sleep(1.5)
    assert clock() == virtual_clock.time()


def _read_between_monotonic_ns() -> tuple[int, float, int]:
    before = time.monotonic_ns()
    value = controller_clock()()
    after = time.monotonic_ns()
    return before, value, after


async def test_on_asyncios_loop_it_is_the_precise_monotonic_clock():
    loop = asyncio.get_running_loop()
    assert keeps_real_time(loop)
    assert controller_clock(loop) is precise_time
    before, value, after = _read_between_monotonic_ns()
    # The same clock as time.monotonic() (drivers' stamps), read in nanoseconds.
    assert before / 1e9 <= value <= after / 1e9


def test_under_uvloop_it_is_the_precise_clock_not_uvloops_milliseconds():
    uvloop = pytest.importorskip("uvloop")

    async def main() -> tuple[bool, object, tuple[int, float, int], float, float]:
        loop = asyncio.get_running_loop()
        loop_before = loop.time()
        read = _read_between_monotonic_ns()
        return keeps_real_time(loop), controller_clock(loop), read, loop_before, loop.time()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        real, clock, (before, value, after), loop_before, loop_after = runner.run(main())
    assert real and clock is precise_time
    assert before / 1e9 <= value <= after / 1e9
    # uvloop's own time is the same CLOCK_MONOTONIC (libuv's, in whole milliseconds),
    # so a driver's stamp from it and a controller reading are comparable.
    assert loop_before <= value + 1e-9 and value - loop_after < 1.0


def test_a_loop_with_a_time_of_its_own_keeps_it():
    class OwnTime(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return 42.0

    loop = OwnTime()
    try:
        assert not keeps_real_time(loop)
        assert controller_clock(loop)() == 42.0
    finally:
        loop.close()
