"""QwenVLAPolicy end to end on the tiny default: heads, action space, options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drivers.base import Frame, RobotState, SensorReading
from policies.base import Policy
from policies.errors import PolicyConfigError, PolicyError
from policies.qwen_vla.policy import QwenVLAPolicy


def _frames(make_images, n: int = 2, seed: int = 0) -> list[Frame]:
    return [Frame(f"cam{i}", img, 0.0, 0) for i, img in enumerate(make_images(n, seed))]


def _state(dof: int, value: float = 0.5) -> RobotState:
    return RobotState(np.full(dof, value), np.zeros(dof), 0.0)


@pytest.mark.parametrize("head", ["regression", "flow"])
def test_heads_give_finite_chunks_of_configured_shape(head, tiny_cache, make_images, make_robot):
    policy = QwenVLAPolicy.from_options(
        {"head": head, "horizon": 5, "flow_steps": 3, "cache_dir": str(tiny_cache)}
    )
    assert isinstance(policy, Policy)
    robot = make_robot(6)
    policy.load("cpu", robot, 0.1)
    features = policy.encode_vl(_frames(make_images), "pick up the red cube")
    assert features.shape == (1, 1, policy.encoder.hidden_size)
    chunk = policy.act(features, _state(6), {})
    assert chunk.shape == (5, 6)
    assert np.isfinite(chunk).all()
    # Untrained default: absolute targets within max_delta of the current position.
    assert np.abs(chunk - 0.5).max() <= policy.config.action_space.max_delta + 1e-12
    np.testing.assert_array_equal(chunk, policy.act(features, _state(6), {}))


def test_sensor_encoder_is_used_when_enabled(tiny_cache, make_images, make_robot):
    policy = QwenVLAPolicy.from_options({"sensors": "ft:6", "cache_dir": str(tiny_cache)})
    policy.load("cpu", make_robot(6), 0.1)
    features = policy.encode_vl(_frames(make_images, 1), "push")
    with pytest.raises(PolicyError, match="sensor 'ft'"):
        policy.act(features, _state(6), {})
    a = policy.act(features, _state(6), {"ft": SensorReading("ft", np.zeros(6), 0.0)})
    b = policy.act(features, _state(6), {"ft": SensorReading("ft", np.full(6, 5.0), 0.0)})
    assert a.shape == (8, 6)
    assert not np.array_equal(a, b)


def test_bad_options_are_refused_with_the_option_named(tmp_path):
    with pytest.raises(PolicyConfigError, match="bogus"):
        QwenVLAPolicy.from_options({"bogus": 1})
    with pytest.raises(PolicyConfigError, match="head"):
        QwenVLAPolicy.from_options({"head": "diffusion"})
    with pytest.raises(PolicyConfigError, match="sensors"):
        QwenVLAPolicy.from_options({"sensors": "ft"})
    with pytest.raises(PolicyConfigError, match="min_pixels"):
        QwenVLAPolicy.from_options({"min_pixels": 10_000, "max_pixels": 100})


def test_missing_vl_model_is_a_config_error(tmp_path):
    # Found when the policy is configured, before the controller connects anything.
    with pytest.raises(PolicyConfigError, match="no such model directory"):
        QwenVLAPolicy.from_options({"vl_model": str(tmp_path / "absent")})


def test_wrong_feature_shape_is_refused(tiny_cache, make_robot):
    policy = QwenVLAPolicy.from_options({"cache_dir": str(tiny_cache)})
    policy.load("cpu", make_robot(6), 0.1)
    with pytest.raises(PolicyError, match="features of shape"):
        policy.act(torch.zeros(1, 1, 7), _state(6), {})
