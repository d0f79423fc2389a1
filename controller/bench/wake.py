"""`python -m controller.bench wake`: how late the loop's timer fires, what a spin buys, its CPU.

The default spin (`controller.runtime.DEFAULT_SPIN`) must be chosen from
these figures, measured in a quiet window on the target machine. For each
event loop (uvloop, asyncio), load, rate and spin, a `PeriodicScheduler`
ticks on its own (no controller, no policy) for `--seconds` and one row
reports:

* tick lateness p50 / p99 / max (us) on the controller clock, and the share
  of ticks started within 10 % of the period;
* the timer's lateness p99 / p99.9 / max (ms): how long after `deadline -
  spin` the loop's sleep returned (negative: early, as uvloop's can be). The
  spin has to cover its p99.9, or the tick is as late as the timer;
* the spin per tick (ms) and the loop thread's CPU share (its CPU time over
  the wall time): the spin's price, to compare with the spin-0 row.

Loads: `none`; `thread`, a Python thread holding the GIL as a thread VL
lane's preprocessing does; `process`, a subprocess burning one core, as the
process VL lane's encoder does (CPU contention without the GIL).

    python -m controller.bench wake --hz 10 100 --spin-ms 0 0.5 1 2 3 --json wake.json

`suggest()` picks, per loop, load and rate, the smallest spin whose tick
lateness p99 stays under the issue's goal (0.1 ms). `measure()` is one row;
`table()` and `suggest()` read rows however they were measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from controller.bench.common import Column, Progress, Report, event_loops, fmt, number_in
from controller.bench.runs import run_on
from controller.clock import controller_clock
from controller.errors import ConfigError, describe
from controller.scheduler import PeriodicScheduler, Tick

NAME = "wake"
HELP = "timer lateness, what each spin buys and its CPU, per event loop, load and rate"

LOOPS = ("uvloop", "asyncio")
LOADS = ("none", "thread", "process")
#: The issue's goal for tick lateness p99 (s).
GOAL_P99 = 1e-4
#: Seconds for the `process` load's interpreter to start burning before the row's first tick.
PROCESS_SETTLE = 0.2

LOAD_WHAT = {
    "none": "nothing else running",
    "thread": "a Python thread holding the GIL (a thread VL lane's preprocessing)",
    "process": "a subprocess burning one core (a process VL lane's encoder)",
}


@dataclass(frozen=True, slots=True)
class WakeRow:
    loop: str
    load: str
    hz: float
    spin_ms: float
    ticks: int
    missed: int
    on_time_fraction: float
    late_p50_us: float
    late_p99_us: float
    late_max_us: float
    timer_p99_ms: float
    timer_p999_ms: float
    timer_max_ms: float
    spin_per_tick_ms: float
    loop_cpu_fraction: float


@contextlib.contextmanager
def load(name: str) -> Iterator[None]:
    """Run a background load for the duration of the block."""
    if name == "none":
        yield
    elif name == "thread":
        stop = threading.Event()

        def hold_the_gil() -> None:
            while not stop.is_set():
                sum(i * i for i in range(2000))  # pure Python: holds the GIL

        worker = threading.Thread(target=hold_the_gil, name="wake-gil-load", daemon=True)
        worker.start()
        try:
            yield
        finally:
            stop.set()
            worker.join(5)
    elif name == "process":
        child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(PROCESS_SETTLE)  # the interpreter's start-up: the load is on from tick 1
            yield
        finally:
            child.kill()
            child.wait(5)
    else:
        raise ValueError(f"unknown load {name!r} (accepted: {', '.join(LOADS)})")


async def _ticks(hz: float, spin: float, seconds: float) -> tuple[list[Tick], float, float, int]:
    sched = PeriodicScheduler(1.0 / hz, spin=spin)
    # The run's end on the scheduler's own clock (uvloop's loop.time() is whole milliseconds).
    start = controller_clock()()
    ticks = []
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    async for tick in sched.ticks(start=start, until=start + seconds):
        ticks.append(tick)
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    return ticks, cpu, wall, sched.stats.missed


def measure(*, hz: float, spin: float, seconds: float, loop: str, load_name: str) -> WakeRow:
    """One row: the scheduler alone at `hz` with `spin` (s) for `seconds` under `load_name`."""
    if loop not in LOOPS:
        raise ValueError(f"unknown loop {loop!r} (accepted: {', '.join(LOOPS)})")
    with load(load_name):
        ticks, cpu, wall, missed = run_on(loop, _ticks(hz, spin, seconds))
    return figures(
        ticks[1:],  # the first tick starts at t0 itself: no wake-up to measure
        hz=hz,
        spin=spin,
        missed=missed,
        cpu_fraction=cpu / wall if wall > 0 else math.nan,
        loop=loop,
        load_name=load_name,
    )


def figures(
    ticks: Sequence[Tick],
    *,
    hz: float,
    spin: float,
    missed: int,
    cpu_fraction: float,
    loop: str,
    load_name: str,
) -> WakeRow:
    """A row's figures from the scheduler's ticks (each with its lateness and the time it spun)."""
    late = np.array([t.lateness for t in ticks])
    spun = np.array([t.spin for t in ticks])
    # The timer returned at `start - spin_duration`; it was asked for `deadline - spin`.
    timer = late - spun + spin
    period = 1.0 / hz

    def q(values: np.ndarray, p: float, scale: float) -> float:
        return round(float(np.percentile(values, p)) * scale, 3) if values.size else math.nan

    return WakeRow(
        loop=loop,
        load=load_name,
        hz=hz,
        spin_ms=round(spin * 1e3, 3),
        ticks=len(ticks),
        missed=missed,
        on_time_fraction=round(float(np.mean(late <= 0.1 * period)), 4) if late.size else math.nan,
        late_p50_us=q(late, 50, 1e6),
        late_p99_us=q(late, 99, 1e6),
        late_max_us=q(late, 100, 1e6),
        timer_p99_ms=q(timer, 99, 1e3),
        timer_p999_ms=q(timer, 99.9, 1e3),
        timer_max_ms=q(timer, 100, 1e3),
        spin_per_tick_ms=round(float(np.mean(spun)) * 1e3, 3) if spun.size else math.nan,
        loop_cpu_fraction=round(cpu_fraction, 4),
    )


def _key(row: WakeRow | dict[str, Any]) -> str:
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    return f"{get('loop')}/{get('load')}/{get('hz'):g}Hz"


def suggest(rows: Sequence[WakeRow], goal: float = GOAL_P99) -> dict[str, float | None]:
    """Per loop/load/rate: the smallest spin (ms) whose lateness p99 meets `goal`, or None."""
    out: dict[str, float | None] = {}
    for row in sorted(rows, key=lambda r: r.spin_ms):
        key = _key(row)
        if key not in out or out[key] is None:
            out[key] = row.spin_ms if row.late_p99_us <= goal * 1e6 else None
    return out


def _figure(value: Any) -> str:
    """`-` for a figure not measured (a failed row, or a row too short to have a wake-up)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt(value)


