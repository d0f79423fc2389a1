"""The real two-lane executor, on real threads and real time (generous bounds)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from controller.executor import ComputeExecutor, Lane


async def test_an_action_is_not_queued_behind_a_long_encode():
    ex = ComputeExecutor("cpu")
    await ex.start()
    try:
        started = threading.Event()

        def long_encode():
            started.set()
            time.sleep(1.0)
            return "features"

        vl = asyncio.create_task(ex.run(Lane.VL, long_encode))
        await asyncio.to_thread(started.wait, 5)
        t0 = time.perf_counter()
        assert await ex.run(Lane.ACTION, lambda: "action") == "action"
        assert time.perf_counter() - t0 < 0.5
        assert not vl.done()
        assert await vl == "features"
    finally:
        await ex.close()


async def test_errors_come_back_and_the_worker_lives_on():
    ex = ComputeExecutor("cpu")
    await ex.start()
    try:

        def fail():
            raise ValueError("bad tensor")

        with pytest.raises(ValueError, match="bad tensor"):
            await ex.run(Lane.ACTION, fail)
        assert await ex.run(Lane.ACTION, lambda x: x + 1, 1) == 2
        assert ex.failures[Lane.ACTION] == 1
    finally:
        await ex.close()
        await ex.close()  # harmless twice
    with pytest.raises(RuntimeError, match="closed"):
        await ex.run(Lane.VL, lambda: None)


async def test_the_loop_keeps_ticking_while_a_lane_works():
    ex = ComputeExecutor("cpu")
    await ex.start()
    try:
        job = asyncio.create_task(ex.run(Lane.VL, time.sleep, 0.5))
        ticks = 0
        while not job.done():
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks >= 10
    finally:
        await ex.close()


def test_unknown_device_is_refused():
    from controller.executor import resolve_device

    with pytest.raises(RuntimeError, match="unknown device"):
        resolve_device("tpu")
