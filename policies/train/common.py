"""What both training stages share: arguments, the dataset and split, the loop's bookkeeping."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from policies.lerobot_dataset import DatasetError, LeRobotDataset
from policies.qwen_vla.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, Preprocessing
from policies.train.data import Split, cosine_lr, split_episodes
from policies.train.rundir import TrainError, TrainingFailed

LOG = logging.getLogger("policies.train")

#: Arguments that shape a run: --resume refuses to continue with other values.
RUN_KEYS = (
    "dataset",
    "cameras",
    "val_fraction",
    "seed",
    "batch",
    "lr",
    "warmup",
    "weight_decay",
    "grad_clip",
    "horizon",
    "action_space",
    "max_delta",
    "success_only",
    "min_pixels",
    "max_pixels",
)
#: The tuned VL directory's own record: cameras, image bounds and provenance.
TUNING_FILE = "vla_tuning.json"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def camera_list(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"must be distinct camera names, NAME,NAME..., got {text!r}"
        )
    return names


def add_common(p: argparse.ArgumentParser, *, steps: int, batch: int, lr: float) -> None:
    p.add_argument("--dataset", required=True, type=Path, help="LeRobot v3 dataset directory")
    p.add_argument("--out", required=True, type=Path, help="output directory (see --resume)")
    p.add_argument(
        "--cameras",
        type=camera_list,
        help="cameras fed to the VL model, in this order (default: the dataset's, in its order;"
        " for the expert, the VL stage's or the cache's)",
    )
    p.add_argument("--steps", type=positive_int, default=steps, help=f"optimizer steps ({steps})")
    p.add_argument("--batch", type=positive_int, default=batch, help=f"samples per step ({batch})")
    p.add_argument("--lr", type=positive_float, default=lr, help=f"peak learning rate ({lr:g})")
    p.add_argument("--warmup", type=non_negative_int, default=None, help="warm-up steps (5%%)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (0.01)")
    p.add_argument("--grad-clip", type=positive_float, default=1.0, help="gradient norm clip (1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, batches and weights")
    p.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.1,
        help="fraction of episodes held out for validation (0.1; at least one)",
    )
    p.add_argument(
        "--val-samples",
        type=positive_int,
        default=512,
        help="validation frames evaluated, evenly spread (512)",
    )
    p.add_argument("--success-only", action="store_true", help="train on successful episodes only")
    p.add_argument("--horizon", type=positive_int, default=8, help="rows of an action chunk (8)")
    p.add_argument("--action-space", choices=("delta", "absolute"), default="delta")
    p.add_argument(
        "--max-delta",
        type=positive_float,
        default=None,
        help="delta action space's bound (rad; default: from the data over the horizon)",
    )
    p.add_argument("--min-pixels", type=positive_int, default=None, help="VL image bound")
    p.add_argument("--max-pixels", type=positive_int, default=None, help="VL image bound")
    p.add_argument("--cache-dir", help="where the tiny default VL lives ($VLA_CONTROLLER_CACHE)")
    p.add_argument("--eval-every", type=positive_int, default=100, help="steps between validations")
    p.add_argument("--save-every", type=positive_int, default=500, help="steps between saves")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a run of ours in --out")
    p.add_argument("--json", type=Path, help="write the final metrics here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_args(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    """The arguments recorded in a run (JSON-friendly)."""
    out = {}
    for key in keys:
        value = getattr(args, key, None)
        out[key] = str(value) if isinstance(value, Path) else value
    return out


def preprocessing(args: argparse.Namespace, tuned: dict[str, Any] | None = None) -> Preprocessing:
    """The image bounds: the flags, else the tuned VL's record, else the defaults."""
    recorded = (tuned or {}).get("preprocessing") or {}
    try:
        return Preprocessing(
            min_pixels=args.min_pixels or recorded.get("min_pixels") or DEFAULT_MIN_PIXELS,
            max_pixels=args.max_pixels or recorded.get("max_pixels") or DEFAULT_MAX_PIXELS,
        )
    except ValueError as exc:
        raise TrainError(f"--min-pixels/--max-pixels: {exc}") from None


