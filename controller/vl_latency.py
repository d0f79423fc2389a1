"""VL latency emulation: every VL encode padded to take a given time in all.

The design's claim is about a slow encoder (a 3B Qwen2.5-VL takes ~300 ms
on a robot PC) beside a 10 Hz control loop. The tiny default model encodes
in tens of milliseconds, so to measure what a real model's latency does to
control, each `encode_vl` is padded to last `latency` seconds, measured from
its start: an encode that already took longer is left alone.

Where the time is spent depends on the executor, and never on the event
loop: on the test harness's `SimulatedExecutor` the rest is charged as
virtual time to the VL lane (`charge`), so a virtual-time episode sees
exactly `latency` per encode; on the real `ComputeExecutor` the VL lane's
own worker thread sleeps for the rest, which occupies that lane as a slow
model would and leaves the action lane and the loop free.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from controller.invariants import PolicyProxy
from drivers.base import Frame


class Padding(Protocol):
    """How an encode's time is measured and the rest of `latency` spent, on its own thread."""

    def mark(self) -> float:
        """A reading taken when the encode starts."""
        ...

    def pad(self, mark: float, latency: float) -> None:
        """Spend whatever of `latency` has not passed since `mark`."""
        ...


class RealTimePadding:
    """Real time: the worker thread running the encode sleeps for the rest (monotonic clock)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep

    def mark(self) -> float:
        return self._clock()

    def pad(self, mark: float, latency: float) -> None:
        rest = latency - (self._clock() - mark)
        if rest > 0:
            self._sleep(rest)


class Charging(Protocol):
    """An executor whose jobs cost virtual time (`controller.harness.SimulatedExecutor`)."""

    def charge(self, seconds: float) -> None: ...

    def charged(self) -> float: ...


class VirtualPadding:
    """Virtual time: the job is charged the rest, on top of what the model charged itself."""

    def __init__(self, executor: Charging) -> None:
        self._executor = executor

    def mark(self) -> float:
        return self._executor.charged()

    def pad(self, mark: float, latency: float) -> None:
        rest = latency - (self._executor.charged() - mark)
        if rest > 0:
            self._executor.charge(rest)


def padding_for(executor: Any) -> Padding:
    """Virtual padding on an executor that charges virtual time, real-time padding otherwise."""
    if callable(getattr(executor, "charge", None)) and callable(getattr(executor, "charged", None)):
        return VirtualPadding(executor)
    return RealTimePadding()


class PaddedPolicy(PolicyProxy):
    """Any policy, its `encode_vl` padded to take at least `latency` seconds from its start.

    A failing encode is padded too: a slow model that fails, fails late.
    `act` and `load` are untouched.
    """

    def __init__(self, inner: Any, latency: float, padding: Padding) -> None:
        if not latency >= 0:
            raise ValueError(f"VL latency must be a number of seconds >= 0, got {latency!r}")
        super().__init__(inner)
        self.latency = float(latency)
        self.padding = padding

    def encode_vl(self, frames: Sequence[Frame], instruction: str) -> Any:
        mark = self.padding.mark()
        try:
            return self.inner.encode_vl(frames, instruction)
        finally:
            self.padding.pad(mark, self.latency)
