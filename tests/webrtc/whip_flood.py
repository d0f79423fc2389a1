"""Measure what a flood of WHIP offers costs the process that runs the camera.

A WHIP camera runs in this process with a live publisher (a child process
painting 30 fps) and a 10 Hz ticker standing in for the control loop; a
second child POSTs the same valid offer `--offers` times in a row, as a
hostile local process would. Reported: HTTP statuses, open file descriptors
and RSS before, right after and `--settle` s after the flood, the longest
stall of this process's event loop and the 10 Hz ticks that were late by more
than half a period, the CPU this process spent per offer, and whether the
live publisher kept its session.

    python -m tests.webrtc.whip_flood --offers 500

The flood client is a child (`python -m drivers.webrtc.testsrc flood`) so that
its own aiortc work is not counted; each server-side offer creates a peer
connection (UDP sockets, a DTLS certificate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _measure(
    offers: int, settle: float, direction: str, publisher: bool, no_limits: bool
) -> dict[str, Any]:
    from drivers.webrtc.whip import WhipCamera

    if no_limits:  # to measure what one accepted offer costs the loop
        try:
            from drivers.webrtc import whip_server

            whip_server.LIMITS = whip_server.Limits(
                post_burst=10**6, pending_per_camera=10**6, pending_total=10**6
            )
        except AttributeError:  # a server without limits
            pass

    loop = asyncio.get_running_loop()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path.cwd()), str(ROOT)]))
    cam = WhipCamera.from_spec("127.0.0.1:0/front", {"watchdog_s": 2.0})
    stalls: list[float] = []
    late_ticks = 0

    async def ticker() -> None:
        nonlocal late_ticks
        period, nxt = 0.1, loop.time()
        while True:
            nxt += period
            await asyncio.sleep(max(0.0, nxt - loop.time()))
            if loop.time() - nxt > period / 2:
                late_ticks += 1

    async def stall_probe() -> None:
        while True:
            t = loop.time()
            await asyncio.sleep(0.001)
            stalls.append(loop.time() - t - 0.001)

    publish = [sys.executable, "-m", "drivers.webrtc.publish", cam.url, "--fps", "30"]
    async with cam:
        pub = await asyncio.create_subprocess_exec(
            *([*publish, "--ice-address", "127.0.0.1"] if publisher else ["true"]),
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        try:
            for _ in range(300 if publisher else 0):
                if cam.newest.version > 30:
                    break
                await asyncio.sleep(0.1)
            live = cam.session
            await asyncio.sleep(1.0)
            fds0, rss0 = open_fds(), rss_mb()
            tasks = [loop.create_task(ticker()), loop.create_task(stall_probe())]
            stalls.clear()
            late_ticks = 0
            cpu0, t0 = cpu_s(), loop.time()
            client = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "drivers.webrtc.testsrc",
                "flood",
                cam.url,
                "--offers",
                str(offers),
                "--direction",
                direction,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
            out, _ = await client.communicate()
            cpu1, t1 = cpu_s(), loop.time()
            flood_stalls, flood_late = list(stalls), late_ticks
            fds1, rss1 = open_fds(), rss_mb()
            await asyncio.sleep(settle)
            fds2, rss2 = open_fds(), rss_mb()
            for t in tasks:
                t.cancel()
            kept = cam.session is live and live is not None
            seq = cam.newest.version
            await asyncio.sleep(0.5)
            frames_after = cam.newest.version - seq
        finally:
            if pub.returncode is None:
                pub.terminate()
            await pub.wait()
    flood_stalls.sort()
    return {
        "offers": offers,
        "direction": direction,
        "live_publisher": publisher,
        "limits": not no_limits,
        "statuses": json.loads(out.decode() or "{}"),
        "flood_s": round(t1 - t0, 2),
        "fds": {"before": fds0, "after_flood": fds1, f"after_{settle:g}s": fds2},
        "rss_mb": {
            "before": round(rss0, 1),
            "after_flood": round(rss1, 1),
            f"after_{settle:g}s": round(rss2, 1),
        },
        "server_cpu_ms_per_offer": round(1000 * (cpu1 - cpu0) / offers, 2),
        "loop_stall_ms": {
            "p50": round(1000 * flood_stalls[len(flood_stalls) // 2], 2) if flood_stalls else 0,
            "p99": round(1000 * flood_stalls[int(len(flood_stalls) * 0.99)], 2)
            if flood_stalls
            else 0,
            "max": round(1000 * flood_stalls[-1], 2) if flood_stalls else 0,
        },
        "late_10hz_ticks": flood_late,
        "live_publisher_kept_session": kept,
        "frames_in_0.5s_after": frames_after,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--offers", type=int, default=500)
    p.add_argument("--settle", type=float, default=12.0)
    p.add_argument("--direction", choices=("sendonly", "sendrecv", "recvonly"), default="sendonly")
    p.add_argument("--no-publisher", action="store_true", help="flood a camera nobody feeds")
    p.add_argument("--no-limits", action="store_true", help="lift the session and rate limits")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    from drivers.webrtc import ice

    with ice.host_addresses(["127.0.0.1"]):
        result = asyncio.run(
            _measure(
                args.offers, args.settle, args.direction, not args.no_publisher, args.no_limits
            )
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
