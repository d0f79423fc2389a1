"""The simulated world: MuJoCo physics on its own thread, rendering on another, time from the loop.

Why two threads: MuJoCo's stepping and OpenGL rendering are blocking calls,
and nothing may block the event loop. All physics (the arm's servo, the
conveyor, the success check) runs on one physics thread, in call order, so
the world needs no locks; a camera asks that thread for a snapshot (joint
and cube positions at one instant, cheap) and renders it on the render
thread, which owns the OpenGL context (an EGL context belongs to the thread
that made it current) and its own `MjData`. A state read never waits behind
a 224x224 render.

Why the world follows the loop's clock: every call carries the loop's time
(`drivers.base.now()`), and the physics thread first steps the world to that
time in fixed steps of `TIMESTEP`, then answers. So the world advances
exactly as far as the controller's clock, virtual under the test harness
(where thread work costs no virtual time) and real from the command line,
and two runs of one seed on the virtual clock are identical.

The episode starts when the first driver connects (the world's time 0) and
its outcome (touched the named cube or not, when, how close it came) is
judged on every physics step, within the episode's limit only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import mujoco
import numpy as np

from drivers.arms import UR5_HOME, UR5_LIMITS
from drivers.base import now
from drivers.errors import ConnectionLost, DriverConfigError, DriverError, NotReady
from drivers.options import option, validate
from drivers.sim import GL_BACKEND, GL_FIX
from drivers.sim.model import (
    COLOURS,
    TIMESTEP,
    TOOL_SITE,
    VIEW_NAMES,
    mat_texture,
    scene_xml,
)
from drivers.sim.task import (
    DEFAULT_CONVEYOR_SPEED,
    SUCCESS_DISTANCE,
    CubePose,
    ObjectReading,
    TargetName,
    TaskName,
    conveyor_y,
    distance_to_top_face,
    instruction_for,
    sample_cubes,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The servo's acceleration while following commands, and while stopping (rad/s^2).
SERVO_ACCELERATION = 10.0
STOP_DECELERATION = 20.0
#: How long closing the world waits for its render thread to free the GL context (s).
CLOSE_BOUND = 1.0


class SimRenderError(DriverError):
    """The world cannot render: no working OpenGL for MuJoCo. The message names the fix."""


class SimClosed(ConnectionLost):
    """The world was closed (its last driver ended); nothing can read or command it."""


# --------------------------------------------------------------------------
# Options


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """Options of one world (one episode). Any sim driver may carry them; None = not set.

    The drivers of one world must agree: a value set on two drivers must be
    the same, and a value set on one applies to all (set them on `robot.sim`).
    `resolved()` fills what nobody set with the defaults.
    """

    task: TaskName | None = option(
        None,
        help="the task: reach, or reach-moving (the cubes ride a conveyor)",
        default_text="reach",
    )
    seed: int | None = option(
        None,
        help="seed of the episode (cube places, the named cube)",
        low=0,
        high=2**63 - 1,
        default_text="0",
    )
    target: TargetName | None = option(
        None,
        help="the cube to touch: random (drawn from the seed), red, green or blue",
        default_text="random",
    )
    conveyor_speed: float | None = option(
        None,
        help="speed of reach-moving's conveyor",
        unit="m/s",
        low=0.0,
        high=0.5,
        default_text=f"{DEFAULT_CONVEYOR_SPEED} m/s",
    )
    episode_limit: float | None = option(
        None,
        help="time allowed to touch the cube, from the first sim driver's connect",
        unit="s",
        low=0.1,
        high=3600.0,
        default_text="10 s",
    )
    mat: bool | None = option(
        None,
        help="lay the workspace mat whose colour encodes position under the cubes"
        " (drivers.sim.model.MAT_X/MAT_Y: what lets the tiny VL learn where a cube is)",
        default_text="true",
    )

    def __post_init__(self) -> None:
        validate(self, error=DriverConfigError)

    def explicit(self) -> dict[str, Any]:
        """The options this config sets (not None)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    def resolved(self) -> WorldConfig:
        """Every option set: the defaults where None. Refuses a conveyor on the static task."""
        task = self.task or "reach"
        if task == "reach" and self.conveyor_speed:
            raise DriverConfigError(
                f"conveyor_speed={self.conveyor_speed!r} needs task 'reach-moving'"
                " (task 'reach' has no conveyor)"
            )
        speed = self.conveyor_speed
        if speed is None:
            speed = DEFAULT_CONVEYOR_SPEED if task == "reach-moving" else 0.0
        return WorldConfig(
            task=task,
            seed=0 if self.seed is None else self.seed,
            target=self.target or "random",
            conveyor_speed=speed,
            episode_limit=10.0 if self.episode_limit is None else self.episode_limit,
            mat=True if self.mat is None else self.mat,
        )


