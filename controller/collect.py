"""`python -m controller.collect`: demonstrations of the scripted expert on the simulated UR5.

```sh
python -m controller.collect --task reach --episodes 50 --out data/reach [--seed S]
    [--camera front --camera top] [--size 224] [--fps 10] [--conveyor-speed V]
    [--real-time] [--json PATH]
```

Each episode is one controller run, built the way a user's run is: a fresh
sim world of seed S+i (`drivers.sim`), its robot, cameras and privileged
sensor as ordinary drivers, the `sim-expert` policy and the world's own
instruction ("touch the red cube"), all through the controller (its safety
filter, warm-up and invariants: `controller.harness.ControllerHarness`
checks them on every run). One `Recorder` writes every command sent, with
the frames, state and sensor readings of its tick, into one LeRobot v3
dataset; an episode's world seed goes into the episodes table (`seed`
column, read back by `controller.evaluate.seeds.dataset_seeds`) so that an
evaluation can show its seeds never overlap the training seeds.

Why virtual time by default: the world follows the controller clock, so on
the virtual clock an episode takes the wall time its rendering and encoding
cost, not its length, and two collections with one seed record the same
states and images. `--real-time` runs on the wall clock (and the compute
executor), as `python -m controller` does.

Why the expert's VL encode is charged half a control period of virtual
time (`vl_latency`): without it everything in the warm-up costs no virtual
time, the control ticks land on the very instants the cameras capture, and
which of two frames a tick sees (the one being rendered at that instant, or
the one before) would depend on the render thread's real speed. Half a
period puts every tick between two captures: each step pairs with the frame
taken half a period before it, in every run.

Why an episode ends `settle` seconds after success: the data then shows the
tool arriving and staying, not a trajectory cut at the first touch. An
episode the expert fails is saved with success false, never dropped.

Nothing is lost: the recorder's queue holds a whole episode, the writer is
drained after each, and an episode that lost a step is an error, not data.
A first SIGINT/SIGTERM stops the episode in progress (the arm is stopped,
the unfinished episode is discarded) and exits 128+N with the saved
episodes readable; a second one cancels at once. Bad flags and a directory
that cannot hold this dataset are one line and exit 2; a failure during the
collection is one line and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from controller.errors import ConfigError, describe, one_line
from controller.settings import add_flags, apply_flags
from drivers.errors import DriverConfigError
from drivers.options import build, option, validate
from drivers.sim.model import MAX_IMAGE
from drivers.sim.world import WorldConfig, plan_episode
from policies.cli_args import OneLineArgumentParser

log = logging.getLogger("controller.collect")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: The views a collection can record (the sim camera's).
VIEWS = ("front", "top", "wrist")
DEFAULT_VIEWS = ("front", "top")
#: Seconds the recorder may take to finish at the end (every episode is already saved).
CLOSE_S = 60.0
#: The robot name the sim robot records under (`robot_type` of the dataset).
ROBOT_TYPE = "sim"


class CollectError(RuntimeError):
    """The collection cannot go on (the message is one line naming the episode and the cause)."""


@dataclass(frozen=True, slots=True)
class CollectConfig:
    """What to collect: every flag of `python -m controller.collect` but `--camera`,
    `--real-time` and `--log-level`, with its range (one line when refused)."""

    out: str = option(
        "",
        help="the LeRobot v3 dataset to write (created, or appended to)",
        pattern=r"(?s).*\S.*",
        accepted="a directory path",
        flag=True,
        metavar="DIR",
        default_text="required",
    )
    task: Literal["reach", "reach-moving"] = option(
        "reach", help="the world's task (reach-moving: the cubes ride a conveyor)", flag=True
    )
    episodes: int = option(
        10, help="episodes to collect", low=1, high=100_000, flag=True, metavar="N"
    )
    seed: int | None = option(
        None,
        help="world seed of the first episode (episode i uses seed+i)",
        low=0,
        high=2**62,
        flag=True,
        metavar="S",
        default_text="0, or one past the dataset's highest seed when appending",
    )
    cameras: tuple[str, ...] = option(DEFAULT_VIEWS, help="views recorded (--camera, repeated)")
    size: int = option(
        224,
        help="camera image width and height",
        unit="px",
        low=8,
        high=MAX_IMAGE,
        flag=True,
        metavar="PX",
    )
    fps: int = option(
        10,
        help="control rate, camera rate and dataset frame rate",
        unit="Hz",
        low=1,
        high=60,
        flag=True,
        metavar="HZ",
    )
    conveyor_speed: float | None = option(
        None,
        help="speed of reach-moving's conveyor",
        unit="m/s",
        low=0.0,
        high=0.5,
        flag=True,
        metavar="V",
        default_text="the world's default (0.04 m/s)",
    )
    episode_limit: float = option(
        10.0,
        help="time the expert has to touch the cube (the world's limit)",
        unit="s",
        low=0.5,
        high=600.0,
        flag=True,
    )
    settle: float = option(
        0.5,
        help="time recorded after the world judged success",
        unit="s",
        low=0.0,
        high=10.0,
        flag=True,
    )
    real_time: bool = option(False, help="run on the wall clock instead of virtual time")
    json: str | None = option(
        None, help="write the collection's summary as JSON here", flag=True, metavar="PATH"
    )

    def __post_init__(self) -> None:
        validate(self, error=ConfigError)
        if not self.cameras:
            raise ConfigError("at least one --camera is needed")
        if len(set(self.cameras)) != len(self.cameras):
            raise ConfigError(f"--camera: each view once, got {', '.join(self.cameras)}")
        unknown = [v for v in self.cameras if v not in VIEWS]
        if unknown:
            raise ConfigError(f"--camera {unknown[0]!r}: accepted views are {', '.join(VIEWS)}")
        try:
            self.world(0).resolved()
        except DriverConfigError as exc:
            raise ConfigError(f"--conveyor-speed: {exc}") from None

    def world(self, seed: int) -> WorldConfig:
        """The world options of the episode of world seed `seed`."""
        return WorldConfig(
            task=self.task,
            seed=seed,
            conveyor_speed=self.conveyor_speed,
            episode_limit=self.episode_limit,
        )

    @property
    def capacity(self) -> int:
        """Steps the recorder's queue must hold: a whole episode, with a margin."""
        return math.ceil((self.episode_limit + self.settle + 2.0) * self.fps)


