"""What the three fault matrices share: a row's timeline, its table, its JSON, the CLI around them.

`controller.fault_matrix` (fakes, virtual time), `controller.fault_matrix_real`
(the UR5 driver against its simulator) and `controller.fault_matrix_webrtc`
(real WebRTC peers) break different things, but judge and report them the
same way: when the controller first held for the fault and when it acted
again, a markdown table with the invariants and a verdict per row, the rows
as JSON on request, and exit code 1 when a row broke its rule. Keeping that
in one place keeps the three tables and command lines alike, so
`docs/reliability.md` can put them side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# -------------------------------------------------------------- a row's timeline


@dataclass(frozen=True, slots=True)
class Timeline:
    """When a row's controller held for its fault and when it acted again (controller clock)."""

    #: (time, reason) of every hold from the onset on
    holds: list[tuple[float, str]]
    #: seconds from the onset to the first hold for one of the expected reasons
    detection: float | None
    #: time of the first hold after the onset, for any reason (-inf: none)
    first_hold: float
    #: the first command after the fault was cleared AND after the first hold (inf: none);
    #: a command already in flight at the onset is no recovery
    recovered_at: float
    #: seconds from the clearing of the fault to `recovered_at`
    recovery: float | None
    #: what the controller held for, from the onset until it acted again
    during: Counter[str]


def timeline(
    holds: Iterable[tuple[float, str]],
    expected: Iterable[str],
    commands: Iterable[float],
    onset: float,
    clear: float,
) -> Timeline:
    """Judge the holds and the command times of one row against its onset and its clearing."""
    wanted = set(expected)
    held = [(t, r) for t, r in holds if t >= onset]
    detection = next((t - onset for t, r in held if r in wanted), None)
    first_hold = held[0][0] if held else -math.inf
    after = [t for t in commands if t >= clear and t > first_hold]
    recovered_at = after[0] if after else math.inf
    return Timeline(
        holds=held,
        detection=detection,
        first_hold=first_hold,
        recovered_at=recovered_at,
        recovery=recovered_at - clear if after else None,
        during=Counter(r for t, r in held if t < recovered_at),
    )


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds to 0.1 ms, the unit of every figure in a row (None stays None)."""
    return None if seconds is None else round(seconds * 1e3, 1)


# -------------------------------------------------------------- the table


def cell_ms(v: float | None) -> str:
    """A figure in ms for the table: whole milliseconds, '-' for none."""
    return "-" if v is None else f"{v:.0f}"


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its header and how a row (as in the JSON) fills its cell."""

    header: str
    cell: Callable[[Mapping[str, Any]], str]


def table(columns: Sequence[Column], rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The lines of a markdown table of `rows`."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.cell(r) for c in columns) + " |" for r in rows]
    return lines


#: Columns the matrices' fault tables share (each adds its own between them).
FAULT = Column("fault", lambda r: f"{r['fault']}: {r['what']}")
HELD_AS = Column("held as", lambda r: ", ".join(r["detected_as"]) or "-")
DETECTION = Column("detection (ms)", lambda r: cell_ms(r["detection_ms"]))
RECOVERY = Column("recovery (ms)", lambda r: cell_ms(r["recovery_ms"]))
RECOVERY_NEEDS = Column("recovery needs", lambda r: r["recovery_needs"])
INVARIANTS = Column(
    "invariants", lambda r: "ok" if not r["violations"] else f"{len(r['violations'])} broken"
)
VERDICT = Column("verdict", lambda r: "ok" if r["ok"] else "BROKEN: " + "; ".join(r["broken"]))


@dataclass
class ExitRow:
    """How long a run took to end after a stop was asked, and how often it stopped the robot."""

    case: str
    ended_after_ms: float
    robot_stop_calls: int
    bound_ms: float


#: The first columns of an exit table (an `ExitRow`'s fields).
EXIT_COLUMNS = (
    Column("exit case", lambda e: e["case"]),
    Column("ended after (ms)", lambda e: f"{e['ended_after_ms']:.0f}"),
    Column("robot.stop() calls", lambda e: str(e["robot_stop_calls"])),
    Column("bound (ms)", lambda e: f"{e['bound_ms']:.0f}"),
)


# -------------------------------------------------------------- the command line


def tool_parser(
    prog: str, doc: str | None, *, what: str = "row", verbose: bool = False
) -> argparse.ArgumentParser:
    """The flags every matrix takes: `--{what} NAME` (repeatable) and `--json PATH`; the
    real-time ones also `-v` (their drivers' and peers' logs are quiet otherwise)."""
    p = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        f"--{what}", action="append", metavar="NAME", help=f"run only this {what} (repeatable)"
    )
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    if verbose:
        p.add_argument("-v", "--verbose", action="store_true", help="log the drivers' warnings")
    return p


def parse(
    p: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    known: Sequence[str],
    *,
    what: str = "row",
) -> argparse.Namespace:
    """Parse the flags; a name that is not a row is one line and exit 2, before anything runs."""
    args = p.parse_args(argv)
    unknown = sorted(set(getattr(args, what) or ()) - set(known))
    if unknown:
        p.exit(
            2,
            f"{p.prog}: error: unknown {what}(s) {', '.join(unknown)}"
            f" (known: {', '.join(known)})\n",
        )
    return args


def failures(result: Mapping[str, Any]) -> list[str]:
    """The rows that broke their rule: faults by name, then exit cases (an exit case without
    a verdict of its own, as in the virtual-time matrix, is a figure, not a rule)."""
    bad = [r["fault"] for r in result["faults"] if not r["ok"]]
    bad += [e["case"] for e in result.get("exits", ()) if e.get("ok") is False]
    return bad


def report(
    prog: str,
    result: Mapping[str, Any],
    markdown: str,
    json_path: str | None,
    *,
    why: str = "rules broken",
) -> int:
    """Print the table, write the JSON if asked; 1 (and the rows, on stderr) when a row broke."""
    print(markdown)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    bad = failures(result)
    if bad:
        print(f"{prog}: {why}: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def run_real_time(
    p: argparse.ArgumentParser,
    args: argparse.Namespace,
    matrix: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
    to_markdown: Callable[[Mapping[str, Any]], str],
    *,
    verbose_level: int,
) -> int:
    """The rest of a real-time matrix's `main`: quiet logs (`-v`: from `verbose_level`), the
    matrix on the standard loop, the report.

    The standard loop's `time()` is `time.monotonic()`: the clock of the peers in their
    own threads and processes too, so both sides' times compare.
    """
    logging.basicConfig(
        level=verbose_level if args.verbose else logging.CRITICAL, format=LOG_FORMAT
    )
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        result = runner.run(matrix())
    return report(p.prog, result, to_markdown(result), args.json)
