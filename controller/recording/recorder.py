"""The recorder: episodes to a LeRobot v3 dataset, written by a thread beside the control loop.

Recording is a sink beside the robot command path, and it must never delay
a tick. What runs on the event loop is only `record()`: it takes references
to the state, the command and the frames (no copy, no conversion) and puts
them on a bounded queue. A writer thread does everything else: the frames'
colour conversion, H.264 encoding (one encoder per camera, streaming into a
segment file as the episode runs, so memory does not grow with its length),
statistics, and at `end_episode` the atomic commit
(`controller.recording.lerobot_v3`). When the writer falls behind and the
queue is full, a step is dropped and counted, never waited for
(`dropped`, per episode in the dataset's `dropped_steps`).

A failure of the writer (a full disk, a directory that became unwritable, a
dataset this run does not match) is one line (`error`) and `on_error` is
called from the writer thread; the episode in progress is abandoned,
episodes already saved stay as they were, and later steps are dropped.

Episodes: `start_episode(task)`, then `record(...)` once per command sent
(`observe`, a `Controller.observers` callback added by `feed`, does it: each
"action" event with the frames, state and sensor readings it was decided
on), then
`end_episode(success, columns)` or `discard_episode()`. A CLI run is one
episode (`attach`); `controller.collect` runs N and scores each.

A recorder made with `sensors` also records their readings, concatenated in
the order given, as `observation.environment_state` (privileged state: for
the simulated world, the cubes' poses; a training target, never a policy
input), named by each driver's `value_names` when it has them.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from controller.recording import stats as stats_mod
from controller.recording import video
from controller.recording.lerobot_v3 import (
    CameraSpec,
    DatasetDirError,
    DatasetMismatch,
    DatasetSpec,
    EpisodeData,
    LeRobotV3Writer,
    camera_key,
    episode_columns,
)
from drivers.base import Frame, RobotInfo, RobotState, SensorDriver, SensorReading

log = logging.getLogger("controller.recording")

#: Steps the queue holds by default: 6.4 s at 10 Hz, ~20 MB with two 224x224 cameras.
DEFAULT_CAPACITY = 64
#: Seconds a recorder left open may take to finish when the interpreter exits.
EXIT_CLOSE_S = 30.0

_OPEN: weakref.WeakSet[Recorder] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    """Finish the recorders nobody closed: their saved episodes must not be lost to an exit."""
    for recorder in list(_OPEN):
        recorder.close(EXIT_CLOSE_S)


class RecordingError(RuntimeError):
    """The recording failed (the message is one line naming the directory and the cause)."""


@dataclass(frozen=True, slots=True)
class _Start:
    task: str
    robot: RobotInfo | None


@dataclass(frozen=True, slots=True)
class _Step:
    state: RobotState
    action: np.ndarray
    frames: Mapping[str, Frame]
    #: Each recorded sensor's values, in the recorder's sensor order.
    environment: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True, slots=True)
class _End:
    success: bool | None
    keep: bool
    dropped: int
    columns: Mapping[str, Any] = field(default_factory=dict)


class _Close:
    pass


@dataclass(slots=True)
class _Episode:
    task: str
    robot: RobotInfo | None
    index: int
    spec: DatasetSpec | None = None
    encoders: dict[str, video.SegmentEncoder] | None = None
    image_stats: dict[str, stats_mod.ImageStats] | None = None
    states: list[np.ndarray] | None = None
    actions: list[np.ndarray] | None = None
    environment: list[np.ndarray] | None = None


class Recorder:
    """Episodes in, LeRobot v3 dataset out; the only loop-side cost is a queue append."""

    def __init__(
        self,
        root: str | Path,
        *,
        fps: float,
        cameras: Sequence[str],
        capacity: int = DEFAULT_CAPACITY,
        crf: int = video.DEFAULT_CRF,
        on_error: Callable[[RecordingError], None] | None = None,
        sensors: Mapping[str, Sequence[str] | None] | None = None,
        label: str = "--record",
    ) -> None:
        """Open (or create) the dataset at `root`; refuses with `DatasetDirError` (one line).

        `fps` is the control rate: one dataset frame per command sent.
        LeRobot's format has an integer frame rate. `sensors` maps the name
        of each sensor whose readings are recorded (`observation.environment_state`)
        to names for its values, or None (`sensor_names` makes it from drivers).
        `label` is how messages name the directory (the flag that gave it).
        """
        if not (float(fps).is_integer() and fps >= 1):
            raise DatasetDirError(
                f"{label} needs a whole-number control rate (LeRobot datasets have an integer"
                f" fps), got hz = {fps:g}"
            )
        keys = {name: camera_key(name) for name in cameras}
        if len(set(keys.values())) != len(keys):
            raise DatasetDirError(
                f"{label}: camera names {list(keys)} map to the same dataset feature"
            )
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.fps = int(fps)
        self._sensors: dict[str, tuple[str, ...] | None] = {
            name: None if names is None else tuple(str(n) for n in names)
            for name, names in (sensors or {}).items()
        }
        self.writer = LeRobotV3Writer.open(
            root,
            fps=self.fps,
            camera_keys=list(keys.values()),
            environment=bool(self._sensors),
            label=label,
        )
        self.root = self.writer.root
        self.capacity = capacity
        self.crf = crf
        self.on_error = on_error
        self._keys = keys
        #: Set once the writer failed; everything after is dropped.
        self.error: RecordingError | None = None
        self.dropped = 0
        self.recorded = 0
        self.saved = 0
        self._episode_open = False
        self._episode_dropped = 0
        self._queue: collections.deque[Any] = collections.deque()
        self._steps_queued = 0
        self._queued = 0
        self._done = 0
        self._cond = threading.Condition()
        self._closed = False
        # A daemon, so that a recorder nobody closed cannot keep the process from
        # exiting; `_close_at_exit` still saves its episode (bounded) at a normal exit.
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        _OPEN.add(self)

    # -- loop side: cheap, never blocks -------------------------------------
    @property
    def episode_open(self) -> bool:
        return self._episode_open

    @property
    def episode_dropped(self) -> int:
        """Steps of the episode being recorded that were not kept (0 when none was lost)."""
        return self._episode_dropped

    @property
    def sensors(self) -> tuple[str, ...]:
        """The sensors whose readings are recorded, in order (empty: no environment state)."""
        return tuple(self._sensors)

    def start_episode(self, task: str, robot: RobotInfo | None = None) -> None:
        """Begin an episode with `task` (the instruction) as its task text."""
        if self._closed:
            raise RuntimeError("the recorder is closed")
        if self._episode_open:
            raise RuntimeError("an episode is already being recorded: end or discard it first")
        if not task.strip():
            raise ValueError("an episode's task must be a non-empty string")
        self._episode_open = True
        self._episode_dropped = 0
        self._put(_Start(task, robot))

    def record(
        self,
        state: RobotState,
        action: np.ndarray,
        frames: Mapping[str, Frame],
        sensors: Mapping[str, SensorReading] | None = None,
    ) -> bool:
        """One step: the state decided on, the command sent, each camera's newest frame,
        and (when the recorder records sensors) each sensor's reading of the same tick.

        Returns False when the step was not kept (no episode; or counted in
        `dropped`: the writer failed, the queue is full, a camera's frame or
        a recorded sensor's reading is missing).
        """
        if not self._episode_open:
            return False
        readings = sensors or {}
        if (
            self.error is not None
            or self._steps_queued >= self.capacity
            or any(name not in frames for name in self._keys)
            or any(name not in readings for name in self._sensors)
        ):
            self.dropped += 1
            self._episode_dropped += 1
            return False
        env = tuple(readings[name].values for name in self._sensors)
        self._put(_Step(state, action, dict(frames), env), step=True)
        self.recorded += 1
        return True

    def observe(self, event: str, _time: float, detail: Any) -> None:
        """A `Controller.observers` callback: each "action" event becomes one step,
        with the frames, state and sensor readings the command was decided on."""
        if event == "action":
            sensors = getattr(detail, "sensors", None)
            self.record(detail.state, detail.command.positions, detail.frames, sensors)

    def end_episode(
        self, success: bool | None = None, columns: Mapping[str, Any] | None = None
    ) -> None:
        """Save the episode (atomically, on the writer thread); `success` None means not scored.

        `columns` are the episode's own columns in the episodes table (for
        example `seed`, the world seed of a simulated episode): bool, int,
        float or str values; a name the format uses is refused (ValueError).
        """
        checked = episode_columns(columns or {})
        self._finish(_End(success, keep=True, dropped=self._episode_dropped, columns=checked))

    def discard_episode(self) -> None:
        """Throw the episode away (a collection run that went wrong)."""
        self._finish(_End(None, keep=False, dropped=self._episode_dropped))

    def _finish(self, end: _End) -> None:
        if not self._episode_open:
            raise RuntimeError("no episode is being recorded")
        self._episode_open = False
        self._put(end)

    def _put(self, item: Any, *, step: bool = False) -> None:
        with self._cond:
            self._queue.append(item)
            self._queued += 1
            if step:
                self._steps_queued += 1
            self._cond.notify()

    # -- waiting for the writer ---------------------------------------------
    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block (off the loop) until everything queued so far is written; False on timeout."""
        with self._cond:
            target = self._queued
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    async def drain(self) -> None:
        """Wait, without blocking the loop, until the writer has done everything queued so far.

        Runs in the loop's executor, which under the virtual clock counts
        as real work: virtual time does not run ahead while the writer works.
        """
        await asyncio.get_running_loop().run_in_executor(None, self.wait_idle)

    def close(self, timeout: float | None = None) -> bool:
        """Save an open episode (not scored), stop the writer; False if it did not finish in time."""
        if not self._closed:
            if self._episode_open:
                self.end_episode(None)
            self._closed = True
            self._put(_Close())
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        _OPEN.discard(self)
        return True

    @property
    def busy(self) -> bool:
        """The writer thread is still running (after `close`: it did not finish in time)."""
        return self._thread.is_alive()

    def summary(self) -> dict[str, Any]:
        """What the run summary and `--stats-json` report about the recording."""
        return {
            "dir": str(self.root),
            "episodes_saved": self.saved,
            "steps_recorded": self.recorded,
            "steps_dropped": self.dropped,
            "error": None if self.error is None else str(self.error),
        }

    # -- writer thread -------------------------------------------------------
    def _take(self) -> Any:
        with self._cond:
            self._cond.wait_for(lambda: bool(self._queue))
            item = self._queue.popleft()
            if isinstance(item, _Step):
                self._steps_queued -= 1
            return item

    def _run(self) -> None:
        episode: _Episode | None = None
        while True:
            item = self._take()
            try:
                if isinstance(item, _Close):
                    if episode is not None:
                        self._abandon(episode)
                    self.writer.close()
                    return
                if self.error is not None:
                    continue
                if isinstance(item, _Start):
                    if episode is not None:
                        self._abandon(episode)
                    episode = _Episode(item.task, item.robot, self.writer.total_episodes)
                elif isinstance(item, _Step):
                    if episode is not None:
                        self._add(episode, item)
                elif isinstance(item, _End):
                    current, episode = episode, None
                    if current is not None:
                        self._end(current, item)
            except Exception as exc:
                if episode is not None:
                    self._abandon(episode)
                    episode = None
                self._fail(exc)
            finally:
                with self._cond:
                    self._done += 1
                    self._cond.notify_all()

    def _spec_for(self, ep: _Episode, step: _Step) -> DatasetSpec:
        dof = len(np.asarray(step.state.positions))
        robot = ep.robot
        names = tuple(robot.joint_names) if robot is not None else ()
        if len(names) != dof:
            names = tuple(f"joint_{i}" for i in range(dof))
        env_names: list[str] = []
        for (sensor, given), values in zip(self._sensors.items(), step.environment, strict=True):
            size = int(np.asarray(values).size)
            if given is not None and len(given) != size:
                log.warning(
                    "sensor %s names %d values but reads %d: recorded as %s.0 ...",
                    sensor,
                    len(given),
                    size,
                    sensor,
                )
                given = None
            env_names += [f"{sensor}.{n}" for n in (given or range(size))]
        cams = []
        for name, key in sorted(self._keys.items(), key=lambda kv: kv[1]):
            frame = step.frames[name]
            width, height = frame.size or (frame.image.shape[1], frame.image.shape[0])
            w, h = video.even_size(width, height)
            cams.append(CameraSpec(key, h, w))
        proposed = DatasetSpec(
            fps=self.fps,
            robot_type=robot.name if robot is not None else "unknown",
            joint_names=names,
            cameras=tuple(cams),
            environment_names=tuple(env_names),
        )
        return self.writer.settle(proposed)

    def _add(self, ep: _Episode, step: _Step) -> None:
        if ep.spec is None:
            ep.spec = self._spec_for(ep, step)
            ep.encoders, ep.image_stats = {}, {}
            ep.states, ep.actions, ep.environment = [], [], []
            self.writer.staging.mkdir(parents=True, exist_ok=True)
            for cam in ep.spec.cameras:
                path = self.writer.staging / f"episode-{ep.index:06d}-{cam.key}.mp4"
                ep.encoders[cam.key] = video.SegmentEncoder(
                    path, width=cam.width, height=cam.height, fps=self.fps, crf=self.crf
                )
                ep.image_stats[cam.key] = stats_mod.ImageStats()
        assert ep.encoders is not None and ep.image_stats is not None
        assert ep.states is not None and ep.actions is not None and ep.environment is not None
        dof = len(ep.spec.joint_names)
        state = np.asarray(step.state.positions, dtype=np.float32)
        action = np.asarray(step.action, dtype=np.float32)
        if state.shape != (dof,) or action.shape != (dof,):
            raise DatasetMismatch(
                f"a step has {state.shape} state and {action.shape} action values;"
                f" the dataset records {dof} joints"
            )
        for name, key in self._keys.items():
            cam = next(c for c in ep.spec.cameras if c.key == key)
            rgb = _sized(step.frames[name].image, cam.width, cam.height)
            ep.encoders[key].add(rgb)
            ep.image_stats[key].add(rgb)
        if ep.spec.environment_names:
            env = np.concatenate(
                [np.asarray(v, dtype=np.float32).reshape(-1) for v in step.environment]
            )
            if env.shape != (len(ep.spec.environment_names),):
                raise DatasetMismatch(
                    f"a step has {env.size} sensor values; the dataset records"
                    f" {len(ep.spec.environment_names)} in observation.environment_state"
                )
            ep.environment.append(env)
        ep.states.append(state)
        ep.actions.append(action)

    def _end(self, ep: _Episode, end: _End) -> None:
        encoders = ep.encoders or {}
        if not end.keep or not ep.states or ep.spec is None:
            self._abandon(ep)
            if end.keep:
                log.warning("episode %d had no command sent: nothing to save", ep.index)
            return
        for enc in encoders.values():
            enc.close()
        assert ep.image_stats is not None and ep.actions is not None
        data = EpisodeData(
            task=ep.task,
            states=np.stack(ep.states),
            actions=np.stack(ep.actions),
            videos={key: enc.path for key, enc in encoders.items()},
            image_stats={key: s.result() for key, s in ep.image_stats.items()},
            success=end.success,
            dropped=end.dropped,
            environment=np.stack(ep.environment) if ep.environment else None,
            columns=dict(end.columns),
        )
        try:
            saved = self.writer.commit(data, ep.spec)
        except BaseException:
            for path in data.videos.values():
                path.unlink(missing_ok=True)
            raise
        self.saved += 1
        log.info(
            "episode %d saved to %s: %d frames%s",
            saved.index,
            self.root,
            saved.length,
            f", {end.dropped} steps dropped" if end.dropped else "",
        )

    @staticmethod
    def _abandon(ep: _Episode) -> None:
        for enc in (ep.encoders or {}).values():
            enc.abort()

    def _fail(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            cause = exc.strerror or str(exc)
        else:
            cause = " ".join(str(exc).split()) or type(exc).__name__
        self.error = RecordingError(
            f"recording to {str(self.root)!r} failed: {cause} (the dataset keeps its"
            f" {self.writer.total_episodes} saved episode(s); the one in progress is lost)"
        )
        log.error("%s", self.error)
        log.debug("the recorder's failure", exc_info=exc)
        if self.on_error is not None:
            try:
                self.on_error(self.error)
            except Exception:
                log.exception("the recorder's on_error callback failed")


def _sized(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """The frame at the dataset's size (a camera may change resolution; odd sizes are trimmed)."""
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.reformat(width=width, height=height).to_ndarray(format="rgb24")


def sensor_names(sensors: Sequence[SensorDriver]) -> dict[str, Sequence[str] | None]:
    """`Recorder(sensors=...)` for these drivers: each one's `value_names`, if it has them."""
    return {s.name: getattr(s, "value_names", None) for s in sensors}


def feed(controller: Any, recorder: Recorder) -> Callable[[str, float, Any], None]:
    """Record every command `controller` sends into the open episode (if any), with the
    frames, state and sensor readings it was decided on. Returns the observer it added.

    The episodes themselves are started and ended by the caller
    (`controller.collect` runs one controller per episode).
    """
    controller.observers.append(recorder.observe)
    return recorder.observe


def attach(
    controller: Any,
    recorder: Recorder,
    task: str,
    *,
    outcome: Callable[[], Mapping[str, Any] | None] | None = None,
) -> Callable[[str, float, Any], None]:
    """Record a controller's run as one episode: from ACTIVE to its end, every command sent.

    The episode starts when the controller becomes active (the robot is
    connected, so its joint names are known) and is saved when the run
    winds down, whatever ended it: scored by `outcome()` when given (a
    robot's `judged_outcome`: its `success`, and its `seed` as the
    episode's `seed` column), else not scored. Returns the observer it added.
    """

    def on_event(event: str, time: float, detail: Any) -> None:
        if event == "action":
            recorder.observe(event, time, detail)
        elif event == "phase":
            phase = getattr(detail, "value", detail)
            if phase == "active" and not recorder.episode_open:
                recorder.start_episode(task, controller.robot.info)
            elif phase in ("stopping", "stopped", "failed") and recorder.episode_open:
                judged = _judged(outcome)
                success = judged.get("success")
                seed = judged.get("seed")
                recorder.end_episode(
                    success if isinstance(success, bool) else None,
                    {"seed": seed}
                    if isinstance(seed, int) and not isinstance(seed, bool)
                    else None,
                )

    controller.observers.append(on_event)
    return on_event


def _judged(outcome: Callable[[], Mapping[str, Any] | None] | None) -> Mapping[str, Any]:
    if outcome is None:
        return {}
    try:
        return outcome() or {}
    except Exception:
        log.exception("judging the recorded episode failed; it is saved unscored")
        return {}
