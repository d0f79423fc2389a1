"""Drift-free periodic ticks on absolute deadlines, woken precisely.

Tick k is due at `t0 + k * period`, never at "last wake-up + period", so
lateness does not accumulate. When work overruns, the ticks whose deadlines
passed meanwhile are skipped and counted (ros2_control's behaviour); the
scheduler never bursts to catch up, because a burst of stale actions is worse
for an arm than one missed cycle.

The wake-up has two stages. The loop's timer (`asyncio.sleep`) is cheap but
coarse: asyncio's rounds its epoll timeout up to a whole millisecond and
wakes ~1-2 ms late, uvloop keeps whole milliseconds and can fire up to 1 ms
early. So the tick sleeps only until `spin` seconds before its deadline and
waits out the rest on the precise controller clock (`controller.clock`), never
on `loop.time()`: spinning on uvloop's millisecond clock once made a tick
56 ms late. While more than a loop pass remains, the spin yields to the loop
(`asyncio.sleep(0)`), so frames and robot states keep flowing; the last
stretch, shorter than two passes, is a plain busy-wait. Both burn CPU:
`Tick.spin` says how much, per tick, and the telemetry sums it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from controller.clock import controller_clock, keeps_real_time

#: A deadline this close is reached: the precise clock's resolution, and more than the
#: rounding left by a virtual-time jump (a fraction of a nanosecond), which must not
#: trigger a second sleep.
REACHED = 1e-9

#: Per wake-up, how much of the longest loop pass seen so far is still believed: a
#: 5 ms pass (a GIL hand-off) makes the next wake-ups busy-wait from further out (all
#: of a 2 ms spin), and is forgotten within ~20 ticks.
PASS_MEMORY = 0.9


@dataclass(frozen=True, slots=True)
class Tick:
    index: int
    deadline: float
    start: float
    missed_before: int
    #: Seconds this wake-up spent waiting on the precise clock (CPU spent awake).
    spin: float = 0.0

    @property
    def lateness(self) -> float:
        return self.start - self.deadline


@dataclass(slots=True)
class SchedulerStats:
    ticks: int = 0
    missed: int = 0
    overruns: int = 0
    #: Total seconds spent spinning (both stages): the CPU price of the precise wake.
    spin: float = 0.0


class PeriodicScheduler:
    """Yields `Tick`s at `t0 + k*period`; measures lateness and work time per tick.

    `clock` is the controller clock by default (`controller.clock.controller_clock`:
    the virtual clock under the test harness, the precise monotonic clock on
    real time), resolved when ticking starts. `spin` (seconds) is how long
    before each deadline the timer's sleep ends and the precise wait begins
    (see the module docstring). It applies only where time moves by itself,
    i.e. on a loop that keeps real time: on the virtual loop it is ignored,
    since a virtual clock never moves while the loop spins and the spin would
    never end. A test that injects a clock which does move while the loop
    spins says so with an attribute `moves_by_itself = True` on it.
    `on_tick_done(tick, work_time)` and `on_missed(n)` let telemetry record
    without the scheduler knowing about it.
    """

    def __init__(
        self,
        period: float,
        *,
        clock: Callable[[], float] | None = None,
        spin: float = 0.0,
        on_tick_done: Callable[[Tick, float], None] | None = None,
        on_missed: Callable[[int], None] | None = None,
    ) -> None:
        if not (period > 0 and math.isfinite(period)):
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        if not (0 <= spin < period):
            raise ValueError(f"spin must be in [0, period), got {spin!r}")
        self.period = period
        self.spin = spin
        self._clock = clock
        self._on_tick_done = on_tick_done
        self._on_missed = on_missed
        self.stats = SchedulerStats()
        self.t0: float | None = None
        #: The spin in effect once ticking started (0 where the clock is virtual).
        self.active_spin = spin
        #: The longest loop pass recently seen while spinning (decays, see PASS_MEMORY).
        self.longest_pass = 0.0

    def _now(self) -> float:
        if self._clock is None:
            self._clock = controller_clock()
        return self._clock()

    def deadline(self, index: int) -> float:
        assert self.t0 is not None
        return self.t0 + index * self.period

    def _resolve_clock(self) -> None:
        loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = controller_clock(loop)
        moves = keeps_real_time(loop) or getattr(self._clock, "moves_by_itself", False)
        self.active_spin = self.spin if moves else 0.0

    async def _sleep_until(self, deadline: float) -> float:
        """Return at `deadline` on the clock, or just after; returns the seconds spun."""
        clock = self._clock
        assert clock is not None
        spin = self.active_spin
        delay = deadline - spin - clock()
        if delay > REACHED:
            await asyncio.sleep(delay)
        if not spin:
            # No precise stage: the timer alone, slept again if it fired early
            # (a wait on a clock, not on another task: no event to await instead).
            while (rest := deadline - clock()) > REACHED:  # noqa: ASYNC110
                await asyncio.sleep(rest)
            return 0.0
        return await self._spin_until(deadline, clock)

    async def _spin_until(self, deadline: float, clock: Callable[[], float]) -> float:
        start = now = clock()
        self.longest_pass *= PASS_MEMORY
        # Yield to the loop while another pass (with a margin of one more) fits
        # before the deadline, so I/O is served during the spin...
        while deadline - now > 2.0 * self.longest_pass:
            await asyncio.sleep(0)
            after = clock()
            self.longest_pass = max(self.longest_pass, after - now)
            now = after
        # ...then busy-wait the last stretch: nothing else may run in it.
        while now < deadline:
            now = clock()
        spun = now - start
        self.stats.spin += spun
        return spun

    async def ticks(
        self, *, start: float | None = None, until: float | None = None
    ) -> AsyncIterator[Tick]:
        """Tick forever (or for deadlines before `until`), first tick at `start` (default: now)."""
        self._resolve_clock()
        self.t0 = self._now() if start is None else start
        index = 0
        missed = 0
        while True:
            deadline = self.deadline(index)
            if until is not None and deadline >= until:
                return
            spun = await self._sleep_until(deadline)
            woke = self._now()
            # If the loop itself woke us more than a period late, run the
            # newest due tick once and count the ones in between as missed.
            newest_due = int((woke - self.t0) / self.period + 1e-9)
            if newest_due > index:
                missed += newest_due - index
                index = newest_due
                deadline = self.deadline(index)
            if missed:
                self.stats.missed += missed
                if self._on_missed is not None:
                    self._on_missed(missed)
            tick = Tick(index=index, deadline=deadline, start=woke, missed_before=missed, spin=spun)
            self.stats.ticks += 1
            yield tick
            done = self._now()
            if self._on_tick_done is not None:
                self._on_tick_done(tick, done - woke)
            # Skip every deadline that passed while the tick's work ran (a
            # deadline equal to `done` is still on time).
            first_future = max(index + 1, math.ceil((done - self.t0) / self.period - 1e-9))
            missed = first_future - (index + 1)
            if missed:
                self.stats.overruns += 1
            index = first_future
