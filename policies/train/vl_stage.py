"""`python -m policies.train vl`: tune the VL model end to end on a dataset.

The tiny default VL has random weights: its pooled feature carries where an
object is along the image's rows far better than along its columns (image
tokens are in raster order and the language model is causal), so an expert
trained on frozen features cannot find the named cube. This stage trains the
VL model itself, with a small head on its pooled feature:

- the feature is computed exactly as at run time (`VLEncoder.preprocess` and
  `VLEncoder.pool`: the processor's chat template, image bounds, the masked
  mean pool of the last hidden state), with gradients, on padded batches;
- the loss is behaviour cloning of the action chunk given the feature and the
  state (an `ActionModel` regression head, in the checkpoint's action space),
  plus, with `--aux-target named-cube-xy`, the named cube's (x, y) on the
  table predicted linearly from the feature: privileged supervision from
  `observation.environment_state`, used only here, never at run time.

The output is a model directory that `from_pretrained` loads (processor and
tokenizer beside the weights), with `vla_tuning.json` recording the cameras,
image bounds and provenance that the VL cache and the expert stage read, and
`training/` holding what `--resume` needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from drivers.sim.task import COLOURS, instruction_for
from policies.qwen_vla.action_expert import ActionModel
from policies.qwen_vla.config import VLAConfig
from policies.qwen_vla.vl_encoder import VLEncoder
from policies.train import common, rundir
from policies.train.data import (
    AUX_TARGETS,
    CUBE_FIELDS,
    N_CUBES,
    EpisodeStore,
    choose_action_space,
    chunk_targets,
    cubes_xy,
    named_cube_xy,
    norm_stats,
)
from policies.train.rundir import TrainError

STAGE = "vl"
#: Processor outputs that are token sequences (padded on the right), and those that
#: are per image (concatenated): a batch of separately preprocessed samples is then
#: exactly the processor's own padded batch (tested).
SEQUENCE_KEYS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"})
IMAGE_KEYS = frozenset({"pixel_values", "image_grid_thw"})
VL_RUN_KEYS = (
    *common.RUN_KEYS,
    "vl_model",
    "aux_target",
    "aux_weight",
    "aux_swap",
    "head_dim",
    "freeze_vl",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_common(p, steps=1000, batch=16, lr=3e-4)
    p.add_argument(
        "--vl-model",
        help="VL model to tune: a directory or a downloaded hub id (default: the tiny default)",
    )
    p.add_argument(
        "--aux-target",
        choices=AUX_TARGETS,
        default="none",
        help="auxiliary target from observation.environment_state (training only):"
        " named-cube-xy = the (x, y) of the cube the task names; cubes-xy = that, plus"
        " every cube's (x, y) (the aux RMSE reported is the named cube's)",
    )
    p.add_argument("--aux-weight", type=common.positive_float, default=1.0, help="(1)")
    p.add_argument(
        "--aux-swap",
        type=common.fraction,
        default=0.0,
        help="fraction of training samples whose instruction is swapped for one naming another"
        " cube, the aux target then that cube's (x, y) and no BC loss (0). Why: in most frames"
        " the arm already heads to the named cube, so the aux probe can answer from the arm"
        " and never learns to read the instruction (measured: the tuned VL's probe gave the"
        " same answer for all three colours on a frame before the arm moved)",
    )
    p.add_argument(
        "--head-dim", type=common.positive_int, default=128, help="width of the BC head (128)"
    )
    p.add_argument(
        "--frame-cache-mb",
        type=common.positive_float,
        default=2048,
        help="memory for decoded frames, reused across steps (2048). Why: a dataset whose"
        " frames do not fit is decoded again, whole episode by whole episode, as samples come"
        " back round (measured: 1777 episodes, 2 cameras at 224 px: 7 GB of frames; at 2 GB,"
        " 2.5 s per step instead of about 0.4)",
    )
    p.add_argument(
        "--preprocess-cache-mb",
        type=float,
        default=2048,
        help="memory for preprocessed samples, reused across steps (2048)",
    )
    p.add_argument(
        "--freeze-vl",
        action="store_true",
        help="train the heads only (a linear probe of the untuned VL's feature: the baseline"
        " that tuning is measured against)",
    )
    p.add_argument(
        "--stop-after",
        type=common.positive_int,
        default=None,
        help="run at most this many steps now, save, and exit (--resume continues)",
    )


def collate(items: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Separately preprocessed samples -> one right-padded batch, as the processor pads."""
    length = max(int(it["input_ids"].shape[1]) for it in items)
    out: dict[str, torch.Tensor] = {}
    for key in items[0]:
        if key in SEQUENCE_KEYS:
            value = pad_id if key == "input_ids" else 0
            out[key] = torch.cat(
                [
                    nn.functional.pad(it[key], (0, length - int(it[key].shape[1])), value=value)
                    for it in items
                ]
            )
        elif key in IMAGE_KEYS:
            out[key] = torch.cat([it[key] for it in items])
        else:
            raise TrainError(
                f"the VL processor returns {key!r}, which batching does not know how to pad"
            )
    return out


