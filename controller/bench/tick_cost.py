"""`python -m controller.bench tick-cost`: what the pieces of a tick cost, warm and cold.

    python -m controller.bench tick-cost [--calls 300] [--gap-ms 10]

A control tick runs once per period and sleeps in between; on a shared
machine the caches have gone cold by the time it wakes, and the same Python
then costs several times what a tight loop says (`loop` measures a whole
tick; this says why its overhead is what it is). Each piece is called
`--calls` times back to back, then each time after sleeping `--gap-ms` (a
10 Hz..100 Hz tick's wait), and timed with `time.perf_counter()`:

* `empty call`: a function that does nothing, the floor of any piece;
* `numpy call`: one small-array numpy call (`np.isfinite` on 6 joints);
* `input checks`: `SafetyFilter.check_inputs` on a fresh, plausible state
  and features, as every tick asks it;
* `action filter`: `SafetyFilter.filter_action` on a sendable chunk;
* `both, in a tick's order`: the two, one after the other, as a tick runs
  them (only the first of them pays the wake-up after the sleep).

The two safety pieces run through the controller's own `SafetyFilter` with
the UR5's limits and default settings.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from controller.bench.common import Column, Progress, Report, fmt, fmt_spread, number_in, spread

NAME = "tick-cost"
HELP = "what each piece of a control tick costs, back to back and after a sleep (cold cache)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--calls",
        type=number_in(10, 100_000, integer=True),
        default=300,
        help="timed calls per piece and gap (default 300)",
    )
    p.add_argument(
        "--gap-ms",
        type=number_in(0.0, 1000.0, low_open=True),
        default=10.0,
        help="the sleep before each cold call (default 10 ms: a 100 Hz tick's wait)",
    )


def pieces() -> dict[str, Callable[[], Any]]:
    """The pieces, each a no-argument call with its inputs built once, outside the timing."""
    from controller.safety import SafetyConfig, SafetyFilter
    from controller.slot import Stamped
    from drivers.arms import UR5_HOME, UR5_LIMITS
    from drivers.base import RobotState

    safety = SafetyFilter(SafetyConfig(), UR5_LIMITS, 0.01)
    q = np.array(UR5_HOME, dtype=np.float64)
    state = RobotState(q.copy(), np.zeros(6), 1.0)
    stamped_state = Stamped(state, 1, 1.0, 1.0)
    features = Stamped(np.zeros(16, dtype=np.float32), 1, 0.95, 1.0)
    chunk = np.tile(q + 0.001, (8, 1))

    def empty() -> None:
        return None

    def check() -> Any:
        reason = safety.check_inputs(1.01, features, stamped_state, {})
        assert reason is None, reason
        return reason

    def filt() -> Any:
        # As a tick does: the positions copied before act, then the filter judged from them.
        verdict = safety.filter_action(chunk, state, safety.measured(state))
        assert verdict.send, verdict.reason
        return verdict

    return {
        "empty call": empty,
        "numpy call": lambda: np.isfinite(q),
        "input checks": check,
        "action filter": filt,
        "both, in a tick's order": lambda: (check(), filt()),
    }


def measure(fn: Callable[[], Any], calls: int, gap: float) -> list[float]:
    """Seconds per call: back to back when `gap` is 0, else each after sleeping `gap`."""
    for _ in range(10):  # first-call costs (imports, lazy allocations) are not the subject
        fn()
    times = []
    for _ in range(calls):
        if gap:
            time.sleep(gap)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


COLUMNS = (
    Column("piece", lambda r: r["piece"]),
    Column("before each call", lambda r: r["before"]),
    Column("calls", lambda r: fmt(r["cost_us"]["n"])),
    Column("cost p50 / p99 / max us", lambda r: fmt_spread(r["cost_us"])),
    Column("cold / warm p50", lambda r: fmt(r.get("cold_over_warm"))),
)


def run(args: argparse.Namespace) -> Report:
    gap = args.gap_ms / 1e3
    todo = pieces()
    progress = Progress(2 * len(todo), "tick-cost")
    rows: list[dict[str, Any]] = []
    for name, fn in todo.items():
        warm = cold = None
        for label, wait in (("nothing (back to back)", 0.0), (f"a {args.gap_ms:g} ms sleep", gap)):
            progress.step(f"{name}: {label}")
            row = {"piece": name, "before": label, "gap_s": wait}
            row["cost_us"] = spread(measure(fn, args.calls, wait), 1e6)
            rows.append(row)
            if wait:
                cold = row
            else:
                warm = row
        if warm and cold and warm["cost_us"]["p50"]:
            cold["cold_over_warm"] = cold["cost_us"]["p50"] / warm["cost_us"]["p50"]
    progress.close(f"{len(rows)} rows")
    report = Report(bench=NAME, title="What the pieces of a tick cost", columns=COLUMNS, rows=rows)
    report.notes.append(
        f"{args.calls} timed calls per row after 10 untimed ones; time.perf_counter() around each"
        " call. The safety pieces are the controller's SafetyFilter (UR5 limits, defaults) on a"
        " plausible state and a sendable action."
    )
    report.notes.append(
        "A tick wakes after a sleep: its pieces cost what the cold rows say, not the warm ones."
    )
    return report
