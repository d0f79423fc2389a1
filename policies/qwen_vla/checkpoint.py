"""The checkpoint directory format.

    config.json                 VLAConfig (dims, horizon, head, action space,
                                normalisation, image bounds, pooling)
    encoders.safetensors        robot-state and sensor encoders (with norm buffers)
    action_expert.safetensors   the action expert
    vl_model/                   optional: the VL model itself; otherwise
                                config.vl_model names a directory or hub id

Loading checks everything it can before any weight is used: a missing file,
an unknown or missing tensor, or a tensor of the wrong shape raises
`CheckpointError` naming the file and the tensor.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from policies.errors import CheckpointError
from policies.qwen_vla.action_expert import ActionModel, check_parameter_budget
from policies.qwen_vla.config import VLAConfig

CONFIG_FILE = "config.json"
ENCODERS_FILE = "encoders.safetensors"
EXPERT_FILE = "action_expert.safetensors"
VL_DIR = "vl_model"
#: Where a training run keeps its resume state beside the weights (never copied into a
#: checkpoint's vl_model/, never read at run time).
TRAINING_DIR = "training"


def _split(model: ActionModel) -> dict[str, dict[str, torch.Tensor]]:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {
        ENCODERS_FILE: {k: v for k, v in state.items() if not k.startswith("expert.")},
        EXPERT_FILE: {k: v for k, v in state.items() if k.startswith("expert.")},
    }


def save_checkpoint(
    out_dir: str | Path,
    config: VLAConfig,
    model: ActionModel,
    vl_model_dir: str | Path | None = None,
) -> Path:
    """Write a checkpoint; with `vl_model_dir`, copy the VL model into it.

    Copying suits the tiny default (a few MB); a real 3B model is better
    referenced by `config.vl_model`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if vl_model_dir is not None:
        target = out / VL_DIR
        if target.exists():
            shutil.rmtree(target)
        # A tuned VL directory (`policies.train vl`) keeps its resume state in a
        # `training/` folder: run-time loading never needs it.
        shutil.copytree(vl_model_dir, target, ignore=shutil.ignore_patterns(TRAINING_DIR))
        config = _replace_vl(config, VL_DIR)
    for name, tensors in _split(model).items():
        save_file(tensors, str(out / name), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(config.to_json())
    return out


def _replace_vl(config: VLAConfig, ref: str) -> VLAConfig:
    import dataclasses

    return dataclasses.replace(config, vl_model=ref)


def resolve_vl_ref(config: VLAConfig, ckpt_dir: Path) -> str:
    """A relative `vl_model` that exists inside the checkpoint wins over a hub id."""
    inside = ckpt_dir / config.vl_model
    if not Path(config.vl_model).is_absolute() and inside.is_dir():
        return str(inside)
    if config.vl_model == VL_DIR:
        raise CheckpointError(f"checkpoint {ckpt_dir}: missing directory {VL_DIR}/ (the VL model)")
    return config.vl_model


def load_config(root: Path) -> VLAConfig:
    """A checkpoint's `config.json`, with every size and the parameter total in bounds.

    Checked before anything is allocated: the sizes are untrusted input.
    """
    config = VLAConfig.load(root / CONFIG_FILE)
    try:
        check_parameter_budget(config)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {root}: {CONFIG_FILE}: {exc}") from None
    return config


def load_checkpoint(ckpt_dir: str | Path) -> tuple[VLAConfig, ActionModel]:
    """Read config + weights into a fresh `ActionModel` (on CPU), checking shapes."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint {root}: no such directory")
    config = load_config(root)
    model = ActionModel(config)
    expected = _split(model)
    loaded: dict[str, torch.Tensor] = {}
    for name, want in expected.items():
        path = root / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {root}: missing file {name}")
        try:
            got = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {root}: {name} is corrupt: {exc}") from None
        missing = sorted(set(want) - set(got))
        unexpected = sorted(set(got) - set(want))
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {root}: {name} does not match config.json"
                f" (missing tensors: {missing or 'none'}; unexpected: {unexpected or 'none'})"
            )
        for key, tensor in got.items():
            if tuple(tensor.shape) != tuple(want[key].shape):
                raise CheckpointError(
                    f"checkpoint {root}: {name}: tensor {key} has shape {tuple(tensor.shape)},"
                    f" config.json implies {tuple(want[key].shape)}"
                )
        loaded.update(got)
    model.load_state_dict(loaded, strict=True)
    return config, model.eval()
