"""`python -m controller.fault_matrix`: every fault alone, with detection and recovery measured.

Each row runs the controller on fakes in virtual time (so the figures are
exact and the same on every machine): 3 s of normal control, the fault for
5 s, then 5 s after it ends. It reports how long after the fault the first
tick held for a reason that names it, when the last command went out after
the fault began, and how long after the fault ended the first command went
out again. Every run is held to the invariants of `controller.invariants`;
a row that broke one says so.

Two exit rows follow: a stop requested while connecting, and a `robot.stop()`
that never returns, each with the time the run took to end.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from controller.clock import run_virtual
from controller.fault_report import (
    DETECTION,
    EXIT_COLUMNS,
    FAULT,
    HELD_AS,
    INVARIANTS,
    RECOVERY_NEEDS,
    Column,
    ExitRow,
    cell_ms,
    ms,
    parse,
    report,
    table,
    tool_parser,
)
from controller.faults import FAULTS, Fault, make_rig
from controller.harness import ControllerHarness
from drivers.fake import FakeRobot
from drivers.fake.config import FakeRobotConfig

WARM_S = 3.0
FAULT_S = 5.0
AFTER_S = 5.0


@dataclass
class Row:
    fault: str
    what: str
    expected: list[str]
    detected_as: list[str]
    detection_ms: float | None
    last_command_ms: float | None
    recovery_ms: float | None
    recovery_needs: str
    commands_during_fault: int
    violations: list[str]

    @property
    def ok(self) -> bool:
        return self.detection_ms is not None and not self.violations


async def measure(fault: Fault, *, seed: int = 0) -> Row:
    """Run one fault alone; measure detection, last command and recovery (virtual time)."""
    rig = make_rig(seed=seed)
    holds: list[tuple[float, str]] = []

    def on_event(event: str, time: float, detail: Any) -> None:
        if event == "hold":
            holds.append((time, str(detail)))

    rig.harness.controller.observers.append(on_event)
    loop = asyncio.get_running_loop()
    task = rig.harness.start(WARM_S + FAULT_S + AFTER_S)
    await rig.harness.until_active()
    await asyncio.sleep(WARM_S)
    t_on = loop.time()
    fault.inject(rig)
    await asyncio.sleep(FAULT_S)
    t_off = loop.time()
    fault.clear(rig)
    violations: list[str] = []
    try:
        await task
    except AssertionError:
        assert rig.harness.checker is not None
        violations = list(rig.harness.checker.violations)
    expected = {r.value for r in fault.detected_by}
    during = Counter(reason for t, reason in holds if t_on <= t < t_off)
    detection = next((t - t_on for t, r in holds if t >= t_on and r in expected), None)
    sent = [t for t, _ in rig.robot.commands]
    during_fault = [t for t in sent if t_on <= t < t_off]
    after = [t for t in sent if t >= t_off]
    return Row(
        fault=fault.name,
        what=fault.what,
        expected=sorted(expected),
        detected_as=[reason for reason, _ in during.most_common()],
        detection_ms=ms(detection),
        last_command_ms=ms(max(during_fault) - t_on) if during_fault else None,
        recovery_ms=ms(after[0] - t_off) if after else None,
        recovery_needs=fault.recovery,
        commands_during_fault=len(during_fault),
        violations=violations,
    )


async def exit_rows() -> list[ExitRow]:
    loop = asyncio.get_running_loop()
    rows = []
    # A stop requested 1 s into a 30 s connect.
    robot = FakeRobot(FakeRobotConfig(connect_delay=30))
    h = ControllerHarness(robot=robot, stop_timeout=0.5)
    task = h.start(10)
    await asyncio.sleep(1.0)
    t0 = loop.time()
    h.controller.request_stop("signal SIGTERM")
    await task
    rows.append(
        ExitRow(
            "stop requested while connecting (30 s connect)",
            (loop.time() - t0) * 1e3,
            robot.stops,
            500.0,
        )
    )
    # robot.stop() never returns; the run ends at its duration.
    robot = FakeRobot(FakeRobotConfig(stop_hangs=True))
    h = ControllerHarness(robot=robot, stop_timeout=0.5)
    await h.run(3)
    assert h.telemetry.ended is not None
    rows.append(
        ExitRow(
            "robot.stop() never returns (stop_timeout 0.5 s)",
            (loop.time() - h.telemetry.ended) * 1e3,
            robot.stops,
            2 * 500.0,
        )
    )
    return rows


async def run_matrix(names: Sequence[str] | None = None, seed: int = 0) -> dict[str, Any]:
    faults = [f for f in FAULTS if not names or f.name in names]
    rows = [await measure(f, seed=seed) for f in faults]
    return {
        "faults": [asdict(r) | {"ok": r.ok} for r in rows],
        "exits": [asdict(r) for r in await exit_rows()],
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = table(
        [
            FAULT,
            HELD_AS,
            DETECTION,
            Column("last command after onset (ms)", lambda r: cell_ms(r["last_command_ms"])),
            Column("first command after it ends (ms)", lambda r: cell_ms(r["recovery_ms"])),
            RECOVERY_NEEDS,
            INVARIANTS,
        ],
        result["faults"],
    )
    return "\n".join([*lines, "", *table(EXIT_COLUMNS, result["exits"])])


def main(argv: Sequence[str] | None = None) -> int:
    p = tool_parser("python -m controller.fault_matrix", __doc__, what="fault")
    p.add_argument("--seed", type=int, default=0)
    args = parse(p, argv, sorted(f.name for f in FAULTS), what="fault")
    logging.basicConfig(level=logging.ERROR)  # the holds are the table, not log lines
    result = run_virtual(lambda: run_matrix(args.fault, args.seed))
    return report(
        p.prog, result, to_markdown(result), args.json, why="not detected or invariants broken"
    )


if __name__ == "__main__":
    sys.exit(main())
