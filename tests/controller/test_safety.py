from __future__ import annotations

import numpy as np
import pytest

from controller.errors import ConfigError
from controller.safety import SafetyConfig, SafetyFilter
from controller.slot import Stamped
from drivers.base import RobotState
from drivers.fake import UR5_LIMITS

PERIOD = 0.1


def state(q=None, ready=True, t=0.0):
    q = np.zeros(6) if q is None else np.asarray(q, dtype=float)
    return RobotState(positions=q, velocities=np.zeros(6), capture_time=t, ready=ready)


def stamped(value, t):
    return Stamped(value, 1, t, t)


def make(mode="clamp"):
    return SafetyFilter(SafetyConfig(limit_mode=mode), UR5_LIMITS, PERIOD)


def test_inputs_must_be_fresh_and_the_robot_ready():
    f = make()
    now = 10.0
    ok_state, ok_feat = stamped(state(), now - 0.05), stamped("f", now - 0.5)
    assert f.check_inputs(now, ok_feat, ok_state) is None
    assert f.check_inputs(now, None, ok_state) == "no_features"
    assert f.check_inputs(now, ok_feat, None) == "no_state"
    assert f.check_inputs(now, stamped("f", now - 1.01), ok_state) == "features_stale"
    assert f.check_inputs(now, ok_feat, stamped(state(), now - 0.11)) == "state_stale"
    assert f.check_inputs(now, ok_feat, stamped(state(ready=False), now)) == "robot_not_ready"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_are_rejected(bad):
    chunk = np.zeros((4, 6))
    chunk[0, 3] = bad
    v = make().filter_action(chunk, state())
    assert not v.send and v.reason == "action_not_finite"


def test_wrong_shape_is_rejected():
    assert make().filter_action(np.zeros((4, 5)), state()).reason == "action_malformed"
    assert make().filter_action("nonsense", state()).reason == "action_malformed"


def test_velocity_clamps_the_step_from_the_measured_position():
    target = np.full(6, 1.0)
    v = make().filter_action(target[None], state())
    assert v.send and v.clamped
    np.testing.assert_allclose(v.positions, np.full(6, np.pi * PERIOD))


def test_position_limits_clamp_or_reject():
    q = np.full(6, 2 * np.pi - 0.01)
    target = np.full(6, 2 * np.pi + 0.5)
    v = make("clamp").filter_action(target, state(q))
    assert v.send and v.clamped
    np.testing.assert_allclose(v.positions, np.full(6, 2 * np.pi))
    r = make("reject").filter_action(target, state(q))
    assert not r.send and r.reason == "position_limit"
    r = make("reject").filter_action(np.full(6, 1.0), state())
    assert not r.send and r.reason == "velocity_limit"


def test_a_safe_action_passes_unchanged():
    target = np.linspace(-0.1, 0.1, 6)
    v = make().filter_action(np.stack([target, target * 2]), state())
    assert v.send and not v.clamped
    np.testing.assert_array_equal(v.positions, target)


def test_bad_limits_are_config_errors():
    with pytest.raises(ConfigError, match="max_feature_age"):
        SafetyConfig(max_feature_age=0)
    with pytest.raises(ConfigError, match="limit_mode"):
        SafetyConfig(limit_mode="ignore")  # type: ignore[arg-type]
