"""The action path's choice between an inline `act` and the action lane, on the virtual clock.

The simulated executor charges each job's cost in virtual time: on the lane
the loop keeps running meanwhile; inline the clock jumps with nothing else
running, as a real inline call blocks the loop.
"""

from __future__ import annotations

import asyncio

import pytest

from controller.action_path import FORGIVE_AFTER, MAX_SETTLE, ActionOverdue, ActionPath, InlineRule
from controller.executor import Lane
from controller.harness import SimulatedExecutor

pytestmark = pytest.mark.virtual_clock


class Job:
    """An `act` stand-in whose cost (s) the test sets; it records where it ran."""

    def __init__(self, ex: SimulatedExecutor, cost: float) -> None:
        self.ex = ex
        self.cost = cost
        self.calls = 0

    def __call__(self, x: int) -> int:
        self.ex.charge(self.cost)
        self.calls += 1
        return x + 1


def path(ex, bound=0.001, settle=5, switches=None):
    loop = asyncio.get_running_loop()
    return ActionPath(
        ex,
        InlineRule(bound, settle=settle),
        clock=loop.time,
        on_switch=None if switches is None else switches.append,
    )


async def settled_short_act(switches=None):
    """A 0.2 ms act run the 5 settle calls: the path runs it inline from the next call on."""
    ex = SimulatedExecutor()
    job = Job(ex, 0.0002)
    p = path(ex, switches=switches)
    for i in range(5):
        await p.run(job, i, within=0.01)
    return ex, job, p


async def short_calls(p, job, n):
    """`n` calls of the job at its short cost (0.2 ms)."""
    job.cost = 0.0002
    for i in range(n):
        await p.run(job, i, within=0.01)


async def one_long_call(p, job):
    """One 10 ms call (an excursion past twice the 1 ms bound), then the job is short again."""
    job.cost = 0.01
    await p.run(job, 0, within=1.0)
    job.cost = 0.0002


async def test_a_short_act_goes_inline_after_settle_calls_and_stops_paying_the_handoff(
    virtual_clock,
):
    ex = SimulatedExecutor(handoff=0.003)
    job = Job(ex, 0.0003)
    switches = []
    p = path(ex, switches=switches)
    latencies = []
    for i in range(8):
        t0 = virtual_clock.time()
        r = await p.run(job, i, within=0.01)
        latencies.append(virtual_clock.time() - t0)
        assert r.value == i + 1 and r.compute == pytest.approx(0.0003)
        assert r.inline == (i >= 5)
    assert switches == [True]
    # On the lane each action paid the 3 ms hand-off; inline, only the act itself.
    assert latencies[:5] == pytest.approx([0.0033] * 5)
    assert latencies[5:] == pytest.approx([0.0003] * 3)
    assert ex.jobs[Lane.ACTION] == 8


async def test_an_act_that_grows_moves_back_to_the_lane_and_returns_only_after_twice_the_calls(
    virtual_clock,
):
    switches = []
    _ex, job, p = await settled_short_act(switches)
    assert p.inline
    job.cost = 0.004  # more than twice the bound: one call is enough evidence
    t0 = virtual_clock.time()
    r = await p.run(job, 0, within=0.01)
    assert r.inline and virtual_clock.time() - t0 == pytest.approx(0.004)  # it blocked, once
    assert not p.inline and switches == [True, False]
    r = await p.run(job, 0, within=0.01)
    assert not r.inline  # the next one already runs on the lane
    job.cost = 0.0002
    inline_after = []
    for i in range(12):
        inline_after.append((await p.run(job, i, within=0.01)).inline)
    # Back inline only after 10 short calls (5, doubled by the return to the lane).
    assert inline_after == [False] * 10 + [True] * 2
    assert switches == [True, False, True]


async def test_a_slow_creep_of_the_mean_also_moves_back_to_the_lane(virtual_clock):
    _ex, job, p = await settled_short_act()
    assert p.inline
    job.cost = 0.0015  # over the bound, under twice it: the mean has to get there
    inline = []
    for i in range(10):
        inline.append((await p.run(job, i, within=0.01)).inline)
    assert inline[0] and not p.inline
    assert p.ewma is not None and p.ewma > 0.001
    # Each of those inline calls blocked the loop at most twice the bound.
    assert sum(inline) < 10


async def test_a_policy_slow_from_the_start_never_runs_inline(virtual_clock):
    ex = SimulatedExecutor()
    job = Job(ex, 0.015)
    p = path(ex)
    for i in range(50):
        assert not (await p.run(job, i, within=1.0)).inline
    assert p.switches == 0


async def test_an_inline_act_past_the_timeout_is_overdue_and_not_returned(virtual_clock):
    _ex, job, p = await settled_short_act()
    job.cost = 0.02
    with pytest.raises(ActionOverdue) as caught:
        await p.run(job, 0, within=0.01)
    assert isinstance(caught.value, TimeoutError)  # the runtime holds on TimeoutError
    assert not p.inline


