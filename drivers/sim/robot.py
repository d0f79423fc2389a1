"""`robot.sim`: the simulated UR5's joint states and position commands.

It behaves as the real arm's driver does where the controller can tell: a
command is a joint target reached through a servo that never exceeds the
UR5's joint speed limits; a target that is not six finite numbers within the
joint limits is refused (`ValueError`) and the arm keeps its last good goal;
`hold()` and `stop()` decelerate to a standstill and stay there; a person's
stop (`operator_stop()`, for tests) makes the states not ready and the
commands `NotReady` until `resume()`; a physics fault (a non-finite value)
stops the arm for good. States are stamped with the world time they were
sampled at, on the controller clock.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Self

from drivers.arms import arm_info
from drivers.base import ConfiguredDriver, JointCommand, RobotState
from drivers.errors import NotReady
from drivers.lifecycle import Lifecycle, periodic
from drivers.sim.config import SimRobotConfig
from drivers.sim.world import SimWorld, shared_world


class SimRobot(Lifecycle, ConfiguredDriver):
    kind: ClassVar[str] = "robot"
    Config = SimRobotConfig
    spec_field = "world"

    def __init__(self, config: SimRobotConfig | None = None) -> None:
        self.config = config or SimRobotConfig()
        self.name = self.config.name
        self.info = arm_info(self.name, 6)
        self._handle = shared_world(self.config.world, self.config.options, who="robot.sim")

    @property
    def world(self) -> SimWorld:
        """The world this arm lives in (its episode, its outcome)."""
        return self._handle.world

    def proposed_instruction(self) -> str:
        """The episode's instruction ("touch the red cube"): what the CLI uses when given none."""
        return self._handle.episode().instruction

    def judged_outcome(self) -> dict[str, Any] | None:
        """How the episode went (None before the world was built); readable after close too."""
        if not self._handle.built:
            return None
        world = self.world
        ep, out = world.episode(), world.outcome()
        if out.success:
            detail = f"touched the {ep.target} cube at {out.time_to_success:.2f} s"
        else:
            span = (
                f"within its {ep.limit:g} s"
                if out.elapsed >= ep.limit
                else f"in the {out.elapsed:.1f} s simulated"
            )
            closest = (
                f" (closest {out.min_distance:.3f} m from its top face)"
                if math.isfinite(out.min_distance)
                else ""
            )
            detail = f"did not touch the {ep.target} cube {span}{closest}"
        return {
            "success": out.success,
            "detail": detail,
            "task": ep.task,
            "seed": ep.seed,
            "target": ep.target,
            "instruction": ep.instruction,
            "time_to_success": out.time_to_success,
            "min_distance": out.min_distance if math.isfinite(out.min_distance) else None,
            "elapsed": out.elapsed,
        }

    async def __aenter__(self) -> Self:
        try:
            await self.world.sample_arm()  # world time 0, if this driver is the first
        except BaseException:
            await self.close()  # a failed connect releases its share of the world
            raise
        return self

    async def _leave_safe(self) -> None:
        await self.stop()

    async def _release(self) -> None:
        await self._handle.release()

    async def states(self) -> AsyncIterator[RobotState]:
        async for _ in periodic(1.0 / self.config.rate_hz):
            s = await self.world.sample_arm()
            yield RobotState(
                positions=s.positions,
                velocities=s.velocities,
                capture_time=s.time,
                ready=s.ready,
                mode=s.mode,
                tcp_pose=s.tool_pose,
                time_source="synthetic",
            )

    async def command(self, cmd: JointCommand) -> None:
        await self.world.set_goal(cmd.positions, cmd.duration)

    async def hold(self) -> None:
        await self.world.halt(stop=False)

    async def stop(self) -> None:
        """Decelerate to a standstill; safe twice, after close too (nothing then moves)."""
        if self._handle.released or self.world.closed:
            return
        await self.world.halt(stop=True)

    def operator_stop(self) -> None:
        """For tests: a person's stop on the pendant."""
        self.world.operator_stop()

    async def resume(self) -> None:
        """An operator's resume: undoes only an operator's stop, never a physics fault."""
        if self.world.fault is not None:
            raise NotReady(f"{self.name}: cannot resume: {self.world.fault}")
        self.world.operator_resume()
