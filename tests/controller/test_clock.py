from __future__ import annotations

import asyncio
import time

import pytest

from controller.clock import VirtualTimeLoop, run_virtual


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