@dataclass(frozen=True, slots=True)
class Episode:
    """What one world asks: the task, the named cube and its instruction, the initial layout.

    The instruction is the controller's `instruction` setting for this
    episode: a tool that runs episodes (collect, evaluate) reads it here.
    """

    world: str
    task: str
    seed: int
    target: str
    instruction: str
    limit: float
    conveyor_speed: float
    cubes: tuple[CubePose, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the episode went, judged on every physics step up to its limit."""

    success: bool
    #: World time (s since the first connect) when the tool first touched; None if never.
    time_to_success: float | None
    #: Closest the tool point came to the named cube's top face (m).
    min_distance: float
    #: World time simulated so far (s).
    elapsed: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The world at one instant, enough to render it: taken on the physics thread."""

    time: float
    qpos: np.ndarray
    mocap_pos: np.ndarray
    mocap_quat: np.ndarray


@dataclass(frozen=True, slots=True)
class ArmSample:
    """The arm at one instant, as the robot driver reports it."""

    time: float
    positions: np.ndarray
    velocities: np.ndarray
    tool_pose: np.ndarray  # x, y, z (m), rx, ry, rz (rotation vector, rad): UR's TCP pose
    ready: bool
    mode: str


#: MuJoCo's warnings for a non-finite or huge joint position, speed or acceleration.
_BAD_WARNINGS = [
    int(w)
    for w in (
        mujoco.mjtWarning.mjWARN_BADQPOS,
        mujoco.mjtWarning.mjWARN_BADQVEL,
        mujoco.mjtWarning.mjWARN_BADQACC,
    )
]


def plan_episode(config: WorldConfig, name: str = "default") -> Episode:
    """The episode a world of this config will run (layout, named cube, instruction), without
    building the world: a tool can read the instruction before it starts anything."""
    cfg = config.resolved()
    assert cfg.seed is not None and cfg.task is not None and cfg.episode_limit is not None
    rng = np.random.default_rng(cfg.seed)
    cubes = sample_cubes(rng)  # first: the layout of a seed does not depend on `target`
    target = str(rng.choice(COLOURS)) if cfg.target == "random" else str(cfg.target)
    return Episode(
        world=name,
        task=cfg.task,
        seed=cfg.seed,
        target=target,
        instruction=instruction_for(target),
        limit=cfg.episode_limit,
        conveyor_speed=float(cfg.conveyor_speed or 0.0),
        cubes=cubes,
    )


def _new_renderer(model: mujoco.MjModel, width: int, height: int) -> mujoco.Renderer:
    """One OpenGL renderer (a module function so a test can make it fail like a missing GL)."""
    return mujoco.Renderer(model, height, width)


def _fill_mat(model: mujoco.MjModel) -> None:
    """Write the mat's image into its texture. Before any renderer: a renderer uploads
    the textures once, when its GL context is made."""
    tex = model.texture("mat")
    image = mat_texture(int(model.tex_width[tex.id])).reshape(-1)
    start = int(model.tex_adr[tex.id])
    model.tex_data[start : start + image.size] = image


def _rotvec(mat: np.ndarray) -> np.ndarray:
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.ascontiguousarray(mat).reshape(9))
    if quat[0] < 0:
        quat = -quat  # the same rotation, by an angle within [0, pi] as UR reports it
    w = float(np.clip(quat[0], -1.0, 1.0))
    angle = 2.0 * math.acos(w)
    s = math.sqrt(max(1.0 - w * w, 0.0))
    if s < 1e-9:
        return np.zeros(3)
    return quat[1:] / s * angle


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


# --------------------------------------------------------------------------
# The world


