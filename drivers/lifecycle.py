"""One driver lifecycle: owned tasks, an idempotent bounded close, supervised reconnects, pacing.

Every built-in driver needs the same four things, and each used to write its
own: background tasks that must not outlive the driver, a close that is safe
to call twice and cannot hang on a task that ignores its cancellation, a
reconnect loop that survives whatever a device or a server does, and a
fixed-rate loop that does not drift. They are here once:

- `Lifecycle`: a base class (opt-in for plugins, nothing to initialise):
  `spawn()` starts an owned task, `close()` cancels the owned tasks, waits
  for them at most `cancel_bound` seconds, then calls the `_release()` hook;
  `async with` ends with `close()`.
- `OwnedTasks`: the task set on its own, for objects that are not drivers
  (the WHIP server shared by several cameras).
- `reconnect_with_backoff()`: run a session again and again, jittered
  exponential backoff between attempts, counted and logged once per failure.
- `periodic()`: ticks at `t0 + k*period` on the controller clock (virtual
  under the test harness), skipping deadlines that passed instead of bursting.

Like `drivers.base`, this module never imports the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn, Self

from drivers.errors import DriverError

log = logging.getLogger(__name__)

#: How long a close waits for owned tasks to honour their cancellation (s).
CANCEL_BOUND = 1.0

__all__ = [
    "CANCEL_BOUND",
    "Backoff",
    "Lifecycle",
    "OwnedTasks",
    "Periodic",
    "Reconnects",
    "cancel_bounded",
    "periodic",
    "reconnect_with_backoff",
]


# --------------------------------------------------------------------------
# Owned tasks and a bounded close


async def cancel_bounded(tasks: Any, what: str, bound: float = CANCEL_BOUND) -> None:
    """Cancel `tasks` (one task or several) and wait for them, at most `bound` s in all.

    A task that ignores its cancellation (a bug, or a blocking call inside
    it) is logged and left behind: it must not hang a close, and with it the
    controller's exit. A task that ended with an error is logged, not raised:
    a teardown goes on whatever the tasks did.
    """
    pending = {tasks} if isinstance(tasks, asyncio.Future) else set(tasks)
    # A task closing its own owner must not wait for itself.
    pending = {t for t in pending if not t.done() and t is not asyncio.current_task()}
    if not pending:
        return
    for task in pending:
        task.cancel()
    done, left = await asyncio.wait(pending, timeout=bound)
    for task in left:
        log.error(
            "%s: task %s did not end within %.1f s of its cancellation; left behind",
            what,
            task.get_name(),
            bound,
        )
    for task in done:
        with contextlib.suppress(asyncio.CancelledError):
            exc = task.exception()
            if exc is not None:
                log.warning(
                    "%s: task %s ended with %s: %s", what, task.get_name(), type(exc).__name__, exc
                )


class OwnedTasks:
    """Background tasks owned by one object: named after it, logged if they fail, ended together.

    A task removes itself when it ends; one that fails is logged at once
    with its traceback (nobody awaits a background task, so an unlogged
    failure would be silent). `cancel_all()` ends the rest, bounded.
    """

    def __init__(self, owner: str, bound: float = CANCEL_BOUND) -> None:
        self.owner = owner
        self.bound = bound
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Any:
        return iter(list(self._tasks))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start `coro` as a task named `OWNER-NAME`, owned until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task %s failed", self.owner, task.get_name(), exc_info=task.exception())

    async def cancel_all(self) -> None:
        """Cancel every owned task and wait for them, at most `bound` s."""
        await cancel_bounded(self._tasks, self.owner, self.bound)


class Lifecycle:
    """Base for a driver (or a driver's server) that owns tasks and closes once.

    Nothing to initialise: the task set is made on first use, so a plugin
    opts in by subclassing and nothing else. A subclass sets `name` (task
    names and log lines use it), starts background work with `spawn()`, and
    puts its own teardown (sockets, peers, threads) in `_release()`; a
    robot stops its arm in `_leave_safe()`, which `async with` runs first.

    `close()` is idempotent (a second call, or one while the first runs,
    returns at once) and bounded: owned tasks get `cancel_bound` seconds to
    honour their cancellation, then are left behind with an error logged.
    `_release()` runs after the tasks ended, so it never races them.
    """

    name: str
    cancel_bound: ClassVar[float] = CANCEL_BOUND
    _closed: bool = False
    _owned: OwnedTasks | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def tasks(self) -> OwnedTasks:
        if self._owned is None:
            self._owned = OwnedTasks(self.name, self.cancel_bound)
        return self._owned

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start an owned background task (named `NAME-name`); `close()` ends it.

        Refused once closing has begun: the task would outlive the driver.
        """
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.name}: closed; task {name!r} not started")
        return self.tasks.spawn(coro, name)

    async def close(self) -> None:
        """End owned tasks (bounded), then release what the driver holds; safe twice."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.tasks.cancel_all()
        finally:
            await self._release()

    async def _release(self) -> None:
        """Subclass hook: tear down what the driver holds (called once, after the tasks ended)."""

    async def _leave_safe(self) -> None:
        """Subclass hook, run by `async with` before `close()` while the link is still up:
        leave the device safe (a robot stops here). Bounded by the driver itself."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._leave_safe()
        finally:
            await self.close()


