"""`python -m controller`: build drivers and policy from flags and TOML, run, report.

Exit codes:

* 0: a normal stop: the duration elapsed, or a first SIGINT / SIGTERM (an
  operator's stop) was honoured.
* 1: the run failed (any exception from the runtime, a driver or a policy,
  in any phase), reported as `run failed: TypeName: message`, after the robot
  was stopped.
* 2: bad flags, config or device, one line naming the value at fault; also a
  configuration that could not be turned into drivers and a policy.
* 129 (128 + SIGHUP): the terminal or SSH session went away; the run was
  stopped as for SIGTERM, but it did not end by anyone's choice, so a
  supervisor can tell it from an operator's stop.
* 128 + N: a second signal N had to cancel the run (the robot is still
  stopped, bounded, by the runtime's `finally`).

SIGINT, SIGTERM and SIGHUP are caught from the first line of `main` (and, under
`python -m controller`, before the CLI is even imported), in every phase:
before the run they only mean "do not connect"; during it the first one asks
the controller to stop, a second one cancels the run. Signals ignored when
the process started (`nohup`, a background job) stay ignored. In every case
the summary is printed and `--stats-json` written.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from controller.config import DEFAULT_POLICY, RunConfig, as_table, from_mapping, load_file
from controller.errors import USER_ERRORS, describe, one_line
from controller.executor import ComputeExecutor
from controller.runtime import Controller
from controller.settings import add_flags, apply_flags, describe_settings, key_value
from controller.telemetry import format_summary
from controller.vl_process import PolicySpec
from drivers.base import JudgesOutcome, ProposesInstruction
from policies.cli_args import OneLineArgumentParser

if TYPE_CHECKING:
    from controller.recording import Recorder

log = logging.getLogger("controller")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: What ends a run from outside: Ctrl-C, `kill`/systemd, a closed terminal.
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
#: A first SIGINT/SIGTERM is an operator's stop: a normal end, exit 0.
_OPERATOR_SIGNALS = frozenset(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name)
)
#: An operator's "resume" after a stop the robot did not cause (`kill -USR1 PID`).
RESUME_SIGNAL: signal.Signals | None = getattr(signal, "SIGUSR1", None)
#: Seconds the process may take to exit once the run is over, beyond the
#: controller's own bounded shutdown, before the exit watchdog forces it.
EXIT_GRACE_S = 5.0
#: Longest message printed: a repr of a huge array must not flood the terminal.
#: Seconds the recorder may take after the run to write its backlog and save the
#: episode (the arm is already stopped by then); the exit watchdog allows for it.
RECORD_CLOSE_S = 30.0


#: One-line flag errors, exit 2 (EXIT_USAGE): the parser every tool here shares.
_Parser = OneLineArgumentParser


#: Shorthands kept from before policies declared their own options: `--checkpoint DIR` is
#: `--policy-option checkpoint=DIR` (options of the qwen-vla policy; see --help-policy).
POLICY_OPTION_FLAGS = {"checkpoint": "DIR", "vl_model": "DIR_OR_ID"}


def build_parser() -> argparse.ArgumentParser:
    """The flags: plugin choices written here, settings generated from the config dataclasses."""
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
        type=key_value,
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
    p.add_argument("--policy", metavar="NAME", help=f"policy: {DEFAULT_POLICY} (default) or fake")
    p.add_argument(
        "--policy-option",
        metavar="KEY=VALUE",
        type=key_value,
        action="append",
        default=[],
        help="policy option (repeatable); --help-policy lists them",
    )
    for name, metavar in POLICY_OPTION_FLAGS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"policy_option:{name}",
            metavar=metavar,
            help=f"shorthand for --policy-option {name}={metavar}",
        )
    add_flags(
        p.add_argument_group(
            "settings", "each is also a config-file key; --help-config lists them all"
        )
    )
    p.add_argument(
        "--no-uvloop",
        action="store_true",
        help="use asyncio's own loop even if uvloop is installed",
    )
    p.add_argument(
        "--list-drivers", action="store_true", help="list installed drivers and policies, then exit"
    )
    p.add_argument(
        "--help-config",
        action="store_true",
        help="list every config-file setting with its unit, range and default, then exit",
    )
    p.add_argument(
        "--help-policy",
        action="store_true",
        help="list the options of the policy named by --policy (default qwen-vla), then exit",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def _overlay(args: argparse.Namespace, data: dict[str, Any], source: str) -> dict[str, Any]:
    """Apply the flags on top of the TOML document.

    Settings go where their schema says (`controller.settings.apply_flags`);
    plugin tables are type-checked before they are merged (`robot = 5` is
    named as such, not a TypeError), and a `[policy]` table without `name`
    means the default policy, so `--checkpoint` alone works as the README shows.
    """
    data = apply_flags(args, data, source)
    robot = as_table(f"{source}: robot", data.get("robot", {"driver": "fake"}), spec_key="driver")
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
    policy = as_table(f"{source}: policy", data.get("policy", {}), spec_key="name")
    if args.policy and args.policy != policy.get("name", DEFAULT_POLICY):
        policy = {}  # options of another policy do not carry over
    if args.policy:
        policy["name"] = args.policy
    for name in POLICY_OPTION_FLAGS:
        value = getattr(args, f"policy_option:{name}")
        if value:
            policy[name] = value
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
        policy_spec=PolicySpec(run.policy, run.policy_options),
    )


def propose_instruction(controller: Controller) -> str | None:
    """No instruction was given: take the one the robot proposes (a simulated world's task).

    Called before the run, when neither a flag nor the config file set
    `instruction`. A robot without the ability (`drivers.base.ProposesInstruction`)
    keeps the default. Returns the instruction adopted, or None.
    """
    robot = controller.robot
    if not isinstance(robot, ProposesInstruction):
        return None
    text = robot.proposed_instruction()
    if not text or not text.strip():
        return None
    # Read only by the VL task, once the run starts: replacing the settings now is safe.
    controller.config = dataclasses.replace(controller.config, instruction=text)
    log.info("instruction (proposed by robot %s): %r", robot.name, text)
    return text


def judged_outcome(controller: Controller) -> dict[str, Any] | None:
    """The robot's verdict on the run (a simulated world judges its episode), or None."""
    robot = controller.robot
    if not isinstance(robot, JudgesOutcome):
        return None
    try:
        judged = robot.judged_outcome()
    except Exception as exc:
        log.error("robot %s could not judge the run: %s", robot.name, describe(exc))
        return None
    return None if judged is None else dict(judged)


def _recorder(run: RunConfig, controller: Controller) -> Recorder | None:
    """`--record DIR`: the run is one episode of the dataset there, its task the instruction.

    Sensor readings are recorded as `observation.environment_state`; a robot
    that judges its run scores the episode (its success and world seed).
    """
    if run.record is None:
        return None
    # pyarrow and PyAV only when recording.
    from controller.recording import Recorder, attach, sensor_names

    recorder = Recorder(
        run.record,
        fps=run.controller.hz,
        cameras=[cam.name for cam in controller.cameras],
        sensors=sensor_names(controller.sensors),
    )
    outcome = None
    if isinstance(controller.robot, JudgesOutcome):
        outcome = controller.robot.judged_outcome
    attach(controller, recorder, controller.config.instruction, outcome=outcome)
    return recorder


class ExitWatchdog:
    """The last resort: end the process if shutting down takes far longer than it may.

    Every step of the controller's own shutdown is bounded, but a thread
    cannot be interrupted: a model job or a driver thread that never returns
    keeps the event loop's executor (and Python's exit, which joins worker
    threads) waiting forever. Once the run is over, or a stop was asked for,
    this daemon thread gives the process `grace` seconds to exit, then says
    so on stderr and ends it with `os._exit`. The arm was already stopped by
    then: `robot.stop()` runs first, bounded.
    """

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.code = EXIT_FAILED
        self._armed = threading.Event()
        self._disarmed = threading.Event()
        self._deadline = 0.0

    def disarm(self) -> None:
        """`main` ran in someone else's process (a test, an embedding app): never end it."""
        self._disarmed.set()

    def arm(self, grace: float) -> None:
        if self._armed.is_set() or self._disarmed.is_set():
            return
        self._deadline = time.monotonic() + grace
        self._armed.set()
        threading.Thread(target=self._watch, name="exit-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while (left := self._deadline - time.monotonic()) > 0:
            if self._disarmed.wait(min(left, 0.5)):
                return
        stuck = [t.name for t in threading.enumerate() if not t.daemon and t.is_alive()]
        sys.stderr.write(
            f"{self.prog}: the process did not exit in time after the run ended"
            f" (threads still running: {', '.join(stuck) or 'none'}); forcing the exit\n"
        )
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(self.code)


class SignalRouter:
    """SIGINT, SIGTERM and SIGHUP -> a controller stop, in every phase of the process.

    Outside the event loop (flag parsing, building the policy, printing the
    summary) a plain `signal.signal` handler only records the signal: Python's
    defaults would raise KeyboardInterrupt mid-import or, for SIGHUP, kill the
    process with no `robot.stop()`, no summary and no stats. While the loop
    runs, `loop.add_signal_handler` routes them to `_deliver`: the first asks
    the controller to stop (the runtime honours that in every phase), a
    second cancels the main task (the runtime's `finally` still stops the
    robot, bounded). Signals that were ignored at start are left ignored.
    """

    def __init__(self, early: Sequence[int] = ()) -> None:
        self.received: list[signal.Signals] = [signal.Signals(s) for s in early]
        self._previous: dict[signal.Signals, Any] = {}
        self._controller: Controller | None = None
        self._task: asyncio.Task[Any] | None = None
        #: Called on the first stop signal (the CLI arms its exit watchdog there).
        self.on_stop: Callable[[], None] | None = None

    @property
    def signals(self) -> tuple[signal.Signals, ...]:
        return tuple(self._previous)

    def install(self) -> None:
        """Catch the stop signals with recording handlers (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            current = signal.getsignal(sig)
            if current is signal.SIG_IGN:
                continue  # nohup / background job: the user asked for this
            self._previous.setdefault(sig, current)
            signal.signal(sig, self._record)
        if RESUME_SIGNAL is not None:
            # Its default action kills the process: outside a run it means nothing.
            self._previous.setdefault(RESUME_SIGNAL, signal.getsignal(RESUME_SIGNAL))
            signal.signal(RESUME_SIGNAL, self._resume_outside_a_run)

    def restore(self) -> None:
        """Put back the handlers found at `install` (matters when `main` runs in-process)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum))

    @staticmethod
    def _resume_outside_a_run(_signum: int, _frame: FrameType | None) -> None:
        log.warning("resume signal ignored: no run is in progress")

    def _resume(self) -> None:
        if self._controller is not None:
            self._controller.request_resume()

    def _deliver(self, sig: signal.Signals) -> None:
        self.received.append(sig)
        self._act(len(self.received) - 1)

    def _act(self, index: int) -> None:
        sig = self.received[index]
        if index == 0:
            if self.on_stop is not None:
                self.on_stop()
            if self._controller is not None:
                self._controller.request_stop(f"signal {sig.name}")
        elif self._task is not None and not self._task.done():
            log.warning(
                "second signal %s: cancelling the run (the robot is still stopped)", sig.name
            )
            self._task.cancel()

    def attach(self, controller: Controller) -> Callable[[], None]:
        """Route the signals to `controller` on the running loop; returns the detach function.

        Signals recorded before the loop took over are replayed, so one that
        landed between `asyncio.Runner` starting and this call is not lost.
        """
        loop = asyncio.get_running_loop()
        self._controller, self._task = controller, asyncio.current_task()
        installed: list[signal.Signals] = []
        for sig in self.signals:
            try:
                if sig == RESUME_SIGNAL:
                    loop.add_signal_handler(sig, self._resume)
                else:
                    loop.add_signal_handler(sig, self._deliver, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or no signals here: the plain handler stays
        for index in range(len(self.received)):
            self._act(index)

        def detach() -> None:
            for sig in installed:
                loop.remove_signal_handler(sig)  # resets to SIG_DFL: take it back
                if sig == RESUME_SIGNAL:
                    signal.signal(sig, self._resume_outside_a_run)
                else:
                    signal.signal(sig, self._record)
            self._controller = self._task = None

        return detach

    def exit_code(self, default: int) -> int:
        """The exit code of a run that ended without an error, given the signals seen."""
        if not self.received:
            return default
        if len(self.received) > 1:
            return 128 + int(self.received[1])
        first = self.received[0]
        return default if first in _OPERATOR_SIGNALS else 128 + int(first)


async def _run(
    controller: Controller,
    duration: float | None,
    router: SignalRouter,
    watchdog: ExitWatchdog,
    recorder: Recorder | None = None,
) -> dict[str, Any]:
    detach = router.attach(controller)
    loop = asyncio.get_running_loop()
    if recorder is not None:
        # From the writer thread: a recording that cannot be written ends the run.
        recorder.on_error = lambda _exc: loop.call_soon_threadsafe(
            controller.request_stop, "recording failed"
        )
    try:
        return await controller.run(duration)
    finally:
        detach()
        watchdog.arm(_exit_grace(controller, recorder))
        if recorder is not None:
            # The arm is stopped already; the episode is saved off the loop.
            await loop.run_in_executor(None, recorder.close, RECORD_CLOSE_S)


def _exit_grace(controller: Controller, recorder: Recorder | None = None) -> float:
    """How long the process may take to exit: the bounded shutdown steps, plus slack."""
    recording = RECORD_CLOSE_S if recorder is not None else 0.0
    return 4 * controller.config.stop_timeout + EXIT_GRACE_S + recording


def _loop_factory(no_uvloop: bool) -> Any:
    if no_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(
    argv: Sequence[str] | None = None,
    *,
    early_signals: Sequence[int] = (),
    owns_process: bool = False,
) -> int:
    """Run the controller from the command line; returns the exit code (see the module doc).

    `early_signals` are signals `controller.__main__` caught before this
    module was imported. With `owns_process` (`python -m controller`, the
    console script) the exit watchdog may end the process if it cannot exit
    after the run; called in-process, `main` never ends its host.
    """
    router = SignalRouter(early_signals)
    router.install()
    watchdog = ExitWatchdog(build_parser().prog)
    try:
        return _main(argv, router, watchdog)
    finally:
        router.restore()
        if not owns_process:
            watchdog.disarm()


def console_main() -> int:
    """The `vla-controller` console script: owns its process, like `python -m controller`."""
    return main(owns_process=True)


def _main(argv: Sequence[str] | None, router: SignalRouter, watchdog: ExitWatchdog) -> int:
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
    if args.help_config:
        print(describe_settings())
        return EXIT_OK
    if args.help_policy:
        from policies import base as policies

        try:
            print(policies.describe_options(args.policy or DEFAULT_POLICY))
        except USER_ERRORS as exc:
            print(f"{prog}: error: {one_line(str(exc))}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK
    try:
        data = load_file(args.config) if args.config else {}
        source = args.config or "flags"
        merged = _overlay(args, data, source)
        run = from_mapping(merged, source=source)
        controller = build(run)
        if "instruction" not in merged:
            propose_instruction(controller)
        recorder = _recorder(run, controller)
    except USER_ERRORS as exc:
        print(f"{prog}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        # A plugin's constructor may raise anything on options it dislikes;
        # nothing has connected yet, so this is still a configuration error.
        print(
            f"{prog}: error: cannot build the drivers and policy: {describe(exc)}", file=sys.stderr
        )
        return EXIT_USAGE
    summary: dict[str, Any] | None = None
    code = EXIT_OK
    runner: asyncio.Runner | None = None
    router.on_stop = lambda: watchdog.arm(
        _exit_grace(controller, recorder) + controller.config.stop_timeout
    )
    if router.received:
        names = ", ".join(s.name for s in router.received)
        print(f"{prog}: {names} before the run started: not connecting", file=sys.stderr)
        code = router.exit_code(EXIT_OK)
        if recorder is not None:
            recorder.close(RECORD_CLOSE_S)
    else:
        # Closed only after the summary and stats are out: closing waits for the
        # loop's executor threads, which a stuck model job can hold forever
        # (then the exit watchdog ends the process, with the report written).
        runner = asyncio.Runner(loop_factory=_loop_factory(args.no_uvloop))
        try:
            summary = runner.run(_run(controller, run.duration, router, watchdog, recorder))
            code = router.exit_code(EXIT_OK)
        except USER_ERRORS as exc:
            print(f"{prog}: error: {one_line(str(exc))}", file=sys.stderr)
            code = EXIT_USAGE
        except (KeyboardInterrupt, asyncio.CancelledError):
            print(f"{prog}: interrupted", file=sys.stderr)
            code = router.exit_code(130) if len(router.received) > 1 else 130
        except Exception as exc:
            # Whatever a driver, a policy or the runtime raised, in any phase:
            # one line, and the summary and stats below are still produced.
            print(f"{prog}: run failed: {describe(exc)}", file=sys.stderr)
            code = EXIT_FAILED
    if summary is None:
        summary = controller.telemetry.summary()
    summary = {
        **summary,
        "exit_code": code,
        "robot": run.robot.spec,
        "policy": run.policy,
        "cameras": [c.spec for c in run.cameras],
        "robot_stop_calls": controller.robot_stops,
        "signals": [s.name for s in router.received],
        "instruction": controller.config.instruction,
    }
    outcome = judged_outcome(controller)
    if outcome is not None:
        summary["outcome"] = outcome
    if recorder is not None:
        summary["recording"] = recorder.summary()
        if recorder.error is not None or recorder.busy:
            problem = recorder.error or (
                f"the recording to {str(recorder.root)!r} did not finish within"
                f" {RECORD_CLOSE_S:g} s; the episode may not be saved"
            )
            print(f"{prog}: {one_line(str(problem))}", file=sys.stderr)
            code = code or EXIT_FAILED
    watchdog.code = code
    print(format_summary(summary))
    if outcome is not None:
        verdict = "success" if outcome.get("success") else "failure"
        detail = outcome.get("detail")
        print(f"outcome             {verdict}{f': {detail}' if detail else ''}")
    if recorder is not None:
        rec = summary["recording"]
        print(
            f"recording           {rec['episodes_saved']} episode(s) saved to {rec['dir']}"
            f" ({rec['steps_recorded']} steps, {rec['steps_dropped']} dropped)"
        )
    if run.stats_json:
        try:
            Path(run.stats_json).write_text(json.dumps(summary, indent=2) + "\n")
        except OSError as exc:
            print(
                f"{prog}: cannot write stats to {run.stats_json!r}: {exc.strerror}", file=sys.stderr
            )
            code = code or EXIT_FAILED
    if runner is not None:
        sys.stdout.flush()
        runner.close()
    return code
