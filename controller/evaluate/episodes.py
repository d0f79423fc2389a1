"""Closed-loop episodes on the simulated UR5: one world per episode, the controller in between.

Each episode builds a fresh sim world (named, seeded: the layout, the named
cube and the instruction follow from the seed), its `robot.sim` and one
`camera.sim` per view, and runs the ordinary `Controller` through the test
harness (`controller.harness.ControllerHarness`), which also judges every
command against the controller's invariants. The world's privileged
`sensor.sim` is given only to the scripted expert, which is built on it:
a policy meant to see gets cameras only. Scoring reads the world itself.

Time: on the virtual clock by default (the harness's `SimulatedExecutor`:
the policy runs inline, costs no virtual time, and an encode takes exactly
the emulated VL latency), or on the real clock (`real_time`: the real
`ComputeExecutor`'s two lanes, padding slept on the VL lane's thread).

The policy is built and loaded once per evaluation (`LoadedPolicy`): a
checkpoint is read once, not per episode, and a policy that cannot run on
the evaluation's cameras is found before the first episode (`preflight`).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from controller.evaluate.report import EpisodeResult
from controller.executor import ComputeExecutor
from controller.harness import ControllerHarness, SimulatedExecutor
from controller.invariants import PolicyProxy
from controller.runtime import ControllerConfig, Phase, VLMode
from controller.safety import SafetyConfig
from drivers.arms import arm_info
from drivers.base import Frame, RobotInfo
from drivers.sim.config import SimCameraConfig, SimRobotConfig
from drivers.sim.rig import build_rig
from drivers.sim.task import COLOURS, instruction_for
from drivers.sim.world import Episode, WorldConfig, plan_episode

#: The policy that reads the privileged object sensor (and so is given it).
PRIVILEGED_POLICIES = frozenset({"sim-expert"})


@dataclass(frozen=True, slots=True)
class EvalSpec:
    """One cell of an evaluation: the task, the VL mode and latency, and the world's setup."""

    task: str = "reach"
    vl_mode: VLMode = "async"
    vl_latency: float = 0.0
    hz: float = 10.0
    cameras: tuple[str, ...] = ("front", "top")
    image_size: int = 224
    camera_fps: float = 10.0
    #: None: the world's default (10 s).
    episode_limit: float | None = None
    #: None: the task's default (0 for reach).
    conveyor_speed: float | None = None
    #: The controller's feature-age limit (s): older features make the tick hold.
    max_feature_age: float = 1.0
    real_time: bool = False
    #: Give the controller the world's privileged object sensor (the scripted expert).
    privileged_sensor: bool = False

    def world(self, seed: int) -> WorldConfig:
        return WorldConfig(
            task=self.task,  # type: ignore[arg-type]
            seed=seed,
            episode_limit=self.episode_limit,
            conveyor_speed=self.conveyor_speed,
        )

    def controller(self, instruction: str) -> ControllerConfig:
        return ControllerConfig(
            hz=self.hz,
            instruction=instruction,
            vl_mode=self.vl_mode,
            vl_latency=self.vl_latency,
            status_interval=0,
            safety=SafetyConfig(max_feature_age=self.max_feature_age),
        )

    def check(self) -> None:
        """Build every config this spec implies once, so a bad value is refused before any run."""
        self.world(0).resolved()
        self.controller(instruction_for(COLOURS[0]))
        for view in self.cameras:
            SimCameraConfig(
                view=view,  # type: ignore[arg-type]
                width=self.image_size,
                height=self.image_size,
                fps=self.camera_fps,
            )


#: The robot the sim world exposes (what `robot.sim` reports as its info).
def sim_robot_info() -> RobotInfo:
    return arm_info(SimRobotConfig().name, 6)


class LoadedPolicy(PolicyProxy):
    """A policy loaded once for a whole evaluation.

    The controller calls `load` at the start of every run; for the same
    device, arm and period that is already done (a checkpoint is not read
    again for each episode), anything else loads again.
    """

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self._loaded: tuple[Any, ...] | None = None

    def load(self, device: str, robot: RobotInfo, control_period: float) -> None:
        key = (device, robot.name, tuple(robot.joint_names), control_period)
        if key != self._loaded:
            self.inner.load(device, robot, control_period)
            self._loaded = key


def preflight(policy: LoadedPolicy, spec: EvalSpec, device: str) -> None:
    """Load the policy and encode one blank observation of the evaluation's cameras.

    Whatever the policy refuses here (a checkpoint that does not load, a
    camera it was not trained on, an image size it cannot take) is refused
    before the first episode, as one error, rather than ten retries into a
    warm-up. Raises whatever the policy raised.
    """
    policy.load(device, sim_robot_info(), 1.0 / spec.hz)
    frames = [
        Frame(view, np.zeros((spec.image_size, spec.image_size, 3), np.uint8), 0.0, 0)
        for view in spec.cameras
    ]
    policy.encode_vl(frames, instruction_for(COLOURS[0]))


@dataclass(slots=True)
class FilmedFrame:
    """One video frame of an episode: the front camera's newest image and what the controller knew."""

    world_time: float
    image: np.ndarray
    #: Age of the newest VL features at that instant (s); None before the first encode.
    feature_age: float | None
    holding: str | None


