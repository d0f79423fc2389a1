"""The controller clock: virtual time under the harness, a precise monotonic clock on real time.

Virtual time for asyncio, after trio's MockClock with autojump.

Time is never patched. The event loop asks its clock for the time, and the
selector, which is where a loop would block, jumps the clock to the next
deadline instead of sleeping whenever nothing is ready. A 60 s run of a 10 Hz
controller with fake drivers therefore takes milliseconds, every deadline is
hit exactly, and two runs are identical.

Work handed to threads through `run_in_executor` is real: while any such job
is outstanding the selector waits for it in real time and does not advance
the clock, so a thread's work costs zero virtual time. Real sockets are the
one thing virtual time cannot model (a remote peer's latency would be skipped
over): tests that talk to real network peers run on a real loop.

On real time the controller clock is `precise_time()` (CLOCK_MONOTONIC at
nanosecond resolution), not the loop's `time()`: uvloop's `loop.time()` is
libuv's `uv_now()`, whole milliseconds, so neither a tick's wake-up nor a
latency in the telemetry could be finer than 1 ms on it. `controller_clock()`
picks the right one for the running loop.
"""

from __future__ import annotations

import asyncio
import selectors
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def precise_time() -> float:
    """CLOCK_MONOTONIC in seconds, read at nanosecond resolution: the controller clock on real time.

    `time.monotonic_ns`, not `time.perf_counter_ns`, because stamps taken
    elsewhere must be comparable with it: drivers stamp with
    `drivers.base.now()` (the loop's `time()`: `time.monotonic()` on
    asyncio's loop, libuv's CLOCK_MONOTONIC in milliseconds on uvloop), the
    local camera's decoder thread and the WebRTC test sources with
    `time.monotonic()`, and an age is a difference of two such readings.
    `time.monotonic()` is documented to be this clock; `perf_counter()` is
    CLOCK_MONOTONIC on Linux only by implementation (elsewhere it may have
    another origin). Dividing the integer by 1e9 gives exactly the float
    `time.monotonic()` would have returned at that instant (CPython converts
    the same way), so the two never disagree by a rounding. One read costs
    ~50 ns (vDSO), cheap enough to busy-wait on.
    """
    return time.monotonic_ns() / 1e9


def keeps_real_time(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether `loop.time()` is CLOCK_MONOTONIC, i.e. whether real time drives this loop.

    True for asyncio's own loops (their `time()` is `time.monotonic()`) and
    uvloop's; False for the virtual-time loop and for any other loop that
    keeps a time of its own: such a loop is trusted with its clock, and the
    controller never busy-waits on it (a virtual clock does not move while
    the loop spins, so a spin would never end).
    """
    if isinstance(loop, VirtualTimeLoop):
        return False
    if type(loop).time is asyncio.BaseEventLoop.time:
        return True
    uvloop = sys.modules.get("uvloop")
    return uvloop is not None and isinstance(loop, uvloop.Loop)


def controller_clock(loop: asyncio.AbstractEventLoop | None = None) -> Callable[[], float]:
    """The controller clock for `loop` (default: the running one).

    `precise_time` on a loop that keeps real time; otherwise the loop's own
    `time` (the virtual clock under the test harness, so a run there stays
    exact and deterministic).
    """
    loop = loop or asyncio.get_running_loop()
    return precise_time if keeps_real_time(loop) else loop.time


class VirtualClock:
    """A monotonic clock that moves only when told (or when the loop would block)."""

    def __init__(self, start: float = 1000.0) -> None:
        # Starting away from zero keeps "time 0" from masquerading as a real stamp.
        self._now = float(start)
        self.jumps = 0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"time cannot go backwards (advance by {seconds})")
        self._now += seconds


class _AutojumpSelector(selectors.BaseSelector):
    """Wraps the real selector; turns 'block for t seconds' into 'advance the clock by t'."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if self._loop._real_jobs:
            # A thread is working for us; its result arrives through the
            # self-pipe. Wait in real time, leave virtual time where it is.
            return self._real.select(0.05 if timeout is None else min(timeout, 0.05))
        if timeout is None:
            # Nothing scheduled and nothing running: only real I/O can wake us.
            return self._real.select(None)
        self._loop.clock.advance(timeout)
        self._loop.clock.jumps += 1
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose `time()` is a `VirtualClock` that autojumps."""

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock or VirtualClock()
        self._real_jobs = 0
        super().__init__(_AutojumpSelector(self))

    def time(self) -> float:
        return self.clock.time()

    def run_in_executor(
        self, executor: Any, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        fut = super().run_in_executor(executor, func, *args)
        self._real_jobs += 1

        def _done(_: asyncio.Future[T]) -> None:
            self._real_jobs -= 1

        fut.add_done_callback(_done)
        return fut


def run_virtual(main: Callable[[], Awaitable[T]], *, start: float = 1000.0) -> T:
    """Run `main()` to completion on a fresh virtual-time loop (for scripts and sync tests)."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(VirtualClock(start))) as runner:
        return runner.run(main())
