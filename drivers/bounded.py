"""Await a driver call with a time bound that is armed only if the call actually waits.

Why. Every tick sends one command, bounded so that a wedged driver makes
the controller hold instead of hanging (`command_timeout`). Most commands
never wait: the fake and simulated arms return at once, and the UR5 driver
writes its RTDE packet and returns unless the socket's buffer is full. Yet
`asyncio.timeout()` arms a loop timer on entry and cancels it on exit, and
on a tick's cold cache that costs ~60 us (uvloop, after a 10 ms sleep,
against ~8 us for the bare await). With the bound armed only when needed,
the controller's overhead per tick (tick start to command, minus `act`)
fell from 233-292 to 178-188 us p50 in three pairs of runs back to back
(`python -m controller.bench loop --hz 100 --scenario saturated --design
controller --modes vl_worker=process --modes rt_priority=50 --seconds 10`,
the fake arm; issue 11).

So `within()` runs the call's first step at once, as `await` would; if the
call finishes there, no timer was ever needed (a timeout can only fire at
an await point, and there was none). If the call waits, the rest of it runs
under `asyncio.timeout`, exactly as before: the bound counts from that
first wait (the first step ran without yielding, so at most that step's own
time is not counted, and no timeout could have interrupted it anyway).

It lives with the drivers because both sides need it: the controller
bounds each `command()`/`hold()`, and a driver bounds its own writes (the
UR5 driver's RTDE `drain()`, which waits only when the socket's buffer is
full); drivers never import the controller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


async def within(call: Awaitable[T], seconds: float) -> T:
    """`await call`, raising `TimeoutError` if it is still waiting `seconds` after it first waited.

    A coroutine runs its first step at once; any other awaitable (a future, an
    object with `__await__`) is simply awaited under the bound.
    """
    if not isinstance(call, Coroutine):
        async with asyncio.timeout(seconds):
            return await call
    try:
        pending = call.send(None)
    except StopIteration as done:
        return done.value  # never waited: nothing to bound
    async with asyncio.timeout(seconds):
        return await _Resume(call, pending)


class _Resume:
    """The rest of a coroutine whose first step already ran and yielded `pending` to the task."""

    __slots__ = ("_call", "_pending")

    def __init__(self, call: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._call = call
        self._pending = pending

    def __await__(self) -> Generator[Any, None, Any]:
        call, pending = self._call, self._pending
        while True:
            try:
                yield pending  # the task waits on what the call waits on
            except BaseException as exc:  # a cancellation (the bound, a stop) thrown in
                try:
                    pending = call.throw(exc)
                except StopIteration as done:
                    return done.value
                continue  # the call caught it and waits on something else
            # Resumed: hand the rest over to the interpreter's own delegation.
            return (yield from call.__await__())