class PreprocessMemo:
    """Preprocessed samples kept across steps (an LRU bounded in bytes).

    Preprocessing (resizing, patching, tokenising) costs about as much as the tiny
    model's forward pass, and its result for a frame never changes.
    """

    def __init__(self, encoder: VLEncoder, budget_mb: float) -> None:
        self.encoder = encoder
        self.budget = int(budget_mb * 2**20)
        self.bytes = 0
        self.items: OrderedDict[Any, dict[str, torch.Tensor]] = OrderedDict()
        self.pad_id = int(encoder.processor.tokenizer.pad_token_id)

    def get(self, key: Any, images: Any, instruction: str) -> dict[str, torch.Tensor]:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        inputs = self.encoder.preprocess([(images(), instruction)])
        item = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        size = sum(v.nbytes for v in item.values())
        if size <= self.budget:
            self.items[key] = item
            self.bytes += size
            while self.bytes > self.budget:
                _, old = self.items.popitem(last=False)
                self.bytes -= sum(v.nbytes for v in old.values())
        return item

    def batch(
        self,
        store: EpisodeStore,
        samples: Sequence[tuple[int, int]],
        instructions: Sequence[str | None] | None = None,
    ) -> dict:
        """The samples' model inputs; `instructions[i]`, when given and not None, replaces
        sample i's own task."""
        override = instructions or [None] * len(samples)
        items = [
            self.get(
                (e, k) if text is None else (e, k, text),
                lambda e=e, k=k: store.images(e, k),
                store.tasks[e] if text is None else text,
            )
            for (e, k), text in zip(samples, override, strict=True)
        ]
        return collate(items, self.pad_id)


class TuningHeads(nn.Module):
    """What is trained on top of the VL's pooled feature: the BC head and the aux probe."""

    def __init__(self, config: VLAConfig, aux_dim: int) -> None:
        super().__init__()
        self.action = ActionModel(config)
        h = config.vl_hidden
        self.aux = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, aux_dim)) if aux_dim else None


def load_encoder(ref: str | Path, pp: Any, device: str) -> VLEncoder:
    encoder = VLEncoder.load(ref, pp, device, "float32")
    encoder.model.requires_grad_(True)
    encoder.model.train()
    return encoder


