"""The catalogue of faults the controller must survive, on a rig of fakes.

One `Fault` is a thing that goes wrong on a real cell (a camera freezes, a
cable drops, a clock lies, a person presses stop, the model returns NaN),
with how to inject it into the fakes, how it ends, and which hold reasons
count as the controller having noticed it. The fault matrix
(`controller.fault_matrix`) runs each one alone and measures detection and
recovery; the soak (`controller.soak`) draws them at random for a long run.
Both run through `ControllerHarness`, so every run is also held to the
invariants of `controller.invariants`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from controller.harness import ControllerHarness
from controller.safety import HoldReason
from drivers.fake import FakeCamera, FakeForceSensor, FakeRobot
from drivers.fake.config import FakeCameraConfig, FakeForceSensorConfig, FakeRobotConfig
from policies.fake import FakePolicy


class FaultyPolicy(FakePolicy):
    """The fake policy with faults of its own: failing encodes, slow or NaN actions."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encode_broken = False
        self.act_extra_latency = 0.0
        self.act_nan = False

    def encode_vl(self, frames: Any, instruction: str) -> Any:
        if self.encode_broken:
            self.burn(self.vl_latency.draw(self._rng_vl))
            raise RuntimeError("VL encoder failure (injected)")
        return super().encode_vl(frames, instruction)

    def act(self, features: Any, state: Any, sensors: Any) -> np.ndarray:
        if self.act_extra_latency:
            self.burn(self.act_extra_latency)
        chunk = super().act(features, state, sensors)
        if self.act_nan:
            chunk = chunk.copy()
            chunk[0, 2] = math.nan
        return chunk


class WedgeableRobot(FakeRobot):
    """The fake arm whose link can wedge: `command()` then never returns."""

    wedged = False

    async def command(self, cmd: Any) -> None:
        if self.wedged:
            await asyncio.Event().wait()  # the link takes the bytes and never answers
        await super().command(cmd)


@dataclass
class Rig:
    """A harness built from fakes that every fault knows how to break."""

    robot: WedgeableRobot
    camera: FakeCamera
    sensor: FakeForceSensor
    policy: FaultyPolicy
    harness: ControllerHarness


def make_rig(*, seed: int = 0, **config: Any) -> Rig:
    """A harness of fakes (seeded): one arm, one camera, one force sensor, the faulty policy."""
    robot = WedgeableRobot(FakeRobotConfig())
    camera = FakeCamera(FakeCameraConfig())
    sensor = FakeForceSensor(FakeForceSensorConfig())
    policy = FaultyPolicy(vl_latency="normal(0.3, 0.02)", action_latency=0.01, seed=seed)
    config.setdefault("stop_timeout", 0.5)
    harness = ControllerHarness(
        robot=robot, cameras=[camera], sensors=[sensor], policy=policy, **config
    )
    return Rig(robot, camera, sensor, policy, harness)


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    detected_by: tuple[HoldReason, ...]
    inject: Callable[[Rig], None]
    clear: Callable[[Rig], None]
    #: What ends the fault in the table ("cleared" or what a person must do).
    recovery: str = "fault cleared"

    @property
    def target(self) -> str:
        """The part it breaks (at most one fault per part at a time in the soak)."""
        if self.name.startswith(("camera", "sensor")):
            return self.name.split("_")[0]
        if self.name.startswith(("vl_", "action_")):
            return "policy"
        return "robot"


def _set(attr: str, value: Any, target: str = "policy") -> Callable[[Rig], None]:
    def apply(rig: Rig) -> None:
        setattr(getattr(rig, target), attr, value)

    return apply


H = HoldReason

