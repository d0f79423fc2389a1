"""`QwenVLAPolicy`: the Qwen2.5-VL action policy the controller drives.

`encode_vl` (VL worker thread) and `act` (action worker thread) run
concurrently: each touches only its own modules (the VL model, resp. the
encoders + expert), and the only thing passed between them is the feature
tensor, read-only. The policy has no asyncio and no background threads.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drivers.base import Frame, RobotInfo, RobotState, SensorReading
from policies.base import parse_options
from policies.errors import CheckpointError, PolicyConfigError, PolicyError
from policies.lerobot_dataset import sanitize_camera
from policies.qwen_vla import checkpoint as ckpt
from policies.qwen_vla.action_expert import ActionModel, check_parameter_budget
from policies.qwen_vla.config import ActionSpace, NormStats, QwenVLAOptions, VLAConfig
from policies.qwen_vla.vl_encoder import VLEncoder, check_model_ref

LOG = logging.getLogger(__name__)


def build_vl_encoder(options: QwenVLAOptions, device: str | torch.device = "cpu") -> VLEncoder:
    """The VL encoder these options describe: the checkpoint's model and image
    bounds, else `vl_model`, else the tiny default (built on first use).

    Shared by the policy, the VL cache builder and the benchmark, so all three
    encode with the same model and preprocessing.
    """
    if options.checkpoint:
        root = Path(options.checkpoint)
        config = ckpt.load_config(root)
        ref = options.vl_model or ckpt.resolve_vl_ref(config, root)
        pp = config.preprocessing
    else:
        pp = options.preprocessing()
        if options.vl_model:
            ref = options.vl_model
        else:
            from policies.qwen_vla.tiny_default import tiny_model_dir

            ref = str(
                tiny_model_dir(
                    options.cache_dir, min_pixels=pp.min_pixels, max_pixels=pp.max_pixels
                )
            )
    return VLEncoder.load(ref, pp, device, options.dtype)


def default_config(
    options: QwenVLAOptions, robot: RobotInfo, vl_hidden: int, vl_ref: str
) -> VLAConfig:
    """A fresh (untrained) policy for this robot: deltas around the current
    position, state normalised to the robot's joint range."""
    lower = np.asarray(robot.limits.lower, dtype=float)
    upper = np.asarray(robot.limits.upper, dtype=float)
    mid = (lower + upper) / 2
    half = np.maximum((upper - lower) / 2, 1e-3)
    sensors = options.sensor_spec()
    try:
        config = VLAConfig(
            vl_model=vl_ref,
            vl_hidden=vl_hidden,
            action_dim=robot.dof,
            horizon=options.horizon or 8,
            head=options.head or "regression",
            flow_steps=options.flow_steps or 5,
            flow_seed=options.seed,
            preprocessing=options.preprocessing(),
            state_norm=NormStats(tuple(mid.tolist()), tuple(half.tolist())),
            sensor_enabled=bool(sensors),
            sensors=sensors,
            action_space=ActionSpace(kind="delta", max_delta=options.max_delta or 0.02),
            joint_names=robot.joint_names,
        )
        check_parameter_budget(config)
    except ValueError as exc:
        raise PolicyConfigError(f"qwen-vla: {exc}") from None
    return config


def preload_vision_stack() -> None:
    """Import the VL preprocessing stack now, while the policy is configured, before any
    driver connects.

    `qwen_vl_utils` imports torchvision, which imports triton, whose library carries its
    own LLVM. Loaded after Mesa's EGL has started (the sim camera's MuJoCo renderer,
    which runs on Mesa's LLVM), it crashes the process with a segmentation fault
    (measured: `python -m controller --robot sim --camera sim://front`); loaded before,
    both work. It would be imported at the first encode anyway.
    """
    import qwen_vl_utils  # noqa: F401


