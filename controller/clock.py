"""Virtual time for asyncio, after trio's MockClock with autojump.

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
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


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