@dataclass(slots=True)
class EpisodeResult:
    """One saved episode, as the summary and `--json` report it."""

    episode_index: int
    seed: int
    instruction: str
    success: bool
    time_to_success: float | None
    min_distance: float | None
    frames: int
    dropped: int
    #: Seconds of controller time the episode ran (virtual on the virtual clock).
    duration_s: float
    wall_s: float


@dataclass(slots=True)
class CollectResult:
    dataset: str
    task: str
    requested: int
    first_seed: int
    virtual_time: bool
    episodes: list[EpisodeResult] = field(default_factory=list)
    interrupted_by: str | None = None
    error: str | None = None
    wall_s: float = 0.0

    @property
    def successes(self) -> int:
        return sum(e.success for e in self.episodes)

    @property
    def frames(self) -> int:
        return sum(e.frames for e in self.episodes)

    @property
    def dropped(self) -> int:
        return sum(e.dropped for e in self.episodes)

    def to_json(self) -> dict[str, Any]:
        saved = len(self.episodes)
        return {
            "dataset": self.dataset,
            "task": self.task,
            "episodes_requested": self.requested,
            "episodes_saved": saved,
            "successes": self.successes,
            "success_rate": self.successes / saved if saved else None,
            "frames": self.frames,
            "dropped_steps": self.dropped,
            "first_seed": self.first_seed,
            "seeds": [e.seed for e in self.episodes],
            "virtual_time": self.virtual_time,
            "wall_s": round(self.wall_s, 3),
            "interrupted_by": self.interrupted_by,
            "error": self.error,
            "episodes": [asdict(e) for e in self.episodes],
        }

    def summary_line(self) -> str:
        saved = len(self.episodes)
        end = ""
        if self.interrupted_by:
            end = f"; interrupted by {self.interrupted_by} after {saved} of {self.requested}"
        elif self.error:
            end = f"; stopped by an error after {saved} of {self.requested}"
        return (
            f"collected {saved} episode(s) into {self.dataset}: {self.successes} success(es),"
            f" {self.frames} frames, {self.dropped} dropped, wall time {self.wall_s:.1f} s{end}"
        )


