"""aiortc on the virtual clock: what the loop must be told, for tests whose peers share its loop.

Both peers run on the test's own loop over loopback sockets; on loopback the
kernel delivers a datagram or a segment within the sending call, so when the
loop finds nothing ready there is nothing in flight either, and the clock may
jump. Three things would otherwise go wrong:

* aiortc decodes on a thread of its own and posts frames back to the loop; the
  virtual loop only waits for work it can see (`run_in_executor`), so each
  frame handed to that thread is counted as outstanding work until the thread
  has finished it;
* the painted test frames carry `time.monotonic()`; on the virtual loop they
  carry the loop's time, the clock the receiver compares them with;
* RTCP sender reports carry the sender's wall time (aiortc's `clock`) and the
  receiver's RTCP clock compares it with its own (`time.time()`): on the
  virtual loop both read a wall clock that advances with the loop's time, so
  RTP time maps to capture time as it would in real time, however much faster
  the virtual clock runs than the machine (with the real wall clock the
  mapping drifted by the virtual time gained between two reports).

On a real loop all three are left as they are.
"""

from __future__ import annotations

import asyncio
import datetime
import queue
import time
import types
from typing import Any

import pytest
from aiortc import clock as aiortc_clock
from aiortc import rtcrtpreceiver

from controller.clock import VirtualTimeLoop
from drivers.webrtc import paint, rtcp_clock


class _CountedDecodeQueue(queue.Queue):  # type: ignore[type-arg]
    """aiortc's decoder input queue, with each item counted as work in flight.

    `put` runs on the loop (aiortc's receiver); `get` runs on the decoder
    thread, which asks for the next item only once the previous one's frames
    were posted to the loop, so that is when the previous item is done.
    """

    def __init__(self) -> None:
        super().__init__()
        self._loop: VirtualTimeLoop | None = None
        self._holding = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(loop, VirtualTimeLoop):
            self._loop = loop
            loop._real_jobs += 1  # the loop waits in real time, its clock stands still
        super().put(item, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if self._holding:
            self._done()
        item = super().get(block, timeout)
        self._holding = item is not None
        if item is None:  # the thread ends after this one
            self._done()
        return item

    def _done(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._finished, loop)

    @staticmethod
    def _finished(loop: VirtualTimeLoop) -> None:
        loop._real_jobs -= 1


def _painting_clock() -> float:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return time.monotonic()
    return loop.time() if isinstance(loop, VirtualTimeLoop) else time.monotonic()


#: The virtual wall clock's reading at loop time 0 (any plausible date will do).
_WALL_AT_ZERO = 1_800_000_000.0


def _wall_clock() -> float:
    """Unix time: the loop's own on the virtual clock, else the real one."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return time.time()
    return _WALL_AT_ZERO + loop.time() if isinstance(loop, VirtualTimeLoop) else time.time()


def _wall_datetime() -> datetime.datetime:
    return datetime.datetime.fromtimestamp(_wall_clock(), datetime.UTC)


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decodes counted as outstanding work; frames painted, and RTCP wall times read, with
    the loop's clock."""
    monkeypatch.setattr(rtcrtpreceiver, "queue", types.SimpleNamespace(Queue=_CountedDecodeQueue))
    monkeypatch.setattr(paint, "time", types.SimpleNamespace(monotonic=_painting_clock))
    monkeypatch.setattr(aiortc_clock, "current_datetime", _wall_datetime)
    monkeypatch.setattr(rtcp_clock, "time", types.SimpleNamespace(time=_wall_clock))
