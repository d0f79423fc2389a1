"""An event loop of its own, in a daemon thread, for a peer the controller's loop must not run.

The real-time fault matrices put the other side of a link here: the UR
simulator (`controller.fault_matrix_real`) and the WHEP media server
(`controller.fault_matrix_webrtc`). A real robot controller or camera keeps
its own time when the PC stalls, and its work (an arm's watchdog, a video
encoder) must not be scheduled on the loop that runs the control ticks; on
the controller's loop it would stall with it, and a test of a PC stall
would prove nothing.

The thread's loop is the standard asyncio loop, whose `time()` is
`time.monotonic()`: the same clock the matrices read on their side.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Self, TypeVar

T = TypeVar("T")

#: How long the thread may take to come up or to end (s): a bound, never a wait in practice.
START_BOUND = 10.0
JOIN_BOUND = 10.0


class LoopThread:
    """Serve on an event loop of its own, in a daemon thread, until the `async with` ends.

    A subclass fills two hooks, both run on the thread's loop: `_setup()`
    (an exception there is raised from `__aenter__`, and the thread ends) and
    `_teardown()` (after the `async with` block, in a `finally`). Anything
    else runs there through `call()`.
    """

    def __init__(self, name: str) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    async def __aenter__(self) -> Self:
        self._thread.start()
        async with asyncio.timeout(START_BOUND):
            await asyncio.wrap_future(self._ready)
        return self

    async def __aexit__(self, *exc: object) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # its loop already ended
                loop.call_soon_threadsafe(stop.set)
        await asyncio.to_thread(self._thread.join, JOIN_BOUND)

    async def _setup(self) -> None:
        """Start what the thread serves (on its loop)."""

    async def _teardown(self) -> None:
        """Close what `_setup` started (on its loop, whatever happened)."""

    def _main(self) -> None:
        loop = asyncio.new_event_loop()  # the standard loop: time() is time.monotonic()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        try:
            await self._setup()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        # Created once set up: `__aexit__` sees no stop event, and only joins, when it failed.
        self._stop = asyncio.Event()
        self._ready.set_result(None)
        try:
            await self._stop.wait()
        finally:
            await self._teardown()

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await `fn()` on the thread's loop."""
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_call(fn), self._loop))


async def _call(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()
