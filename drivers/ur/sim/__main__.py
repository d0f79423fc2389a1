"""`python -m drivers.ur.sim`: run the simulated UR controller until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from drivers.ur.sim.server import SimConfig, UrSimulator
from drivers.ur.transport import is_memory_host


def _version(text: str) -> tuple[int, int, int, int]:
    parts = [int(p) for p in text.split(".")]
    if not 1 <= len(parts) <= 4:
        raise argparse.ArgumentTypeError(f"bad version {text!r} (expected e.g. 5.11.0 or 3.15.7)")
    parts += [0] * (4 - len(parts))
    return parts[0], parts[1], parts[2], parts[3]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m drivers.ur.sim", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument(
        "--frequency",
        type=float,
        default=125.0,
        choices=(125.0, 500.0),
        help="RTDE rate: 125 (CB3) or 500 (e-Series)",
    )
    ap.add_argument(
        "--version",
        type=_version,
        default=(5, 11, 0, 0),
        help="controller version reported over RTDE (default 5.11.0)",
    )
    ap.add_argument("--max-protocol", type=int, default=2, choices=(1, 2))
    ap.add_argument("--rtde-port", type=int, default=30004)
    ap.add_argument("--dashboard-port", type=int, default=29999)
    ap.add_argument("--script-port", type=int, default=30002)
    ap.add_argument(
        "--power-off", action="store_true", help="start powered off (use the dashboard)"
    )
    ap.add_argument("--unlock-delay", type=float, default=5.0)
    ap.add_argument(
        "--protective-stop-every",
        type=float,
        default=0.0,
        metavar="S",
        help="fault injection: trigger a protective stop every S seconds",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if is_memory_host(args.host):
        # nothing outside this process could reach it: refuse rather than sit there unreachable
        ap.error(f"--host {args.host}: a name under .invalid lives in one process's memory only")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = SimConfig(
        host=args.host,
        rtde_port=args.rtde_port,
        dashboard_port=args.dashboard_port,
        script_port=args.script_port,
        frequency=args.frequency,
        version=args.version,
        max_protocol=args.max_protocol,
        powered=not args.power_off,
        unlock_delay=args.unlock_delay,
    )

    async def run() -> None:
        async with UrSimulator(config) as sim:
            while True:
                if args.protective_stop_every > 0:
                    await asyncio.sleep(args.protective_stop_every)
                    sim.protective_stop()
                else:
                    await asyncio.sleep(3600)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