class QwenVLAPolicy:
    """Qwen2.5-VL features + state/sensor encoders + action expert -> joint targets."""

    name = "qwen-vla"
    Options = QwenVLAOptions

    def __init__(self, options: QwenVLAOptions) -> None:
        self.options = options
        self.config: VLAConfig | None = None
        self.encoder: VLEncoder | None = None
        self.model: ActionModel | None = None
        self.robot: RobotInfo | None = None
        self.device = torch.device("cpu")
        self._vl_source: Path | None = None

    # -- construction ----------------------------------------------------------

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> QwenVLAPolicy:
        opts = parse_options(QwenVLAOptions, options, what="qwen-vla")
        preload_vision_stack()
        if opts.checkpoint:
            extra = opts.shape_options()
            if extra:
                raise PolicyConfigError(
                    f"qwen-vla: options {sorted(extra)} describe a fresh policy; the checkpoint"
                    f" {opts.checkpoint} fixes them in its config.json"
                )
            root = Path(opts.checkpoint)
            if not root.is_dir():
                raise CheckpointError(f"checkpoint {root}: no such directory")
            config = ckpt.load_config(root)  # fail now, not at load
            check_model_ref(opts.vl_model or ckpt.resolve_vl_ref(config, root))
        else:
            opts.preprocessing()
            opts.sensor_spec()
            if opts.vl_model:
                check_model_ref(opts.vl_model)
        return cls(opts)

    @classmethod
    def from_pretrained(cls, ckpt_dir: str | Path, **options: Any) -> QwenVLAPolicy:
        return cls.from_options({"checkpoint": str(ckpt_dir), **options})

    def load(self, device: str, robot: RobotInfo, control_period: float) -> None:
        """Load weights on `device` and check the policy fits `robot`: both halves, here."""
        self.load_action(device, robot, control_period, self.load_vl(device, robot, control_period))

    def load_vl(self, device: str, robot: RobotInfo, control_period: float) -> dict[str, Any]:
        """The VL half (what `encode_vl` needs): the encoder, and a checkpoint's camera order.

        Returns what `load_action` needs to know of the encoder. The process VL
        lane calls this in its worker and `load_action` in the controller's
        process, which then never loads the VL model (`policies.base.SplitLoad`).
        """
        dev = torch.device(device)
        if self.options.checkpoint:
            config = ckpt.load_config(Path(self.options.checkpoint))
            self._check_joint_count(config, robot)  # before the (slow) VL load
            self.config = config
        encoder = build_vl_encoder(self.options, dev)
        self.encoder, self.device = encoder, dev
        return {
            "hidden_size": encoder.hidden_size,
            "ref": encoder.ref,
            "fingerprint": encoder.fingerprint(),
        }

    def load_action(
        self, device: str, robot: RobotInfo, control_period: float, vl: Mapping[str, Any]
    ) -> None:
        """The action half (what `act` needs), for the VL model `vl` describes (`load_vl`)."""
        dev = torch.device(device)
        opts = self.options
        if opts.checkpoint:
            config, model = ckpt.load_checkpoint(opts.checkpoint)
            self._check_joint_count(config, robot)
            if config.joint_names is not None and tuple(config.joint_names) != robot.joint_names:
                LOG.warning(
                    "checkpoint joint names %s differ from robot's %s (same count: continuing)",
                    config.joint_names,
                    robot.joint_names,
                )
            if vl["hidden_size"] != config.vl_hidden:
                raise CheckpointError(
                    f"checkpoint {opts.checkpoint}: VL model {vl['ref']} has hidden size"
                    f" {vl['hidden_size']}, the action expert expects {config.vl_hidden}"
                )
            if config.vl_fingerprint and vl["fingerprint"] != config.vl_fingerprint:
                LOG.warning(
                    "VL model %s is not the one this checkpoint was trained with (fingerprint %s != %s)",
                    vl["ref"],
                    vl["fingerprint"],
                    config.vl_fingerprint,
                )
        else:
            config = default_config(opts, robot, vl["hidden_size"], vl["ref"])
            config = dataclasses.replace(config, vl_fingerprint=vl["fingerprint"])
            torch.manual_seed(opts.seed)
            model = ActionModel(config).eval()
            LOG.warning(
                "qwen-vla: no checkpoint: untrained action expert (random weights, seed %d);"
                " actions are small bounded deltas around the current position",
                opts.seed,
            )
        model.requires_grad_(False)
        self.model = model.to(dev)
        self.config, self.robot, self.device = config, robot, dev

    def _check_joint_count(self, config: VLAConfig, robot: RobotInfo) -> None:
        if config.action_dim != robot.dof:
            raise PolicyConfigError(
                f"qwen-vla: checkpoint {self.options.checkpoint} predicts {config.action_dim}"
                f" joints, robot {robot.name!r} has {robot.dof}"
            )

    # -- the two real-time entry points -----------------------------------------

    def encode_vl(self, frames: Sequence[Frame], instruction: str) -> torch.Tensor:
        """Frames + instruction -> pooled feature (1, 1, hidden) on the device."""
        if self.encoder is None:
            raise PolicyError("qwen-vla: encode_vl called before load")
        if not frames:
            raise PolicyError("qwen-vla: encode_vl needs at least one frame")
        if self.config is not None and self.config.cameras is not None:
            frames = self._in_trained_order(frames, self.config.cameras)
        return self.encoder.encode([f.image for f in frames], instruction)

    def _in_trained_order(self, frames: Sequence[Frame], cameras: Sequence[str]) -> list[Frame]:
        """The frames in the order of the cameras the checkpoint was trained on.

        The same cameras listed in another order are put in the trained order (the
        features depend on the order); any other set of cameras is refused, naming both.
        Names compare as a dataset stores them (`sanitize_camera`).
        """
        by_name = {sanitize_camera(f.camera): f for f in frames}
        if len(by_name) != len(frames) or set(by_name) != set(cameras):
            raise PolicyError(
                f"qwen-vla: checkpoint {self.options.checkpoint} was trained on cameras"
                f" {list(cameras)}; the controller gives frames of"
                f" {[f.camera for f in frames]} (run it with exactly those cameras)"
            )
        return [by_name[c] for c in cameras]

    def act(
        self,
        features: Any,
        state: RobotState,
        sensors: Mapping[str, SensorReading],
    ) -> np.ndarray:
        """-> (horizon, dof) absolute joint targets (rad), clipped to joint limits."""
        model, config, robot = self.model, self.config, self.robot
        if model is None or config is None or robot is None:
            raise PolicyError("qwen-vla: act called before load")
        vl = torch.as_tensor(features, device=self.device, dtype=torch.float32)
        if vl.shape != (1, 1, config.vl_hidden):
            raise PolicyError(
                f"qwen-vla: features of shape {tuple(vl.shape)}, expected (1, 1, {config.vl_hidden})"
            )
        positions = np.asarray(state.positions, dtype=np.float64)
        if positions.shape != (robot.dof,):
            raise PolicyError(
                f"qwen-vla: state has {positions.shape} positions, robot has {robot.dof}"
            )
        state_t = self._state_tensor(state) if config.robot_state_enabled else None
        sensor_t = self._sensor_tensor(sensors) if config.sensor_enabled else None
        with torch.inference_mode():
            out = model(vl, state_t, sensor_t)[0].to(torch.float64).cpu().numpy()
        targets = config.action_space.to_targets(positions[None, :], out)
        return np.clip(targets, robot.limits.lower, robot.limits.upper)

    def _state_tensor(self, state: RobotState) -> torch.Tensor:
        assert self.config is not None
        parts = [
            np.asarray(getattr(state, name), dtype=np.float32) for name in self.config.state_inputs
        ]
        return torch.as_tensor(np.concatenate(parts)[None, :], device=self.device)

    def _sensor_tensor(self, sensors: Mapping[str, SensorReading]) -> torch.Tensor:
        assert self.config is not None
        parts = []
        for name, dim in self.config.sensors:
            reading = sensors.get(name)
            if reading is None:
                raise PolicyError(
                    f"qwen-vla: no reading from sensor {name!r} (have: {sorted(sensors) or 'none'})"
                )
            values = np.asarray(reading.values, dtype=np.float32).reshape(-1)
            if values.shape[0] != dim:
                raise PolicyError(
                    f"qwen-vla: sensor {name!r} gave {values.shape[0]} values, expected {dim}"
                )
            parts.append(values)
        return torch.as_tensor(np.concatenate(parts)[None, :], device=self.device)

    # -- persistence ---------------------------------------------------------------

    def save_pretrained(self, out_dir: str | Path, *, embed_vl: bool | None = None) -> Path:
        """Write a checkpoint. `embed_vl` copies the VL model in (default: only
        when it is the tiny default, whose directory is a few MB)."""
        if self.model is None or self.config is None or self.encoder is None:
            raise PolicyError("qwen-vla: save_pretrained before load")
        vl_dir = Path(self.encoder.ref)
        if embed_vl is None:
            embed_vl = (vl_dir / "tiny_default.json").is_file()
        return ckpt.save_checkpoint(out_dir, self.config, self.model, vl_dir if embed_vl else None)
