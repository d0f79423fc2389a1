"""`python -m controller.bench act`: the action expert's latency (state and sensor encoders + head).

    python -m controller.bench act [--iters 500] [--head regression|flow] [--device cuda]

`act` runs every control tick: at 100 Hz it has 10 ms, less the loop's own
cost. Timed as a direct call (no executor hand-off: `loop` measures that),
CUDA-synchronised on a GPU.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from controller.bench.common import (
    Column,
    Progress,
    Report,
    fmt,
    fmt_spread,
    number_in,
    policy_options,
    spread,
)
from controller.bench.vl import add_model_flags, model_device, on_device, timed

NAME = "act"
HELP = "action latency of the policy's act (state and sensor encoders + action expert)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_flags(p, iters=500, warmup=20)
    p.add_argument("--head", choices=("regression", "flow"), help="action head (default: policy's)")
    p.add_argument(
        "--dof", type=number_in(1, 1024, integer=True), default=6, help="robot joints (default 6)"
    )


def bench_act(
    policy: Any, iters: int, warmup: int, progress: Progress | None = None
) -> dict[str, Any]:
    from drivers.base import Frame, RobotState, SensorReading

    dof = policy.robot.dof
    rng = np.random.default_rng(0)
    frame = Frame("front", rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), 0.0, 0)
    features = policy.encode_vl([frame], "pick up the cube")
    state = RobotState(np.zeros(dof), np.zeros(dof), 0.0)
    sensors = {n: SensorReading(n, np.zeros(d), 0.0) for n, d in policy.config.sensors}
    times = []
    for i in range(warmup + iters):
        if progress is not None:
            progress.step("warm-up" if i < warmup else "timed")
        _, t = timed(lambda: policy.act(features, state, sensors), policy.device)
        if i >= warmup:
            times.append(t)
    return {
        "head": policy.config.head,
        "horizon": policy.config.horizon,
        "dof": dof,
        "act_ms": spread(times),
    }


COLUMNS = (
    Column("head", lambda r: r["head"]),
    Column("horizon", lambda r: fmt(r["horizon"])),
    Column("joints", lambda r: fmt(r["dof"])),
    Column("runs", lambda r: fmt(r["act_ms"]["n"])),
    Column("act p50 / p99 / max ms", lambda r: fmt_spread(r["act_ms"], 4)),
)


def run(args: argparse.Namespace) -> Report:
    import torch

    from drivers.base import JointLimits, RobotInfo
    from policies.qwen_vla.policy import QwenVLAPolicy

    dev = model_device(args)
    dof = args.dof
    robot = RobotInfo(
        "bench",
        tuple(f"j{i}" for i in range(dof)),
        JointLimits(np.full(dof, -3.0), np.full(dof, 3.0), np.full(dof, 1.0)),
    )
    policy = QwenVLAPolicy.from_options(policy_options(args, dtype=args.dtype, head=args.head))
    policy.load(args.device, robot, 0.1)
    progress = Progress(args.warmup + args.iters, "act")
    rows = [bench_act(policy, args.iters, args.warmup, progress)]
    progress.close(f"{args.iters} timed runs")
    report = Report(
        bench=NAME,
        title=f"Action latency {on_device(dev)}",
        columns=COLUMNS,
        rows=rows,
        extra={"device": dev},
    )
    report.notes.append(
        f"torch {torch.__version__}, {dev['torch_threads']} threads; a direct call of act"
        f" (no executor hand-off); {args.warmup} untimed runs first"
    )
    return report
