"""Ground truth from the simulator's side: what it sent, when, and what it was sent back.

A test that judges the UR5 driver must not take the driver's word for when
a state was captured: the driver's clock mapping is one of the things under
test. While a `SimRecorder` is attached (`UrSimulator.record()`), the
simulator logs every RTDE sample it produces (its serial number, the
simulator's clock when the arm was in that state, and the `timestamp`
field it carried, which a fault may have frozen or corrupted) and every
input packet it takes. It also writes the sample's serial into the sample
itself, in `actual_TCP_force[5]` (the simulated arm has no force model and
reports zero force), which the driver hands on untouched as
`RobotState.tcp_force`; so whoever sees a `RobotState` can look up when
the arm really was in that state, whatever the clock mapping says.

Times are the simulator loop's `time()`: `time.monotonic()` for the
standard asyncio loop, the same clock in every thread of a process.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: The output field, and the element of it, that carries the serial while recording.
TAG_FIELD = "actual_TCP_force"
TAG_INDEX = 5
#: Serial n is sent as n * TAG_SCALE (N m): a small torque, exact enough to read back.
TAG_SCALE = 1e-3


@dataclass(frozen=True, slots=True)
class SampleSent:
    """One RTDE sample the simulator produced (sent to every streaming client)."""

    serial: int
    #: simulator clock when the arm was in the state the sample describes
    produced: float
    #: the `timestamp` field the sample carried (frozen, NaN, ... under a fault)
    timestamp: float


@dataclass(frozen=True, slots=True)
class InputsTaken:
    """One RTDE input packet the simulator accepted (written to the input registers)."""

    time: float
    values: dict[str, Any]


@dataclass
class SimRecorder:
    """Bounded logs of samples sent and inputs taken (a long run must not grow memory)."""

    maxlen: int = 200_000
    samples: deque[SampleSent] = field(init=False)
    inputs: deque[InputsTaken] = field(init=False)
    _serial: int = 0
    _by_serial: dict[int, SampleSent] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.samples = deque(maxlen=self.maxlen)
        self.inputs = deque(maxlen=self.maxlen)

    def next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def sample_sent(self, serial: int, produced: float, timestamp: Any) -> None:
        try:
            ts = float(timestamp)
        except (TypeError, ValueError):
            ts = math.nan
        if len(self.samples) == self.samples.maxlen:
            self._by_serial.pop(self.samples[0].serial, None)
        sample = SampleSent(serial, produced, ts)
        self.samples.append(sample)
        self._by_serial[serial] = sample

    def inputs_taken(self, time: float, values: dict[str, Any]) -> None:
        self.inputs.append(InputsTaken(time, dict(values)))

    def sample(self, serial: int) -> SampleSent | None:
        return self._by_serial.get(serial)

    @staticmethod
    def tagged(force: Sequence[float], serial: int) -> list[float]:
        out = [float(x) for x in force]
        out[TAG_INDEX] = serial * TAG_SCALE
        return out

    @staticmethod
    def serial_of(tcp_force: Any) -> int | None:
        """The serial a recorded sample carried in its force vector, or None (not a tag)."""
        try:
            value = float(tcp_force[TAG_INDEX])
        except (TypeError, ValueError, IndexError, KeyError):
            return None
        if not math.isfinite(value) or value <= 0:
            return None
        serial = round(value / TAG_SCALE)
        return serial if abs(serial * TAG_SCALE - value) < TAG_SCALE / 4 else None
