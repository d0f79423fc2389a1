"""`python -m controller`: build drivers and policy from flags and TOML, run, report.

Exit codes: 0 after a normal stop (duration elapsed, SIGINT/SIGTERM), 1 when
the run failed (the robot was stopped first), 2 for bad flags or config, each
reported as one line that names the value at fault.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from controller.config import RunConfig, from_mapping, load_file
from controller.errors import USER_ERRORS, ConfigError, DriverError, PolicyError, WarmupError
from controller.executor import ComputeExecutor
from controller.runtime import Controller
from controller.telemetry import format_summary

log = logging.getLogger("controller")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the message already names the flag and value.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    return key.strip(), value


def _number(text: str, *, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value == float("inf"):
        wanted = "a number >= 0" if allow_zero else "a positive number"
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def _positive(text: str) -> float:
    return _number(text, allow_zero=False)


def _non_negative(text: str) -> float:
    return _number(text, allow_zero=True)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m controller",
        description="Run a VLA policy on a robot at a fixed control rate, with VL features encoded asynchronously.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file; flags override it")
    p.add_argument(
        "--robot", metavar="SPEC", help="robot driver (default: fake); see --list-drivers"
    )
    p.add_argument(
        "--robot-host", metavar="HOST", help="robot address (sets the robot option 'host')"
    )
    p.add_argument(
        "--robot-option",
        metavar="KEY=VALUE",
        type=_key_value,
        action="append",
        default=[],
        help="robot driver option (repeatable)",
    )
    p.add_argument(
        "--camera",
        metavar="SPEC",
        action="append",
        help="camera: fake, fake://NAME, whep+http://HOST/PATH, whip://HOST:PORT/NAME, ... (repeatable)",
    )
    p.add_argument(
        "--sensor", metavar="SPEC", action="append", help="auxiliary sensor driver (repeatable)"
    )
    p.add_argument("--policy", metavar="NAME", help="policy: qwen-vla (default) or fake")
    p.add_argument("--checkpoint", metavar="DIR", help="policy checkpoint directory (qwen-vla)")
    p.add_argument(
        "--vl-model", metavar="DIR_OR_ID", help="Qwen2.5-VL model directory or hub id (qwen-vla)"
    )
    p.add_argument(
        "--policy-option",
        metavar="KEY=VALUE",
        type=_key_value,
        action="append",
        default=[],
        help="policy option (repeatable)",
    )
    p.add_argument("--hz", type=_positive, help="control rate (default 10)")
    p.add_argument("--instruction", help="the language instruction given to the policy")
    p.add_argument(
        "--max-feature-age",
        type=_positive,
        metavar="S",
        help="hold when the newest VL features are older than this (default 1.0 s)",
    )
    p.add_argument(
        "--max-state-age",
        type=_positive,
        metavar="S",
        help="hold when the newest robot state is older than this (default 0.1 s)",
    )
    p.add_argument(
        "--limit-mode", choices=("clamp", "reject"), help="what joint limits do to an action"
    )
    p.add_argument("--device", help="compute device: auto (default), cpu, cuda, cuda:N")
    p.add_argument(
        "--duration", type=_positive, metavar="S", help="stop after S seconds of control"
    )
    p.add_argument("--stats-json", metavar="PATH", help="write the run summary as JSON")
    p.add_argument(
        "--status-interval",
        type=_non_negative,
        metavar="S",
        help="seconds between status lines (0: none)",
    )
    p.add_argument(
        "--spin-ms",
        type=_non_negative,
        metavar="MS",
        help="busy-wait this long before each tick for lower jitter (default 0)",
    )
    p.add_argument(
        "--vl-max-hz",
        type=_non_negative,
        metavar="HZ",
        help="most VL encodes per second (default: the control rate; 0: unlimited)",
    )
    p.add_argument(
        "--no-uvloop",
        action="store_true",
        help="use asyncio's own loop even if uvloop is installed",
    )
    p.add_argument(
        "--list-drivers", action="store_true", help="list installed drivers and policies, then exit"
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def _overlay(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """Apply the flags on top of the TOML document."""
    data = dict(data)
    for flag, key in (
        ("hz", "hz"),
        ("instruction", "instruction"),
        ("duration", "duration"),
        ("stats_json", "stats_json"),
        ("device", "device"),
        ("spin_ms", "spin_ms"),
        ("status_interval", "status_interval"),
        ("vl_max_hz", "vl_max_hz"),
    ):
        value = getattr(args, flag)
        if value is not None:
            data[key] = value
    safety = dict(data.get("safety", {}) or {})
    for flag in ("max_feature_age", "max_state_age", "limit_mode"):
        if getattr(args, flag) is not None:
            safety[flag] = getattr(args, flag)
    if safety:
        data["safety"] = safety
    robot = data.get("robot", {"driver": "fake"})
    robot = {"driver": robot} if isinstance(robot, str) else dict(robot)
    if args.robot and args.robot != robot.get("driver"):
        robot = {"driver": args.robot}  # options of another driver do not carry over
    if args.robot_host:
        robot["host"] = args.robot_host
    robot.update(dict(args.robot_option))
    data["robot"] = robot
    if args.camera:
        data["cameras"] = [{"spec": c} for c in args.camera]
    if args.sensor:
        data["sensors"] = [{"spec": s} for s in args.sensor]
    policy = data.get("policy", {})
    policy = {"name": policy} if isinstance(policy, str) else dict(policy)
    if args.policy and args.policy != policy.get("name", args.policy):
        policy = {}
    if args.policy:
        policy["name"] = args.policy
    if args.checkpoint:
        policy["checkpoint"] = args.checkpoint
    if args.vl_model:
        policy["vl_model"] = args.vl_model
    policy.update(dict(args.policy_option))
    if policy:
        data["policy"] = policy
    return data


def list_drivers() -> str:
    from drivers import registry
    from policies import base as policies

    lines = ["drivers (entry-point group controller.drivers):"]
    lines += [f"  {name:<16} {target}" for name, target in registry.available().items()]
    lines.append("policies (entry-point group controller.policies):")
    lines += [f"  {name:<16} {target}" for name, target in policies.available().items()]
    return "\n".join(lines)


def build(run: RunConfig) -> Controller:
    """Instantiate drivers and policy (no connection yet): config errors surface here."""
    from drivers import registry
    from policies import base as policies

    robot = registry.create("robot", run.robot.spec, run.robot.options)
    cameras = [registry.create("camera", c.spec, c.options) for c in run.cameras]
    sensors = [registry.create("sensor", s.spec, s.options) for s in run.sensors]
    policy = policies.create(run.policy, run.policy_options)
    return Controller(
        run.controller,
        robot=robot,
        cameras=cameras,
        sensors=sensors,
        policy=policy,
        executor=ComputeExecutor(run.device),
    )


async def _run(controller: Controller, duration: float | None) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    signals = 0

    def on_signal(name: str) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            controller.request_stop(name)
        else:
            log.warning("second %s: cancelling (the robot is still stopped)", name)
            main.cancel()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        return await controller.run(duration)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _loop_factory(no_uvloop: bool) -> Any:
    if no_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    prog = parser.prog
    if args.list_drivers:
        print(list_drivers())
        return EXIT_OK
    try:
        data = load_file(args.config) if args.config else {}
        run = from_mapping(_overlay(args, data), source=args.config or "flags")
        controller = build(run)
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    summary: dict[str, Any] | None = None
    code = EXIT_OK
    try:
        with asyncio.Runner(loop_factory=_loop_factory(args.no_uvloop)) as runner:
            summary = runner.run(_run(controller, run.duration))
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except (DriverError, PolicyError, WarmupError, ConfigError, OSError) as exc:
        print(f"{prog}: run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    if summary is None:
        summary = controller.telemetry.summary()
    summary = {
        **summary,
        "exit_code": code,
        "robot": run.robot.spec,
        "policy": run.policy,
        "cameras": [c.spec for c in run.cameras],
        "robot_stop_calls": controller.robot_stops,
    }
    print(format_summary(summary))
    if run.stats_json:
        try:
            Path(run.stats_json).write_text(json.dumps(summary, indent=2) + "\n")
        except OSError as exc:
            print(
                f"{prog}: cannot write stats to {run.stats_json!r}: {exc.strerror}", file=sys.stderr
            )
            return code or EXIT_FAILED
    return code
