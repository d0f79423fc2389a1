from __future__ import annotations

import asyncio

import pytest

from controller.scheduler import PeriodicScheduler

pytestmark = pytest.mark.virtual_clock


async def test_ticks_land_on_absolute_deadlines_without_drift(virtual_clock):
    sched = PeriodicScheduler(0.1)
    starts = []
    async for tick in sched.ticks(until=virtual_clock.time() + 100.0):
        starts.append(tick.start)
        await asyncio.sleep(0.037)  # work that does not overrun
    t0 = sched.t0
    assert len(starts) == 1000
    for k, s in enumerate(starts):
        assert s == pytest.approx(t0 + k * 0.1, abs=1e-9)
    assert sched.stats.missed == 0


async def test_an_overrun_skips_missed_ticks_and_counts_them(virtual_clock):
    done = []
    sched = PeriodicScheduler(0.1, on_tick_done=lambda t, w: done.append((t.index, w)))
    indices = []
    async for tick in sched.ticks():
        indices.append(tick.index)
        if tick.index == 2:
            await asyncio.sleep(0.25)  # overruns ticks 3 and 4
        if len(indices) == 5:
            break
    assert indices == [0, 1, 2, 5, 6]
    assert sched.stats.missed == 2
    assert sched.stats.overruns == 1
    assert done[2] == (2, pytest.approx(0.25))


async def test_work_ending_exactly_on_the_next_deadline_is_not_a_miss(virtual_clock):
    sched = PeriodicScheduler(0.1)
    indices = []
    async for tick in sched.ticks():
        indices.append(tick.index)
        await asyncio.sleep(0.1)
        if len(indices) == 4:
            break
    assert indices == [0, 1, 2, 3]
    assert sched.stats.missed == 0


async def test_no_burst_after_the_loop_was_blocked(virtual_clock):
    sched = PeriodicScheduler(0.1)
    seen = []
    async for tick in sched.ticks():
        seen.append(tick)
        if tick.index == 1:
            virtual_clock.advance(0.55)  # the loop was stuck for 550 ms
        if len(seen) == 4:
            break
    assert [t.index for t in seen] == [0, 1, 7, 8]
    assert sched.stats.missed == 5
    assert seen[2].missed_before == 5


def test_bad_periods_are_refused():
    with pytest.raises(ValueError, match="positive"):
        PeriodicScheduler(0)
    with pytest.raises(ValueError, match="spin"):
        PeriodicScheduler(0.1, spin=0.2)
