"""Latency benchmark of the Qwen VLA policy (a measurement tool, not a test).

    python -m policies.bench vl  [--images 1 5] [--iters 50] [--size 480x640]
                                 [--checkpoint DIR | --vl-model DIR_OR_ID] [--device cuda]
    python -m policies.bench act [--iters 500] [--head regression|flow]

`vl` splits one encode into preprocessing (CPU: resize within the image
bounds, chat template, tokenising) and model forward (+ pooling), because
they cost different resources: the first holds the GIL on a CPU core, the
second the accelerator. On CUDA the forward runs in bf16 autocast and is
timed with a device synchronise. Only measured figures are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from policies.cli_args import OneLineArgumentParser
from policies.errors import PolicyError


def _stats(samples_s: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "n": len(ms),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def bench_vl(
    encoder: Any, n_images: int, size: tuple[int, int], iters: int, warmup: int, instruction: str
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n_images)]
    pre, fwd, total = [], [], []
    tokens = 0
    for i in range(warmup + iters):
        inputs, t_pre = _timed(lambda: encoder.preprocess([(images, instruction)]), encoder.device)
        feats, t_fwd = _timed(lambda inputs=inputs: encoder.forward(inputs), encoder.device)
        tokens = int(inputs["input_ids"].shape[1])
        assert feats.shape == (1, 1, encoder.hidden_size)
        if i >= warmup:
            pre.append(t_pre)
            fwd.append(t_fwd)
            total.append(t_pre + t_fwd)
    return {
        "images": n_images,
        "image_size_hw": list(size),
        "tokens": tokens,
        "preprocess": _stats(pre),
        "forward": _stats(fwd),
        "total": _stats(total),
    }


def bench_act(policy: Any, iters: int, warmup: int) -> dict[str, Any]:
    from drivers.base import Frame, RobotState, SensorReading

    dof = policy.robot.dof
    rng = np.random.default_rng(0)
    frame = Frame("front", rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), 0.0, 0)
    features = policy.encode_vl([frame], "pick up the cube")
    state = RobotState(np.zeros(dof), np.zeros(dof), 0.0)
    sensors = {n: SensorReading(n, np.zeros(d), 0.0) for n, d in policy.config.sensors}
    times = []
    for i in range(warmup + iters):
        _, t = _timed(lambda: policy.act(features, state, sensors), policy.device)
        if i >= warmup:
            times.append(t)
    return {"head": policy.config.head, "horizon": policy.config.horizon, "act": _stats(times)}


def _fmt(s: dict[str, float]) -> str:
    return f"p50 {s['p50_ms']:8.2f} ms   p99 {s['p99_ms']:8.2f} ms   max {s['max_ms']:8.2f} ms"


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {value}")
        return value

    return parse


def _size(text: str) -> tuple[int, int]:
    """`480x640` -> (480, 640), each side in [1, 8192]."""
    h, sep, w = text.lower().partition("x")
    if sep and h.isdigit() and w.isdigit() and 1 <= int(h) <= 8192 and 1 <= int(w) <= 8192:
        return int(h), int(w)
    raise argparse.ArgumentTypeError(
        f"expected HxW with sides in [1, 8192], e.g. 480x640, got {text!r}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineArgumentParser(
        prog="python -m policies.bench", description=__doc__.split("\n\n")[0]
    )
    # Bounded integers and a checked HxW: a typo is one argparse line, exit 2,
    # not a traceback from numpy after the model has loaded.
    runs, some = _int_in(1, 1 << 20), _int_in(0, 1 << 20)
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("vl", "act"):
        p = sub.add_parser(name)
        p.add_argument("--checkpoint")
        p.add_argument("--vl-model")
        p.add_argument("--cache-dir")
        p.add_argument("--device", default="cpu")
        p.add_argument(
            "--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16")
        )
        p.add_argument(
            "--threads", type=_int_in(1, 1024), help="torch intra-op threads (default: torch's)"
        )
        p.add_argument("--iters", type=runs, default=50 if name == "vl" else 500)
        p.add_argument("--warmup", type=some, default=3 if name == "vl" else 20)
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    v = sub.choices["vl"]
    v.add_argument("--images", type=_int_in(1, 64), nargs="+", default=[1, 5])
    v.add_argument(
        "--size", type=_size, default=(480, 640), help="camera image HxW (default 480x640)"
    )
    v.add_argument("--instruction", default="pick up the red cube and place it in the blue bowl")
    a = sub.choices["act"]
    a.add_argument("--head", choices=("regression", "flow"))
    a.add_argument("--dof", type=_int_in(1, 1024), default=6)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    from policies.qwen_vla.policy import QwenVLAPolicy

    options = {
        k: v
        for k, v in {
            "checkpoint": args.checkpoint,
            "vl_model": args.vl_model,
            "cache_dir": args.cache_dir,
            "dtype": args.dtype,
            "head": getattr(args, "head", None),
        }.items()
        if v is not None
    }
    try:
        cuda = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None
    except (RuntimeError, AssertionError, ValueError) as exc:
        print(f"error: device {args.device!r}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    env = {
        "device": args.device,
        "cuda": cuda,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    try:
        if args.what == "vl":
            from policies.qwen_vla.policy import build_vl_encoder

            encoder = build_vl_encoder(QwenVLAPolicy.from_options(options).options, args.device)
            h, w = args.size
            results = [
                bench_vl(encoder, n, (h, w), args.iters, args.warmup, args.instruction)
                for n in args.images
            ]
            report = {
                "env": env,
                "model": encoder.ref,
                "dtype": str(next(encoder.model.parameters()).dtype),
                "preprocessing": encoder.identity()["preprocessing"],
                "results": results,
            }
        else:
            from drivers.base import JointLimits, RobotInfo

            dof = args.dof
            robot = RobotInfo(
                "bench",
                tuple(f"j{i}" for i in range(dof)),
                JointLimits(np.full(dof, -3.0), np.full(dof, 3.0), np.full(dof, 1.0)),
            )
            policy = QwenVLAPolicy.from_options(options)
            policy.load(args.device, robot, 0.1)
            report = {"env": env, "results": [bench_act(policy, args.iters, args.warmup)]}
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"# {args.what} on {env['device']}{' (' + env['cuda'] + ')' if env['cuda'] else ''},"
        f" torch {env['torch']}, {env['torch_threads']} threads"
    )
    for r in report["results"]:
        if args.what == "vl":
            print(
                f"{r['images']} image(s) {r['image_size_hw'][0]}x{r['image_size_hw'][1]},"
                f" {r['tokens']} tokens, {r['total']['n']} runs"
            )
            for part in ("preprocess", "forward", "total"):
                print(f"  {part:<10} {_fmt(r[part])}")
        else:
            print(f"act ({r['head']}, horizon {r['horizon']}), {r['act']['n']} runs")
            print(f"  act        {_fmt(r['act'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