class SimWorld:
    """One episode of the UR5-and-cubes world. Drivers share it by name (`shared_world`).

    Async methods step the world to the loop's current time on the physics
    thread, then act; plain methods read results (`episode()`, `success()`,
    `outcome()`) and stay readable after `close()`.
    """

    def __init__(self, config: WorldConfig | None = None, *, name: str = "default") -> None:
        self.name = name
        self.config = (config or WorldConfig()).resolved()
        self._episode = plan_episode(self.config, name)
        self._moving = self._episode.task == "reach-moving"
        self._speed = self._episode.conveyor_speed
        self._target_index = COLOURS.index(self._episode.target)

        self.model = mujoco.MjModel.from_xml_string(
            scene_xml(conveyor=self._moving, mat=bool(self.config.mat))
        )
        if self.config.mat:
            _fill_mat(self.model)
        self._data = mujoco.MjData(self.model)
        self._tool = self.model.site(TOOL_SITE).id
        self._dof = 6
        home = np.array(UR5_HOME, dtype=np.float64)
        self._data.qpos[:] = home
        self._data.ctrl[: self._dof] = home
        self._vmax = np.asarray(UR5_LIMITS.max_velocity, dtype=np.float64)
        self._lower = np.asarray(UR5_LIMITS.lower, dtype=np.float64)
        self._upper = np.asarray(UR5_LIMITS.upper, dtype=np.float64)
        self._place_cubes(0.0)
        mujoco.mj_forward(self.model, self._data)

        # The servo (physics thread only): reference position and speed, and the goal.
        self._ref = home.copy()
        self._ref_vel = np.zeros(self._dof)
        self._goal: np.ndarray | None = home.copy()  # None: decelerating to a standstill
        self._goal_deadline = 0.0
        self._feedforward = np.zeros(self._dof)
        self._at_rest = True  # the reference stands on the goal: nothing to move

        self._t0: float | None = None  # the loop time of world time 0
        self._steps = 0
        self._fault: str | None = None
        self._operator_stopped = False
        self._success_time: float | None = None
        self._min_distance = math.inf
        self._closed = False
        self.stops = 0
        self.holds = 0
        self.commands = 0

        self._physics = concurrent.futures.ThreadPoolExecutor(1, f"sim-{name}-physics")
        self._render_pool = concurrent.futures.ThreadPoolExecutor(1, f"sim-{name}-render")
        # Render thread only.
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self._render_data: mujoco.MjData | None = None

    # -- results (plain reads, also after close) ------------------------------------------
    def episode(self) -> Episode:
        return self._episode

    def success(self) -> bool:
        """Whether the tool point came within 3 cm of the named cube's top face within the limit."""
        return self._success_time is not None

    def outcome(self) -> Outcome:
        return Outcome(
            success=self._success_time is not None,
            time_to_success=self._success_time,
            min_distance=self._min_distance,
            elapsed=self._steps * TIMESTEP,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def fault(self) -> str | None:
        """Why the physics stopped (a non-finite value), or None."""
        return self._fault

    # -- calls into the physics thread ---------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Step the world to the loop's current time, then run `fn(*args)`, on the physics thread."""
        if self._closed:
            raise SimClosed(f"sim world {self.name!r} is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._physics, self._at, now(), fn, args)
        except RuntimeError as exc:
            if self._closed:  # shut down between the check and the submit
                raise SimClosed(f"sim world {self.name!r} is closed") from None
            raise exc

    def _at(self, t: float, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        self._advance(t)
        return fn(*args)

    async def sample_arm(self) -> ArmSample:
        return await self._call(self._arm_sample)

    async def snapshot(self) -> Snapshot:
        return await self._call(self._snapshot)

    async def objects(self) -> tuple[float, ObjectReading]:
        """The privileged reading: (capture time on the loop clock, cube poses and the task)."""
        return await self._call(self._objects)

    async def set_goal(self, positions: np.ndarray, duration: float) -> None:
        """Servo to `positions` (checked: 6 finite values within the joint limits) over `duration`."""
        q = np.array(positions, dtype=np.float64)
        if q.shape != (self._dof,) or not np.all(np.isfinite(q)):
            raise ValueError(
                f"sim world {self.name!r}: expected {self._dof} finite joint targets, got"
                f" {positions!r}"
            )
        if np.any(q < self._lower) or np.any(q > self._upper):
            raise ValueError(
                f"sim world {self.name!r}: joint targets outside the limits"
                f" [{self._lower[0]:.3f}, {self._upper[0]:.3f}] rad: {q!r}"
            )
        if not (math.isfinite(duration) and duration >= 0):
            raise ValueError(f"sim world {self.name!r}: bad command duration {duration!r}")
        await self._call(self._set_goal, q, duration)

    async def halt(self, *, stop: bool) -> None:
        """Decelerate to a standstill and hold there (a hold, or a stop when `stop`)."""
        await self._call(self._halt, stop)

    def operator_stop(self) -> None:
        """A person stopped the arm (for tests: a pendant's stop). It halts and refuses motion
        until `operator_resume()`; the flag is read by the physics thread on its next step."""
        self._operator_stopped = True

    def operator_resume(self) -> None:
        self._operator_stopped = False

    async def inject_fault(self) -> None:
        """For tests: corrupt the physics (a NaN joint speed) the way a numerical blow-up would."""
        await self._call(self._poison)

    # -- physics thread --------------------------------------------------------------------
    def _advance(self, t: float) -> None:
        if self._t0 is None:
            self._t0 = t
        steps = math.floor((t - self._t0) / TIMESTEP + 1e-9)
        while self._steps < steps:
            self._step()

    def _step(self) -> None:
        t = self._steps * TIMESTEP
        if self._fault is None:
            if self._operator_stopped:
                self._halt_now()  # decelerate to a standstill, as the arm's own stop does
            self._servo(t)
            if self._moving:
                self._place_cubes(t)  # where they are during this step
            d = self._data
            d.ctrl[: self._dof] = self._ref
            d.ctrl[self._dof :] = self._ref_vel
            d.qfrc_applied[: self._dof] = self._feedforward
            before = d.qpos.copy()
            mujoco.mj_step(self.model, d)  # its kinematics (the tool point) are those at t
            if not self._finite():
                self._fail(before)
            else:
                self._judge(t)
        self._steps += 1

    def _servo(self, t: float) -> None:
        """Move the reference toward the goal within the speed and acceleration limits.

        The reference reaches the goal at the command's deadline when it can
        (a UR servoj interpolates the same way), never faster than the joint
        limits, and brakes so that it lands on the goal instead of passing it.
        """
        dt = TIMESTEP
        if self._at_rest:
            self._feedforward[:] = 0.0
            return
        if self._goal is None:
            desired = np.zeros(self._dof)
            accel = STOP_DECELERATION
        else:
            error = self._goal - self._ref
            remaining = max(self._goal_deadline - t, dt)
            desired = np.clip(error / remaining, -self._vmax, self._vmax)
            brake = np.sqrt(2.0 * SERVO_ACCELERATION * np.abs(error))
            desired = np.clip(desired, -brake, brake)
            accel = SERVO_ACCELERATION
        new_vel = self._ref_vel + np.clip(desired - self._ref_vel, -accel * dt, accel * dt)
        step = new_vel * dt
        if self._goal is not None:
            error = self._goal - self._ref
            landed = np.abs(step) >= np.abs(error)
            step = np.where(landed, error, step)
            new_vel = np.where(landed, 0.0, new_vel)
        acceleration = (new_vel - self._ref_vel) / dt
        self._ref = self._ref + step
        self._ref_vel = new_vel
        if not np.any(new_vel):
            if self._goal is None:
                self._goal = self._ref.copy()  # stopped: hold here
                self._goal_deadline = t
            self._at_rest = bool(np.array_equal(self._goal, self._ref))
        # Feed the reference's acceleration forward through the arm's inertia (M qdd).
        mujoco.mj_mulM(self.model, self._data, self._feedforward, acceleration)

    def _place_cubes(self, t: float) -> None:
        cubes = self._episode.cubes
        if t == 0.0:
            for i, cube in enumerate(cubes):
                self._data.mocap_quat[i] = _yaw_quat(cube.yaw)
        self._data.mocap_pos[:] = self._cube_positions(t)

    def _cube_positions(self, t: float) -> np.ndarray:
        """Every cube's centre at world time `t` (the conveyor's motion is exact, not stepped)."""
        cubes = self._episode.cubes
        if not self._moving:
            return np.array([(c.x, c.y, c.z) for c in cubes])
        return np.array([(c.x, conveyor_y(c.y, self._speed, t), c.z) for c in cubes])

    def _cube_at(self, i: int, t: float) -> CubePose:
        cube = self._episode.cubes[i]
        if not self._moving:
            return cube
        return dataclasses.replace(cube, y=conveyor_y(cube.y, self._speed, t))

    def _finite(self) -> bool:
        """MuJoCo checks every step for NaN or huge joint values (and then resets the data,
        counting a warning): a count above zero is the fault."""
        return not np.any(self._data.warning.number[_BAD_WARNINGS])

    def _fail(self, before: np.ndarray) -> None:
        """Latch a fault: the arm stays where it last was finite (MuJoCo itself would reset
        it to the zero pose, a jump no real arm makes), at rest, and refuses motion."""
        self._fault = "simulation fault: non-finite joint values (the physics blew up)"
        log.error("sim world %r: %s; the arm is stopped for good", self.name, self._fault)
        d = self._data
        d.qpos[:] = before
        d.qvel[:] = 0.0
        self._ref, self._ref_vel = before[: self._dof].copy(), np.zeros(self._dof)
        self._goal, self._at_rest = self._ref.copy(), True
        mujoco.mj_forward(self.model, d)

    def _poison(self) -> None:
        self._data.qvel[1] = math.nan

    def _judge(self, t: float) -> None:
        if t > self._episode.limit + 1e-9:
            return
        tool = self._data.site_xpos[self._tool]
        dist = distance_to_top_face(tool, self._cube_at(self._target_index, t))
        self._min_distance = min(self._min_distance, dist)
        if dist <= SUCCESS_DISTANCE and self._success_time is None:
            self._success_time = t
            log.info(
                "sim world %r: touched the %s cube at t=%.3f s", self.name, self._episode.target, t
            )

    def _loop_time(self) -> float:
        assert self._t0 is not None
        return self._t0 + self._steps * TIMESTEP

    def _arm_sample(self) -> ArmSample:
        d = self._data
        if self._fault is not None:
            mode, ready = f"FAULT: {self._fault}", False
        elif self._operator_stopped:
            mode, ready = "STOPPED by operator: resume needed", False
        else:
            mode, ready = "RUNNING", True
        mujoco.mj_kinematics(self.model, d)  # the tool pose of these joint positions
        pose = np.concatenate([d.site_xpos[self._tool], _rotvec(d.site_xmat[self._tool])])
        return ArmSample(
            time=self._loop_time(),
            positions=d.qpos[: self._dof].copy(),
            velocities=d.qvel[: self._dof].copy(),
            tool_pose=pose,
            ready=ready,
            mode=mode,
        )

    def _snapshot(self) -> Snapshot:
        d = self._data
        t = self._steps * TIMESTEP
        return Snapshot(
            self._loop_time(), d.qpos.copy(), self._cube_positions(t), d.mocap_quat.copy()
        )

    def _objects(self) -> tuple[float, ObjectReading]:
        t = self._steps * TIMESTEP
        cubes = tuple(self._cube_at(i, t) for i in range(len(COLOURS)))
        return self._loop_time(), ObjectReading(cubes, self._episode.target, self._speed)

    def _set_goal(self, q: np.ndarray, duration: float) -> None:
        if self._fault is not None:
            raise NotReady(f"sim world {self.name!r}: {self._fault}")
        if self._operator_stopped:
            raise NotReady(f"sim world {self.name!r}: stopped by an operator: resume needed")
        self._goal = q
        self._goal_deadline = self._steps * TIMESTEP + duration
        self._at_rest = False
        self.commands += 1

    def _halt(self, stop: bool) -> None:
        if stop:
            self.stops += 1
        else:
            self.holds += 1
        self._halt_now()

    def _halt_now(self) -> None:
        standing = self._goal is not None and np.array_equal(self._goal, self._ref)
        if not (standing and not np.any(self._ref_vel)):
            self._goal = None  # decelerate; the servo holds where the reference comes to rest
            self._at_rest = False

    # -- rendering (render thread) ------------------------------------------------------
    async def prepare_view(self, view: str, width: int, height: int) -> None:
        """Make the renderer for a view now (at connect), so a missing GL fails early."""
        if view not in VIEW_NAMES:
            raise DriverConfigError(f"unknown view {view!r} (accepted: {', '.join(VIEW_NAMES)})")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._render_pool, self._renderer, width, height)

    async def render(self, view: str, width: int, height: int, snap: Snapshot) -> np.ndarray:
        """The view at `snap` as RGB uint8 (height, width, 3), rendered on the render thread."""
        if self._closed:
            raise SimClosed(f"sim world {self.name!r} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._render_pool, self._render, view, width, height, snap
        )

    def _renderer(self, width: int, height: int) -> mujoco.Renderer:
        key = (width, height)
        renderer = self._renderers.get(key)
        if renderer is None:
            try:
                renderer = _new_renderer(self.model, width, height)
            except Exception as exc:
                text = str(exc).strip().splitlines()
                raise SimRenderError(
                    f"sim world {self.name!r}: cannot render: no working OpenGL for MuJoCo"
                    f" (MUJOCO_GL={GL_BACKEND!r}; {type(exc).__name__}:"
                    f" {text[0] if text else ''}); {GL_FIX}"
                ) from exc
            self._renderers[key] = renderer
        return renderer

    def _render(self, view: str, width: int, height: int, snap: Snapshot) -> np.ndarray:
        renderer = self._renderer(width, height)
        if self._render_data is None:
            self._render_data = mujoco.MjData(self.model)
        d = self._render_data
        d.qpos[:] = snap.qpos
        d.mocap_pos[:] = snap.mocap_pos
        d.mocap_quat[:] = snap.mocap_quat
        mujoco.mj_forward(self.model, d)
        renderer.update_scene(d, camera=view)
        return renderer.render()

    def _free_renderers(self) -> None:
        for renderer in self._renderers.values():
            with contextlib.suppress(Exception):
                renderer.close()
        self._renderers.clear()

    # -- end ---------------------------------------------------------------------------
    async def close(self) -> None:
        """Free the GL context on its own thread (bounded) and end both threads; safe twice."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CLOSE_BOUND):
                await loop.run_in_executor(self._render_pool, self._free_renderers)
        except TimeoutError:
            log.error(
                "sim world %r: the render thread did not end within %.1f s", self.name, CLOSE_BOUND
            )
        finally:
            self._render_pool.shutdown(wait=False, cancel_futures=True)
            self._physics.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------
# One world per name


class WorldHandle:
    """A driver's share of a named world: built on first use, closed with its last driver."""

    def __init__(self, entry: _Shared) -> None:
        self._entry = entry
        self._released = False

    @property
    def name(self) -> str:
        return self._entry.name

    @property
    def world(self) -> SimWorld:
        return self._entry.build()

    @property
    def built(self) -> bool:
        """The world exists (a driver of it connected, or someone asked for it)."""
        return self._entry.world is not None

    def episode(self) -> Episode:
        """The world's episode; planned from its drivers' options if it is not built yet
        (reading the instruction must not build MuJoCo before anything connects)."""
        entry = self._entry
        if entry.world is not None:
            return entry.world.episode()
        return plan_episode(WorldConfig(**entry.explicit), entry.name)

    @property
    def released(self) -> bool:
        return self._released

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        await _release(self._entry)


class _Shared:
    def __init__(self, name: str) -> None:
        self.name = name
        self.explicit: dict[str, Any] = {}
        self.users = 0
        self.world: SimWorld | None = None

    def merge(self, options: WorldConfig, who: str) -> None:
        wanted = options.explicit()
        if self.world is not None:
            have = self.world.config
            for key, value in wanted.items():
                if getattr(have, key) != value:
                    raise DriverConfigError(
                        f"{who}: sim world {self.name!r} already runs with {key}="
                        f"{getattr(have, key)!r}, not {value!r} (set the world's options on one"
                        " driver, or name another world)"
                    )
            return
        for key, value in wanted.items():
            if key in self.explicit and self.explicit[key] != value:
                raise DriverConfigError(
                    f"{who}: sim world {self.name!r}: {key}={value!r} here but"
                    f" {self.explicit[key]!r} on another of its drivers (set the world's options"
                    " on one driver, robot.sim, or the same on each)"
                )
        merged = {**self.explicit, **wanted}
        WorldConfig(**merged).resolved()  # refuse a bad combination now, at configuration
        self.explicit = merged

    def build(self) -> SimWorld:
        if self.world is None:
            self.world = SimWorld(WorldConfig(**self.explicit), name=self.name)
        return self.world


_worlds: dict[str, _Shared] = {}
_worlds_lock = threading.Lock()


def shared_world(name: str, options: WorldConfig | None = None, *, who: str = "sim") -> WorldHandle:
    """Join the world called `name` (made on first use with the options its drivers set).

    Every driver of a world calls this once, at construction, and releases
    its handle when it closes; the world is closed with its last driver and
    the name is free for a fresh episode.
    """
    if not name or not name.strip():
        raise DriverConfigError(f"{who}: a sim world needs a non-empty name, got {name!r}")
    with _worlds_lock:
        entry = _worlds.get(name)
        fresh = entry is None
        if entry is None:
            entry = _Shared(name)
        entry.merge(options or WorldConfig(), who)
        if fresh:
            _worlds[name] = entry
        entry.users += 1
    return WorldHandle(entry)


async def _release(entry: _Shared) -> None:
    with _worlds_lock:
        entry.users -= 1
        last = entry.users <= 0
        if last and _worlds.get(entry.name) is entry:
            del _worlds[entry.name]
    if last and entry.world is not None:
        await entry.world.close()


def open_worlds() -> list[str]:
    """Names of the worlds some driver still holds (for tests: none may leak)."""
    with _worlds_lock:
        return sorted(_worlds)
