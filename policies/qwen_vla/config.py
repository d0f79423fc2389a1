"""The policy's configuration, stored as `config.json` in a checkpoint.

Everything needed to rebuild the networks and to reproduce the features they
were trained on lives here: dimensions, horizon, head, action space,
normalisation statistics, image bounds and pooling. A checkpoint is only
trustworthy if these values travel with its weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from drivers.options import option, validate
from policies.errors import CheckpointError, PolicyConfigError

FORMAT_VERSION = 1
Head = Literal["regression", "flow"]
ActionKind = Literal["delta", "absolute"]
StateInput = Literal["positions", "velocities"]

#: Real-time friendly bounds: about 64 merged tokens per image (224x224 worth).
DEFAULT_MIN_PIXELS = 4 * 28 * 28
DEFAULT_MAX_PIXELS = 64 * 28 * 28

# Bounds on every size a config.json can ask for. A checkpoint is input like
# any other: without them `"model_dim": 1000000` allocates terabytes before
# any check runs. They are far above any real policy and far below harm.
#: Width of a feature or of the expert (Qwen2.5-VL-72B's hidden size is 8192).
MAX_WIDTH = 65536
#: Joints an arm can have.
MAX_ACTION_DIM = 1024
#: Rows of an action chunk.
MAX_HORIZON = 1024
#: Euler steps of the flow head (each one is a forward pass per tick).
MAX_FLOW_STEPS = 1000
#: Auxiliary sensors, and values per sensor.
MAX_SENSORS, MAX_SENSOR_DIM = 64, 65536
#: Image bounds: Qwen2.5-VL's own maximum (16384 merged 28x28 patches).
MAX_IMAGE_PIXELS = 16384 * 28 * 28
#: A delta policy's largest step per control period (rad): more is no "delta".
MAX_DELTA = math.pi
#: config.json is a few KiB; anything bigger is not one.
MAX_CONFIG_BYTES = 16 << 20


def _count(name: str, value: object, high: int) -> int:
    """An integer size in [1, high]; bools and floats are refused (`1.5` layers is a typo)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ValueError(f"{name} must be an integer in [1, {high}], got {value!r}")
    return value


@dataclass(frozen=True)
class Preprocessing:
    """What turns images + instruction into model inputs, and the feature out.

    The cache manifest records this; a mismatch between training-time cache
    and run time would feed the action expert features it never saw.
    """

    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    system_prompt: str | None = None
    pooling: Literal["mean"] = "mean"

    def __post_init__(self) -> None:
        _count("min_pixels", self.min_pixels, MAX_IMAGE_PIXELS)
        _count("max_pixels", self.max_pixels, MAX_IMAGE_PIXELS)
        if not (0 < self.min_pixels <= self.max_pixels):
            raise ValueError(
                f"image bounds: need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}"
            )
        if self.pooling != "mean":
            raise ValueError(f"pooling {self.pooling!r} is not supported (accepted: 'mean')")