def read_tuning(vl_dir: str | Path | None) -> dict[str, Any] | None:
    """A tuned VL directory's record (`vla_tuning.json`), or None."""
    if vl_dir is None:
        return None
    try:
        data = json.loads((Path(vl_dir) / TUNING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Prepared:
    dataset: LeRobotDataset
    cameras: list[str]
    split: Split


def prepare(args: argparse.Namespace, cameras: list[str] | None) -> Prepared:
    """Open and check the dataset (every row read) and split it: all before a model loads."""
    dataset = LeRobotDataset.open(args.dataset)
    chosen = cameras or dataset.cameras
    if not chosen:
        raise DatasetError(f"dataset {dataset.root}: records no camera; a VL policy needs images")
    dataset.require_cameras(chosen)
    episodes = [
        e.index for e in dataset.episodes if not (args.success_only and e.success is not True)
    ]
    if not episodes:
        raise DatasetError(f"dataset {dataset.root}: no successful episode (--success-only)")
    dataset.check(episodes)
    split = split_episodes(episodes, args.val_fraction, args.seed)
    return Prepared(dataset, list(chosen), split)


def evenly(items: list, n: int) -> list:
    """At most n items, evenly spread (the same ones every evaluation)."""
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def progress(total: int, initial: int, desc: str, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        file=sys.stderr,
        disable=disable,
        mininterval=1.0,
        dynamic_ncols=True,
    )


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable))
    except OSError as exc:
        raise TrainError(f"--json {path}: cannot be written: {exc.strerror}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


class Clock:
    """Wall time of a run, to report steps per second."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def train_loop(
    args: argparse.Namespace,
    *,
    start: int,
    step_fn: Any,
    train_samples: Sequence[tuple[int, int]],
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    evaluate: Any,
    save: Any,
    log: list[dict[str, Any]],
    desc: str,
    aux_weight: float = 1.0,
) -> dict[str, Any]:
    """The loop both stages run: seeded batches, cosine LR, clipped AdamW steps, periodic
    validation and saves; Ctrl-C saves where it is. -> the final metrics.

    Batch s is drawn from a generator seeded by (seed, s), so a resumed run draws the
    same batches as an uninterrupted one.
    """
    total = args.steps
    if start > total:
        raise TrainError(f"--steps {total}: the run being resumed is already at step {start}")
    stop = total if args.stop_after is None else min(total, start + args.stop_after)
    bar = progress(total, start, desc, args.no_progress)
    sums: dict[str, float] = {}
    count = 0
    metrics: dict[str, Any] = log[-1] if log else {}
    step = start
    interrupted = False
    if start == 0:
        # Where training starts from: what "the loss falls" is measured against.
        metrics = {"step": 0, **evaluate()}
        log.append(metrics)
        bar.write(_line(desc, metrics), file=sys.stderr)
    try:
        while step < stop:
            lr = cosine_lr(step, total, args.warmup, args.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rng = np.random.default_rng([args.seed, step])
            picks = rng.integers(0, len(train_samples), args.batch)
            parts = step_fn([train_samples[i] for i in picks], rng)
            loss = parts["bc"] + aux_weight * parts["aux"] if "aux" in parts else parts["bc"]
            if not torch.isfinite(loss):
                raise TrainingFailed(
                    f"{desc}: the loss became {float(loss.detach())} at step {step} (lr {lr:.2e});"
                    " lower --lr or raise --warmup"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            optimizer.step()
            step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            count += 1
            bar.update(1)
            bar.set_postfix({k: f"{v / count:.4f}" for k, v in sums.items()}, refresh=False)
            last = step == stop
            if step % args.eval_every == 0 or last:
                metrics = {"step": step, "lr": lr}
                metrics.update({f"train_{k}": v / count for k, v in sums.items()})
                metrics.update(evaluate())
                log.append(metrics)
                sums, count = {}, 0
                bar.write(_line(desc, metrics), file=sys.stderr)
            if step % args.save_every == 0 or last:
                save(step, metrics)
    except KeyboardInterrupt:
        interrupted = True
        bar.write(f"{desc}: interrupted at step {step}; saving", file=sys.stderr)
        save(step, metrics)
    finally:
        bar.close()
    return {"step": step, "steps": total, "interrupted": interrupted, "metrics": metrics}


def _line(desc: str, metrics: dict[str, Any]) -> str:
    parts = []
    for k, v in metrics.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
        elif isinstance(v, list):
            parts.append(f"{k} [{', '.join('-' if x is None else f'{x:.3f}' for x in v)}]")
        else:
            parts.append(f"{k} {v}")
    return f"{desc}: " + ", ".join(parts)


def summary_line(result: dict[str, Any]) -> str:
    """The one line a run ends with."""
    m = result.get("metrics") or {}
    keys = ("val_bc", "val_flow", "val_action_rmse", "val_aux_rmse_m")
    shown = ", ".join(f"{k} {m[k]:.4g}" for k in keys if isinstance(m.get(k), float))
    state = "interrupted" if result.get("interrupted") else "done"
    return (
        f"{result.get('stage')}: {state} at step {result.get('step')}/{result.get('steps')} in"
        f" {result.get('seconds', 0):.0f} s ({shown or 'no validation'}) -> {result.get('out')}"
    )


def param_groups(modules: Sequence[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (never on biases and norms), in a fixed order."""
    decay, plain = [], []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else plain).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]


def episode_seeds(dataset: Any, episodes: Sequence[int]) -> list[int] | None:
    """The episodes' `seed` column (controller.collect records it), or None: evaluation
    seeds must not overlap these."""
    seeds = [dataset.episodes[e].seed for e in episodes]
    return None if any(s is None for s in seeds) else sorted(int(s) for s in seeds)
