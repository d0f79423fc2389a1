"""The capture times a fake device reports when its clock is broken.

The fake arm and the fake camera break their clocks the same ways a real
link does (NaN timestamps, a clock that stops, one that runs ahead of ours),
and the controller must treat each the same way whatever the device: one
function decides what either reports, so the two fakes cannot drift apart.
"""

from __future__ import annotations

import math
from typing import Literal

ClockFault = Literal["nan", "frozen", "ahead"]

#: How far ahead an "ahead" clock runs (s): beyond any skew the safety filter tolerates.
AHEAD_S = 1.0


def reported_time(capture: float, fault: ClockFault | None, frozen_at: float) -> float:
    """What a device whose clock has `fault` reports for a capture at `capture`.

    `frozen_at` is the time the clock stopped at (used by "frozen" only).
    """
    match fault:
        case "nan":
            return math.nan
        case "frozen":
            return frozen_at
        case "ahead":
            return capture + AHEAD_S
    return capture