def _cell(name: str) -> Any:
    return lambda r: _figure(r.get(name))


def _percent(value: Any) -> str:
    return "-" if _figure(value) == "-" else f"{100 * value:.2f} %"


COLUMNS = (
    Column("loop", lambda r: r["loop"]),
    Column("load", lambda r: r["load"]),
    Column("Hz", lambda r: fmt(r["hz"])),
    Column("spin ms", lambda r: fmt(r["spin_ms"])),
    Column("ticks", lambda r: "failed" if "error" in r else fmt(r["ticks"])),
    Column("missed", _cell("missed")),
    Column("on time", lambda r: _percent(r.get("on_time_fraction"))),
    Column(
        "late p50 / p99 / max us", lambda r: _three(r, "late_p50_us", "late_p99_us", "late_max_us")
    ),
    Column(
        "timer p99 / p99.9 / max ms",
        lambda r: _three(r, "timer_p99_ms", "timer_p999_ms", "timer_max_ms"),
    ),
    Column("spin/tick ms", _cell("spin_per_tick_ms")),
    Column("loop CPU", _cell("loop_cpu_fraction")),
)


def _three(r: dict[str, Any], *names: str) -> str:
    cells = [_figure(r.get(n)) for n in names]
    return "-" if "-" in cells else " / ".join(cells)


