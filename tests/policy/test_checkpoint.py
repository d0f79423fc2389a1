"""Checkpoint round trip and clear errors for corrupt or mismatched checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from drivers.base import Frame, RobotState
from policies.errors import CheckpointError, PolicyConfigError
from policies.qwen_vla.policy import QwenVLAPolicy


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_cache, make_robot) -> tuple[QwenVLAPolicy, Path]:
    policy = QwenVLAPolicy.from_options(
        {"head": "flow", "horizon": 4, "sensors": "ft:3", "cache_dir": str(tiny_cache), "seed": 7}
    )
    policy.load("cpu", make_robot(6), 0.1)
    out = policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "policy")
    return policy, out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_round_trip_gives_identical_outputs(saved, make_images, make_robot):
    from drivers.base import SensorReading

    original, path = saved
    assert {p.name for p in path.iterdir()} >= {
        "config.json",
        "encoders.safetensors",
        "action_expert.safetensors",
        "vl_model",
    }
    loaded = QwenVLAPolicy.from_options({"checkpoint": str(path)})
    loaded.load("cpu", make_robot(6), 0.1)
    frames = [Frame("front", img, 0.0, 0) for img in make_images(2, 11)]
    f0 = original.encode_vl(frames, "stack the cup")
    f1 = loaded.encode_vl(frames, "stack the cup")
    assert torch.equal(f0, f1)
    state = RobotState(np.linspace(-1, 1, 6), np.zeros(6), 0.0)
    sensors = {"ft": SensorReading("ft", np.array([1.0, -2.0, 0.5]), 0.0)}
    np.testing.assert_array_equal(original.act(f0, state, sensors), loaded.act(f1, state, sensors))
    assert loaded.config == dataclasses.replace(original.config, vl_model="vl_model")


def test_wrong_joint_count_is_refused(saved, make_robot):
    _, path = saved
    policy = QwenVLAPolicy.from_options({"checkpoint": str(path)})
    with pytest.raises(PolicyConfigError, match=r"predicts 6 joints.*has 7"):
        policy.load("cpu", make_robot(7), 0.1)


def test_missing_file_is_named(saved, tmp_path, make_robot):
    path = _copy(saved[1], tmp_path / "c")
    (path / "action_expert.safetensors").unlink()
    policy = QwenVLAPolicy.from_options({"checkpoint": str(path)})
    with pytest.raises(CheckpointError, match=r"missing file action_expert.safetensors"):
        policy.load("cpu", make_robot(6), 0.1)


def test_missing_config_fails_at_construction(saved, tmp_path):
    path = _copy(saved[1], tmp_path / "c")
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing file config.json"):
        QwenVLAPolicy.from_options({"checkpoint": str(path)})
    with pytest.raises(CheckpointError, match="no such directory"):
        QwenVLAPolicy.from_options({"checkpoint": str(tmp_path / "nowhere")})


def test_bad_shape_is_named(saved, tmp_path, make_robot):
    path = _copy(saved[1], tmp_path / "c")
    tensors = load_file(str(path / "encoders.safetensors"))
    key = next(k for k in tensors if k.startswith("sensor.") and k.endswith("weight"))
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, *tensors[key].shape[1:])
    save_file(tensors, str(path / "encoders.safetensors"))
    policy = QwenVLAPolicy.from_options({"checkpoint": str(path)})
    with pytest.raises(CheckpointError, match=rf"encoders.safetensors: tensor {key} has shape"):
        policy.load("cpu", make_robot(6), 0.1)


def test_config_disagreeing_with_weights_is_named(saved, tmp_path, make_robot):
    path = _copy(saved[1], tmp_path / "c")
    config = json.loads((path / "config.json").read_text())
    config["sensor_enabled"] = False
    (path / "config.json").write_text(json.dumps(config))
    policy = QwenVLAPolicy.from_options({"checkpoint": str(path)})
    with pytest.raises(CheckpointError, match=r"unexpected.*sensor"):
        policy.load("cpu", make_robot(6), 0.1)


def test_corrupt_files_are_named(saved, tmp_path, make_robot):
    path = _copy(saved[1], tmp_path / "c")
    (path / "action_expert.safetensors").write_bytes(b"not a safetensors file")
    policy = QwenVLAPolicy.from_options({"checkpoint": str(path)})
    with pytest.raises(CheckpointError, match=r"action_expert.safetensors is corrupt"):
        policy.load("cpu", make_robot(6), 0.1)
    (path / "config.json").write_text("{ nope")
    with pytest.raises(CheckpointError, match=r"config.json is invalid"):
        QwenVLAPolicy.from_options({"checkpoint": str(path)})


def test_checkpoint_fixes_shape_options(saved):
    with pytest.raises(PolicyConfigError, match="horizon"):
        QwenVLAPolicy.from_options({"checkpoint": str(saved[1]), "horizon": 3})


def test_missing_embedded_vl_model_is_named(saved, tmp_path):
    import shutil

    path = _copy(saved[1], tmp_path / "c")
    shutil.rmtree(path / "vl_model")
    # Found when the policy is configured, before the controller connects anything.
    with pytest.raises(CheckpointError, match=r"missing directory vl_model/"):
        QwenVLAPolicy.from_options({"checkpoint": str(path)})
