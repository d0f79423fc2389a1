"""Data types and interfaces shared by every driver, the controller and the policies.

Timestamps are the controller's monotonic clock in seconds, i.e. the running
event loop's `loop.time()` (see `now()`). A driver converts device time
(RTDE timestamps, RTP/RTCP time, kernel timestamps) to that clock at the edge,
so that every age computed in the controller is a difference of two readings
of one clock. Under the test harness the loop runs on virtual time, and so do
the drivers that call `now()`.

Drivers are async context managers (enter = connect, exit = disconnect and
leave the device safe); streams are async iterators; commands are coroutines.

What the controller relies on at the edges of a driver's life:
- an `__aenter__` that raises, or is cancelled (an operator's Ctrl-C while a
  robot connects), releases whatever it took before re-raising, as any
  context manager must: `__aexit__` is not called for it;
- `__aexit__` and a robot's `stop()` may be called when the link is already
  gone and must then return promptly; the controller bounds each by its
  `stop_timeout` anyway, and goes on shutting down if one hangs;
- values a driver cannot vouch for are reported as such: a capture time that
  cannot be computed is NaN (the controller reads NaN as stale), and a state
  the device says is unusable has `ready=False` with `mode` saying why.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, Self, TypeVar, runtime_checkable

import numpy as np

from drivers.errors import DriverConfigError
from drivers.options import build

C = TypeVar("C")

TimeSource = Literal["device", "rtcp", "kernel", "arrival", "synthetic"]


def now() -> float:
    """The controller clock: the running loop's time (virtual under the test harness)."""
    return asyncio.get_running_loop().time()


class Frame:
    """One camera image with its capture time.

    The pixels may be produced lazily: a WebRTC or PyAV driver hands over a
    converter so that colour conversion runs only for frames someone reads,
    and on whichever thread reads them (the VL encoder's executor lane),
    never on the event loop.
    """

    __slots__ = ("_convert", "_image", "camera", "capture_time", "seq", "size", "time_source")

    def __init__(
        self,
        camera: str,
        image: np.ndarray | Callable[[], np.ndarray],
        capture_time: float,
        seq: int,
        time_source: TimeSource = "device",
        size: tuple[int, int] | None = None,
    ) -> None:
        self.camera = camera
        self.capture_time = float(capture_time)
        self.seq = seq
        self.time_source = time_source
        if callable(image):
            self._convert: Callable[[], np.ndarray] | None = image
            self._image: np.ndarray | None = None
            self.size = size  # (width, height), when the driver knows it before converting
        else:
            self._convert = None
            self._image = image
            self.size = (int(image.shape[1]), int(image.shape[0]))

    @property
    def image(self) -> np.ndarray:
        """RGB uint8 array of shape (height, width, 3); converted on first access."""
        if self._image is None:
            assert self._convert is not None
            img = self._convert()
            self._image, self._convert = img, None
            self.size = (int(img.shape[1]), int(img.shape[0]))
        return self._image

    def __repr__(self) -> str:
        return (
            f"Frame(camera={self.camera!r}, seq={self.seq}, capture_time={self.capture_time:.4f},"
            f" time_source={self.time_source!r}, size={self.size})"
        )


@dataclass(frozen=True, slots=True)
class JointLimits:
    """Per-joint position bounds (rad) and speed bounds (rad/s)."""

    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.lower)
        if not (len(self.upper) == n == len(self.max_velocity)):
            raise ValueError(
                "JointLimits: lower, upper and max_velocity must have one entry per joint"
            )
        # NaN compares False with everything, so a NaN bound would switch its joint's
        # check off; a negative speed bound would make the safety filter's velocity clamp
        # (a clip to [-bound, bound]) move the joint whatever the target.
        for name in ("lower", "upper", "max_velocity"):
            if np.any(np.isnan(np.asarray(getattr(self, name), dtype=float))):
                raise ValueError(f"JointLimits: {name} has a NaN entry")
        if np.any(np.asarray(self.lower) > np.asarray(self.upper)):
            raise ValueError("JointLimits: a lower bound exceeds its upper bound")
        if np.any(np.asarray(self.max_velocity, dtype=float) < 0):
            raise ValueError("JointLimits: a max_velocity entry is negative")

    @property
    def dof(self) -> int:
        return len(self.lower)


@dataclass(frozen=True, slots=True)
class RobotInfo:
    """What a policy and the safety filter need to know about an arm."""

    name: str
    joint_names: tuple[str, ...]
    limits: JointLimits

    @property
    def dof(self) -> int:
        return len(self.joint_names)


