"""The real two-lane executor, on real threads and real time (generous bounds)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from controller.executor import ComputeExecutor, Lane, LaneBusy


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


async def test_run_timed_reports_the_jobs_own_time_and_run_inline_runs_on_this_thread():
    ex = ComputeExecutor("cpu")
    await ex.start()
    try:
        value, seconds = await ex.run_timed(Lane.ACTION, time.sleep, 0.02)
        assert value is None and seconds >= 0.02
        caller = threading.get_ident()
        ident, seconds = ex.run_inline(Lane.ACTION, threading.get_ident)
        assert ident == caller and seconds >= 0
        assert ex.jobs[Lane.ACTION] == 2
        with pytest.raises(ValueError, match="bad"):
            ex.run_inline(Lane.ACTION, _raise_bad)
        assert ex.failures[Lane.ACTION] == 1
    finally:
        await ex.close()
    with pytest.raises(RuntimeError, match="closed"):
        ex.run_inline(Lane.ACTION, lambda: None)


def _raise_bad() -> None:
    raise ValueError("bad")


async def test_run_inline_refuses_while_the_lanes_worker_still_runs_a_job():
    ex = ComputeExecutor("cpu")
    await ex.start()
    try:
        started, release = threading.Event(), threading.Event()

        def abandoned() -> str:  # an action whose await timed out, still running
            started.set()
            release.wait(5)
            return "late"

        job = asyncio.create_task(ex.run(Lane.ACTION, abandoned))
        await asyncio.to_thread(started.wait, 5)
        with pytest.raises(LaneBusy):
            ex.run_inline(Lane.ACTION, lambda: "inline")
        assert ex.run_inline(Lane.VL, lambda: "other lane")[0] == "other lane"
        release.set()
        assert await job == "late"
        assert ex.run_inline(Lane.ACTION, lambda: "inline")[0] == "inline"
    finally:
        await ex.close()


def test_the_action_stream_asks_for_the_greatest_priority_the_device_offers():
    from controller.executor import stream_priority

    assert stream_priority(Lane.ACTION, (0, -5)) == -5  # CUDA: lower numbers are higher
    assert stream_priority(Lane.VL, (0, -5)) == 0
    assert stream_priority(Lane.ACTION, (0, -3)) == -3
    assert stream_priority(Lane.ACTION, (0, 0)) == 0  # a device without stream priorities