# --------------------------------------------------------------------------
# Reconnect with backoff


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between attempts: `initial`, times `factor` per failure in a row, up to `maximum`.

    Each delay is shortened by a random fraction of up to `jitter`, so that
    many clients of one server (cameras on one media server, after it
    restarted) do not retry in lock step; jitter only ever shortens a delay,
    so `maximum` is a true cap and no recovery is slower than without it.
    """

    initial: float
    maximum: float
    factor: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial) and 0 < self.initial <= self.maximum):
            raise ValueError(
                f"Backoff: need 0 < initial <= maximum, got {self.initial!r}, {self.maximum!r}"
            )
        if not math.isfinite(self.maximum):
            raise ValueError(f"Backoff: maximum must be finite, got {self.maximum!r}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"Backoff: factor must be >= 1, got {self.factor!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"Backoff: jitter must be in [0, 1), got {self.jitter!r}")

    def delay(self, in_row: int, rng: random.Random) -> float:
        """The delay after the `in_row`-th failure in a row (1 for the first)."""
        base = self.initial
        for _ in range(max(0, in_row - 1)):
            base *= self.factor
            if base >= self.maximum:
                break
        base = min(base, self.maximum)
        return base * (1.0 - self.jitter * rng.random())


@dataclass(slots=True)
class Reconnects:
    """What one reconnect loop did, for the driver's own counters, tests and the operator.

    An attempt calls `healthy()` once it works (connected, data flowing):
    the next failure then waits `initial` again instead of a grown delay.
    """

    attempts: int = 0
    failures: int = 0
    ends: int = 0
    #: failures and ends since the last healthy attempt: what the delay grows with
    in_row: int = 0
    #: the latest failure, one line with its type
    last_error: str | None = None
    last_delay: float = 0.0
    _healthy: bool = field(default=False, repr=False)

    def healthy(self) -> None:
        self._healthy = True


def describe_exc(exc: BaseException) -> str:
    """One line naming an exception: its type and its first line of text."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def reconnect_with_backoff(
    attempt: Callable[[Reconnects], Awaitable[object]],
    *,
    what: str,
    backoff: Backoff,
    logger: logging.Logger = log,
    retry: tuple[type[Exception], ...] = (Exception,),
    fatal: tuple[type[BaseException], ...] = (),
    expected: tuple[type[BaseException], ...] = (DriverError, OSError, TimeoutError),
    on_failure: Callable[[BaseException | None], None] | None = None,
    describe: Callable[[BaseException], str] = describe_exc,
    stats: Reconnects | None = None,
    rng: random.Random | None = None,
) -> NoReturn:
    """Run `attempt(stats)` forever: after it returns or fails, wait a backoff delay, run it again.

    An attempt is one session: connect, then work until the link dies. It
    returns (a stream that ended) or raises; either way it is counted,
    logged in one line naming the exception's type, passed to `on_failure`
    (None for a return) and retried after `backoff.delay(...)`. Exceptions
    of a `retry` type are retried (by default any `Exception`: a bug in a
    session must never end the reconnects silently), except those of a
    `fatal` type, which end the loop, as does anything else
    (`CancelledError` included: `close()` ends a driver's loop that way).
    Failures of an `expected` type (a lost link) log a warning; others (a
    bug) log an error, with the traceback the first time.

    `describe(exc)` words `stats.last_error` (type and message by default;
    the log line always names the type);
    `rng` draws the jitter (seed one for a deterministic test).
    """
    stats = stats if stats is not None else Reconnects()
    rng = rng if rng is not None else random.Random()
    traced = False
    while True:
        stats.attempts += 1
        stats._healthy = False
        failure: BaseException | None = None
        try:
            await attempt(stats)
            stats.ends += 1
        except fatal:
            raise
        except retry as exc:
            failure = exc
            stats.failures += 1
            stats.last_error = describe(exc)
        if stats._healthy:
            stats.in_row = 0
        stats.in_row += 1
        delay = stats.last_delay = backoff.delay(stats.in_row, rng)
        if failure is None:
            logger.warning("%s: ended; restarting in %.2f s", what, delay)
        else:
            bug = not isinstance(failure, expected)
            logger.log(
                logging.ERROR if bug else logging.WARNING,
                "%s: %s (failure %d); retrying in %.2f s",
                what,
                describe_exc(failure),
                stats.failures,
                delay,
                exc_info=failure if bug and not traced else None,
            )
            traced = traced or bug
        if on_failure is not None:
            on_failure(failure)
        await asyncio.sleep(delay)


