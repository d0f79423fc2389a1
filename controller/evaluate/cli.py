"""`python -m controller.evaluate`: closed-loop success of a policy on the simulated UR5.

    python -m controller.evaluate --checkpoint CKPT --task reach --episodes 50 \\
        --vl-mode async --vl-latency 0.3 --json eval.json
    python -m controller.evaluate --policy sim-expert --task reach-moving --episodes 10 \\
        --sweep --json sweep.json --plot sweep.png
    python -m controller.evaluate --checkpoint CKPT --episodes 1 --video episode.mp4

Exit codes: 0 when the evaluation ran (whatever its success rate); 2 for bad
input (flags, a checkpoint that is missing or corrupt, a policy that refuses
the evaluation's cameras, seeds that overlap a dataset's), one line naming
it; 1 when an episode failed at run time (`episode N (seed S) failed: ...`)
or an output could not be written; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from controller.errors import USER_ERRORS, PolicyError, describe
from controller.errors import one_line as error_line
from controller.evaluate.episodes import (
    PRIVILEGED_POLICIES,
    EvalSpec,
    Filmer,
    LoadedPolicy,
    preflight,
    run_episodes,
)
from controller.evaluate.report import EpisodeResult, one_line, summarize
from controller.evaluate.seeds import DEFAULT_SEED, SeedError, check_disjoint, dataset_seeds
from controller.runtime import ControllerConfig
from controller.safety import SafetyConfig
from controller.settings import converter_for, key_value
from drivers.sim.config import SimCameraConfig
from drivers.sim.task import TASKS
from drivers.sim.world import WorldConfig
from policies.cli_args import OneLineArgumentParser

log = logging.getLogger("controller.evaluate")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PROG = "python -m controller.evaluate"
#: The sweep's grid: VL latencies (s) by both modes.
SWEEP_LATENCIES = (0.0, 0.1, 0.3, 0.6)
SWEEP_MODES = ("sync", "async")
VIEWS = ("front", "top", "wrist")
#: Most episodes per cell: a typo guard (50 is the issue's table).
MAX_EPISODES = 100_000
#: Largest world seed (`WorldConfig.seed`).
MAX_SEED = 2**63 - 1


class UsageError(Exception):
    """Bad input found after parsing: printed as one line, exit 2."""


#: One-line flag errors, exit 2 (EXIT_USAGE): the parser every tool here shares.
_Parser = OneLineArgumentParser


def _int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be in [{low}, {high}], got {text!r}")
        return value

    convert.__name__ = what
    return convert


def _views(text: str) -> tuple[str, ...]:
    views = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in views if v not in VIEWS]
    if not views or bad or len(set(views)) != len(views):
        raise argparse.ArgumentTypeError(
            f"expected distinct views among {', '.join(VIEWS)}, comma-separated, got {text!r}"
        )
    return views


def _latencies(text: str) -> tuple[float, ...]:
    one = converter_for(ControllerConfig, "vl_latency")
    values = tuple(one(v.strip()) for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated seconds, got {text!r}")
    return tuple(sorted(set(values)))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Run closed-loop episodes of a policy on the simulated UR5 and report"
        " success (95 %% Wilson interval), time to success, control rate and feature age.",
    )
    who = p.add_argument_group("policy (one of)")
    who.add_argument("--checkpoint", metavar="DIR", help="a trained qwen-vla checkpoint")
    who.add_argument(
        "--policy", metavar="NAME", help="any installed policy by name (e.g. sim-expert)"
    )
    who.add_argument(
        "--policy-option",
        metavar="KEY=VALUE",
        type=key_value,
        action="append",
        default=[],
        help="policy option (repeatable)",
    )
    run = p.add_argument_group("episodes")
    run.add_argument("--task", choices=TASKS, default="reach", help="the world's task")
    run.add_argument(
        "--episodes",
        type=_int_in(1, MAX_EPISODES, "episodes"),
        default=20,
        metavar="N",
        help="episodes (per cell with --sweep); default 20",
    )
    run.add_argument(
        "--seed",
        type=_int_in(0, MAX_SEED, "seed"),
        default=DEFAULT_SEED,
        metavar="S",
        help=f"world seed of the first episode (then S+1, ...); default {DEFAULT_SEED:_}, apart"
        " from controller.collect's seeds, which start at 0",
    )
    run.add_argument(
        "--dataset",
        metavar="DIR",
        help="a training dataset (LeRobot v3): refuse seeds its episodes used",
    )
    run.add_argument(
        "--vl-mode", choices=("async", "sync"), help="async (default) or the sync baseline"
    )
    run.add_argument(
        "--vl-latency",
        type=converter_for(ControllerConfig, "vl_latency"),
        metavar="S",
        help="pad every VL encode to this many seconds (default 0)",
    )
    run.add_argument(
        "--hz", type=converter_for(ControllerConfig, "hz"), default=10.0, help="control rate"
    )
    run.add_argument(
        "--max-feature-age",
        type=converter_for(SafetyConfig, "max_feature_age"),
        default=SafetyConfig().max_feature_age,
        metavar="S",
        help="the controller holds when the features are older (default 1 s: with a 0.6 s"
        " encode, async features reach 0.6 + 0.6 + a frame's age)",
    )
    run.add_argument(
        "--cameras",
        type=_views,
        default=("front", "top"),
        metavar="VIEWS",
        help="sim camera views, comma-separated (default front,top)",
    )
    run.add_argument(
        "--image-size",
        type=converter_for(SimCameraConfig, "width"),
        default=224,
        metavar="PX",
        help="camera images are PX x PX (default 224)",
    )
    run.add_argument(
        "--episode-limit",
        type=converter_for(WorldConfig, "episode_limit"),
        metavar="S",
        help="time allowed per episode (default: the world's, 10 s)",
    )
    run.add_argument(
        "--conveyor-speed",
        type=converter_for(WorldConfig, "conveyor_speed"),
        metavar="M_S",
        help="reach-moving's conveyor speed (default: the world's)",
    )
    run.add_argument(
        "--real-time", action="store_true", help="run on the wall clock (default: virtual time)"
    )
    run.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="compute device: auto, cpu, cuda or cuda:N (default auto)",
    )
    out = p.add_argument_group("outputs")
    out.add_argument("--json", metavar="PATH", help="write the results (per episode too) as JSON")
    out.add_argument(
        "--sweep",
        action="store_true",
        help="run the grid of VL latencies (--latencies) by sync and async, write the table"
        " (--json) and a plot of success against VL latency (--plot)",
    )
    out.add_argument(
        "--latencies",
        type=_latencies,
        default=SWEEP_LATENCIES,
        metavar="S,S,...",
        help="the sweep's VL latencies (default 0,0.1,0.3,0.6)",
    )
    out.add_argument(
        "--plot",
        metavar="PATH",
        help="the sweep's PNG (default: the --json path with .png, else sweep-TASK.png)",
    )
    out.add_argument(
        "--video",
        metavar="PATH",
        help="an MP4 of one episode (the front camera, or the first one) with the instruction,"
        " feature age and outcome drawn on it",
    )
    out.add_argument(
        "--video-episode",
        type=_int_in(0, MAX_EPISODES - 1, "video-episode"),
        default=0,
        metavar="K",
        help="which episode --video films (default 0, the first)",
    )
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def _fail(code: int, message: str) -> int:
    print(f"{PROG}: error: {error_line(message)}", file=sys.stderr)
    return code


def _policy_source(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.checkpoint and args.policy and args.policy != "qwen-vla":
        raise UsageError(
            f"--checkpoint is a qwen-vla checkpoint; it cannot go with --policy {args.policy}"
        )
    if not args.checkpoint and not args.policy:
        raise UsageError("name the policy: --checkpoint DIR (qwen-vla) or --policy NAME")
    options = dict(args.policy_option)
    if args.checkpoint:
        options["checkpoint"] = args.checkpoint
        return "qwen-vla", options
    return args.policy, options


def _specs(args: argparse.Namespace, name: str) -> list[EvalSpec]:
    base = EvalSpec(
        task=args.task,
        vl_mode=args.vl_mode or "async",
        vl_latency=args.vl_latency or 0.0,
        hz=args.hz,
        max_feature_age=args.max_feature_age,
        cameras=args.cameras,
        image_size=args.image_size,
        episode_limit=args.episode_limit,
        conveyor_speed=args.conveyor_speed,
        real_time=args.real_time,
        privileged_sensor=name in PRIVILEGED_POLICIES,
    )
    if args.sweep:
        if args.vl_mode is not None or args.vl_latency is not None:
            raise UsageError(
                "--sweep runs every VL mode and latency itself: drop --vl-mode/--vl-latency"
                " (choose the latencies with --latencies)"
            )
        if args.video:
            raise UsageError("--video films one episode of a single run: drop --sweep")
        specs = [
            replace(base, vl_mode=mode, vl_latency=lat)  # type: ignore[arg-type]
            for lat in args.latencies
            for mode in SWEEP_MODES
        ]
    else:
        specs = [base]
    try:
        for spec in specs:
            spec.check()
    except USER_ERRORS as exc:
        raise UsageError(str(exc)) from None
    return specs


def _seeds(args: argparse.Namespace) -> list[int]:
    if args.seed + args.episodes - 1 > MAX_SEED:
        raise UsageError(
            f"--seed {args.seed} + --episodes {args.episodes} runs past seed {MAX_SEED}"
        )
    seeds = list(range(args.seed, args.seed + args.episodes))
    if args.dataset:
        try:
            used = dataset_seeds(args.dataset)
            if used is None:
                print(
                    f"{PROG}: warning: dataset {args.dataset!r} does not record its episodes'"
                    " seeds (no 'seed' column in meta/episodes): overlap not checked",
                    file=sys.stderr,
                )
            else:
                check_disjoint(seeds, used, args.dataset)
        except SeedError as exc:
            raise UsageError(str(exc)) from None
    return seeds


def _outputs(args: argparse.Namespace) -> tuple[Path | None, Path | None, Path | None]:
    """The output paths, checked before any episode runs (a typo must not cost an hour)."""
    json_path = Path(args.json) if args.json else None
    plot = None
    if args.sweep:
        plot = Path(
            args.plot or (json_path.with_suffix(".png") if json_path else f"sweep-{args.task}.png")
        )
        if plot.suffix.lower() != ".png":
            raise UsageError(f"--plot {str(plot)!r}: the plot is a PNG (a .png path)")
    elif args.plot:
        raise UsageError("--plot draws a sweep: add --sweep")
    video = Path(args.video) if args.video else None
    if video is not None:
        if video.suffix.lower() != ".mp4":
            raise UsageError(f"--video {str(video)!r}: the video is an MP4 (a .mp4 path)")
        if args.video_episode >= args.episodes:
            raise UsageError(
                f"--video-episode {args.video_episode} is not among the {args.episodes} episodes"
            )
    for flag, path in (("--json", json_path), ("--plot", plot), ("--video", video)):
        if path is not None and not path.resolve().parent.is_dir():
            raise UsageError(f"{flag} {str(path)!r}: directory {str(path.parent)!r} does not exist")
    return json_path, plot, video


def _settings(
    args: argparse.Namespace, name: str, options: dict[str, Any], device: str
) -> dict[str, Any]:
    return {
        "task": args.task,
        "policy": name,
        "policy_options": options,
        "episodes": args.episodes,
        "seed": args.seed,
        "seeds": [args.seed, args.seed + args.episodes - 1],
        "dataset": args.dataset,
        "hz": args.hz,
        "max_feature_age_s": args.max_feature_age,
        "cameras": list(args.cameras),
        "image_size": args.image_size,
        "episode_limit_s": args.episode_limit,
        "conveyor_speed": args.conveyor_speed,
        "real_time": args.real_time,
        "device": device,
    }


def _cell(spec: EvalSpec, results: Sequence[EpisodeResult]) -> dict[str, Any]:
    return {
        "vl_mode": spec.vl_mode,
        "vl_latency": spec.vl_latency,
        "summary": summarize(results),
        "episodes": [r.row() for r in results],
    }


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a bad flag already printed as one line
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        name, options = _policy_source(args)
        specs = _specs(args, name)
        seeds = _seeds(args)
        json_path, plot_path, video_path = _outputs(args)
    except UsageError as exc:
        return _fail(EXIT_USAGE, str(exc))

    from controller.executor import resolve_device
    from policies import base as policies

    try:
        device = resolve_device(args.device)
        policy = LoadedPolicy(policies.create(name, options))
        preflight(policy, specs[0], device)
    except USER_ERRORS as exc:
        return _fail(EXIT_USAGE, str(exc))
    except PolicyError as exc:
        return _fail(
            EXIT_USAGE,
            f"policy {name!r} refuses this evaluation's observation (cameras"
            f" {', '.join(args.cameras)}, {args.image_size}x{args.image_size}): {exc}",
        )
    except Exception as exc:
        return _fail(EXIT_USAGE, f"cannot build and load policy {name!r}: {describe(exc)}")

    film_camera = "front" if "front" in args.cameras else args.cameras[0]
    filmer = Filmer(film_camera, specs[0].camera_fps) if video_path is not None else None
    cells: list[tuple[EvalSpec, list[EpisodeResult]]] = []
    failed: list[str] = []
    wall0 = time.perf_counter()

    from tqdm import tqdm

    bar = tqdm(total=len(specs) * len(seeds), file=sys.stderr, unit="episode", dynamic_ncols=True)

    async def evaluate() -> None:
        for spec in specs:
            bar.set_description(f"{spec.task} {spec.vl_mode} {spec.vl_latency:g}s")
            wins = 0

            def done(result: EpisodeResult) -> None:
                nonlocal wins
                wins += result.success
                bar.set_postfix_str(f"{wins}/{result.index + 1} succeeded")
                bar.update(1)

            try:
                results = await run_episodes(
                    policy,
                    spec,
                    seeds,
                    device=device,
                    on_episode=done,
                    film={args.video_episode: filmer} if filmer is not None else None,
                )
            except Exception as exc:
                index = bar.n % len(seeds)
                failed.append(
                    f"episode {index} (seed {seeds[index]}, {spec.vl_mode}, VL latency"
                    f" {spec.vl_latency:g} s) failed: {describe(_cause(exc))}"
                )
                return
            cells.append((spec, results))

    try:
        if args.real_time:
            asyncio.run(evaluate())
        else:
            from controller.clock import run_virtual

            run_virtual(evaluate)
    except KeyboardInterrupt:
        bar.close()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        bar.close()
    if failed:
        return _fail(EXIT_FAILED, failed[0])

    for spec, results in cells:
        print(one_line(spec.task, spec.vl_mode, spec.vl_latency, summarize(results)))
    code = EXIT_OK
    report: dict[str, Any] = {
        "tool": "controller.evaluate",
        "settings": _settings(args, name, options, device),
        "wall_s": round(time.perf_counter() - wall0, 2),
    }
    if args.sweep:
        report["cells"] = [_cell(spec, results) for spec, results in cells]
        assert plot_path is not None
        from controller.evaluate.plot import plot_sweep

        title = (
            f"{args.task}: {name}, {args.episodes} episodes per point"
            f" ({'real' if args.real_time else 'virtual'} time)"
        )
        try:
            report["plot"] = str(plot_sweep(report["cells"], plot_path, title=title))
            print(f"plot                {plot_path}")
        except OSError as exc:
            code = _fail(EXIT_FAILED, f"cannot write the plot {str(plot_path)!r}: {exc}")
    else:
        spec, results = cells[0]
        report.update(_cell(spec, results))
    if video_path is not None and filmer is not None:
        from controller.evaluate.video import write_episode_video

        spec, results = cells[0]
        result = results[args.video_episode]
        try:
            write_episode_video(
                filmer.frames,
                result,
                video_path,
                fps=filmer.fps,
                mode=f"{spec.vl_mode} {spec.vl_latency:g} s",
            )
            report["video"] = {
                "path": str(video_path),
                "episode": result.index,
                "camera": film_camera,
            }
            print(f"video               {video_path} (episode {result.index}, seed {result.seed})")
        except (OSError, ValueError) as exc:
            code = _fail(EXIT_FAILED, f"cannot write the video {str(video_path)!r}: {exc}")
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            code = _fail(EXIT_FAILED, f"cannot write {str(json_path)!r}: {exc.strerror}")
    return code


def _cause(exc: BaseException) -> BaseException:
    """The policy's own error behind the runtime's "failed N times in a row" wrapper."""
    cause = exc.__cause__
    if isinstance(exc, PolicyError) and isinstance(cause, Exception):
        return cause if isinstance(cause, PolicyError) else exc
    return exc
