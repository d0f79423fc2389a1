"""Measure the scripted expert: success rate and time to success over seeded virtual-time episodes.

    python -m tests.sim.measure_expert --task reach --seeds 0 100

Each episode runs through the controller harness (invariants checked) and
stops at the first tick after the world judged success.
"""

from __future__ import annotations

import argparse
import statistics
import time

from controller.clock import run_virtual
from drivers.sim.task import TASKS

from .helpers import expert_episode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default="reach")
    parser.add_argument("--seeds", nargs=2, type=int, default=(0, 20), metavar=("FIRST", "END"))
    args = parser.parse_args()
    seeds = range(*args.seeds)

    async def measure() -> None:
        start = time.perf_counter()
        outcomes = [
            (await expert_episode(f"measure-{s}", seed=s, task=args.task))[0] for s in seeds
        ]
        wall = time.perf_counter() - start
        times = sorted(o.time_to_success for o in outcomes if o.time_to_success is not None)
        print(
            f"{args.task}: {len(times)}/{len(outcomes)} touched the named cube;"
            f" time to success p50 {statistics.median(times):.2f} s, min {times[0]:.2f} s,"
            f" max {times[-1]:.2f} s; {wall / len(outcomes):.2f} s of real time per episode"
        )
        failed = [
            (s, round(o.min_distance, 3))
            for s, o in zip(seeds, outcomes, strict=True)
            if not o.success
        ]
        if failed:
            print("failed (seed, closest distance m):", failed)

    run_virtual(measure)


if __name__ == "__main__":
    main()
