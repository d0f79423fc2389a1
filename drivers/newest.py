"""The newest-value primitive: one value, replaced on publish, read by version.

Every hand-off between a producer and a consumer that runs at its own rate
goes through `LatestValue`: the controller's frame, state, sensor and feature
slots, a camera's frame mailbox, the UR5 driver's state hand-off. A queue is
the wrong tool there: it consumes on read (a slow producer blocks its reader)
and keeps stale items (a fast producer makes its reader act on old data).
A slot keeps exactly one value: `publish` replaces it and never blocks,
readers take the newest without waiting once one exists, and a reader that
wants the next one waits on a version number, so it can never miss the newest
nor be handed an older one.

A driver thread (a PyAV decoder, a vendor SDK callback) publishes through a
`ThreadPublisher`: the thread never blocks and never queues, and the loop is
woken at most once per batch of values however fast the thread produces.

It lives in `drivers/` because drivers and the controller both use it and
drivers never import the controller; `controller.slot` re-exports it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["LatestValue", "SlotClosed", "Stamped", "ThreadPublisher", "pump"]


class SlotClosed(Exception):
    """The slot's producer finished or failed; `__cause__` holds the failure, if any."""


@dataclass(frozen=True, slots=True)
class Stamped(Generic[T]):
    """A published value with its provenance.

    `source_time` is the capture time of the oldest input the value was
    computed from (controller clock), so `now - source_time` is its age;
    `version` increases by one per publish.
    """

    value: T
    version: int
    source_time: float
    publish_time: float

    def age(self, now: float) -> float:
        return now - self.source_time


class LatestValue(Generic[T]):
    """One value, replaced on publish; readers see versions, never a queue.

    Counters: `published` (values published), `replaced_unread` (values
    replaced before any reader took them: what newest-wins dropped).
    Reading with `latest()`/`wait_newer()` marks the newest as read; `peek()`
    and `wait_newer(..., mark_read=False)` are for monitors (a watchdog, a
    driver waiting for an acknowledgement) that must not hide a drop.
    """

    def __init__(self, name: str = "slot") -> None:
        self.name = name
        self._latest: Stamped[T] | None = None
        self._version = 0
        self._changed = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None
        self.published = 0
        self.replaced_unread = 0
        self._read_version = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<LatestValue {self.name} v{self._version} {state}>"

    @property
    def version(self) -> int:
        return self._version

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def error(self) -> BaseException | None:
        return self._error

    def publish(self, value: T, source_time: float, *, now: float | None = None) -> Stamped[T]:
        """Replace the value; wakes every waiter. Never blocks, never queues."""
        if self._closed:
            raise SlotClosed(f"{self.name}: publish after close")
        if now is None:
            now = asyncio.get_running_loop().time()
        if self._latest is not None and self._read_version < self._version:
            self.replaced_unread += 1
        self._version += 1
        self.published += 1
        self._latest = Stamped(value, self._version, float(source_time), float(now))
        self._wake()
        return self._latest

    def latest(self) -> Stamped[T] | None:
        """The newest value, or None before the first publish. Never waits."""
        if self._latest is not None:
            self._read_version = self._version
        return self._latest

    def peek(self) -> Stamped[T] | None:
        """The newest value without marking it read (for monitors, not consumers)."""
        return self._latest

    async def wait_newer(self, version: int = 0, *, mark_read: bool = True) -> Stamped[T]:
        """Return the newest value whose version is greater than `version`.

        Returns at once if one exists already (so a reader that was busy
        never misses the newest); raises `SlotClosed` once the slot is closed
        and holds nothing newer. Cancelling the waiter leaves the slot intact.
        """
        while True:
            latest = self._latest
            if latest is not None and latest.version > version:
                if mark_read:
                    self._read_version = self._version
                return latest
            if self._closed:
                raise SlotClosed(f"{self.name}: closed") from self._error
            await self._changed.wait()

    async def stream(self) -> AsyncIterator[Stamped[T]]:
        """Each newest value once, skipping those replaced before they were read.

        Ends when the slot is closed; a slot closed with an error raises that
        error, so a driver's stream ends the way its producer did.
        """
        version = 0
        while True:
            try:
                stamped = await self.wait_newer(version)
            except SlotClosed:
                if self._error is not None:
                    raise self._error from None
                return
            version = stamped.version
            yield stamped

    def close(self, error: BaseException | None = None) -> None:
        """Mark the producer finished (or failed with `error`); waiters wake and see it.

        The last value stays readable through `latest()`: a consumer decides
        from its age whether it is still usable. Closing twice keeps the first.
        """
        if self._closed:
            return
        self._closed = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        # Replace the event so that waiters woken now and waiters arriving
        # later never share a set() flag that someone must remember to clear.
        event, self._changed = self._changed, asyncio.Event()
        event.set()


async def pump(
    items: AsyncIterable[T],
    slot: LatestValue[T],
    source_time: Callable[[T], float],
    on_publish: Callable[[Stamped[T]], object] | None = None,
) -> None:
    """Publish every item of a driver's stream into `slot` as it arrives; return when it ends.

    What the controller does with each camera, robot and sensor stream (and
    what a test does to read a camera the way the controller does).
    `on_publish` sees each published value (the controller marks its
    reconnect loop healthy with it).
    """
    async for item in items:
        stamped = slot.publish(item, source_time(item))
        if on_publish is not None:
            on_publish(stamped)


class ThreadPublisher(Generic[R, T]):
    """Publish into a `LatestValue` from a thread that is not the loop's.

    `publish(raw)` may be called from any thread, never blocks and never
    queues: a one-place buffer (a `deque(maxlen=1)`, whose append and pop are
    atomic) keeps the newest raw value, and the loop is woken with
    `call_soon_threadsafe` only when no wake-up is pending, so a thread that
    produces faster than the loop runs costs one callback per loop turn, not
    one per value. On the loop, `stamp(raw)` turns the raw value into
    `(value, source_time)`; it runs there because only there can the device's
    time be mapped to the loop's clock (uvloop's and the test harness's clocks
    are not `time.monotonic()`).

    `coalesced` counts raw values replaced before the loop took them (they
    never reached the slot; values replaced in the slot count there).
    """

    def __init__(
        self,
        slot: LatestValue[T],
        loop: asyncio.AbstractEventLoop,
        stamp: Callable[[R], tuple[T, float]],
    ) -> None:
        self.slot = slot
        self._loop = loop
        self._stamp = stamp
        self._box: collections.deque[R] = collections.deque(maxlen=1)
        self._wake_pending = False
        self.offered = 0
        self.delivered = 0
        #: times the thread woke the loop (at most one per loop turn, not one per value)
        self.wakeups = 0

    @property
    def coalesced(self) -> int:
        return self.offered - self.delivered - len(self._box)

    def publish(self, raw: R) -> bool:
        """Hand over `raw` from any thread; False once the loop is closed (stop producing)."""
        self._box.append(raw)
        self.offered += 1
        if self._wake_pending:
            return True
        self._wake_pending = True
        self.wakeups += 1
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody will read again
            return False
        return True

    def _deliver(self) -> None:
        # Clear the flag before taking the value: a value appended after the
        # take finds the flag clear and schedules its own delivery.
        self._wake_pending = False
        try:
            raw = self._box.popleft()
        except IndexError:
            return
        self.delivered += 1
        if self.slot.closed:
            return
        value, source_time = self._stamp(raw)
        self.slot.publish(value, source_time)
