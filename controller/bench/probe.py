"""Timing taken outside the loop under test: `time.perf_counter()` stamps through hooks.

A loop that measures its own lateness with its own clock can only be as
precise as that clock (uvloop's `loop.time()` has 1 ms resolution), and a
wrong clock would report itself right. So the benchmark stamps every tick
start, every `act` call and every command with `time.perf_counter()` from
taps it puts around the loop (the controller's observer hook, a policy
proxy, a robot proxy) and computes every figure from those stamps.
The controller's own numbers are used only for what has no outside trace
(its action-timeout count, its VL encode count).

Lateness is measured against each design's own schedule: the controller's
absolute deadlines (tick `k` of the run is due at `t0 + k/hz`), the design
note's relative pacing (the next iteration is due one period after the
previous one started). A constant offset between the two clocks is not
lateness, so in both cases the smallest difference in the row is taken as
zero; jitter, drift and overruns all remain.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from controller.bench.common import spread
from controller.invariants import PolicyProxy, RobotProxy
from drivers.base import JointCommand, RobotState, SensorReading

#: `grid`: due at t0 + index/hz (the controller); `interval`: one period after the previous start.
Schedule = Literal["grid", "interval"]


@dataclass(slots=True)
class TickStamp:
    """One tick as seen from outside: when it started, and when its command went out."""

    start: float
    index: int | None
    command: float | None = None
    act: tuple[float, float] | None = None


class Probe:
    """Collects perf_counter stamps of tick starts, `act` spans and commands."""

    def __init__(self) -> None:
        self.ticks: list[TickStamp] = []
        #: (start, end) of every act call, appended from whichever thread ran it.
        self.acts: list[tuple[float, float]] = []

    def tick(self, index: int | None = None) -> None:
        self.ticks.append(TickStamp(time.perf_counter(), index))

    def observer(self, event: str, _time: float, detail: Any) -> None:
        """The controller's observer hook (`Controller.observers`): stamps each tick's start."""
        if event == "tick":
            self.tick(detail.index)

    def act_span(self, start: float, end: float) -> None:
        self.acts.append((start, end))

    def commanded(self) -> None:
        """A command is about to go to the robot: stamp it on the current tick."""
        now = time.perf_counter()
        if not self.ticks:
            return  # the warm-up sends nothing; a driver's own commands are not ticks
        tick = self.ticks[-1]
        if tick.command is not None:
            return
        tick.command = now
        # The act behind this command is the newest one, if it started within this tick.
        if self.acts and self.acts[-1][0] >= tick.start:
            tick.act = self.acts[-1]


class ActTap(PolicyProxy):
    """Stamps each `act` call (on whichever thread runs it) into the probe.

    Pickled (a VL worker process may be handed the policy), it becomes the
    policy it wraps: a tap belongs to this process only.
    """

    def __init__(self, inner: Any, probe: Probe) -> None:
        super().__init__(inner)
        self._probe = probe

    def act(self, features: Any, state: RobotState, sensors: Mapping[str, SensorReading]) -> Any:
        start = time.perf_counter()
        try:
            return self.inner.act(features, state, sensors)
        finally:
            self._probe.act_span(start, time.perf_counter())

    def __reduce__(self) -> Any:
        return (_same, (self.inner,))


def _same(value: Any) -> Any:
    return value


class CommandTap(RobotProxy):
    """Stamps each command sent to the robot into the probe."""

    def __init__(self, inner: Any, probe: Probe) -> None:
        super().__init__(inner)
        self._probe = probe

    async def command(self, cmd: JointCommand) -> None:
        self._probe.commanded()
        await self.inner.command(cmd)


def lateness(ticks: Sequence[TickStamp], period: float, schedule: Schedule) -> np.ndarray:
    """Seconds each tick started after it was due, the row's smallest difference taken as zero."""
    stamps = np.array([t.start for t in ticks], dtype=float)
    if schedule == "grid":
        index = np.array([t.index for t in ticks], dtype=float)
        raw = stamps - index * period
    else:
        raw = np.diff(stamps) - period
    if raw.size == 0:
        return raw
    return raw - raw.min()


def tick_figures(ticks: Sequence[TickStamp], period: float, schedule: Schedule) -> dict[str, Any]:
    """Lateness, ticks on time, missed ticks and per-tick cost, from the stamps alone.

    Missed ticks are the slots of the target rate's grid over the measured
    span that had no tick: a loop that skips deadlines and a loop that drifts
    (runs slower than its rate) both miss slots. A tick is on time when it
    started within 10 % of a period of its due time (as the controller's
    telemetry counts it). Overhead is what a tick costs beyond the policy's
    own `act`: from the tick's start to its command, minus the act call.
    """
    n = len(ticks)
    late = lateness(ticks, period, schedule) if n else np.array([])
    span = ticks[-1].start - ticks[0].start if n > 1 else 0.0
    slots = round(span / period) + 1 if n else 0
    missed = max(0, slots - n)
    on_time = int(np.count_nonzero(late <= 0.1 * period))
    judged = late.size + missed  # the interval schedule has no due time for its first tick
    commanded = [t for t in ticks if t.command is not None]
    reaction = [t.command - t.start for t in commanded if t.command is not None]
    acts = [t.act[1] - t.act[0] for t in commanded if t.act is not None]
    overhead = [
        t.command - t.start - (t.act[1] - t.act[0])
        for t in commanded
        if t.command is not None and t.act is not None
    ]
    return {
        "ticks": n,
        "span_s": span,
        "tick_rate_hz": (n - 1) / span if span > 0 else None,
        "commands": len(commanded),
        "ticks_without_command": n - len(commanded),
        "ticks_on_time": on_time,
        "ticks_judged": judged,
        "on_time_fraction": on_time / judged if judged else None,
        "missed_ticks": missed,
        "lateness_ms": spread(late),
        "tick_to_command_ms": spread(reaction),
        "act_ms": spread(acts),
        "overhead_us": spread(overhead, 1e6),
    }