# --------------------------------------------------------------------------
# Pacing


class Periodic:
    """Drift-free pacing on the controller clock: wake k is due at `t0 + k*period`, k = 1, 2, ...

    Deadlines are absolute, so lateness never accumulates; when the caller
    (or the loop) was busy past one or more deadlines, the next wake is the
    newest one due and the ones in between are counted in `missed`, never
    replayed in a burst (a device does not produce the samples it missed).
    The same rule as the controller's `PeriodicScheduler`, which adds
    per-tick accounting and a spin phase the drivers do not need.
    """

    def __init__(self, period: float, *, start: float | None = None) -> None:
        if not (math.isfinite(period) and period > 0):
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        self.period = period
        self.missed = 0
        self.restart(start)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def restart(self, at: float | None = None) -> None:
        """Start a new grid at `at` (default now): the next wake is one period after it."""
        self.t0 = self._now() if at is None else at
        self.index = 0

    @property
    def deadline(self) -> float:
        """The deadline of the latest wake (t0 before the first)."""
        return self.t0 + self.index * self.period

    async def wait(self) -> int:
        """Sleep until the next deadline due; return its index k."""
        now = self._now()
        k = self.index + 1
        due = math.floor((now - self.t0) / self.period + 1e-9)
        if due > k:
            self.missed += due - k
            k = due
        delay = self.t0 + k * self.period - now
        if delay > 0:
            await asyncio.sleep(delay)
        self.index = k
        return k

    def __aiter__(self) -> AsyncIterator[int]:
        return self._ticks()

    async def _ticks(self) -> AsyncIterator[int]:
        while True:
            yield await self.wait()


def periodic(period: float, *, start: float | None = None) -> Periodic:
    """`async for k in periodic(1 / fps):` ticks at `start + k/fps` on the controller clock."""
    return Periodic(period, start=start)