@dataclass(frozen=True, slots=True)
class RobotState:
    """One sample of the arm's state.

    `ready` is False whenever the device refuses motion (protective stop,
    e-stop, program not running, ...); `mode` says why in words. The
    controller holds while a state is not ready.
    """

    positions: np.ndarray
    velocities: np.ndarray
    capture_time: float
    ready: bool = True
    mode: str = "RUNNING"
    tcp_pose: np.ndarray | None = None
    tcp_force: np.ndarray | None = None
    time_source: TimeSource = "device"


@dataclass(frozen=True, slots=True)
class JointCommand:
    """A joint-space target the arm should reach over `duration` seconds.

    `seq` increases by one per command so a robot-side program can tell a new
    target from a repeated one.
    """

    positions: np.ndarray
    duration: float
    seq: int
    velocities: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class SensorReading:
    """One sample of an auxiliary sensor (force/torque, gripper, ...)."""

    sensor: str
    values: np.ndarray
    capture_time: float


@runtime_checkable
class CameraDriver(Protocol):
    """A source of frames. `frames()` yields new frames as they arrive; the
    controller keeps only the newest, so a driver never needs to buffer."""

    kind: ClassVar[str]
    name: str

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...
    def frames(self) -> AsyncIterator[Frame]: ...


@runtime_checkable
class RobotDriver(Protocol):
    """An arm. `states()` streams samples; `command()` sends one target;
    `hold()` keeps the arm where it is but ready to resume; `stop()` halts
    motion, must be safe to call twice and return within its own bound.

    `command()` raises `ConnectionLost` while the link is down and `NotReady`
    while the arm refuses motion: it never queues a command for later.

    A driver never undoes a stop it did not cause: after a person's stop,
    pause, power cycle, protective or emergency stop, its states stay
    `ready=False` until the person (or an explicit, documented opt-in such as
    the UR driver's `auto_recover` for protective stops) enables motion again.
    """

    kind: ClassVar[str]
    name: str
    info: RobotInfo

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...
    def states(self) -> AsyncIterator[RobotState]: ...
    async def command(self, cmd: JointCommand) -> None: ...
    async def hold(self) -> None: ...
    async def stop(self) -> None: ...


@runtime_checkable
class SensorDriver(Protocol):
    """A source of readings, each a vector of numbers.

    A driver may also say what each value means: an optional `value_names`
    attribute (a sequence of strings, one per value, or None) names them
    where they are recorded (a dataset's `observation.environment_state`).
    """

    kind: ClassVar[str]
    name: str

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...
    def readings(self) -> AsyncIterator[SensorReading]: ...


# --------------------------------------------------------------------------
# Optional abilities of a robot driver (a simulated world has them, a real arm does not)


@runtime_checkable
class ProposesInstruction(Protocol):
    """A robot that knows what its episode asks for (a simulated world's task).

    Tools that run episodes use the proposal as the instruction when the
    user gave none; None means no proposal.
    """

    def proposed_instruction(self) -> str | None: ...


@runtime_checkable
class JudgesOutcome(Protocol):
    """A robot whose world can tell whether the task succeeded (a simulated world).

    `judged_outcome()` is read after a run (also after the driver closed):
    None when nothing was judged, else a mapping with at least `success`
    (bool) and `detail` (one line of words, e.g. "touched the red cube at
    3.20 s"); other keys are the world's own (JSON values).
    """

    def judged_outcome(self) -> Mapping[str, Any] | None: ...


# --------------------------------------------------------------------------
# Construction from a spec string and options (CLI flags, TOML tables)


def build_config(config_cls: type[C], options: Mapping[str, Any], *, what: str) -> C:
    """Build a driver's config dataclass from loosely typed options.

    Unknown keys and values of the wrong type are refused with a message that
    names the option, the value and what is accepted, so a typo in a TOML file
    or on the command line never reaches the hardware as a default. The
    parsing is `drivers.options` (shared with the controller's settings and
    the policies' options); ranges are the config's own `__post_init__`, or
    `drivers.options.validate` for fields declared with `option(...)`.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    return build(config_cls, options, where=what, error=DriverConfigError)


class ConfiguredDriver:
    """Mixin giving a driver the standard `from_spec` constructor.

    A driver class sets `Config` (its config dataclass, LeRobot style, kept in
    a module beside it) and, if its spec string carries a target (an URL, a
    host, a device path), `spec_field`: the config field the target fills.
    """

    Config: ClassVar[type]
    spec_field: ClassVar[str | None] = None

    def __init__(self, config: Any) -> None:  # pragma: no cover - overridden
        self.config = config

    @classmethod
    def from_spec(cls, target: str, options: Mapping[str, Any]) -> Self:
        opts = dict(options)
        if target:
            if cls.spec_field is None:
                raise DriverConfigError(
                    f"{cls.__name__}: takes no target in its spec, got {target!r}"
                )
            opts.setdefault(cls.spec_field, target)
        return cls(build_config(cls.Config, opts, what=cls.__name__))
