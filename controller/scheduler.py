"""Drift-free periodic ticks on absolute deadlines.

Tick k is due at `t0 + k * period`, never at "last wake-up + period", so
lateness does not accumulate. When work overruns, the ticks whose deadlines
passed meanwhile are skipped and counted (ros2_control's behaviour); the
scheduler never bursts to catch up, because a burst of stale actions is worse
for an arm than one missed cycle.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tick:
    index: int
    deadline: float
    start: float
    missed_before: int

    @property
    def lateness(self) -> float:
        return self.start - self.deadline


@dataclass(slots=True)
class SchedulerStats:
    ticks: int = 0
    missed: int = 0
    overruns: int = 0


class PeriodicScheduler:
    """Yields `Tick`s at `t0 + k*period`; measures lateness and work time per tick.

    `clock` is the loop's clock by default, so under the test harness the
    ticks run on virtual time. `spin` (seconds) sleeps until that long before
    the deadline and busy-waits the rest, trading a little CPU for
    sub-millisecond lateness on real time; it must stay 0 on a virtual clock.
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
        if spin < 0 or spin >= period:
            raise ValueError(f"spin must be in [0, period), got {spin!r}")
        self.period = period
        self.spin = spin
        self._clock = clock
        self._on_tick_done = on_tick_done
        self._on_missed = on_missed
        self.stats = SchedulerStats()
        self.t0: float | None = None

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def deadline(self, index: int) -> float:
        assert self.t0 is not None
        return self.t0 + index * self.period

    async def _sleep_until(self, deadline: float) -> None:
        delay = deadline - self.spin - self._now()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.spin:
            while self._now() < deadline:
                pass  # deliberate short busy-wait: see class docstring

    async def ticks(
        self, *, start: float | None = None, until: float | None = None
    ) -> AsyncIterator[Tick]:
        """Tick forever (or for deadlines before `until`), first tick at `start` (default: now)."""
        self.t0 = self._now() if start is None else start
        index = 0
        missed = 0
        while True:
            deadline = self.deadline(index)
            if until is not None and deadline >= until:
                return
            await self._sleep_until(deadline)
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
            tick = Tick(index=index, deadline=deadline, start=woke, missed_before=missed)
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