async def test_a_lane_act_past_the_timeout_raises_timeout_error(virtual_clock):
    ex = SimulatedExecutor()
    p = path(ex)
    with pytest.raises(TimeoutError):
        await p.run(Job(ex, 0.05), 0, within=0.01)


async def test_never_inline_while_the_lane_still_runs_a_job(virtual_clock):
    ex, job, p = await settled_short_act()
    assert p.inline
    # A job abandoned by a timeout still occupies the lane for 50 ms.
    slow = asyncio.ensure_future(ex.run(Lane.ACTION, Job(ex, 0.05), 0))
    await asyncio.sleep(0)
    t0 = virtual_clock.time()
    r = await p.run(job, 1, within=1.0)
    assert not r.inline  # queued on the lane behind it instead of calling the model twice at once
    assert virtual_clock.time() - t0 == pytest.approx(0.05 + 0.0002)
    await slow
    assert p.inline  # the choice itself is unchanged


async def test_a_failing_inline_act_raises_and_is_measured(virtual_clock):
    ex, _job, p = await settled_short_act()

    def boom(_: int) -> int:
        ex.charge(0.005)
        raise ValueError("bad tensor")

    with pytest.raises(ValueError, match="bad tensor"):
        await p.run(boom, 0, within=0.01)
    assert not p.inline  # it blocked the loop 5 ms: back to the lane


async def test_bound_zero_or_an_executor_without_inline_always_uses_the_lane(virtual_clock):
    ex = SimulatedExecutor()
    job = Job(ex, 0.0001)
    p = path(ex, bound=0.0)
    for i in range(10):
        assert not (await p.run(job, i, within=0.01)).inline

    class LaneOnly:
        def __init__(self) -> None:
            self.inner = SimulatedExecutor()

        async def run(self, lane, fn, *args):
            return await self.inner.run(lane, fn, *args)

    lane_only = LaneOnly()
    p = path(lane_only)
    assert not p.can_inline
    for i in range(10):
        r = await p.run(Job(lane_only.inner, 0.0001), i, within=0.01)
        assert not r.inline and r.value == i + 1


async def test_the_settle_count_doubles_up_to_a_cap(virtual_clock):
    ex = SimulatedExecutor()
    job = Job(ex, 0.0002)
    p = path(ex, settle=300)
    await short_calls(p, job, 300)
    for cost_then_calls in range(3):
        assert p.inline
        await one_long_call(p, job)
        assert not p.inline
        await short_calls(p, job, min(300 * 2 ** (cost_then_calls + 1), MAX_SETTLE))
    assert p.inline


async def test_warm_up_runs_once_on_the_lane_and_once_inline_unmeasured(virtual_clock):
    ex = SimulatedExecutor()
    job = Job(ex, 0.05)  # a slow first call (lazy initialisation) must not count
    p = path(ex)
    assert await p.warm_up(job, 1) == 2
    assert job.calls == 2 and ex.jobs[Lane.ACTION] == 2
    assert p.ewma is None and not p.inline
    p = path(ex, bound=0.0)
    await p.warm_up(job, 1)
    assert job.calls == 3  # no inline call when inline can never be chosen


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="bound"):
        InlineRule(-1.0)
    with pytest.raises(ValueError, match="settle"):
        InlineRule(0.001, settle=0)
    with pytest.raises(ValueError, match="alpha"):
        InlineRule(0.001, alpha=0.0)


async def test_a_long_stretch_inline_forgives_one_excursion_at_a_time(virtual_clock):
    """Rare single long calls (a preempted thread) do not push a short act onto the lane for good."""
    ex = SimulatedExecutor()
    job = Job(ex, 0.0002)
    p = path(ex, settle=5)
    await short_calls(p, job, 5)
    needed = 5
    for _ in range(4):  # four excursions, each followed by the calls needed to return
        await one_long_call(p, job)
        needed *= 2
        await short_calls(p, job, needed - 1)
        assert not p.inline
        await short_calls(p, job, 1)
        assert p.inline
    assert p._needed == 80
    await short_calls(p, job, FORGIVE_AFTER * 3)  # three long stretches: 80 -> 40 -> 20 -> 10
    assert p.inline and p._needed == 10
    await short_calls(p, job, FORGIVE_AFTER * 10)
    assert p._needed == 5  # never below settle
    await one_long_call(p, job)
    await short_calls(p, job, 9)
    assert not p.inline  # the next excursion doubles from there: 10 calls
    await short_calls(p, job, 1)
    assert p.inline


async def test_a_policy_hovering_at_the_bound_is_never_forgiven(virtual_clock):
    ex = SimulatedExecutor()
    job = Job(ex, 0.0002)
    p = path(ex, settle=5)
    await short_calls(p, job, 5)
    needed = [p._needed]
    for i in range(20_000):  # every 100th call is long: never FORGIVE_AFTER calls in a row
        job.cost = 0.01 if i % 100 == 99 else 0.0002
        await p.run(job, i, within=1.0)
        needed.append(p._needed)
    assert needed == sorted(needed)  # never halved
    # 5, 10, ..., 80 calls fit between two long ones; 160 never do: on the lane for good
    assert p._needed == 160 and not p.inline
