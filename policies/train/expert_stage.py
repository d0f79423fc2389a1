"""`python -m policies.train expert`: the action expert on VL features of a dataset.

The expert (`ActionModel`: robot-state encoder + action expert, regression or
flow head) learns the action chunk from the pooled VL feature of each frame
and the state of its row. The features come from one of two sources that give
the same numbers (bitwise on CPU float32, tested):

- `--cache CACHE` (`python -m policies.vl_cache build --lerobot ...`): each
  frame encoded once; the cache is refused if it was built with another model,
  other image bounds, other cameras or another version of the dataset;
- `--no-cache`: the seed's real-time dataset variant, encoding the images and
  the instruction on the fly with the same `VLEncoder.encode`.

The output is an ordinary checkpoint (`save_checkpoint`) with the VL model
copied in (`vl_model/`), the cameras it was trained on in order, and its action
space, so `--policy qwen-vla --policy-option checkpoint=CKPT` (or
`--checkpoint CKPT`) runs it as it is. `training/` beside it holds the resume
state (delete it before shipping a checkpoint).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from policies import vl_cache
from policies.lerobot_dataset import DatasetError
from policies.qwen_vla import checkpoint as ckpt
from policies.qwen_vla.action_expert import ActionModel, check_parameter_budget
from policies.qwen_vla.config import MAX_FLOW_STEPS, VLAConfig
from policies.qwen_vla.vl_encoder import VLEncoder
from policies.train import common, rundir
from policies.train.data import (
    EpisodeStore,
    choose_action_space,
    chunk_targets,
    lagged_frame,
    norm_stats,
    perturb_states,
)
from policies.train.rundir import TrainError

STAGE = "expert"
EXPERT_RUN_KEYS = (
    *common.RUN_KEYS,
    "head",
    "flow_steps",
    "model_dim",
    "feature_lag",
    "state_noise",
    "vl_fingerprint",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_common(p, steps=3000, batch=128, lr=3e-4)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--cache", type=Path, help="VL cache built from this dataset")
    source.add_argument(
        "--no-cache",
        action="store_true",
        help="encode each frame's images + instruction on the fly (slow; same features)",
    )
    p.add_argument(
        "--vl-model",
        help="the VL model (a tuned VL dir): default, the cache's; required with --no-cache"
        " unless the tiny default is meant",
    )
    p.add_argument("--head", choices=("regression", "flow"), default="regression")
    p.add_argument(
        "--flow-steps",
        type=common.positive_int,
        default=5,
        help=f"Euler steps of the flow head at run time (5, at most {MAX_FLOW_STEPS})",
    )
    p.add_argument("--model-dim", type=common.positive_int, default=256, help="expert width (256)")
    p.add_argument(
        "--feature-lag",
        type=common.non_negative_int,
        default=0,
        help="train with features up to this many frames older than the state (0): the"
        " controller reuses features while the next encode runs",
    )
    p.add_argument(
        "--state-noise",
        type=common.non_negative_float,
        default=0.0,
        help="std dev (rad) of noise added to the training state, the chunk relabelled to reach"
        " the expert's commands from the noisy state (0). Why: from its own position alone the"
        " expert can tell which cube a demonstration goes to, so it learns to continue a path"
        " rather than to read the images; off the demonstrated paths it then goes astray",
    )
    p.add_argument(
        "--stop-after",
        type=common.positive_int,
        default=None,
        help="run at most this many steps now, save, and exit (--resume continues)",
    )


# -- the two feature sources -----------------------------------------------------------


class CachedFeatures:
    """Features of a `vl_cache` built over the dataset, all in memory (one row per frame)."""

    def __init__(self, cache: vl_cache.VLCache, samples: Sequence[tuple[int, int]]) -> None:
        self.index: dict[tuple[int, int], int] = {}
        rows = []
        for e, k in samples:
            sid = vl_cache.sample_id(e, k)
            if sid not in cache:
                raise vl_cache.VLCacheError(
                    f"VL cache {cache.root}: no feature for episode {e} frame {k}: it was built"
                    " from another dataset; rebuild it with `python -m policies.vl_cache build"
                    " --lerobot`"
                )
            self.index[(e, k)] = len(rows)
            rows.append(cache[sid])
        self.table = torch.cat(rows) if rows else torch.zeros(0)

    def batch(self, samples: Sequence[tuple[int, int]]) -> torch.Tensor:
        return self.table[[self.index[s] for s in samples]]


class LiveFeatures:
    """The real-time variant: each frame's images and its episode's instruction, encoded now
    by `VLEncoder.encode` (the function the controller calls)."""

    def __init__(self, encoder: VLEncoder, store: EpisodeStore) -> None:
        self.encoder = encoder
        self.store = store

    def get(self, episode: int, frame: int) -> torch.Tensor:
        images = self.store.images(episode, frame)
        return self.encoder.encode(images, self.store.tasks[episode]).cpu()

    def batch(self, samples: Sequence[tuple[int, int]]) -> torch.Tensor:
        return torch.cat([self.get(e, k) for e, k in samples])


# -- the run ---------------------------------------------------------------------------


def _vl_ref(args: argparse.Namespace, manifest: dict[str, Any] | None) -> str:
    if args.vl_model:
        return str(args.vl_model)
    if manifest is not None:
        return str(manifest["encoder"]["model"])
    from policies.qwen_vla.tiny_default import tiny_model_dir

    pp = common.preprocessing(args)
    return str(tiny_model_dir(args.cache_dir, min_pixels=pp.min_pixels, max_pixels=pp.max_pixels))


def _read_manifest(root: Path) -> dict[str, Any]:
    cache = vl_cache.VLCache.open(root, None)  # just the manifest and features, checked below
    return cache.manifest


def run(args: argparse.Namespace) -> dict[str, Any]:
    clock = common.Clock()
    saved_run = rundir.check_out(args.out, STAGE, resume=args.resume, overwrite=args.overwrite)
    if args.warmup is None:
        args.warmup = max(1, args.steps // 20)
    if args.threads:
        torch.set_num_threads(args.threads)

    # What the features are: the cache's record, or the VL dir's, or the flags.
    manifest = _read_manifest(args.cache) if args.cache else None
    source = (manifest or {}).get("source") or {}
    if manifest is not None and source.get("kind") != "lerobot":
        raise vl_cache.VLCacheError(
            f"VL cache {args.cache}: not built from a LeRobot dataset (build it with --lerobot)"
        )
    ref = _vl_ref(args, manifest)
    tuning = common.read_tuning(ref)
    if manifest is not None:
        cached_pp = manifest["encoder"]["preprocessing"]
        if args.min_pixels is None and args.max_pixels is None:
            args.min_pixels, args.max_pixels = cached_pp["min_pixels"], cached_pp["max_pixels"]
    pp = common.preprocessing(args, tuning)
    args.min_pixels, args.max_pixels = pp.min_pixels, pp.max_pixels
    cameras = args.cameras or source.get("cameras") or (tuning or {}).get("cameras")
    if manifest is not None and list(cameras) != list(source.get("cameras") or []):
        raise vl_cache.VLCacheError(
            f"VL cache {args.cache}: built with cameras {source.get('cameras')}, --cameras"
            f" asks for {list(cameras)}"
        )
    prepared = common.prepare(args, list(cameras) if cameras else None)
    args.cameras = prepared.cameras
    dataset, split = prepared.dataset, prepared.split
    if manifest is not None and source.get("digest") != dataset.digest():
        raise vl_cache.VLCacheError(
            f"VL cache {args.cache}: built from another version of the dataset (digest"
            f" {source.get('digest')}, {dataset.root} is now {dataset.digest()}); rebuild it"
        )

    # The VL model (needed for its identity, hidden size, the live variant and the copy).
    encoder = VLEncoder.load(ref, pp, args.device if args.no_cache else "cpu", "float32")
    identity = encoder.identity()
    args.vl_fingerprint = identity["fingerprint"]
    store = EpisodeStore(dataset, split.train + split.val, prepared.cameras)
    samples_all = store.samples()
    if manifest is not None:
        cache = vl_cache.VLCache.open(args.cache, identity)
        features: Any = CachedFeatures(cache, samples_all)
    else:
        features = LiveFeatures(encoder, store)

    train_rows = [store.rows[e] for e in split.train]
    space = choose_action_space(train_rows, args.horizon, args.action_space, args.max_delta)
    targets = {e: chunk_targets(store.rows[e], args.horizon, space) for e in store.episodes}
    try:
        config = VLAConfig(
            vl_model=ref,
            vl_hidden=encoder.hidden_size,
            action_dim=train_rows[0].state.shape[1],
            horizon=args.horizon,
            head=args.head,
            flow_steps=args.flow_steps,
            flow_seed=args.seed,
            model_dim=args.model_dim,
            preprocessing=pp,
            state_norm=norm_stats(np.concatenate([r.state for r in train_rows])),
            action_space=space,
            vl_fingerprint=identity["fingerprint"],
            joint_names=dataset.joint_names,
            cameras=tuple(prepared.cameras),
        )
        check_parameter_budget(config)
    except ValueError as exc:
        raise TrainError(f"expert: {exc}") from None

    embed = ref if _embeddable(ref) else None
    torch.manual_seed(args.seed)
    model = ActionModel(config).to(args.device)
    model.train()
    groups = common.param_groups([model], args.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    params = [p for g in groups for p in g["params"]]
    start, log = 0, []
    if saved_run is not None:
        rundir.check_same(
            saved_run["args"], common.run_args(args, EXPERT_RUN_KEYS), EXPERT_RUN_KEYS
        )
        state = rundir.load_state(args.out)
        _, saved_model = ckpt.load_checkpoint(args.out)
        model.load_state_dict(saved_model.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        rundir.set_rng_state(state["rng"])
        start = int(state["step"])
        log = rundir.read_log(args.out)

    train_samples = store.samples(split.train)
    val_samples = common.evenly(store.samples(split.val), args.val_samples)
    n_out = args.horizon * config.action_dim

    def inputs(
        samples: Sequence[tuple[int, int]], rng: np.random.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lagged = [
            (e, lagged_frame(k, args.feature_lag, rng) if rng is not None else k)
            for e, k in samples
        ]
        vl = features.batch(lagged).to(args.device)
        states = np.stack([store.rows[e].state[k] for e, k in samples])
        chunks = np.stack([targets[e][k] for e, k in samples])
        if rng is not None and args.state_noise > 0:
            states, chunks = perturb_states(space, states, chunks, args.state_noise, rng)
        state = torch.from_numpy(states.astype(np.float32))
        target = torch.from_numpy(chunks.astype(np.float32))
        return vl, state.to(args.device), target.to(args.device)

    def flow_loss(cond: torch.Tensor, target: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Rectified flow: noise (t=0) to the chunk (t=1) along a straight line; the head
        predicts the line's velocity, which `ActionExpert.forward` integrates."""
        b = target.shape[0]
        x1 = target.reshape(b, n_out)
        x0 = torch.randn(b, n_out, generator=gen, device="cpu").to(x1.device)
        t = torch.rand(b, generator=gen, device="cpu").to(x1.device)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        return nn.functional.mse_loss(model.expert.velocity(xt, t, cond), x1 - x0)

    def step_losses(samples: Sequence[tuple[int, int]], rng: np.random.Generator) -> dict:
        vl, state, target = inputs(samples, rng)
        if args.head == "regression":
            return {"bc": nn.functional.mse_loss(model(vl, state), target)}
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        return {"bc": flow_loss(model.condition(vl, state), target, gen)}

    def measure(samples: Sequence[tuple[int, int]], prefix: str) -> dict[str, Any]:
        """Losses and errors over `samples` in eval mode (`val`: held-out episodes; `fit`:
        a fixed set of training frames), with fixed noise for the flow loss."""
        if not samples:
            return {}
        model.eval()
        bc, flow, act_err = [], [], []
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for i in range(0, len(samples), args.batch):
                chunk = samples[i : i + args.batch]
                vl, state, target = inputs(chunk, None)
                out = model(vl, state)
                bc.append(float(nn.functional.mse_loss(out, target)) * len(chunk))
                if args.head == "flow":
                    cond = model.condition(vl, state)
                    flow.append(float(flow_loss(cond, target, gen)) * len(chunk))
                states = np.stack([store.rows[e].state[k] for e, k in chunk])
                sent = np.stack([store.rows[e].action[k] for e, k in chunk])
                first = space.to_targets(states, out[:, 0, :].cpu().numpy())
                act_err.append((first - sent) ** 2)
        model.train()
        metrics: dict[str, Any] = {
            f"{prefix}_bc": sum(bc) / len(samples),
            f"{prefix}_action_rmse": float(np.sqrt(np.concatenate(act_err).mean())),
        }
        if flow:
            metrics[f"{prefix}_flow"] = sum(flow) / len(samples)
        return metrics

    fit_samples = common.evenly(train_samples, max(1, args.val_samples // 2))

    def evaluate() -> dict[str, Any]:
        return {**measure(fit_samples, "fit"), **measure(val_samples, "val")}

    def save(step: int, metrics: dict[str, Any]) -> None:
        with rundir.staged(args.out) as tmp:
            ckpt.save_checkpoint(tmp, config, model.eval(), vl_model_dir=embed)
            model.train()
            run_record = {
                "stage": STAGE,
                "step": step,
                "args": common.run_args(args, EXPERT_RUN_KEYS),
                "vl_model": ref,
                "split": {"train": list(split.train), "val": list(split.val)},
                "train_seeds": common.episode_seeds(dataset, split.train),
                "features": "cache" if manifest is not None else "live",
                "metrics": metrics,
            }
            state = {"optimizer": optimizer.state_dict(), "step": step, "rng": rundir.rng_state()}
            rundir.write_training(tmp, run_record, state, log)

    common.LOG.info(
        "expert: %d train episodes (%d frames), %d validation; %s features; head %s; %s",
        len(split.train),
        len(train_samples),
        len(split.val),
        "cached" if manifest is not None else "live",
        args.head,
        space,
    )
    result = common.train_loop(
        args,
        start=start,
        step_fn=step_losses,
        train_samples=train_samples,
        params=params,
        optimizer=optimizer,
        evaluate=evaluate,
        save=save,
        log=log,
        desc="expert",
    )
    result.update(
        {
            "stage": STAGE,
            "out": str(args.out),
            "seconds": clock.elapsed(),
            "train_episodes": len(split.train),
            "val_episodes": len(split.val),
            "train_frames": len(train_samples),
            "cameras": prepared.cameras,
            "head": args.head,
            "max_delta": space.max_delta if space.kind == "delta" else None,
            "vl_fingerprint": identity["fingerprint"],
        }
    )
    return result


#: A VL model directory up to this size is copied into the checkpoint (the tiny
#: default, tuned, is a few MB); a bigger one (a real 3B model) is referenced by path.
EMBED_LIMIT_BYTES = 256 << 20


def _embeddable(ref: str) -> bool:
    root = Path(ref)
    if not root.is_dir():
        return False
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return size <= EMBED_LIMIT_BYTES


__all__ = ["CachedFeatures", "DatasetError", "LiveFeatures", "add_arguments", "run"]
