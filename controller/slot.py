"""`LatestValue[T]`: the async latest-value slot.

The seed note used `queue.Queue(maxsize=3)` between the VL encoder and the
control loop; a queue consumes on read (so a slow producer blocks the reader)
and keeps stale items (so a fast producer makes the reader act on old data).
A slot keeps exactly one value: `publish` replaces it and never blocks,
readers take the newest without waiting once one exists, and a reader that
wants the next one waits on a version number, so it can never miss the newest
nor be handed an older one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


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
    """One value, replaced on publish; readers see versions, never a queue."""

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

    async def wait_newer(self, version: int = 0) -> Stamped[T]:
        """Return the newest value whose version is greater than `version`.

        Returns at once if one exists already (so a reader that was busy
        never misses the newest); raises `SlotClosed` once the slot is closed
        and holds nothing newer. Cancelling the waiter leaves the slot intact.
        """
        while True:
            latest = self._latest
            if latest is not None and latest.version > version:
                self._read_version = self._version
                return latest
            if self._closed:
                raise SlotClosed(f"{self.name}: closed") from self._error
            await self._changed.wait()

    def close(self, error: BaseException | None = None) -> None:
        """Mark the producer finished (or failed with `error`); waiters wake and see it.

        The last value stays readable through `latest()`: a consumer decides
        from its age whether it is still usable.
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
