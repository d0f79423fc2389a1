"""`python -m controller.bench camera`: camera-to-slot latency and CPU per frame, WHIP on loopback.

A child process publishes a painted test pattern (its `time.monotonic()` in
every frame) to a `WhipCamera` in this process; each frame the camera yields
is published into a `LatestValue` slot, as the controller does, and its
latency is slot time minus painted time (one CLOCK_MONOTONIC for both
processes). CPU per decoded frame is this process's CPU time (loop, aiortc's
decoder thread, the pump) over the frames decoded; the painted times are read
only after the run so that reading them does not count.

    python -m controller.bench camera --seconds 10 --fps 30
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
from typing import Any

import numpy as np

from controller.bench.common import Column, Progress, Report, fmt, number_in
from controller.slot import LatestValue

NAME = "camera"
HELP = "camera-to-slot latency and CPU per decoded frame, WHIP over loopback"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(
    seconds: float, fps: float, warmup: float, progress: Progress | None = None
) -> dict[str, float]:
    """Publish for `warmup` + `seconds` from a child process; the figures of the timed part."""
    from drivers.webrtc.paint import read_frame, unwrap
    from drivers.webrtc.whip import WhipCamera

    loop = asyncio.get_running_loop()
    cam = WhipCamera.from_spec("127.0.0.1:0/bench", {"watchdog_s": 5.0})
    async with cam:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "drivers.webrtc.publish",
            cam.url,
            "--fps",
            str(fps),
            "--ice-address",
            "127.0.0.1",
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            slot = LatestValue("bench")
            samples: list[tuple[float, object]] = []
            frames = cam.frames()
            first = await asyncio.wait_for(anext(frames), 30)
            slot.publish(first, first.capture_time)
            end_warmup = loop.time() + warmup
            async for frame in frames:
                slot.publish(frame, frame.capture_time)
                if loop.time() >= end_warmup:
                    break
            pump = cam._pump
            assert pump is not None
            n0, cpu0, t0 = pump.frames, _cpu(), loop.time()
            second = 0
            async for frame in frames:
                stamped = slot.publish(frame, frame.capture_time)
                samples.append((stamped.publish_time, cam.newest.peek().value.frame))
                elapsed = loop.time() - t0
                if progress is not None and elapsed >= second:
                    second += 1
                    progress.step(f"{len(samples)} frames")
                if elapsed >= seconds:
                    break
            cpu, n, wall = _cpu() - cpu0, pump.frames - n0, loop.time() - t0
        finally:
            child.terminate()
            await child.wait()
    lat = []
    for slot_time, vf in samples:
        painted = read_frame(vf)
        if painted is not None:
            lat.append(slot_time - unwrap(painted, slot_time))
    arr = np.array(lat) * 1000
    return {
        "frames": n,
        "fps": n / wall,
        "latency_ms_p50": float(np.percentile(arr, 50)),
        "latency_ms_p99": float(np.percentile(arr, 99)),
        "latency_ms_max": float(arr.max()),
        "cpu_ms_per_frame": 1000 * cpu / max(n, 1),
        "cpu_cores_used": cpu / wall,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seconds",
        type=number_in(0.0, 3600.0, low_open=True),
        default=10.0,
        help="timed publishing (default 10)",
    )
    p.add_argument(
        "--fps",
        type=number_in(0.0, 240.0, low_open=True),
        default=30.0,
        help="frames per second the child publishes (default 30)",
    )
    p.add_argument(
        "--warmup",
        type=number_in(0.0, 600.0),
        default=2.0,
        help="untimed publishing first (default 2)",
    )


COLUMNS = (
    Column("frames", lambda r: fmt(r["frames"])),
    Column("fps", lambda r: fmt(r["fps"])),
    Column(
        "latency p50 / p99 / max ms",
        lambda r: " / ".join(fmt(r[f"latency_ms_{k}"]) for k in ("p50", "p99", "max")),
    ),
    Column("CPU ms per frame", lambda r: fmt(r["cpu_ms_per_frame"])),
    Column("cores used", lambda r: fmt(r["cpu_cores_used"])),
)


def run(args: argparse.Namespace) -> Report:
    from drivers.webrtc import ice

    progress = Progress(max(1, int(args.seconds + 0.999)), "camera")
    with ice.host_addresses(["127.0.0.1"]):
        result: dict[str, Any] = asyncio.run(measure(args.seconds, args.fps, args.warmup, progress))
    progress.close(f"{result['frames']} frames")
    report = Report(
        bench=NAME,
        title="Camera to slot: WHIP over loopback, a child process publishing",
        columns=COLUMNS,
        rows=[result],
    )
    report.notes.append(
        f"{args.fps:g} fps published for {args.warmup:g} s untimed, then {args.seconds:g} s;"
        " latency: slot time minus the time painted into the frame (one CLOCK_MONOTONIC);"
        " CPU: this process (loop, aiortc's decoder thread, the pump) per decoded frame"
    )
    return report