def table(rows: Sequence[WakeRow]) -> str:
    """The rows as the suite's Markdown table (header, rule, one line per row)."""
    return Report(NAME, "", COLUMNS, [dataclasses.asdict(r) for r in rows]).table()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seconds",
        type=number_in(0.0, 3600.0, low_open=True),
        default=10.0,
        help="ticking time per row (default 10; p99.9 wants >= 1000 ticks: 10 s at 100 Hz)",
    )
    p.add_argument(
        "--hz",
        type=number_in(1.0, 1000.0),
        nargs="+",
        default=[10.0, 100.0],
        help="tick rates (default 10 100)",
    )
    p.add_argument(
        "--spin-ms",
        type=number_in(0.0, 1000.0),
        nargs="+",
        default=[0.0, 0.5, 1.0, 2.0, 3.0],
        help="spins to try, each less than one period (default 0 0.5 1 2 3)",
    )
    p.add_argument(
        "--event-loop",
        choices=LOOPS,
        nargs="+",
        default=None,
        help="event loops (default both, asyncio alone if uvloop is not installed)",
    )
    p.add_argument(
        "--load",
        choices=LOADS,
        nargs="+",
        default=list(LOADS),
        help="background loads (default: all)",
    )


def plan(args: argparse.Namespace) -> list[tuple[str, str, float, float]]:
    """Every row (loop, load, Hz, spin ms), checked before anything runs."""
    args.event_loop = event_loops(args.event_loop, default=LOOPS)
    for hz in args.hz:
        for spin_ms in args.spin_ms:
            if spin_ms / 1e3 >= 1.0 / hz:
                raise ConfigError(
                    f"--spin-ms {spin_ms:g} must be less than one period at {hz:g} Hz"
                    f" ({1e3 / hz:g} ms)"
                )
    return [
        (lp, ld, hz, s)
        for lp in args.event_loop
        for ld in args.load
        for hz in args.hz
        for s in args.spin_ms
    ]


def run(args: argparse.Namespace) -> Report:
    combos = plan(args)
    progress = Progress(len(combos), "wake")
    measured: list[WakeRow] = []
    rows: list[dict[str, Any]] = []
    for lp, ld, hz, spin_ms in combos:
        progress.step(f"{lp}, load {ld}, {hz:g} Hz, spin {spin_ms:g} ms")
        try:
            row = measure(hz=hz, spin=spin_ms / 1e3, seconds=args.seconds, loop=lp, load_name=ld)
        except Exception as exc:
            rows.append(
                {"loop": lp, "load": ld, "hz": hz, "spin_ms": spin_ms, "error": describe(exc)}
            )
            continue
        measured.append(row)
        rows.append(dataclasses.asdict(row))
    progress.finish(rows)
    advice = suggest(measured)
    report = Report(
        bench=NAME,
        title="Precise wake: timer lateness, what each spin buys and its CPU",
        columns=COLUMNS,
        rows=rows,
        clock="real",
        extra={
            "seconds_per_row": args.seconds,
            "goal_p99_us": GOAL_P99 * 1e6,
            "suggested_spin_ms": advice,
            # The GIL's switch interval sets how long the thread load can keep the loop waiting.
            "switch_interval_s": sys.getswitchinterval(),
        },
    )
    report.notes += [
        f"{args.seconds:g} s of ticking per row: a PeriodicScheduler alone on a fresh event loop,"
        " the first tick (at t0 itself) not counted. Loads: "
        + "; ".join(f"{name}: {LOAD_WHAT[name]}" for name in args.load)
        + ".",
        "Late: tick start minus its deadline on the controller clock; on time: within 10 % of"
        " a period. Timer: how long after `deadline - spin` the loop's sleep returned (negative:"
        " early); the spin must cover its p99.9. Spin/tick: mean seconds spun per tick; loop"
        " CPU: the loop thread's CPU time over the wall time.",
        f"Smallest spin (ms) with lateness p99 <= {GOAL_P99 * 1e6:g} us: "
        + (
            "; ".join(
                f"{key}: {'none of those tried' if spin is None else f'{spin:g}'}"
                for key, spin in advice.items()
            )
            or "no row measured"
        )
        + ".",
    ]
    report.note_failures(lambda r: f"{_key(r)} spin {r['spin_ms']:g} ms")
    return report
