"""Where each action runs: inline on the event loop while the policy's `act` is known to be short, else on the action lane.

Why. Handing an action to the action lane's worker thread and back costs two
GIL acquisitions (the worker taking the job, the loop taking the result) and
a self-pipe wake-up. With nothing else in the process that is ~0.1 ms; but
any thread that holds the GIL (a thread VL lane's preprocessing, a camera
decoder) makes each acquisition wait up to the interpreter's 5 ms switch
interval. At 100 Hz that is most of a period for a job of ~0.3 ms: the
issue's run saw 835 of 989 ticks on time, 11 missed and 10 action timeouts
with the tiny default policy. An inline call pays neither hand-off, only the
job itself. A separate action process would not wait on this GIL either, but
would pay pickling both ways every tick, and on CUDA the action lane belongs
in the process that owns the device, on its high-priority stream (which the
inline call uses: `ComputeExecutor.run_inline`).

The price: an inline `act` blocks the loop for its duration (no frame, state
or stop request is served meanwhile), and a running call cannot be timed out.
Hence the rule:

* `act` runs on the lane until `settle` consecutive calls each took at most
  `bound` and their moving average (EWMA) is under it: a policy slow from the
  start never runs inline;
* it leaves for the lane at the first call longer than twice the bound, or
  when the average creeps over the bound; each such return doubles the
  calls needed to come back (up to `MAX_SETTLE`), so a policy hovering at the
  bound does not flap;
* each `FORGIVE_AFTER` consecutive calls inline with no excursion halve the
  calls needed again (down to `settle`): a policy that is short but, once
  in a while, preempted by the OS or a neighbour on a shared machine (a
  single long call) is not pushed for good onto the lane by a run's worth of
  such rare excursions, while a hovering one never stays inline that long;
* an inline call that took longer than the action timeout is treated as a
  timed-out action (`ActionOverdue`, a `TimeoutError`): the tick holds, its
  late result is never sent, exactly as on the lane.

So the loop is blocked at most `bound` per tick in steady state, and by one
longer call per excursion (the call that revealed it). The default bound
(`ControllerConfig.action_inline_max`) is 2 ms, at most a fifth of the
period: one RTDE state interval (2 ms at 500 Hz), so at most one state
sample waits in the socket meanwhile. It was 1 ms, from `act`'s time in a
tight loop (the tiny default policy: 0.3 ms); inside a running controller
the same `act` takes 1.0 ms p50, 1.3 ms p90 on the 2-core benchmark
machine, because the 10 ms between ticks leave the caches cold, so it sat
at the bound and ran on the lane at 99 % of ticks (`python -m
controller.bench loop --hz 100 --scenario saturated --modes
vl_worker=process --set action_inline_max=0.001`, then `=0.002`: 4 of 480
calls inline against 453 of 480, controller overhead per tick p50 467 ->
170 us). A call that could hang (I/O, a lock) must not be inline: set the
bound to 0.

The durations are the job's own time as the executor measures it (on the
lane: on its worker, the hand-off excluded), so the choice is not fooled by
the very hand-off cost it removes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from controller.executor import Lane, LaneBusy

T = TypeVar("T")

#: Most consecutive short calls ever required before going inline again.
MAX_SETTLE = 1024
#: Consecutive inline calls without an excursion that halve the calls required again.
FORGIVE_AFTER = 256
#: Default bound of an inline `act` (see the module docstring for why 2 ms)...
DEFAULT_INLINE_MAX = 0.002
#: ... and at most this fraction of the period, so the loop is blocked a fifth of it at most.
DEFAULT_INLINE_FRACTION = 0.2


def default_inline_bound(period: float) -> float:
    """The inline bound a controller at this period uses unless told otherwise."""
    return min(DEFAULT_INLINE_MAX, DEFAULT_INLINE_FRACTION * period)


class ActionOverdue(TimeoutError):
    """An inline `act` returned after the action timeout: its result must not be sent."""


@dataclass(frozen=True, slots=True)
class InlineRule:
    """When `act` may run inline (see the module docstring)."""

    #: Longest typical `act` (s) run inline; 0: always on the action lane.
    bound: float
    #: Consecutive calls under the bound needed before going inline (doubled per return).
    settle: int = 5
    #: Weight of the newest duration in the moving average.
    alpha: float = 0.2

    def __post_init__(self) -> None:
        if not self.bound >= 0:
            raise ValueError(f"bound must be >= 0 s, got {self.bound!r}")
        if self.settle < 1:
            raise ValueError(f"settle must be >= 1, got {self.settle!r}")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}")


@dataclass(frozen=True, slots=True)
class ActResult(Generic[T]):
    value: T
    #: Seconds `act` itself took.
    compute: float
    inline: bool


class ActionPath:
    """Runs `act` on the action lane or inline, choosing per call from measured durations.

    Inline needs an executor with `run_timed` and `run_inline` (the real and
    the simulated one have both); with any other executor, or a bound of 0,
    every action goes to the lane and the path never switches (`act`'s own
    time is still measured where the executor has `run_timed`).
    """

    def __init__(
        self,
        executor: Any,
        rule: InlineRule,
        *,
        clock: Callable[[], float],
        on_switch: Callable[[bool], None] | None = None,
    ) -> None:
        self.executor = executor
        self.rule = rule
        self._clock = clock
        self._on_switch = on_switch
        #: Whether the executor reports a job's own time (then the hand-off is measured too).
        self.timed = callable(getattr(executor, "run_timed", None))
        self.can_inline = (
            rule.bound > 0 and self.timed and callable(getattr(executor, "run_inline", None))
        )
        self.inline = False
        #: Moving average of `act`'s duration (s); None before the first measured call.
        self.ewma: float | None = None
        self._streak = 0
        self._needed = rule.settle
        self.switches = 0

    async def warm_up(self, fn: Callable[..., T], *args: Any) -> T:
        """The warm-up's action: on the lane, then once inline if inline may ever be chosen.

        Both calls pay their thread's first-call costs (lazy allocations; on
        CUDA a cuBLAS handle per thread) before anything moves, instead of
        the first control tick that takes that path. Neither is measured.
        """
        value = await self.executor.run(Lane.ACTION, fn, *args)
        if self.can_inline:
            try:
                self.executor.run_inline(Lane.ACTION, fn, *args)
            except LaneBusy:
                pass
        return value

    async def run(self, fn: Callable[..., T], *args: Any, within: float) -> ActResult[T]:
        """One action: `fn(*args)` inline or on the lane; `TimeoutError` past `within` s."""
        if self.inline:
            start = self._clock()
            try:
                value, compute = self.executor.run_inline(Lane.ACTION, fn, *args)
            except LaneBusy:
                pass  # a job abandoned by a timeout still runs there: queue behind it
            except Exception:
                self._observe(self._clock() - start)
                raise
            else:
                self._observe(compute)
                elapsed = self._clock() - start
                if elapsed > within:
                    raise ActionOverdue(f"inline act took {elapsed * 1e3:.3f} ms")
                return ActResult(value, compute, True)
        if not self.timed:
            async with asyncio.timeout(within):
                value = await self.executor.run(Lane.ACTION, fn, *args)
            return ActResult(value, float("nan"), False)
        async with asyncio.timeout(within):
            value, compute = await self.executor.run_timed(Lane.ACTION, fn, *args)
        self._observe(compute)
        return ActResult(value, compute, False)

    def _observe(self, seconds: float) -> None:
        """One measured duration of `act`: update the average, then the choice."""
        rule = self.rule
        self.ewma = seconds if self.ewma is None else self.ewma + rule.alpha * (seconds - self.ewma)
        if not self.can_inline:
            return
        if self.inline:
            if seconds > 2 * rule.bound or self.ewma > rule.bound:
                self._needed = min(2 * self._needed, MAX_SETTLE)
                self._switch(False)
                return
            self._streak += 1
            if self._streak >= FORGIVE_AFTER:
                self._streak = 0
                self._needed = max(self._needed // 2, rule.settle)
            return
        self._streak = self._streak + 1 if seconds <= rule.bound else 0
        if self._streak >= self._needed and self.ewma <= rule.bound:
            self._switch(True)

    def _switch(self, inline: bool) -> None:
        self.inline = inline
        self._streak = 0
        self.switches += 1
        if self._on_switch is not None:
            self._on_switch(inline)
