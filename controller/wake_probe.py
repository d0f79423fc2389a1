"""Measure the precise wake: how late the loop's timer fires, what a spin buys, and what it costs.

The default spin (`controller.runtime.DEFAULT_SPIN`) must be chosen from
these figures, measured in a quiet window on the target machine. For each
loop (uvloop, asyncio), load, rate and spin, a `PeriodicScheduler` ticks on
its own for `--seconds` and one row reports:

* tick lateness p50 / p99 / max (us) on the controller clock, and the ticks
  started within 10 % of the period;
* the timer's lateness p99 / p99.9 / max (ms): how long after `deadline -
  spin` the loop's sleep returned (negative: early, as uvloop's can be). The
  spin has to cover its p99.9, or the tick is as late as the timer;
* the spin per tick (ms) and the loop thread's CPU share (its CPU time over
  the wall time): the spin's price, to compare with the spin-0 row.

Loads: `none`; `thread`, a Python thread holding the GIL as a thread VL
lane's preprocessing does; `process`, a subprocess burning one core, as the
process VL lane's encoder does (CPU contention without the GIL).

    python -m controller.wake_probe --hz 10 100 --spin-ms 0 0.5 1 2 3 --json wake.json

`suggest()` picks, per loop, load and rate, the smallest spin whose tick
lateness p99 stays under the issue's goal (0.1 ms). `measure()` and
`table()` are for the benchmark suite to call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from controller.scheduler import PeriodicScheduler

LOOPS = ("uvloop", "asyncio")
LOADS = ("none", "thread", "process")
#: The issue's goal for tick lateness p99 (s).
GOAL_P99 = 1e-4


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


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if name == "asyncio":
        return asyncio.new_event_loop
    raise ValueError(f"unknown loop {name!r} (accepted: {', '.join(LOOPS)})")


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

        worker = threading.Thread(target=hold_the_gil, name="probe-gil-load", daemon=True)
        worker.start()
        try:
            yield
        finally:
            stop.set()
            worker.join(5)
    elif name == "process":
        child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            yield
        finally:
            child.kill()
            child.wait(5)
    else:
        raise ValueError(f"unknown load {name!r} (accepted: {', '.join(LOADS)})")


async def _ticks(hz: float, spin: float, seconds: float) -> tuple[list[Any], float, float, int]:
    sched = PeriodicScheduler(1.0 / hz, spin=spin)
    loop = asyncio.get_running_loop()
    ticks = []
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    async for tick in sched.ticks(until=loop.time() + seconds):
        ticks.append(tick)
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    return ticks, cpu, wall, sched.stats.missed


def measure(*, hz: float, spin: float, seconds: float, loop: str, load_name: str) -> WakeRow:
    """One row: the scheduler alone at `hz` with `spin` (s) for `seconds` under `load_name`."""
    with load(load_name), asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        ticks, cpu, wall, missed = runner.run(_ticks(hz, spin, seconds))
    ticks = ticks[1:]  # the first tick starts at t0 itself: no wake-up to measure
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
        on_time_fraction=round(float(np.mean(late <= 0.1 * period)), 4) if late.size else 0.0,
        late_p50_us=q(late, 50, 1e6),
        late_p99_us=q(late, 99, 1e6),
        late_max_us=q(late, 100, 1e6),
        timer_p99_ms=q(timer, 99, 1e3),
        timer_p999_ms=q(timer, 99.9, 1e3),
        timer_max_ms=q(timer, 100, 1e3),
        spin_per_tick_ms=round(float(np.mean(spun)) * 1e3, 3) if spun.size else math.nan,
        loop_cpu_fraction=round(cpu / wall, 4) if wall > 0 else math.nan,
    )


def suggest(rows: Sequence[WakeRow], goal: float = GOAL_P99) -> dict[str, float | None]:
    """Per loop/load/rate: the smallest spin (ms) whose lateness p99 meets `goal`, or None."""
    out: dict[str, float | None] = {}
    for row in sorted(rows, key=lambda r: r.spin_ms):
        key = f"{row.loop}/{row.load}/{row.hz:g}Hz"
        if key not in out or out[key] is None:
            out[key] = row.spin_ms if row.late_p99_us <= goal * 1e6 else None
    return out


COLUMNS = (
    ("loop", "loop"),
    ("load", "load"),
    ("hz", "Hz"),
    ("spin_ms", "spin ms"),
    ("on_time_fraction", "on time"),
    ("late_p50_us", "late p50 us"),
    ("late_p99_us", "p99 us"),
    ("late_max_us", "max us"),
    ("timer_p999_ms", "timer p99.9 ms"),
    ("timer_max_ms", "max ms"),
    ("spin_per_tick_ms", "spin/tick ms"),
    ("loop_cpu_fraction", "loop CPU"),
)


def table(rows: Sequence[WakeRow]) -> str:
    cells = [[title for _, title in COLUMNS]]
    cells += [[f"{getattr(r, name):g}" if not isinstance(getattr(r, name), str) else getattr(r, name) for name, _ in COLUMNS] for r in rows]  # fmt: skip
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    )


def machine() -> dict[str, Any]:
    """What the figures were measured on (they mean nothing without it)."""
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "uvloop": uv,
        "switch_interval_s": sys.getswitchinterval(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.wake_probe", description=__doc__)
    parser.add_argument("--hz", type=float, nargs="+", default=[10.0, 100.0])
    parser.add_argument("--spin-ms", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 3.0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per row")
    parser.add_argument("--loop", nargs="+", choices=LOOPS, default=list(LOOPS))
    parser.add_argument("--load", nargs="+", choices=LOADS, default=list(LOADS))
    parser.add_argument("--json", metavar="PATH", help="write the rows and the machine here")
    args = parser.parse_args(argv)
    for hz in args.hz:
        for spin_ms in args.spin_ms:
            if not (hz > 0 and 0 <= spin_ms / 1e3 < 1.0 / hz):
                parser.error(f"--spin-ms {spin_ms:g} must be less than one period at {hz:g} Hz")
    rows = []
    combos = [
        (lp, ld, hz, s)
        for lp in args.loop
        for ld in args.load
        for hz in args.hz
        for s in args.spin_ms
    ]
    for n, (lp, ld, hz, spin_ms) in enumerate(combos, 1):
        print(
            f"[{n}/{len(combos)}] {lp}, load {ld}, {hz:g} Hz, spin {spin_ms:g} ms",
            file=sys.stderr,
            flush=True,
        )
        rows.append(measure(hz=hz, spin=spin_ms / 1e3, seconds=args.seconds, loop=lp, load_name=ld))
    print(table(rows))
    advice = suggest(rows)
    print("\nsmallest spin (ms) with lateness p99 <= 0.1 ms:")
    for key, spin in advice.items():
        print(f"  {key}: {'none of those tried' if spin is None else spin}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine(),
                    "seconds_per_row": args.seconds,
                    "rows": [dataclasses.asdict(r) for r in rows],
                    "suggested_spin_ms": advice,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
