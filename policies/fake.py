"""A fake policy with programmable latency and deterministic outputs.

It stands in for a VLA model when testing the controller: `encode_vl` and
`act` take as long as told (a fixed time, or drawn from a seeded
distribution) and return values that are a pure function of their inputs.

The time is spent through `self.burn(seconds)`: `time.sleep` on the real
executor's worker threads; the test harness points it at its simulated
executor so the same latency passes in virtual time.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from drivers.base import Frame, RobotInfo, RobotState, SensorReading
from drivers.options import option, validate
from policies.base import parse_options
from policies.errors import PolicyConfigError

_DIST = re.compile(r"^\s*(uniform|normal)\s*\(\s*([^,]+)\s*,\s*([^)]+)\s*\)\s*$")


@dataclass(frozen=True, slots=True)
class Latency:
    """A latency model: `0.3`, `uniform(0.25, 0.35)` or `normal(0.3, 0.02)` (seconds, >= 0)."""

    kind: str = "fixed"
    a: float = 0.0
    b: float = 0.0

    @classmethod
    def parse(cls, value: Any, what: str = "latency") -> Latency:
        if isinstance(value, Latency):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = cls("fixed", float(value))
        elif isinstance(value, str):
            m = _DIST.match(value)
            try:
                out = (
                    cls(m.group(1), float(m.group(2)), float(m.group(3)))
                    if m
                    else cls("fixed", float(value))
                )
            except ValueError:
                out = None
            if out is None:
                raise PolicyConfigError(
                    f"{what}: cannot read {value!r} (accepted: 0.3, uniform(lo, hi), normal(mean, std))"
                )
        else:
            raise PolicyConfigError(f"{what}: expected seconds or a distribution, got {value!r}")
        if not all(math.isfinite(x) for x in (out.a, out.b)) or out.a < 0 or out.b < 0:
            raise PolicyConfigError(f"{what}: values must be finite and >= 0, got {value!r}")
        if out.kind == "uniform" and out.b < out.a:
            raise PolicyConfigError(f"{what}: uniform(lo, hi) needs lo <= hi, got {value!r}")
        return out

    def draw(self, rng: np.random.Generator) -> float:
        if self.kind == "uniform":
            return float(rng.uniform(self.a, self.b))
        if self.kind == "normal":
            return max(0.0, float(rng.normal(self.a, self.b)))
        return self.a


@dataclass(frozen=True, slots=True)
class FakeFeatures:
    """What the fake encoder 'sees': the newest frame sequence numbers and capture times."""

    seqs: tuple[int, ...]
    capture_times: tuple[float, ...]
    instruction: str


@dataclass(frozen=True, slots=True)
class FakePolicyOptions:
    """The fake policy's options: `--policy fake --policy-option KEY=VALUE`, or `[policy]` keys."""

    vl_latency: float | str | Latency = option(
        0.3,
        help="time one VL encode takes",
        accepted="seconds >= 0, uniform(lo, hi) or normal(mean, std)",
    )
    action_latency: float | str | Latency = option(
        0.015,
        help="time one action takes",
        accepted="seconds >= 0, uniform(lo, hi) or normal(mean, std)",
    )
    horizon: int = option(8, help="rows of each action chunk", low=1)
    amplitude: float = option(0.2, help="amplitude of the sine every joint follows", unit="rad")
    frequency: float = option(0.1, help="frequency of that sine", unit="Hz")
    seed: int = option(0, help="seed of the latency draws", low=0)

    def __post_init__(self) -> None:
        validate(self, error=PolicyConfigError, where="fake policy: ")
        Latency.parse(self.vl_latency, "vl_latency")
        Latency.parse(self.action_latency, "action_latency")


class FakePolicy:
    """Moves every joint along a slow sine around where the arm started.

    The chunk is a pure function of (features, state): tests can predict it.
    """

    name = "fake"
    Options = FakePolicyOptions

    def __init__(
        self,
        vl_latency: Latency | float | str = 0.3,
        action_latency: Latency | float | str = 0.015,
        horizon: int = 8,
        amplitude: float = 0.2,
        frequency: float = 0.1,
        seed: int = 0,
        burn: Callable[[float], None] = time.sleep,
    ) -> None:
        FakePolicyOptions(vl_latency, action_latency, horizon, amplitude, frequency, seed)
        self.vl_latency = Latency.parse(vl_latency, "vl_latency")
        self.action_latency = Latency.parse(action_latency, "action_latency")
        self.horizon = horizon
        self.amplitude = float(amplitude)
        self.frequency = float(frequency)
        self._rng_vl = np.random.default_rng(seed)
        self._rng_act = np.random.default_rng(seed + 1)
        self.burn = burn
        self.period = 0.1
        self.dof = 6
        self.home: np.ndarray | None = None
        self.encodes = 0
        self.actions = 0
        self.fail_next_encodes = 0  # for tests: make the next N encodes raise

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> FakePolicy:
        opts = parse_options(FakePolicyOptions, options, what="fake policy")
        return cls(**{f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)})

    def load(self, device: str, robot: RobotInfo, control_period: float) -> None:
        self.dof = robot.dof
        self.period = control_period

    def encode_vl(self, frames: Sequence[Frame], instruction: str) -> FakeFeatures:
        self.burn(self.vl_latency.draw(self._rng_vl))
        self.encodes += 1
        if self.fail_next_encodes:
            self.fail_next_encodes -= 1
            raise RuntimeError("fake VL encoder failure (injected)")
        return FakeFeatures(
            seqs=tuple(f.seq for f in frames),
            capture_times=tuple(f.capture_time for f in frames),
            instruction=instruction,
        )

    def act(
        self, features: Any, state: RobotState, sensors: Mapping[str, SensorReading]
    ) -> np.ndarray:
        self.burn(self.action_latency.draw(self._rng_act))
        self.actions += 1
        if not isinstance(features, FakeFeatures):
            raise TypeError(f"fake policy got features of type {type(features).__name__}")
        if self.home is None:
            self.home = np.asarray(state.positions, dtype=np.float64).copy()
        t = features.capture_times[0] + np.arange(1, self.horizon + 1)[:, None] * self.period
        phase = np.arange(self.dof)[None, :] * 0.7
        return self.home[None, :] + self.amplitude * np.sin(2 * np.pi * self.frequency * t + phase)