# --------------------------------------------------------------------------
# The collection


class Collector:
    """Runs the episodes one after another into one recorder; `request_stop` ends it early."""

    def __init__(
        self,
        config: CollectConfig,
        recorder: Any,
        *,
        first_seed: int,
        make_policy: Callable[[int], Any] | None = None,
        on_episode: Callable[[EpisodeResult], None] | None = None,
    ) -> None:
        self.config = config
        self.recorder = recorder
        self.first_seed = first_seed
        #: The policy of the episode of world seed `seed` (default: sim-expert seeded with it).
        self.make_policy = make_policy or _expert
        self.on_episode = on_episode
        self.result = CollectResult(
            dataset=str(recorder.root),
            task=config.task,
            requested=config.episodes,
            first_seed=first_seed,
            virtual_time=not config.real_time,
        )
        self._stop_reason: str | None = None
        self._harness: Any = None
        self._signals: list[signal.Signals] = []

    def request_stop(self, reason: str) -> None:
        """Stop after (the robot stopped, the episode in progress discarded); safe from the loop."""
        if self._stop_reason is None:
            self._stop_reason = reason
            log.warning("stopping the collection: %s", reason)
        if self._harness is not None:
            self._harness.controller.request_stop(reason)

    async def run(self) -> CollectResult:
        """Every episode, then the recorder closed; `result` says what was saved."""
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        installed = self._install_signals(loop, main)
        start = time.monotonic()
        try:
            for i in range(self.config.episodes):
                if self._stop_reason is not None:
                    break
                episode = await self._episode(i, self.first_seed + i)
                if episode is None:
                    break
                self.result.episodes.append(episode)
                if self.on_episode is not None:
                    self.on_episode(episode)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await asyncio.shield(loop.run_in_executor(None, self.recorder.close, CLOSE_S))
            self.result.wall_s = time.monotonic() - start
            if self._signals:
                self.result.interrupted_by = self._signals[0].name
        return self.result

    def _install_signals(
        self, loop: asyncio.AbstractEventLoop, main: asyncio.Task[Any] | None
    ) -> list[signal.Signals]:
        def on_signal(sig: signal.Signals) -> None:
            self._signals.append(sig)
            if len(self._signals) == 1:
                self.request_stop(f"signal {sig.name}")
            elif main is not None:
                log.warning("second signal %s: cancelling", sig.name)
                main.cancel()

        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or a platform without it
            installed.append(sig)
        return installed

    async def _episode(self, index: int, seed: int) -> EpisodeResult | None:
        """One episode recorded and saved; None when a stop request cut it short (discarded)."""
        from controller.harness import ControllerHarness
        from controller.recording import feed
        from drivers.sim.rig import build_rig

        cfg = self.config
        rec = self.recorder
        name = f"collect-{os.getpid()}-{id(self)}-{index}"
        world_cfg = cfg.world(seed)
        plan = plan_episode(world_cfg, name)
        rig = await build_rig(
            name, world_cfg, views=cfg.cameras, size=cfg.size, fps=cfg.fps, sensor=True
        )
        robot = rig.robot
        try:
            harness = ControllerHarness(
                robot=robot,
                cameras=list(rig.cameras),
                sensors=rig.sensors,
                policy=self.make_policy(seed),
                executor=self._executor(),
                hz=float(cfg.fps),
                instruction=plan.instruction,
                vl_latency=0.0 if cfg.real_time else 0.5 / cfg.fps,
            )
        except BaseException:
            await rig.close()  # release their share of the world
            raise
        world = robot.world
        settle_at: float | None = None

        def stop_after_settling(event: str, now: float, _detail: Any) -> None:
            nonlocal settle_at
            if event != "tick":
                return
            if settle_at is None and world.success():
                settle_at = now + cfg.settle
            if settle_at is not None and now >= settle_at:
                harness.controller.request_stop("settled after success")

        harness.controller.observers.append(stop_after_settling)
        feed(harness.controller, rec)
        recorded_before = rec.recorded
        rec.start_episode(plan.instruction, robot.info)
        self._harness = harness
        t0 = time.monotonic()
        try:
            summary = await harness.run(cfg.episode_limit)
        except BaseException as exc:
            if rec.episode_open:
                rec.discard_episode()
            if isinstance(exc, Exception):
                raise CollectError(
                    f"episode {index} (seed {seed}): the run failed: {_describe(exc)}"
                ) from exc
            raise
        finally:
            self._harness = None
            await rig.close()  # the controller closed those it entered; safe twice
        wall = time.monotonic() - t0
        if self._stop_reason is not None:
            rec.discard_episode()
            log.warning("episode %d (seed %d) cut short: not saved", index, seed)
            return None
        dropped = rec.episode_dropped
        if dropped:
            rec.discard_episode()
            raise CollectError(
                f"episode {index} (seed {seed}): {dropped} step(s) could not be recorded"
                f" (queue of {rec.capacity} steps); nothing of it was saved"
            )
        frames = rec.recorded - recorded_before
        if frames != summary["actions_sent"]:
            rec.discard_episode()
            raise CollectError(
                f"episode {index} (seed {seed}): {summary['actions_sent']} commands sent but"
                f" {frames} recorded; nothing of it was saved"
            )
        out = world.outcome()
        dataset_index = rec.writer.total_episodes
        rec.end_episode(
            out.success,
            {
                "seed": seed,
                "world_task": plan.task,
                "conveyor_speed": float(plan.conveyor_speed),
                "time_to_success": _rounded(out.time_to_success),
            },
        )
        await rec.drain()
        if rec.error is not None:
            raise CollectError(str(rec.error))
        return EpisodeResult(
            episode_index=dataset_index,
            seed=seed,
            instruction=plan.instruction,
            success=out.success,
            time_to_success=_rounded(out.time_to_success),
            min_distance=_rounded(out.min_distance) if math.isfinite(out.min_distance) else None,
            frames=frames,
            dropped=dropped,
            duration_s=round(float(summary.get("duration_s") or 0.0), 3),
            wall_s=round(wall, 3),
        )

    def _executor(self) -> Any:
        if self.config.real_time:
            from controller.executor import ComputeExecutor

            return ComputeExecutor("cpu")
        from controller.harness import SimulatedExecutor

        return SimulatedExecutor()