class Filmer:
    """Samples a camera's newest frame at a fixed rate while an episode runs (for `--video`).

    Sampling on the clock, not on control ticks, keeps the video's time
    true when a sync run's ticks are far apart.
    """

    def __init__(self, camera: str, fps: float) -> None:
        self.camera = camera
        self.fps = fps
        self.frames: list[FilmedFrame] = []
        self._holding: str | None = None

    def observe(self, event: str, _time: float, detail: Any = None) -> None:
        """Controller observer: a "hold" tick sets the reason shown, a command clears it."""
        if event == "hold":
            self._holding = str(getattr(detail, "value", detail))
        elif event == "action":
            self._holding = None

    async def film(self, harness: ControllerHarness, world: Any) -> None:
        controller = harness.controller
        loop = asyncio.get_running_loop()
        slot = controller.frames[self.camera]
        next_at = loop.time()
        while True:
            if controller.phase in (Phase.WARMING_UP, Phase.ACTIVE):
                stamped = slot.latest()
                if stamped is not None:
                    feats = controller.features.latest()
                    age = feats.age(loop.time()) if feats is not None else None
                    self.frames.append(
                        FilmedFrame(
                            world.outcome().elapsed,
                            stamped.value.image,
                            age if age is not None and math.isfinite(age) else None,
                            self._holding,
                        )
                    )
            next_at += 1.0 / self.fps
            await asyncio.sleep(max(0.0, next_at - loop.time()))


_episode_names = itertools.count()


def plan(spec: EvalSpec, seed: int) -> Episode:
    """The episode a seed gives (layout, named cube, instruction), before any world exists."""
    return plan_episode(spec.world(seed))


async def run_episode(
    policy: Any,
    spec: EvalSpec,
    seed: int,
    *,
    index: int = 0,
    device: str = "cpu",
    filmer: Filmer | None = None,
) -> EpisodeResult:
    """One closed-loop episode on the running loop; ends at success or at the episode limit.

    Raises whatever ended the run abnormally (a policy error, a broken
    invariant as AssertionError), after the arm was stopped and the world
    closed.
    """
    started = time.perf_counter()
    name = f"eval-{os.getpid()}-{next(_episode_names)}"
    options = spec.world(seed)
    episode = plan_episode(options, name)
    rig = await build_rig(
        name,
        options,
        views=spec.cameras,
        size=spec.image_size,
        fps=spec.camera_fps,
        sensor=spec.privileged_sensor,
    )
    try:
        world = rig.world
        executor = ComputeExecutor(device) if spec.real_time else SimulatedExecutor(device)
        harness = ControllerHarness(
            robot=rig.robot,
            cameras=list(rig.cameras),
            sensors=rig.sensors,
            policy=policy,
            executor=executor,
            hz=spec.hz,
            instruction=episode.instruction,
            vl_mode=spec.vl_mode,
            vl_latency=spec.vl_latency,
            status_interval=0,
            safety=SafetyConfig(max_feature_age=spec.max_feature_age),
        )

        def stop_when_over(event: str, _time: float, _detail: Any = None) -> None:
            if event == "tick" and (world.success() or world.outcome().elapsed >= episode.limit):
                harness.controller.request_stop("episode over")

        harness.controller.observers.append(stop_when_over)
        filming = None
        if filmer is not None:
            harness.controller.observers.append(filmer.observe)
            filming = asyncio.create_task(filmer.film(harness, world), name="filmer")
        # Control for at most the episode's limit; the observer ends it sooner.
        try:
            summary = await harness.run(episode.limit)
        finally:
            if filming is not None:
                filming.cancel()
                await asyncio.gather(filming, return_exceptions=True)
    finally:
        # The controller closes the drivers it entered; one a failed start never
        # reached still holds its share of the world (closing twice is harmless).
        await rig.close()
    outcome = world.outcome()
    telemetry = harness.controller.telemetry
    ages = tuple(a.feature_age * 1e3 for a in telemetry.actions)
    vl_p50 = telemetry.vl_latency.percentile(50)
    return EpisodeResult(
        index=index,
        seed=seed,
        task=episode.task,
        target=episode.target,
        instruction=episode.instruction,
        success=outcome.success,
        time_to_success_s=outcome.time_to_success,
        min_distance_m=outcome.min_distance,
        elapsed_s=outcome.elapsed,
        control_s=float(summary["duration_s"]),
        ticks=int(summary["ticks"]),
        actions=int(summary["actions_sent"]),
        missed_ticks=int(summary["missed_ticks"]),
        overruns=harness.controller.scheduler.stats.overruns,
        holds=dict(summary["holds"]),
        vl_encodes=int(summary["vl_encodes"]),
        vl_latency_ms_p50=None if vl_p50 is None else round(vl_p50 * 1e3, 2),
        feature_age_ms_p50=_pct(ages, 50),
        feature_age_ms_p95=_pct(ages, 95),
        wall_s=time.perf_counter() - started,
        feature_ages_ms=ages,
    )


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


async def run_episodes(
    policy: Any,
    spec: EvalSpec,
    seeds: Sequence[int],
    *,
    device: str = "cpu",
    on_episode: Callable[[EpisodeResult], None] | None = None,
    film: Mapping[int, Filmer] | None = None,
) -> list[EpisodeResult]:
    """Episodes for `seeds`, one after the other on the running loop."""
    out = []
    for i, seed in enumerate(seeds):
        result = await run_episode(
            policy, spec, seed, index=i, device=device, filmer=(film or {}).get(i)
        )
        out.append(result)
        if on_episode is not None:
            on_episode(result)
    return out
