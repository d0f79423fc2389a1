"""`python -m controller.bench vl`: VL encode latency, split into preprocessing and forward.

    python -m controller.bench vl [--images 1 5] [--iters 50] [--size 480x640]
                                  [--checkpoint DIR | --vl-model DIR_OR_ID] [--device cuda]

One encode is split into preprocessing (CPU: resize within the image
bounds, chat template, tokenising) and model forward (+ pooling), because
they cost different resources: the first holds the GIL on a CPU core, the
second the accelerator. On CUDA the forward runs in bf16 autocast and is
timed with a device synchronise. Only measured figures are printed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from controller.bench.common import (
    Column,
    Progress,
    Report,
    add_policy_flags,
    fmt,
    fmt_spread,
    image_size,
    number_in,
    policy_options,
    spread,
)

NAME = "vl"
HELP = "VL encode latency: preprocessing and forward, 1 and 5 images"


def add_model_flags(p: argparse.ArgumentParser, *, iters: int, warmup: int) -> None:
    """What `vl` and `act` share: the model, its dtype and threads, how many runs."""
    add_policy_flags(p)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument(
        "--threads",
        type=number_in(1, 1024, integer=True),
        help="torch intra-op threads (default: torch's)",
    )
    p.add_argument(
        "--iters",
        type=number_in(1, 1 << 20, integer=True),
        default=iters,
        help=f"timed runs (default {iters})",
    )
    p.add_argument(
        "--warmup",
        type=number_in(0, 1 << 20, integer=True),
        default=warmup,
        help=f"untimed runs first (default {warmup})",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_flags(p, iters=50, warmup=3)
    p.add_argument(
        "--images",
        type=number_in(1, 64, integer=True),
        nargs="+",
        default=[1, 5],
        help="images per encode, one row each (default 1 5)",
    )
    p.add_argument(
        "--size", type=image_size, default=(480, 640), help="camera image HxW (default 480x640)"
    )
    p.add_argument("--instruction", default="pick up the red cube and place it in the blue bowl")


def device_info(device: str) -> dict[str, Any]:
    """The device, its name, torch's threads: said beside every model figure."""
    import torch

    from controller.errors import ConfigError

    try:
        cuda = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ConfigError(f"device {device!r}: {str(exc).splitlines()[0]}") from None
    return {"device": device, "cuda": cuda, "torch_threads": torch.get_num_threads()}


def model_device(args: argparse.Namespace) -> dict[str, Any]:
    """Before a model is built: torch's threads as `--threads` asks, then the device checked."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return device_info(args.device)


def on_device(dev: Mapping[str, Any]) -> str:
    """`on cuda:0 (NVIDIA H100)`, or `on cpu`: for a report's title."""
    return f"on {dev['device']}" + (f" ({dev['cuda']})" if dev["cuda"] else "")


def sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def bench_vl(
    encoder: Any,
    n_images: int,
    size: tuple[int, int],
    iters: int,
    warmup: int,
    instruction: str,
    progress: Progress | None = None,
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n_images)]
    pre, fwd, total = [], [], []
    tokens = 0
    label = f"{n_images} image(s) {size[0]}x{size[1]}"
    for i in range(warmup + iters):
        if progress is not None:
            progress.step(label + (" (warm-up)" if i < warmup else ""))
        inputs, t_pre = timed(lambda: encoder.preprocess([(images, instruction)]), encoder.device)
        feats, t_fwd = timed(lambda inputs=inputs: encoder.forward(inputs), encoder.device)
        tokens = int(inputs["input_ids"].shape[1])
        if tuple(feats.shape) != (1, 1, encoder.hidden_size):
            raise RuntimeError(f"the encoder returned features of shape {tuple(feats.shape)}")
        if i >= warmup:
            pre.append(t_pre)
            fwd.append(t_fwd)
            total.append(t_pre + t_fwd)
    return {
        "images": n_images,
        "image_size_hw": list(size),
        "tokens": tokens,
        "preprocess_ms": spread(pre),
        "forward_ms": spread(fwd),
        "total_ms": spread(total),
    }


COLUMNS = (
    Column("images", lambda r: f"{r['images']} x {r['image_size_hw'][0]}x{r['image_size_hw'][1]}"),
    Column("tokens", lambda r: fmt(r["tokens"])),
    Column("runs", lambda r: fmt(r["total_ms"]["n"])),
    Column("preprocess p50 / p99 / max ms", lambda r: fmt_spread(r["preprocess_ms"])),
    Column("forward p50 / p99 / max ms", lambda r: fmt_spread(r["forward_ms"])),
    Column("end to end p50 / p99 / max ms", lambda r: fmt_spread(r["total_ms"])),
)


def run(args: argparse.Namespace) -> Report:
    import torch

    from policies.qwen_vla.policy import QwenVLAPolicy, build_vl_encoder

    dev = model_device(args)
    options = policy_options(args, dtype=args.dtype)
    encoder = build_vl_encoder(QwenVLAPolicy.from_options(options).options, args.device)
    progress = Progress(len(args.images) * (args.warmup + args.iters), "vl")
    h, w = args.size
    rows = [
        bench_vl(encoder, n, (h, w), args.iters, args.warmup, args.instruction, progress)
        for n in args.images
    ]
    progress.close(f"{len(rows)} rows")
    report = Report(
        bench=NAME,
        title=f"VL encode {on_device(dev)}",
        columns=COLUMNS,
        rows=rows,
        extra={
            "device": dev,
            "model": encoder.ref,
            "dtype": str(next(encoder.model.parameters()).dtype),
            "preprocessing": encoder.identity()["preprocessing"],
        },
    )
    report.notes.append(
        f"model {encoder.ref}, {report.extra['dtype']}, torch {torch.__version__},"
        f" {dev['torch_threads']} threads; {args.warmup} untimed runs first; preprocessing:"
        " resize within the image bounds, chat template, tokenising (CPU); forward: the model"
        " and the mean pooling" + (", CUDA-synchronised" if dev["cuda"] else "")
    )
    return report
