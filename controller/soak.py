"""`python -m controller.soak`: a long run with random faults, invariants checked throughout.

Faults from the catalogue (`controller.faults`) are drawn on a seeded
schedule: exponential gaps, durations from 50 ms to 5 s, at most one fault
per part (robot, camera, sensor, policy) at a time, so several parts can be
broken at once. Every command the arm accepts is judged by the invariant
checker against the fakes' ground truth. At the end: faults injected by
kind, commands sent and age-checked, invariants broken (the goal is 0),
holds by reason, and the process's memory sampled along the run.

Two clocks:
- virtual (default): `--minutes 60` of control in a few tens of seconds,
  deterministic for a given `--seed`;
- `--real-time`: the real loop (uvloop when installed) and the real two-lane
  executor with worker threads, the fake policy sleeping for its latency;
  `--minutes 10` takes ten minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import resource
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.clock import run_virtual
from controller.executor import ComputeExecutor
from controller.faults import FAULTS, Fault, make_rig


def rss_mib() -> float:
    """Resident memory now (Linux /proc), falling back to the peak from getrusage."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def soak(
    minutes: float,
    *,
    seed: int = 0,
    mean_gap_s: float = 4.0,
    sample_every_s: float = 10.0,
    real_time: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    rng = random.Random(seed)
    config: dict[str, Any] = {}
    if real_time:
        config["executor"] = ComputeExecutor("cpu")
    rig = make_rig(seed=seed, **config)
    # The fake arm's own command log is a test aid: keep it short so the memory
    # figure is the controller's, not the fixture's.
    rig.robot.commands = deque(maxlen=1000)
    if real_time:
        rig.policy.burn = time.sleep  # real latency on the real worker threads
    loop = asyncio.get_running_loop()
    duration = minutes * 60.0
    task = rig.harness.start(duration)
    async with asyncio.timeout(120):
        await rig.harness.until_active()
    t_start = loop.time()
    active: dict[str, tuple[Fault, float]] = {}  # target -> (fault, ends at)
    injected: Counter[str] = Counter()
    memory: list[tuple[float, float]] = [(0.0, rss_mib())]
    next_fault = t_start + rng.expovariate(1.0 / mean_gap_s)
    next_sample = t_start + sample_every_s
    step = 0.05
    while not task.done():
        now = loop.time()
        for target, (fault, ends) in list(active.items()):
            if now >= ends:
                fault.clear(rig)
                del active[target]
        if now >= next_fault and now < t_start + duration - 6.0:
            free = [f for f in FAULTS if f.target not in active]
            if free:
                fault = rng.choice(free)
                fault.inject(rig)
                active[fault.target] = (fault, now + rng.uniform(0.05, 5.0))
                injected[fault.name] += 1
            next_fault = now + rng.expovariate(1.0 / mean_gap_s)
        if now >= next_sample:
            memory.append((round(now - t_start, 1), round(rss_mib(), 1)))
            next_sample += sample_every_s
            if progress:
                done = (now - t_start) / duration
                print(
                    f"\rsoak {done:6.1%}  faults {sum(injected.values())}"
                    f"  commands {rig.harness.checker.counts.commands if rig.harness.checker else 0}  rss {memory[-1][1]:.0f} MiB",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        await asyncio.sleep(step)
    for fault, _ in active.values():
        fault.clear(rig)
    if progress:
        print(file=sys.stderr)
    violations: list[str] = []
    summary: dict[str, Any] = {}
    try:
        summary = await task
    except AssertionError:
        assert rig.harness.checker is not None
        violations = list(rig.harness.checker.violations)
    checker = rig.harness.checker
    assert checker is not None
    after_warmup = [m for t, m in memory if t >= min(60.0, duration / 4)]
    return {
        "clock": "real" if real_time else "virtual",
        "seed": seed,
        "minutes": minutes,
        "faults_injected": sum(injected.values()),
        "faults_by_kind": dict(sorted(injected.items())),
        "ticks": checker.counts.ticks,
        "commands_sent": checker.counts.commands,
        "commands_age_checked": checker.counts.checked_ages,
        "invariant_violations": len(violations),
        "violations": violations[:20],
        "holds": summary.get("holds", {}),
        "missed_ticks": summary.get("missed_ticks"),
        "tick_lateness_ms": summary.get("tick_lateness_ms"),
        "rss_mib_samples": memory,
        "rss_growth_after_warmup_mib": (
            round(after_warmup[-1] - after_warmup[0], 1) if len(after_warmup) >= 2 else None
        ),
    }


def _real_loop_factory() -> Any:
    """uvloop when installed, as the CLI runs by default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m controller.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--minutes", type=float, default=60.0, help="minutes of control (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real-time", action="store_true", help="real clock and worker threads")
    p.add_argument("--mean-gap", type=float, default=4.0, help="mean seconds between faults")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    args = p.parse_args(argv)
    if not (0 < args.minutes <= 24 * 60) or not (0.1 <= args.mean_gap <= 3600):
        p.exit(
            2, f"{p.prog}: error: --minutes must be in (0, 1440] and --mean-gap in [0.1, 3600]\n"
        )
    logging.basicConfig(level=logging.ERROR)

    def body() -> Any:
        return soak(
            args.minutes,
            seed=args.seed,
            mean_gap_s=args.mean_gap,
            sample_every_s=60.0 if not args.real_time else 10.0,
            real_time=args.real_time,
            progress=True,
        )

    if args.real_time:
        with asyncio.Runner(loop_factory=_real_loop_factory()) as runner:
            result = runner.run(body())
    else:
        result = run_virtual(body)
    shown = {k: v for k, v in result.items() if k != "rss_mib_samples"}
    print(json.dumps(shown, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["invariant_violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