FAULTS: tuple[Fault, ...] = (
    Fault(
        "camera_stall",
        "camera delivers no frames",
        (H.FEATURES_STALE,),
        lambda r: r.camera.stall(1e9),
        lambda r: r.camera.stall(0),
    ),
    Fault(
        "camera_clock_nan",
        "camera capture times are NaN",
        (H.FEATURES_CLOCK_INVALID,),
        lambda r: r.camera.clock_fault("nan"),
        lambda r: r.camera.clock_fault(None),
    ),
    Fault(
        "camera_clock_frozen",
        "camera capture times stop advancing",
        (H.FEATURES_STALE,),
        lambda r: r.camera.clock_fault("frozen"),
        lambda r: r.camera.clock_fault(None),
    ),
    Fault(
        "camera_clock_ahead",
        "camera capture times 1 s in the future",
        (H.FEATURES_CLOCK_INVALID,),
        lambda r: r.camera.clock_fault("ahead"),
        lambda r: r.camera.clock_fault(None),
    ),
    Fault(
        "vl_encoder_failing",
        "every VL encode raises",
        (H.FEATURES_STALE,),
        _set("encode_broken", True),
        _set("encode_broken", False),
    ),
    Fault(
        "robot_link_down",
        "robot link drops (no state, commands refused)",
        (H.STATE_STALE, H.ROBOT_DISCONNECTED),
        lambda r: r.robot.disconnect(),
        lambda r: r.robot.reconnect(),
    ),
    Fault(
        "robot_state_delayed",
        "robot states arrive 300 ms late (honestly stamped)",
        (H.STATE_STALE,),
        lambda r: r.robot.set_latency(0.3),
        lambda r: r.robot.set_latency(0.0),
    ),
    Fault(
        "robot_positions_nan",
        "robot reports a NaN joint position",
        (H.STATE_INVALID,),
        lambda r: r.robot.nan_positions(True),
        lambda r: r.robot.nan_positions(False),
    ),
    Fault(
        "robot_clock_nan",
        "robot capture times are NaN",
        (H.STATE_CLOCK_INVALID,),
        lambda r: r.robot.clock_fault("nan"),
        lambda r: r.robot.clock_fault(None),
    ),
    Fault(
        "robot_clock_frozen",
        "robot capture times stop advancing",
        (H.STATE_STALE,),
        lambda r: r.robot.clock_fault("frozen"),
        lambda r: r.robot.clock_fault(None),
    ),
    Fault(
        "robot_clock_ahead",
        "robot capture times 1 s in the future",
        (H.STATE_CLOCK_INVALID,),
        lambda r: r.robot.clock_fault("ahead"),
        lambda r: r.robot.clock_fault(None),
    ),
    Fault(
        "protective_stop",
        "the arm protectively stops",
        (H.ROBOT_NOT_READY,),
        lambda r: r.robot.trigger_protective_stop(),
        lambda r: r.robot.clear_protective_stop(),
        recovery="stop cleared on the robot",
    ),
    Fault(
        "operator_stop",
        "a person stops the arm",
        (H.ROBOT_NOT_READY,),
        lambda r: r.robot.operator_stop(),
        lambda r: r.robot.operator_resume(),
        recovery="the operator resumes (never automatic)",
    ),
    Fault(
        "command_wedged",
        "robot.command() never returns",
        (H.ROBOT_DISCONNECTED,),
        _set("wedged", True, "robot"),
        _set("wedged", False, "robot"),
    ),
    Fault(
        "action_slow",
        "the policy's act takes 3 periods",
        (H.ACTION_TIMEOUT,),
        _set("act_extra_latency", 0.3),
        _set("act_extra_latency", 0.0),
    ),
    Fault(
        "action_nan",
        "the policy returns NaN",
        (H.ACTION_NOT_FINITE,),
        _set("act_nan", True),
        _set("act_nan", False),
    ),
    Fault(
        "sensor_stall",
        "the force sensor goes silent",
        (H.SENSOR_STALE,),
        lambda r: r.sensor.stall(1e9),
        lambda r: r.sensor.stall(0),
    ),
    Fault(
        "sensor_nan",
        "the force sensor reports NaN",
        (H.SENSOR_INVALID,),
        lambda r: r.sensor.nan_values(True),
        lambda r: r.sensor.nan_values(False),
    ),
)


def by_name(name: str) -> Fault:
    for fault in FAULTS:
        if fault.name == name:
            return fault
    raise KeyError(f"unknown fault {name!r} (known: {', '.join(f.name for f in FAULTS)})")