def base_model_ref(args: argparse.Namespace, pp: Any) -> str:
    if args.vl_model:
        return str(args.vl_model)
    from policies.qwen_vla.tiny_default import tiny_model_dir

    return str(tiny_model_dir(args.cache_dir, min_pixels=pp.min_pixels, max_pixels=pp.max_pixels))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Tune; -> the final metrics (also in --json and the VL dir's vla_tuning.json)."""
    clock = common.Clock()
    saved_run = rundir.check_out(args.out, STAGE, resume=args.resume, overwrite=args.overwrite)
    if args.warmup is None:
        args.warmup = max(1, args.steps // 20)
    pp = common.preprocessing(args)
    args.min_pixels, args.max_pixels = pp.min_pixels, pp.max_pixels
    prepared = common.prepare(args, args.cameras)
    args.cameras = prepared.cameras
    dataset, split = prepared.dataset, prepared.split
    if args.aux_swap and args.aux_target == "none":
        raise TrainError(
            "--aux-swap needs an --aux-target (the swapped cube's place is its target)"
        )
    if args.aux_target != "none" and not dataset.has_environment_state:
        raise TrainError(
            f"--aux-target {args.aux_target}: dataset {dataset.root} has no"
            " observation.environment_state (record it with controller.collect)"
        )
    if args.threads:
        torch.set_num_threads(args.threads)

    store = EpisodeStore(
        dataset, split.train + split.val, prepared.cameras, frame_budget_mb=args.frame_cache_mb
    )
    train_rows = [store.rows[e] for e in split.train]
    space = choose_action_space(train_rows, args.horizon, args.action_space, args.max_delta)
    targets = {e: chunk_targets(store.rows[e], args.horizon, space) for e in store.episodes}
    aux: dict[int, np.ndarray] = {}
    aux_mean = aux_std = np.zeros(0)
    if args.aux_target in ("named-cube-xy", "cubes-xy"):
        target_fn = named_cube_xy if args.aux_target == "named-cube-xy" else cubes_xy
        for e in store.episodes:
            env = store.rows[e].environment_state
            assert env is not None
            aux[e] = target_fn(env)
        train_xy = np.concatenate([aux[e] for e in split.train])
        aux_mean, aux_std = train_xy.mean(axis=0), np.maximum(train_xy.std(axis=0), 1e-3)

    # The model: the base (or, resuming, the saved tuned one) and the heads.
    ref = str(args.out) if saved_run is not None else base_model_ref(args, pp)
    encoder = load_encoder(ref, pp, args.device)
    if args.freeze_vl:
        encoder.model.requires_grad_(False)
    base_fingerprint = (
        saved_run["base_fingerprint"] if saved_run is not None else encoder.fingerprint()
    )
    encoder.forget_fingerprint()  # the weights are about to change
    state_stats = norm_stats(np.concatenate([r.state for r in train_rows]))
    head_config = VLAConfig(
        vl_model=ref,
        vl_hidden=encoder.hidden_size,
        action_dim=train_rows[0].state.shape[1],
        horizon=args.horizon,
        head="regression",
        model_dim=args.head_dim,
        preprocessing=pp,
        state_norm=state_stats,
        action_space=space,
    )
    torch.manual_seed(args.seed)
    aux_dim = next(iter(aux.values())).shape[1] if aux else 0
    heads = TuningHeads(head_config, aux_dim).to(args.device)
    heads.train()
    groups = common.param_groups([encoder.model, heads], args.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    start, log = 0, []
    if saved_run is not None:
        rundir.check_same(saved_run["args"], common.run_args(args, VL_RUN_KEYS), VL_RUN_KEYS)
        state = rundir.load_state(args.out)
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        rundir.set_rng_state(state["rng"])
        start = int(state["step"])
        log = rundir.read_log(args.out)

    memo = PreprocessMemo(encoder, args.preprocess_cache_mb)
    train_samples = store.samples(split.train)
    val_samples = common.evenly(store.samples(split.val), args.val_samples)
    params = [p for g in groups for p in g["params"]]

    def tensors(samples: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
        out = {
            "state": torch.from_numpy(np.stack([store.rows[e].state[k] for e, k in samples])),
            "target": torch.from_numpy(np.stack([targets[e][k] for e, k in samples])),
        }
        if aux:
            xy = np.stack([aux[e][k] for e, k in samples])
            out["aux"] = torch.from_numpy(((xy - aux_mean) / aux_std).astype(np.float32))
        return {k: v.to(args.device) for k, v in out.items()}

    def swapped(samples: Sequence[tuple[int, int]], rng: np.random.Generator) -> list[int | None]:
        """Per sample: None (its own instruction) or, with probability --aux-swap, the index
        of another cube, drawn at random."""
        out: list[int | None] = []
        for e, k in samples:
            named = round(float(store.rows[e].environment_state[k, N_CUBES * CUBE_FIELDS]))
            if rng.random() < args.aux_swap:
                out.append(int(rng.choice([c for c in range(N_CUBES) if c != named])))
            else:
                out.append(None)
        return out

    def losses(
        samples: Sequence[tuple[int, int]], swap: Sequence[int | None] | None = None
    ) -> tuple[dict[str, torch.Tensor], Any]:
        swap = swap or [None] * len(samples)
        texts = [None if c is None else instruction_for(COLOURS[c]) for c in swap]
        batch = memo.batch(store, samples, texts)
        inputs = {k: v.to(args.device) for k, v in batch.items()}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not args.freeze_vl):
            pooled = encoder.pool(inputs)
        t = tensors(samples)
        out = heads.action(pooled, t["state"])
        own = torch.tensor([c is None for c in swap], device=out.device)
        # The BC label belongs to the instruction the expert followed: swapped samples have none.
        per_sample = ((out - t["target"]) ** 2).flatten(1).mean(dim=1)
        result = {"bc": per_sample[own].mean() if bool(own.any()) else per_sample.sum() * 0.0}
        pred = None
        if heads.aux is not None:
            pred = heads.aux(pooled[:, 0, :])
            target = t["aux"].clone()
            for i, ((e, k), c) in enumerate(zip(samples, swap, strict=True)):
                if c is not None:  # the swapped cube's place, normalised like the named one
                    env = store.rows[e].environment_state
                    xy = env[k, c * CUBE_FIELDS : c * CUBE_FIELDS + 2]
                    target[i, :2] = torch.from_numpy(
                        ((xy - aux_mean[:2]) / aux_std[:2]).astype(np.float32)
                    )
            result["aux"] = nn.functional.mse_loss(pred, target)
        return result, (out, pred)

    def measure(samples: Sequence[tuple[int, int]], prefix: str) -> dict[str, Any]:
        """Losses and errors over `samples` in eval mode: `val` (held-out episodes) or
        `fit` (a fixed set of training frames: the same numbers at every evaluation,
        so they show whether training fits at all)."""
        if not samples:
            return {}
        heads.eval()
        encoder.model.eval()
        bc, act_err, aux_err = [], [], []
        with torch.no_grad():
            for i in range(0, len(samples), args.batch):
                chunk = samples[i : i + args.batch]
                result, (out, pred) = losses(chunk)
                bc.append(float(result["bc"]) * len(chunk))
                states = np.stack([store.rows[e].state[k] for e, k in chunk])
                sent = np.stack([store.rows[e].action[k] for e, k in chunk])
                first = space.to_targets(states, out[:, 0, :].cpu().numpy())
                act_err.append((first - sent) ** 2)
                if pred is not None:
                    xy = np.stack([aux[e][k] for e, k in chunk])
                    aux_err.append((pred.cpu().numpy() * aux_std + aux_mean - xy) ** 2)
            if aux and prefix == "val":
                # Instruction grounding: the same frames, each naming the next cube; the probe
                # should move to that cube (a probe that reads the arm instead stays put).
                swap_err = []
                for i in range(0, len(samples), args.batch):
                    chunk = samples[i : i + args.batch]
                    other = [
                        (
                            round(float(store.rows[e].environment_state[k, N_CUBES * CUBE_FIELDS]))
                            + 1
                        )
                        % N_CUBES
                        for e, k in chunk
                    ]
                    _, (_, spred) = losses(chunk, other)
                    xy = np.stack(
                        [
                            store.rows[e].environment_state[
                                k, c * CUBE_FIELDS : c * CUBE_FIELDS + 2
                            ]
                            for (e, k), c in zip(chunk, other, strict=True)
                        ]
                    )
                    swap_err.append(
                        (spred.cpu().numpy()[:, :2] * aux_std[:2] + aux_mean[:2] - xy) ** 2
                    )
        heads.train()
        encoder.model.train()
        metrics: dict[str, Any] = {
            f"{prefix}_bc": sum(bc) / len(samples),
            f"{prefix}_action_rmse": float(np.sqrt(np.concatenate(act_err).mean())),
        }
        if aux_err:
            # The named cube's (x, y) are the first two outputs of either target.
            every_sq = np.concatenate(aux_err)
            every_xy = np.concatenate([aux[e][k][None] for e, k in samples])
            sq, xy = every_sq[:, :2], every_xy[:, :2]
            metrics[f"{prefix}_aux_rmse_m"] = float(np.sqrt(sq.mean()))
            if every_sq.shape[1] > 2:
                metrics[f"{prefix}_aux_cubes_rmse_m"] = float(np.sqrt(every_sq[:, 2:].mean()))
            var = xy.var(axis=0)
            # R2 per axis (x, y); undefined when the cubes never move in these frames.
            metrics[f"{prefix}_aux_r2"] = [
                float(1 - m / v) if v > 1e-12 else None
                for m, v in zip(sq.mean(axis=0), var, strict=True)
            ]
            if prefix == "val":
                metrics["val_aux_swapped_rmse_m"] = float(np.sqrt(np.concatenate(swap_err).mean()))
                metrics["val_aux_rmse_mean_predictor_m"] = float(
                    np.sqrt(((xy - aux_mean[:2]) ** 2).mean())
                )
        return metrics

    fit_samples = common.evenly(train_samples, max(1, args.val_samples // 2))

    def evaluate() -> dict[str, Any]:
        return {**measure(fit_samples, "fit"), **measure(val_samples, "val")}

    def save(step: int, metrics: dict[str, Any]) -> None:
        encoder.forget_fingerprint()
        with rundir.staged(args.out) as tmp:
            encoder.model.save_pretrained(tmp)
            encoder.processor.save_pretrained(tmp)
            tuning = {
                "kind": "vla-controller tuned VL",
                "base_model": saved_run["base_model"] if saved_run else ref,
                "base_fingerprint": base_fingerprint,
                "cameras": prepared.cameras,
                "preprocessing": dataclasses.asdict(pp),
                "dataset": str(dataset.root),
                "dataset_digest": dataset.digest(),
                "split": {"train": list(split.train), "val": list(split.val)},
                "train_seeds": common.episode_seeds(dataset, split.train),
                "action_space": dataclasses.asdict(space),
                "horizon": args.horizon,
                "aux_target": args.aux_target,
                "step": step,
                "metrics": metrics,
            }
            (tmp / common.TUNING_FILE).write_text(json.dumps(tuning, indent=2, sort_keys=True))
            run_record = {
                "stage": STAGE,
                "step": step,
                "args": common.run_args(args, VL_RUN_KEYS),
                "base_model": tuning["base_model"],
                "base_fingerprint": base_fingerprint,
                "split": tuning["split"],
            }
            state = {
                "heads": heads.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "rng": rundir.rng_state(),
            }
            rundir.write_training(tmp, run_record, state, log)

    common.LOG.info(
        "vl: %d train episodes (%d frames), %d validation episodes; cameras %s; action space %s",
        len(split.train),
        len(train_samples),
        len(split.val),
        prepared.cameras,
        space,
    )
    result = common.train_loop(
        args,
        start=start,
        step_fn=lambda samples, rng: losses(
            samples, swapped(samples, rng) if args.aux_swap else None
        )[0],
        train_samples=train_samples,
        params=params,
        optimizer=optimizer,
        evaluate=evaluate,
        save=save,
        log=log,
        desc="vl",
        aux_weight=args.aux_weight,
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
            "max_delta": space.max_delta if space.kind == "delta" else None,
            "fingerprint": encoder.fingerprint(),
        }
    )
    return result
