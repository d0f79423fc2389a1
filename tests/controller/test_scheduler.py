from __future__ import annotations

import asyncio

import pytest

from controller.scheduler import REACHED, PeriodicScheduler

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


# -- the precise wake ---------------------------------------------------------


class PreciseClock:
    """A stand-in for the precise clock on the virtual loop: the loop's time plus `step` per read.

    It moves while the loop spins (every read costs `step`, as real time
    passes while a CPU reads a clock), which the virtual clock never does;
    `on_read(n, value)` lets a test act in the middle of a spin.
    """

    moves_by_itself = True  # so the scheduler spins on it, on the virtual loop

    def __init__(self, loop: asyncio.AbstractEventLoop, step: float = 2e-6) -> None:
        self.loop = loop
        self.step = step
        self.reads = 0
        self.on_read = None

    def __call__(self) -> float:
        self.reads += 1
        value = self.loop.time() + self.reads * self.step
        if self.on_read is not None:
            self.on_read(self.reads, value)
        return value


async def test_the_wake_sleeps_to_spin_before_the_deadline_then_waits_on_the_injected_clock(
    virtual_clock,
):
    clock = PreciseClock(asyncio.get_running_loop())
    sched = PeriodicScheduler(0.1, clock=clock, spin=0.002)
    ticks = []
    async for tick in sched.ticks():
        ticks.append(tick)
        if len(ticks) == 5:
            break
    assert sched.active_spin == 0.002
    for tick in ticks[1:]:
        # Never early, and late by at most a couple of clock reads.
        assert 0 <= tick.lateness <= 3 * clock.step
        # The timer ended 2 ms early (virtual timers are exact); the rest was waited out
        # on the injected clock, which loop.time() could not have done: it stands still.
        assert tick.spin == pytest.approx(0.002, abs=5 * clock.step)
    assert sched.stats.spin == pytest.approx(sum(t.spin for t in ticks))


async def test_the_spin_yields_to_other_tasks_until_its_last_stretch(virtual_clock):
    loop = asyncio.get_running_loop()
    clock = PreciseClock(loop)
    sched = PeriodicScheduler(0.1, clock=clock, spin=0.002)
    served = asyncio.Event()
    served_at = []

    async def io_task() -> None:  # a frame or a robot state arriving mid-spin
        await served.wait()
        served_at.append(clock())

    task = asyncio.ensure_future(io_task())
    ticks = []
    async for tick in sched.ticks():
        ticks.append(tick)
        if len(ticks) == 1:
            # Wake the I/O task half-way through the next tick's spin.
            deadline = sched.deadline(1)

            def half_way(_n: int, value: float, deadline: float = deadline) -> None:
                if value >= deadline - 0.001:
                    served.set()

            clock.on_read = half_way
        if len(ticks) == 2:
            break
    await task
    assert served_at and deadline - 0.001 <= served_at[0] < ticks[1].start


@pytest.mark.parametrize("injected", [False, True])
async def test_spin_is_ignored_on_the_virtual_clock(virtual_clock, injected):
    # A spin on a clock that does not move while the loop spins would never end.
    clock = asyncio.get_running_loop().time if injected else None
    sched = PeriodicScheduler(0.1, spin=0.05, clock=clock)
    ticks = []
    async for tick in sched.ticks():
        ticks.append(tick)
        if len(ticks) == 4:
            break
    assert sched.active_spin == 0.0
    assert [t.lateness for t in ticks] == [0.0] * 4
    assert [t.spin for t in ticks] == [0.0] * 4


async def test_a_timer_that_fires_early_is_slept_again_so_no_tick_starts_early(virtual_clock):
    # uvloop's timer counts whole milliseconds and can fire up to 1 ms early: here the
    # controller clock runs 0.1 % slower than the loop's, so every sleep ends early on it.
    loop = asyncio.get_running_loop()
    origin = loop.time()

    def fast_clock() -> float:
        return origin + (loop.time() - origin) * 0.999

    sched = PeriodicScheduler(0.1, clock=fast_clock)
    ticks = []
    async for tick in sched.ticks():
        ticks.append(tick)
        if len(ticks) == 20:
            break
    # Early by at most the 1 ns that counts as reached, never by a timer's error.
    assert all(-REACHED <= t.lateness < 1e-6 for t in ticks)


async def test_a_long_loop_pass_makes_the_next_wakes_busy_wait_from_further_out(virtual_clock):
    loop = asyncio.get_running_loop()
    clock = PreciseClock(loop)
    extra = [0.0]
    base_read = clock.__call__

    def read() -> float:
        return base_read() + extra[0]

    read.moves_by_itself = True  # type: ignore[attr-defined]
    sched = PeriodicScheduler(0.1, clock=read, spin=0.002)
    ticks = []
    async for tick in sched.ticks():
        ticks.append(tick)
        if len(ticks) == 1:
            deadline = sched.deadline(1)

            def one_slow_pass(_n: int, value: float, deadline: float = deadline) -> None:
                # A pass of the loop that takes 1.5 ms (a GIL hand-off), once.
                if value >= deadline - 0.0019 and not extra[0]:
                    extra[0] = 0.0015

            clock.on_read = one_slow_pass
        if len(ticks) == 2:
            assert sched.longest_pass >= 0.0015
        if len(ticks) == 12:
            break
    assert all(0 <= t.lateness <= 3 * clock.step for t in ticks[1:])
    # Remembered, then forgotten: 10 % less per wake-up.
    assert sched.longest_pass == pytest.approx(0.0015 * 0.9**10, rel=0.05)
