"""The driver lifecycle (`drivers.lifecycle`), on virtual time: every bound is checked exactly.

Owned tasks and a close that is idempotent and bounded; the one reconnect
loop (counts, backoff growth, cap, jitter bounds, what it survives and what
ends it, one log line per failure); drift-free pacing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random

import pytest

from drivers.base import now
from drivers.errors import ConnectionLost, DriverConfigError
from drivers.lifecycle import (
    CANCEL_BOUND,
    Backoff,
    Lifecycle,
    Periodic,
    Reconnects,
    periodic,
    reconnect_with_backoff,
)
from tests.drivers.helpers import end_stubborn, stubborn

pytestmark = pytest.mark.virtual_clock


class Driver(Lifecycle):
    def __init__(self, unsafe_exit: bool = False) -> None:
        self.name = "dev"
        self.released = 0
        self.calls: list[str] = []
        self.unsafe_exit = unsafe_exit

    async def _leave_safe(self) -> None:
        self.calls.append("leave_safe")
        if self.unsafe_exit:
            raise OSError("link gone")

    async def _release(self) -> None:
        await asyncio.sleep(0.01)
        self.released += 1
        self.calls.append("release")


# ------------------------------------------------------------------ close


async def test_close_ends_owned_tasks_then_releases_once(virtual_clock) -> None:
    drv = Driver()
    cleaned: list[str] = []

    async def worker(tag: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append(tag)

    async with drv:
        a = drv.spawn(worker("a"), "a")
        b = drv.spawn(worker("b"), "b")
        await asyncio.sleep(0)
        assert {t.get_name() for t in drv.tasks} == {"dev-a", "dev-b"}
    assert a.cancelled() and b.cancelled() and sorted(cleaned) == ["a", "b"]
    assert len(drv.tasks) == 0 and drv.closed and drv.released == 1
    t0 = now()
    await asyncio.gather(drv.close(), drv.close())  # again, and concurrently
    assert drv.released == 1 and now() == t0
    with pytest.raises(RuntimeError, match="closed"):
        drv.spawn(worker("late"), "late")  # would outlive the driver


async def test_a_task_ignoring_its_cancellation_cannot_hang_close(
    virtual_clock, caplog: pytest.LogCaptureFixture
) -> None:
    drv = Driver()
    release = asyncio.Event()
    task = drv.spawn(stubborn(release), "stubborn")
    await asyncio.sleep(0)
    t0 = now()
    await asyncio.wait_for(drv.close(), 5 * CANCEL_BOUND)  # a hang fails, in virtual time
    assert now() - t0 == pytest.approx(CANCEL_BOUND + 0.01)  # the bound, then the release
    assert drv.released == 1 and not task.done()
    assert "dev-stubborn did not end within 1.0 s" in caplog.text
    await end_stubborn(task, release)
    await asyncio.wait({task})


async def test_a_failed_owned_task_is_logged_with_its_traceback(
    virtual_clock, caplog: pytest.LogCaptureFixture
) -> None:
    drv = Driver()

    async def broken() -> None:
        raise ZeroDivisionError("a bug")

    drv.spawn(broken(), "broken")
    await asyncio.sleep(0.1)
    assert len(drv.tasks) == 0
    [record] = [r for r in caplog.records if "dev-broken failed" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    await drv.close()


async def test_a_task_may_close_its_own_driver(virtual_clock) -> None:
    drv = Driver()
    t0 = now()
    task = drv.spawn(drv.close(), "closer")
    await asyncio.wait({task}, timeout=0.5)
    assert task.done() and drv.released == 1  # did not wait a bound for itself
    assert now() - t0 < 0.5


async def test_async_with_leaves_the_device_safe_then_closes(virtual_clock) -> None:
    async with Driver() as drv:
        pass
    assert drv.calls == ["leave_safe", "release"]
    drv = Driver(unsafe_exit=True)
    with pytest.raises(OSError, match="link gone"):
        async with drv:
            pass
    assert drv.calls == ["leave_safe", "release"] and drv.closed  # closed all the same
    drv = Driver()
    await drv.close()  # a bare close (the link may be gone) does not try
    assert drv.calls == ["release"]


# ------------------------------------------------------------------ reconnects


async def run_for(seconds: float, attempt, **options) -> asyncio.Task[None]:
    """Run a reconnect loop for `seconds`, then cancel it; the ended task."""
    task = asyncio.create_task(reconnect_with_backoff(attempt, what="dev", **options))
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.wait({task})
    return task


def test_backoff_grows_to_its_cap_and_jitter_only_shortens() -> None:
    exact = Backoff(0.1, 1.0, jitter=0.0)
    rng = random.Random(1)
    assert [exact.delay(n, rng) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert exact.delay(10_000, rng) == 1.0  # no overflow on a long outage
    jittered = Backoff(0.1, 1.0, jitter=0.25)
    for n in range(1, 8):
        base = exact.delay(n, rng)
        draws = [jittered.delay(n, rng) for _ in range(200)]
        assert all(0.75 * base <= d <= base for d in draws)
        assert max(draws) - min(draws) > 0.1 * base  # actually jittered
    for bad in (
        dict(initial=0, maximum=1),
        dict(initial=2, maximum=1),
        dict(initial=1, maximum=float("inf")),
        dict(initial=0.1, maximum=1, jitter=1.0),
        dict(initial=0.1, maximum=1, factor=0.5),
    ):
        with pytest.raises(ValueError, match="Backoff"):
            Backoff(**bad)


async def test_reconnects_are_counted_backed_off_and_reset_by_a_healthy_session(
    virtual_clock, caplog: pytest.LogCaptureFixture
) -> None:
    starts: list[float] = []
    stats = Reconnects()
    plan = ["fail", "fail", "fail", "healthy-then-fail", "fail", "end"]
    seen: list[BaseException | None] = []

    async def attempt(link: Reconnects) -> None:
        starts.append(now())
        step = plan.pop(0) if plan else "block"
        if step == "block":
            await asyncio.sleep(3600)
        if step == "end":
            return
        if step.startswith("healthy"):
            link.healthy()
            await asyncio.sleep(5.0)
        raise ConnectionLost(f"link down ({step})")

    task = await run_for(
        20, attempt, backoff=Backoff(0.1, 0.3, jitter=0.0), stats=stats, on_failure=seen.append
    )
    assert task.cancelled()
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
    # 0.1, 0.2, then capped at 0.3; the healthy session ran 5 s and restarted the
    # growth at 0.1; the stream that ended counts as one more in a row (0.3)
    assert gaps == [0.1, 0.2, 0.3, 5.1, 0.2, 0.3]
    assert (stats.attempts, stats.failures, stats.ends) == (7, 5, 1)
    assert stats.last_error == "ConnectionLost: link down (fail)"
    assert [e is None for e in seen] == [False] * 5 + [True]
    lines = [r for r in caplog.records if r.getMessage().startswith("dev:")]
    assert len(lines) == 6  # one line per failure or end, no more
    assert all("ConnectionLost" in r.getMessage() for r in lines[:5])
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in lines)


async def test_reconnects_survive_any_exception_and_trace_a_bug_once(
    virtual_clock, caplog: pytest.LogCaptureFixture
) -> None:
    bugs = [ZeroDivisionError("a bug"), KeyError("another"), ValueError("and another")]
    stats = Reconnects()

    async def attempt(link: Reconnects) -> None:
        if bugs:
            raise bugs.pop(0)
        link.healthy()
        await asyncio.sleep(3600)

    task = await run_for(5, attempt, backoff=Backoff(0.1, 1.0), stats=stats)
    assert task.cancelled(), "the loop ended before it was cancelled"
    assert stats.failures == 3 and stats.attempts == 4
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage().split(" (")[0] for r in errors] == [
        "dev: ZeroDivisionError: a bug",
        "dev: KeyError: 'another'",
        "dev: ValueError: and another",
    ]
    assert [r.exc_info is not None for r in errors] == [True, False, False]


async def test_a_fatal_or_unretried_error_ends_the_loop(virtual_clock) -> None:
    t0 = now()

    async def refused(link: Reconnects) -> None:
        raise DriverConfigError("401: check the token")

    with pytest.raises(DriverConfigError):
        await reconnect_with_backoff(
            refused, what="dev", backoff=Backoff(0.1, 1.0), fatal=(DriverConfigError,)
        )

    async def bug(link: Reconnects) -> None:
        raise RuntimeError("a driver bug")

    # the controller retries a lost link only: anything else ends the run
    with pytest.raises(RuntimeError):
        await reconnect_with_backoff(
            bug, what="dev", backoff=Backoff(0.1, 1.0), retry=(ConnectionLost,)
        )
    assert now() == t0  # neither waited a backoff


async def test_a_seeded_jitter_replays_and_stays_within_bounds(virtual_clock) -> None:
    async def delays(seed: int) -> list[float]:
        out: list[float] = []

        async def attempt(link: Reconnects) -> None:
            out.append(now())
            raise ConnectionLost("down")

        await run_for(30, attempt, backoff=Backoff(0.5, 4.0, jitter=0.5), rng=random.Random(seed))
        return [b - a for a, b in itertools.pairwise(out)]

    a, b, c = await delays(1), await delays(1), await delays(2)
    assert a == pytest.approx(b, abs=1e-9) and a != pytest.approx(c, abs=1e-3)
    for gaps in (a, c):
        for n, gap in enumerate(gaps, start=1):
            cap = min(4.0, 0.5 * 2 ** (n - 1))
            assert 0.5 * cap - 1e-9 <= gap <= cap + 1e-9


# ------------------------------------------------------------------ pacing


async def test_periodic_is_drift_free_whatever_the_work_takes(virtual_clock) -> None:
    rng = random.Random(0)
    wakes: list[float] = []
    t0 = now()
    async for k in periodic(0.1):
        wakes.append(now())
        await asyncio.sleep(rng.uniform(0, 0.09))  # work shorter than a period
        if k == 100:
            break
    assert wakes == [pytest.approx(t0 + k * 0.1, abs=1e-9) for k in range(1, 101)]


async def test_periodic_skips_missed_deadlines_instead_of_bursting(virtual_clock) -> None:
    ticks = Periodic(0.1)
    t0 = ticks.t0
    assert await ticks.wait() == 1
    await asyncio.sleep(0.25)  # an overrun: deadlines 2 and 3 passed
    k = await ticks.wait()
    assert k == 3 and now() == pytest.approx(t0 + 0.35)  # the newest due, at once
    assert ticks.missed == 1
    assert await ticks.wait() == 4 and now() == pytest.approx(t0 + 0.4)  # back on the grid
    await asyncio.sleep(1.0)
    ticks.restart()  # e.g. a relinked device: a new grid from now
    t1 = now()
    assert await ticks.wait() == 1 and now() == pytest.approx(t1 + 0.1)
    with pytest.raises(ValueError, match="period"):
        Periodic(0.0)