@dataclass(frozen=True)
class NormStats:
    """Per-dimension mean and std; inputs are fed as (x - mean) / std."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"norm stats: {len(self.mean)} means but {len(self.std)} stds")
        for v in (*self.mean, *self.std):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"norm stats: every value must be a finite number, got {v!r}")
        if any(not s > 0 for s in self.std):
            raise ValueError("norm stats: every std must be > 0")

    @property
    def dim(self) -> int:
        return len(self.mean)

    @classmethod
    def identity(cls, dim: int) -> NormStats:
        return cls((0.0,) * dim, (1.0,) * dim)


@dataclass(frozen=True)
class ActionSpace:
    """How the network's normalised output becomes joint targets.

    `delta`: target = current position + max_delta * tanh(out): bounded and
    small, so even an untrained network keeps a real arm near where it is.
    `absolute`: target = out * norm.std + norm.mean.
    """

    kind: ActionKind = "delta"
    max_delta: float = 0.02
    norm: NormStats | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("delta", "absolute"):
            raise ValueError(f"action space: kind {self.kind!r} is not 'delta' or 'absolute'")
        if self.kind == "delta" and not (
            isinstance(self.max_delta, (int, float))
            and not isinstance(self.max_delta, bool)
            and 0 < self.max_delta <= MAX_DELTA
        ):
            raise ValueError(
                f"action space: max_delta must be in (0, {MAX_DELTA:.4f}] rad, got {self.max_delta!r}"
            )
        if self.kind == "absolute" and self.norm is None:
            raise ValueError("action space 'absolute' needs norm statistics")

    #: Largest |ratio| a delta target is clipped to before atanh (atanh(1 - 1e-3) = 3.8).
    RATIO_LIMIT: ClassVar[float] = 1.0 - 1e-3

    def to_targets(self, positions: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The network's normalised output (..., horizon, dof) -> absolute joint targets.

        `positions` (dof,) or (..., 1, dof) is the state the output was computed from.
        The one definition run time (`QwenVLAPolicy.act`) and training (`from_targets`,
        its inverse) share.
        """
        out = np.asarray(out, dtype=np.float64)
        if self.kind == "delta":
            return np.asarray(positions, dtype=np.float64) + self.max_delta * np.tanh(out)
        assert self.norm is not None
        return out * np.asarray(self.norm.std) + np.asarray(self.norm.mean)

    def from_targets(self, positions: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Absolute joint targets -> the normalised output that `to_targets` maps back to them.

        A delta beyond `max_delta` cannot be reached: its ratio is clipped to
        +-`RATIO_LIMIT` first (the output is then as close as tanh allows).
        """
        targets = np.asarray(targets, dtype=np.float64)
        if self.kind == "delta":
            ratio = (targets - np.asarray(positions, dtype=np.float64)) / self.max_delta
            return np.arctanh(np.clip(ratio, -self.RATIO_LIMIT, self.RATIO_LIMIT))
        assert self.norm is not None
        return (targets - np.asarray(self.norm.mean)) / np.asarray(self.norm.std)


@dataclass(frozen=True)
class VLAConfig:
    """Dimensions and statistics of one trained (or default) policy."""

    vl_model: str
    vl_hidden: int
    action_dim: int
    horizon: int = 8
    head: Head = "regression"
    flow_steps: int = 5
    flow_seed: int = 0
    model_dim: int = 256
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    robot_state_enabled: bool = True
    state_inputs: tuple[StateInput, ...] = ("positions",)
    state_norm: NormStats | None = None
    sensor_enabled: bool = False
    sensors: tuple[tuple[str, int], ...] = ()
    sensor_norm: NormStats | None = None
    action_space: ActionSpace = field(default_factory=ActionSpace)
    vl_fingerprint: str | None = None
    joint_names: tuple[str, ...] | None = None
    #: The cameras the policy was trained on, in the order their images were fed to the VL
    #: model (a dataset's camera names). None: any cameras (an untrained policy, or a
    #: checkpoint from before this field), fed in the order the controller lists them.
    cameras: tuple[str, ...] | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        # Sizes first: everything below, and the modules built from this
        # config, trust them.
        for name, high in (
            ("vl_hidden", MAX_WIDTH),
            ("model_dim", MAX_WIDTH),
            ("action_dim", MAX_ACTION_DIM),
            ("horizon", MAX_HORIZON),
            ("flow_steps", MAX_FLOW_STEPS),
        ):
            _count(name, getattr(self, name), high)
        if isinstance(self.flow_seed, bool) or not isinstance(self.flow_seed, int):
            raise ValueError(f"flow_seed must be an integer, got {self.flow_seed!r}")
        if len(self.sensors) > MAX_SENSORS:
            raise ValueError(f"at most {MAX_SENSORS} sensors, got {len(self.sensors)}")
        for sensor, dim in self.sensors:
            _count(f"sensor {sensor!r} dim", dim, MAX_SENSOR_DIM)
        if self.head not in ("regression", "flow"):
            raise ValueError(f"head {self.head!r} is not one of 'regression', 'flow'")
        if self.robot_state_enabled:
            if not self.state_inputs:
                raise ValueError("robot_state_enabled needs at least one state input")
            bad = [s for s in self.state_inputs if s not in ("positions", "velocities")]
            if bad:
                raise ValueError(
                    f"state_inputs {bad} not accepted (accepted: positions, velocities)"
                )
            if self.state_norm is not None and self.state_norm.dim != self.state_dim:
                raise ValueError(
                    f"state_norm has {self.state_norm.dim} entries, state inputs have {self.state_dim}"
                )
        if self.sensor_enabled:
            if not self.sensors:
                raise ValueError("sensor_enabled needs at least one sensor (name, dim)")
            if self.sensor_norm is not None and self.sensor_norm.dim != self.sensor_dim:
                raise ValueError(
                    f"sensor_norm has {self.sensor_norm.dim} entries, sensors have {self.sensor_dim}"
                )
        if self.cameras is not None:
            if not self.cameras or not all(isinstance(c, str) and c for c in self.cameras):
                raise ValueError(f"cameras must be non-empty names, got {list(self.cameras)!r}")
            if len(set(self.cameras)) != len(self.cameras):
                raise ValueError(f"cameras must be distinct, got {list(self.cameras)}")
        norm = self.action_space.norm
        if norm is not None and norm.dim != self.action_dim:
            raise ValueError(f"action norm has {norm.dim} entries, action_dim is {self.action_dim}")

    @property
    def state_dim(self) -> int:
        return self.action_dim * len(self.state_inputs)

    @property
    def sensor_dim(self) -> int:
        return sum(d for _, d in self.sensors)

    # -- JSON --------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VLAConfig:
        if not isinstance(raw, dict):
            raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
        raw = dict(raw)
        version = raw.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"format_version {version} is not supported (this code reads {FORMAT_VERSION})"
            )

        def stats(v: Any) -> NormStats | None:
            return None if v is None else NormStats(tuple(v["mean"]), tuple(v["std"]))

        if "preprocessing" in raw:
            raw["preprocessing"] = Preprocessing(**raw["preprocessing"])
        if "action_space" in raw:
            a = dict(raw["action_space"])
            a["norm"] = stats(a.get("norm"))
            raw["action_space"] = ActionSpace(**a)
        for key in ("state_norm", "sensor_norm"):
            if key in raw:
                raw[key] = stats(raw[key])
        if "state_inputs" in raw:
            raw["state_inputs"] = tuple(raw["state_inputs"])
        if "sensors" in raw:
            raw["sensors"] = tuple((str(n), d) for n, d in raw["sensors"])
        for key in ("joint_names", "cameras"):
            if raw.get(key) is not None:
                if not isinstance(raw[key], list):
                    raise ValueError(f"{key} must be a list of names, got {raw[key]!r:.80}")
                raw[key] = tuple(raw[key])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        return cls(**raw)

    @classmethod
    def load(cls, path: Path) -> VLAConfig:
        """Read `config.json`; any problem is a `CheckpointError` naming the file.

        Only a regular file of at most `MAX_CONFIG_BYTES` is read.
        """
        if not path.exists():
            raise CheckpointError(f"checkpoint {path.parent}: missing file {path.name}")
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise CheckpointError(
                        f"checkpoint {path.parent}: {path.name} is not a regular file"
                    )
                data = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise CheckpointError(
                f"checkpoint {path.parent}: {path.name} cannot be read: {exc.strerror}"
            ) from None
        if len(data) > MAX_CONFIG_BYTES:
            raise CheckpointError(
                f"checkpoint {path.parent}: {path.name} is larger than {MAX_CONFIG_BYTES} bytes"
            )
        try:
            return cls.from_dict(json.loads(data.decode("utf-8")))
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint {path.parent}: {path.name} is invalid: {exc}"
            ) from None


@dataclass(frozen=True)
class QwenVLAOptions:
    """The policy's options: `--policy-option KEY=VALUE` or the `[policy]` table.

    This is the policy's option schema (`QwenVLAPolicy.Options`): `--help-policy`
    lists it. The shape options (head, horizon, image bounds, sensors,
    max_delta) only describe a fresh policy; with a checkpoint its config
    rules and giving them is an error rather than a silent override.
    """

    checkpoint: str | None = option(
        None,
        help="a trained policy: a directory with config.json, encoders.safetensors and"
        " action_expert.safetensors (optionally vl_model/)",
        metavar="DIR",
    )
    vl_model: str | None = option(
        None,
        help="the Qwen2.5-VL model: a directory, or a hub id already in the local Hugging Face"
        " cache (nothing is downloaded)",
        default_text="the checkpoint's, else the tiny built-in model",
    )
    cache_dir: str | None = option(
        None,
        help="where the tiny built-in model is built on first use",
        default_text="$VLA_CONTROLLER_CACHE, else ~/.cache/vla-controller",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", help="dtype of the VL model (auto: bfloat16 on CUDA, float32 on CPU)"
    )
    head: Literal["regression", "flow"] | None = option(
        None, help="action head of a fresh policy", default_text="regression"
    )
    horizon: int | None = option(
        None,
        help="rows of each action chunk of a fresh policy",
        low=1,
        high=MAX_HORIZON,
        default_text="8",
    )
    flow_steps: int | None = option(
        None,
        help="Euler steps of a fresh flow head",
        low=1,
        high=MAX_FLOW_STEPS,
        default_text="5",
    )
    min_pixels: int | None = option(
        None,
        help="smallest image area fed to the VL model (fresh policy)",
        unit="pixels",
        low=1,
        high=MAX_IMAGE_PIXELS,
        default_text=str(DEFAULT_MIN_PIXELS),
    )
    max_pixels: int | None = option(
        None,
        help="largest image area fed to the VL model (fresh policy)",
        unit="pixels",
        low=1,
        high=MAX_IMAGE_PIXELS,
        default_text=str(DEFAULT_MAX_PIXELS),
    )
    sensors: str | None = option(
        None,
        help="sensors a fresh policy encodes, NAME:DIM,... (e.g. ft:6,gripper:1)",
        default_text="none",
    )
    max_delta: float | None = option(
        None,
        help="largest step per control period of a fresh delta policy",
        unit="rad",
        low=0.0,
        low_open=True,
        high=MAX_DELTA,
        default_text="0.02 rad",
    )
    seed: int = option(0, help="seed of a fresh policy's random weights")

    def __post_init__(self) -> None:
        validate(self, error=PolicyConfigError, where="qwen-vla: ")

    def shape_options(self) -> dict[str, Any]:
        names = (
            "head",
            "horizon",
            "flow_steps",
            "min_pixels",
            "max_pixels",
            "sensors",
            "max_delta",
        )
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def preprocessing(self) -> Preprocessing:
        try:
            return Preprocessing(
                min_pixels=self.min_pixels or DEFAULT_MIN_PIXELS,
                max_pixels=self.max_pixels or DEFAULT_MAX_PIXELS,
            )
        except ValueError as exc:
            raise PolicyConfigError(f"qwen-vla: {exc}") from None

    def sensor_spec(self) -> tuple[tuple[str, int], ...]:
        if not self.sensors:
            return ()
        out = []
        for item in self.sensors.split(","):
            name, _, dim = item.strip().partition(":")
            if not name or not dim.isdigit() or int(dim) <= 0:
                raise PolicyConfigError(
                    f"qwen-vla: option 'sensors': {item!r} is not NAME:DIM (e.g. 'ft:6')"
                )
            out.append((name, int(dim)))
        return tuple(out)
