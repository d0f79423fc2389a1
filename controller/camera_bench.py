"""Benchmark: camera-to-slot latency and CPU per decoded frame, WHIP over loopback.

A child process publishes a painted test pattern (its `time.monotonic()` in
every frame) to a `WhipCamera` in this process; each frame the camera yields
is published into a `LatestValue` slot, as the controller does, and its
latency is slot time minus painted time (one CLOCK_MONOTONIC for both
processes). CPU per decoded frame is this process's CPU time (loop, aiortc's
decoder thread, the pump) over the frames decoded; the painted times are read
only after the run so that reading them does not count.

    python -m controller.camera_bench --seconds 10 --fps 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import sys

import numpy as np

from controller.slot import LatestValue
from drivers.webrtc import ice
from drivers.webrtc.paint import read_frame, unwrap
from drivers.webrtc.whip import WhipCamera


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(seconds: float, fps: float, warmup: float) -> dict[str, float]:

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
            async for frame in frames:
                stamped = slot.publish(frame, frame.capture_time)
                samples.append((stamped.publish_time, cam.newest.peek().value.frame))
                if loop.time() - t0 >= seconds:
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=2.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with ice.host_addresses(["127.0.0.1"]):
        result = asyncio.run(run(args.seconds, args.fps, args.warmup))
    result["cpus"] = os.cpu_count() or 0
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
