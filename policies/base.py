"""The `Policy` interface the controller drives.

A policy has two entry points with very different costs, which is the whole
point of the "VLM reuse" pattern:

* `encode_vl(frames, instruction)`: slow (hundreds of ms for a 3B VL model).
  The controller runs it on the compute executor's VL lane, on the newest
  frames, as often as it can, and publishes the result into a latest-value
  slot.
* `act(features, state, sensors)`: fast (tens of ms). Runs every control tick
  on the executor's action lane with the newest features, reused until newer
  ones land.

Both are plain synchronous methods: they run on the executor's worker
threads, which own the torch device. `act` alone may also run on the event
loop's thread, in the action lane's device context, while its measured time
stays under a bound (`controller.action_path`: a thread hand-off can cost
more than a small policy's act): it must not wait on I/O or locks, nor rely
on running in a thread of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np

from drivers import options as schema
from drivers.base import Frame, RobotInfo, RobotState, SensorReading
from drivers.registry import PluginRegistry

POLICY_GROUP = "controller.policies"


@runtime_checkable
class Policy(Protocol):
    """What the controller needs from a model.

    `load` runs once on the executor before anything else, with the device the
    executor owns (`"cuda"`, `"cuda:1"`, `"cpu"`), and must raise
    `PolicyConfigError` if the policy does not fit the robot (joint count,
    action space). `act` returns a chunk of ABSOLUTE joint position targets in
    radians, shape `(horizon, robot.dof)`, one row per control period; the
    controller executes row 0 each tick. `act` must treat its inputs as
    read-only: the controller checks that the state's positions are unchanged
    after the call and refuses a policy that wrote into them (the step limit
    is judged from the positions as measured).
    """

    name: str

    def load(self, device: str, robot: RobotInfo, control_period: float) -> None: ...

    def encode_vl(self, frames: Sequence[Frame], instruction: str) -> Any: ...

    def act(
        self,
        features: Any,
        state: RobotState,
        sensors: Mapping[str, SensorReading],
    ) -> np.ndarray: ...


@runtime_checkable
class SplitLoad(Protocol):
    """Optional: a policy that can load its two halves apart, in two processes.

    The controller's process VL lane (`--vl-worker process`) encodes in a
    worker process with a copy of the policy built from the same options.
    Without this, both copies `load` everything (the VL model twice). With
    it, the worker calls `load_vl` (what `encode_vl` needs) and sends back
    its small, picklable result; the controller's copy then calls
    `load_action(..., vl)` (what `act` needs) and never loads the VL model.
    `load` must stay equivalent to `load_action(..., load_vl(...))`.
    """

    def load_vl(
        self, device: str, robot: RobotInfo, control_period: float
    ) -> Mapping[str, Any]: ...

    def load_action(
        self, device: str, robot: RobotInfo, control_period: float, vl: Mapping[str, Any]
    ) -> None: ...


OptionsT = TypeVar("OptionsT")


@runtime_checkable
class PolicyClass(Protocol):
    """What a `controller.policies` entry point names: a class that builds a policy from options.

    `Options` is the policy's option schema: a dataclass whose fields carry
    `drivers.options.option(...)` metadata (type, default, unit, range, help).
    `from_options` reads the `[policy]` table and `--policy-option KEY=VALUE`
    values with it (`parse_options`), and `python -m controller --policy NAME
    --help-policy` lists it, so a policy's options are declared once, by the
    policy, and the controller's CLI carries none of them.
    """

    Options: ClassVar[type]

    def from_options(self, options: Mapping[str, Any]) -> Policy: ...


def parse_options(
    options_cls: type[OptionsT], options: Mapping[str, Any], *, what: str
) -> OptionsT:
    """A policy's options dataclass from a table; a refusal is one `PolicyConfigError` line."""
    from policies.errors import PolicyConfigError

    return schema.build(options_cls, options, where=what, error=PolicyConfigError)


_policies = PluginRegistry(POLICY_GROUP)


def available() -> dict[str, str]:
    """name -> `module:attr` for every installed policy, without importing any."""
    return _policies.describe()


def _load(name: str) -> Any:
    from drivers.errors import DriverConfigError
    from policies.errors import PolicyConfigError

    try:
        return _policies.load(name, what="policy")
    except DriverConfigError as exc:
        raise PolicyConfigError(str(exc)) from None


def create(name: str, options: Mapping[str, Any] | None = None) -> Policy:
    """Load a policy class by name and build it from options (`from_options`)."""
    return _load(name).from_options(dict(options or {}))


def describe_options(name: str) -> str:
    """The options a policy declares (its `Options` schema), one per line, for `--help-policy`."""
    options_cls = getattr(_load(name), "Options", None)
    if options_cls is None:
        return f"policy {name!r} declares no option schema (no `Options` class attribute)"
    lines = [f"options of policy {name!r} (--policy-option KEY=VALUE, or keys of [policy]):"]
    return "\n".join(lines + schema.describe_options(options_cls))
