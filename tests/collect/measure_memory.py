"""Measure a collection's memory: resident and virtual size, threads and open files per episode.

    python -m tests.collect.measure_memory --task reach --episodes 80 --seed 2000 \\
        --episode-limit 0.5 --settle 0 --size 32 --out /tmp/measure-ds

Takes `python -m controller.collect`'s flags and runs the same collection in
this process (virtual time), reading /proc/self after each episode. The
growth is reported from episode 11 on: the first episodes load libraries and
warm the allocators. A collection that frees each episode stays within a
fraction of a megabyte an episode.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
from dataclasses import dataclass

from controller.clock import VirtualTimeLoop
from controller.collect import Collector, build_parser, config_from_args, open_dataset

#: Episodes left out of the growth figures (libraries loading, allocators warming up).
WARM = 10


@dataclass(frozen=True, slots=True)
class Sample:
    rss_mb: float
    virtual_mb: float
    threads: int
    fds: int
    user_s: float
    sys_s: float


def sample() -> Sample:
    fields: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmSize", "Threads"):
                fields[key] = int(value.split()[0])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return Sample(
        rss_mb=fields["VmRSS"] / 1024,
        virtual_mb=fields["VmSize"] / 1024,
        threads=fields["Threads"],
        fds=len(os.listdir("/proc/self/fd")),
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
    )


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(build_parser().parse_args(argv))
    if config.episodes <= WARM + 1:
        print(f"--episodes: measure more than {WARM + 1} episodes", file=sys.stderr)
        return 2
    recorder, first = open_dataset(config)
    samples: list[Sample] = []
    collector = Collector(
        config, recorder, first_seed=first, on_episode=lambda _e: samples.append(sample())
    )
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(collector.run())
    for i in sorted({0, WARM - 1, *range(19, len(samples), 20), len(samples) - 1}):
        s = samples[i]
        print(
            f"episode {i + 1}: RSS {s.rss_mb:.0f} MB, virtual {s.virtual_mb:.0f} MB,"
            f" threads {s.threads}, open fds {s.fds}"
        )
    a, b = samples[WARM - 1], samples[-1]
    n = len(samples) - WARM
    print(
        f"episodes {WARM + 1}-{len(samples)}: RSS {(b.rss_mb - a.rss_mb) / n:+.2f} MB/episode,"
        f" virtual {(b.virtual_mb - a.virtual_mb) / n:+.2f} MB/episode,"
        f" CPU user {(b.user_s - a.user_s) / n:.3f} s + sys {(b.sys_s - a.sys_s) / n:.3f} s"
        " per episode (wall-clock figures: only comparable on a quiet machine)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