def _rounded(seconds: float | None) -> float | None:
    """World times are whole physics steps: 6 decimals drop the float noise (2.3000000000000003)."""
    return None if seconds is None else round(seconds, 6)


def _expert(seed: int) -> Any:
    from policies.sim_expert import SimExpertOptions, SimExpertPolicy

    return SimExpertPolicy(SimExpertOptions(seed=seed))


def _describe(exc: BaseException) -> str:
    """`describe`, but an invariant the harness caught is named as such."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, AssertionError):
        return f"the controller broke an invariant: {one_line(exc, 500)}"
    return describe(exc)


# --------------------------------------------------------------------------
# Opening the dataset


def open_dataset(config: CollectConfig) -> tuple[Any, int]:
    """The recorder on `--out`, checked against this collection; and the first world seed.

    Raises `DatasetDirError` (one line) when the directory cannot hold the
    dataset or holds one recorded differently (cameras, image size, rate,
    robot, sensor values): appending must never resize or mix.
    """
    from controller.evaluate.seeds import SeedError, dataset_seeds
    from controller.recording import DatasetDirError, Recorder
    from controller.recording import video as video_mod
    from drivers.sim.task import SENSOR_NAMES

    recorder = Recorder(
        config.out,
        fps=config.fps,
        cameras=list(config.cameras),
        capacity=config.capacity,
        sensors={"sim": SENSOR_NAMES},
        label="--out",
    )
    try:
        spec = recorder.writer.spec
        where = f"--out {config.out!r}"
        if spec is not None:
            width, height = video_mod.even_size(config.size, config.size)
            for cam in spec.cameras:
                if (cam.width, cam.height) != (width, height):
                    raise DatasetDirError(
                        f"{where} holds {cam.key} images of {cam.width}x{cam.height}; this"
                        f" collection renders {width}x{height} (use --size {cam.width} or"
                        " another directory)"
                    )
            if spec.robot_type != ROBOT_TYPE:
                raise DatasetDirError(
                    f"{where} holds episodes of robot {spec.robot_type!r}, not the simulated"
                    f" UR5 ({ROBOT_TYPE!r}): use another directory"
                )
            if len(spec.environment_names) != len(SENSOR_NAMES):
                raise DatasetDirError(
                    f"{where} records {len(spec.environment_names)} environment values; the sim"
                    f" sensor gives {len(SENSOR_NAMES)}: use another directory"
                )
        try:
            seeds = (dataset_seeds(recorder.root) or set()) if spec is not None else set()
        except SeedError as exc:
            raise DatasetDirError(f"{where}: {exc}") from None
    except BaseException:
        recorder.close(CLOSE_S)
        raise
    if config.seed is not None:
        first = config.seed
        overlap = sorted(seeds & set(range(first, first + config.episodes)))
        if overlap:
            log.warning(
                "the dataset already has episodes of seed(s) %s: they are collected again",
                ", ".join(map(str, overlap[:10])) + (" ..." if len(overlap) > 10 else ""),
            )
    else:
        first = max(seeds) + 1 if seeds else 0
        if seeds:
            log.info("appending after seed %d: the first episode uses seed %d", max(seeds), first)
    return recorder, first


# --------------------------------------------------------------------------
# Command line


#: One-line flag errors, exit 2 (EXIT_USAGE): the parser every tool here shares.
_Parser = OneLineArgumentParser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m controller.collect",
        description="Record demonstrations of the sim-expert policy on the simulated UR5 as a"
        " LeRobot v3 dataset (virtual time unless --real-time).",
    )
    add_flags(parser, CollectConfig)
    parser.add_argument(
        "--camera",
        action="append",
        choices=VIEWS,
        metavar="VIEW",
        help=f"a view to record, repeatable: {', '.join(VIEWS)}; default front and top",
    )
    parser.add_argument(
        "--real-time", action="store_true", help="run on the wall clock instead of virtual time"
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default WARNING)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> CollectConfig:
    """The flags as a `CollectConfig` (`ConfigError`, one line, when refused)."""
    table = apply_flags(args, {}, "flags", CollectConfig)
    if "out" not in table:
        raise ConfigError("--out DIR is required (the dataset to write)")
    if args.camera:
        table["cameras"] = tuple(args.camera)
    table["real_time"] = bool(args.real_time)
    return build(CollectConfig, table, where="flags", error=ConfigError)


def _progress(config: CollectConfig) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=config.episodes,
        desc=f"collect {config.task}",
        unit="episode",
        file=sys.stderr,
        dynamic_ncols=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the collection from the command line; returns the exit code (see the module doc)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    prog = parser.prog
    try:
        config = config_from_args(args)
        recorder, first_seed = open_dataset(config)
    except (ConfigError, DriverConfigError) as exc:
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    from tqdm.contrib.logging import logging_redirect_tqdm

    from controller.clock import VirtualTimeLoop

    bar = _progress(config)

    def advance(_episode: EpisodeResult) -> None:
        result = collector.result
        bar.set_postfix_str(f"success {result.successes}/{len(result.episodes)}", refresh=False)
        bar.update(1)

    collector = Collector(config, recorder, first_seed=first_seed, on_episode=advance)
    code = EXIT_OK
    with logging_redirect_tqdm(), bar:
        try:
            with asyncio.Runner(loop_factory=None if config.real_time else VirtualTimeLoop) as r:
                r.run(collector.run())
        except CollectError as exc:
            collector.result.error = str(exc)
            code = EXIT_FAILED
        except (KeyboardInterrupt, asyncio.CancelledError):
            collector.result.interrupted_by = collector.result.interrupted_by or "SIGINT"
        except Exception as exc:
            collector.result.error = f"collection failed: {_describe(exc)}"
            code = EXIT_FAILED
        finally:
            if recorder.busy:
                recorder.close(CLOSE_S)
    result = collector.result
    if result.error:
        print(f"{prog}: {result.error}", file=sys.stderr)
    if result.interrupted_by and code == EXIT_OK:
        sig = getattr(signal, result.interrupted_by, signal.SIGINT)
        code = 128 + int(sig)
    print(result.summary_line())
    if config.json:
        try:
            Path(config.json).write_text(json.dumps(result.to_json(), indent=2) + "\n")
        except OSError as exc:
            print(f"{prog}: cannot write {config.json!r}: {exc.strerror}", file=sys.stderr)
            code = code or EXIT_FAILED
    return code


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
