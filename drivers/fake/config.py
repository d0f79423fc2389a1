"""Config dataclasses of the fake drivers (beside the drivers, LeRobot style)."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.arms import UR5_HOME
from drivers.errors import DriverConfigError


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise DriverConfigError(f"{name} must be positive, got {value!r}")


@dataclass(frozen=True, slots=True)
class FakeRobotConfig:
    name: str = "fake"
    #: Number of joints: 6 is a UR5 (its joint names and limits); any other
    #: count gets UR5-like joints named joint_0, joint_1, ...
    joints: int = 6
    #: State samples per second (a UR CB3 streams at 125 Hz).
    rate_hz: float = 125.0
    #: First-order time constant of each joint toward its target (s).
    time_constant: float = 0.05
    #: Delay between a state's capture and its delivery, and of each command (s).
    latency: float = 0.0
    #: Initial joint positions (rad), one per joint; default: a UR5 "home"
    #: pose for 6 joints, all zeros for another count.
    initial: tuple[float, ...] = ()
    #: Seconds `async with` takes to connect (to test stops requested while connecting).
    connect_delay: float = 0.0
    #: `stop()` never returns (a wedged link), to test that every exit is bounded.
    stop_hangs: bool = False

    def __post_init__(self) -> None:
        _positive("rate_hz", self.rate_hz)
        _positive("time_constant", self.time_constant)
        if self.latency < 0:
            raise DriverConfigError(f"latency must be >= 0, got {self.latency!r}")
        if not 0 <= self.connect_delay <= 3600:
            raise DriverConfigError(
                f"connect_delay must be within 0..3600 s, got {self.connect_delay!r}"
            )
        if not 1 <= self.joints <= 64:
            raise DriverConfigError(f"joints must be within 1..64, got {self.joints!r}")
        if not self.initial:
            home = UR5_HOME if self.joints == len(UR5_HOME) else (0.0,) * self.joints
            object.__setattr__(self, "initial", home)
        if len(self.initial) != self.joints:
            raise DriverConfigError(
                f"initial must have {self.joints} joint positions (one per joint),"
                f" got {len(self.initial)}"
            )


@dataclass(frozen=True, slots=True)
class FakeCameraConfig:
    name: str = "fake"
    fps: float = 30.0
    width: int = 224
    height: int = 224
    #: Delay between capture and delivery (s).
    latency: float = 0.0

    def __post_init__(self) -> None:
        _positive("fps", self.fps)
        if not (8 <= self.width <= 4096 and 8 <= self.height <= 4096):
            raise DriverConfigError(
                f"width and height must be within 8..4096, got {self.width}x{self.height}"
            )
        if self.latency < 0:
            raise DriverConfigError(f"latency must be >= 0, got {self.latency!r}")


@dataclass(frozen=True, slots=True)
class FakeForceSensorConfig:
    name: str = "ft"
    rate_hz: float = 100.0

    def __post_init__(self) -> None:
        _positive("rate_hz", self.rate_hz)
