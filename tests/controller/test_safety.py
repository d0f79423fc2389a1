from __future__ import annotations

import numpy as np
import pytest

from controller.errors import ConfigError
from controller.safety import SafetyConfig, SafetyFilter
from controller.slot import Stamped
from drivers.base import RobotState, SensorReading
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


# -- the input rules: an ordered list, the first objection is the hold ---------------------


#: The hold reasons of the input rules, in the order they are asked (as before the rules
#: were a list: the fault matrix and the fail-safe tests were written against this order).
INPUT_ORDER = [
    "no_state",
    "state_clock_invalid",
    "state_stale",
    "state_invalid",
    "robot_not_ready",
    "no_features",
    "features_clock_invalid",
    "features_stale",
    "sensor_missing",
    "sensor_stale",
    "sensor_invalid",
]


def _inputs_with(faults: set[str], now: float):
    """Features, state and one sensor reading carrying every fault named in `faults` at once."""
    import math

    from drivers.base import SensorReading

    t_state = (
        math.nan if "state_clock_invalid" in faults else now - 5 if "state_stale" in faults else now
    )
    q = np.full(6, 99.0) if "state_invalid" in faults else None
    st = stamped(state(q, ready="robot_not_ready" not in faults), t_state)
    t_feat = (
        now + 1
        if "features_clock_invalid" in faults
        else now - 5
        if "features_stale" in faults
        else now
    )
    t_sens = now - 5 if "sensor_stale" in faults else now
    values = [math.nan] if "sensor_invalid" in faults else np.zeros(6)
    reading = Stamped(SensorReading("ft", values, t_sens), 1, t_sens, t_sens)
    return (
        None if "no_features" in faults else stamped("f", t_feat),
        None if "no_state" in faults else st,
        {"ft": None if "sensor_missing" in faults else reading},
    )


def test_input_rules_object_in_their_order():
    """Every fault at once, then fixed one at a time: the holds come in the rules' order."""
    f = make()
    now = 10.0
    for i, reason in enumerate(INPUT_ORDER):
        assert f.check_inputs(now, *_inputs_with(set(INPUT_ORDER[i:]), now)) == reason
    assert f.check_inputs(now, *_inputs_with(set(), now)) is None


def test_a_new_rule_is_one_class_in_the_list():
    from controller.safety import INPUT_RULES, HoldReason, Inputs, SafetyFilter

    class NoFeaturesOnMondays:
        def check(self, inputs: Inputs, f: SafetyFilter) -> HoldReason | None:
            return HoldReason.FEATURES_STALE if inputs.features.value == "monday" else None

    f = SafetyFilter(
        SafetyConfig(), UR5_LIMITS, PERIOD, rules=(*INPUT_RULES, NoFeaturesOnMondays())
    )
    now = 10.0
    ok = stamped(state(), now)
    assert f.check_inputs(now, stamped("tuesday", now), ok) is None
    assert f.check_inputs(now, stamped("monday", now), ok) == "features_stale"
    # Earlier rules still come first: the new rule never sees a missing input.
    assert f.check_inputs(now, None, ok) == "no_features"
    assert make().check_inputs(now, stamped("monday", now), ok) is None


# -- the fast paths decide exactly as the numpy checks -----------------------------------


def _reference_state_problem(f: SafetyFilter, s: RobotState) -> bool:
    """Whether the state is implausible, by the numpy checks alone (the fast path's referee)."""
    q, qd = np.asarray(s.positions, dtype=float), np.asarray(s.velocities, dtype=float)
    if q.shape != (6,) or qd.shape != (6,):
        return True
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(qd))):
        return True
    m = f.config.position_margin
    if np.any(q < f._lower - m) or np.any(q > f._upper + m):
        return True
    return bool(np.any(np.abs(qd) > 2.0 * f._max_velocity + 0.1))


def _reference_filter(f: SafetyFilter, chunk: np.ndarray, s: RobotState):
    """(send, reason, clamped, positions) by the numpy checks alone."""
    if _reference_state_problem(f, s):
        return False, "state_invalid", False, None
    target = np.asarray(chunk, dtype=float)[0]
    if not np.all(np.isfinite(target)):
        return False, "action_not_finite", False, None
    clamped = False
    if np.any((target < f._lower) | (target > f._upper)):
        if f.config.limit_mode == "reject":
            return False, "position_limit", False, None
        target, clamped = np.clip(target, f._lower, f._upper), True
    current = np.asarray(s.positions, dtype=float)
    step = target - current
    if np.any(~(np.abs(step) <= f._max_step)):
        if f.config.limit_mode == "reject":
            return False, "velocity_limit", False, None
        target, clamped = current + np.clip(step, -f._max_step, f._max_step), True
    return True, None, clamped, target


def _edge_values(rng, low, high, n):
    """Values at, just inside and just outside the bounds, plus NaN, infinities and random ones."""
    picks = [low, high, np.nextafter(low, -np.inf), np.nextafter(high, np.inf), 0.5 * (low + high)]
    picks += [np.nan, np.inf, -np.inf]
    out = rng.uniform(low - 0.5, high + 0.5, n)
    chosen = rng.integers(0, 2 * len(picks), n)  # about half the entries are edge values
    for i, c in enumerate(chosen):
        if c < len(picks):
            out[i] = picks[c][i] if np.ndim(picks[c]) else picks[c]
    return out


@pytest.mark.parametrize("mode", ["clamp", "reject"])
@pytest.mark.parametrize("limits", ["ur5", "infinite"])
def test_fast_paths_decide_as_the_numpy_checks(mode, limits):
    from drivers.base import JointLimits

    lim = UR5_LIMITS
    if limits == "infinite":  # a custom driver without position or speed bounds on some joints
        lower, upper, speed = (
            np.array(a, dtype=float) for a in (lim.lower, lim.upper, lim.max_velocity)
        )
        lower[1], upper[2], speed[3] = -np.inf, np.inf, np.inf
        lim = JointLimits(lower, upper, speed)
    f = SafetyFilter(SafetyConfig(limit_mode=mode), lim, PERIOD)
    rng = np.random.default_rng(11)
    lo_q = np.nan_to_num(f._lower - f.config.position_margin, neginf=-10.0)
    hi_q = np.nan_to_num(f._upper + f.config.position_margin, posinf=10.0)
    speed = np.nan_to_num(2.0 * f._max_velocity + 0.1, posinf=10.0)
    for _ in range(3000):
        q = _edge_values(rng, lo_q, hi_q, 6) if rng.random() < 0.3 else rng.uniform(-1.5, 1.5, 6)
        qd = _edge_values(rng, -speed, speed, 6) if rng.random() < 0.3 else np.zeros(6)
        s = RobotState(q, qd, 0.0)
        assert (f.state_problem(s) is not None) == _reference_state_problem(f, s), (q, qd)
        lo_a, hi_a = np.nan_to_num(f._lower, neginf=-10.0), np.nan_to_num(f._upper, posinf=10.0)
        if rng.random() < 0.5:
            target = _edge_values(rng, lo_a, hi_a, 6)
        else:  # steps at and around the speed bound from the measured position
            step = np.nan_to_num(f._max_step, posinf=1.0) * rng.choice([0.5, 1.0, -1.0, 1.0001], 6)
            target = np.nan_to_num(q, nan=0.0, posinf=1.0, neginf=-1.0) + step
        chunk = np.vstack([target, np.zeros(6)])
        v = f.filter_action(chunk, s)
        send, reason, clamped, positions = _reference_filter(f, chunk, s)
        assert (v.send, v.reason, v.clamped) == (send, reason, clamped), (q, qd, target)
        if send:
            np.testing.assert_array_equal(v.positions, positions)


def _reference_inputs(f: SafetyFilter, now, feats, st, sensors):
    """The hold reason by asking every rule in turn (the input fast path's referee)."""
    from controller.safety import Inputs

    inputs = Inputs(now, feats, st, sensors)
    for rule in f.rules:
        reason = rule.check(inputs, f)
        if reason is not None:
            return reason
    return None


def _odd_form(rng, values):
    """The same numbers as a driver or policy might hand them over: other dtypes, lists."""
    pick = rng.integers(0, 6)
    if pick == 0:
        return values.astype(np.float32)
    if pick == 1:
        return list(values)
    if pick == 2:
        return np.round(np.clip(np.nan_to_num(values), -9, 9)).astype(np.int64)
    if pick == 3:
        return values.astype(object)
    if pick == 4:
        return values[: rng.integers(0, values.size)]  # too short
    return values


@pytest.mark.parametrize("mode", ["clamp", "reject"])
def test_the_tick_fast_paths_decide_as_the_rules_and_the_numpy_filter(mode):
    """`check_inputs` and `filter_action(..., measured)` with their fast paths give what the
    rules one by one and the numpy filter give: times at, inside and beyond the limits
    (NaN, infinities, the future), states and chunks in other dtypes, shapes and types."""
    f = SafetyFilter(SafetyConfig(limit_mode=mode), UR5_LIMITS, PERIOD)
    cfg = f.config
    rng = np.random.default_rng(5)
    now = 100.0
    ages = [0.0, cfg.max_state_age, cfg.max_feature_age, -cfg.max_future_skew]
    ages += [np.nextafter(a, np.inf) for a in ages] + [np.nextafter(a, -np.inf) for a in ages]
    ages += [np.nan, np.inf, -np.inf, 0.05]
    lo_q, hi_q = f._lower - cfg.position_margin, f._upper + cfg.position_margin
    speed = 2.0 * f._max_velocity + 0.1
    for _ in range(4000):
        q = _edge_values(rng, lo_q, hi_q, 6) if rng.random() < 0.3 else rng.uniform(-1.5, 1.5, 6)
        qd = _edge_values(rng, -speed, speed, 6) if rng.random() < 0.3 else np.zeros(6)
        positions = _odd_form(rng, q) if rng.random() < 0.2 else q
        velocities = _odd_form(rng, qd) if rng.random() < 0.1 else qd
        ready = bool(rng.random() < 0.9)
        st = RobotState(positions, velocities, 0.0, ready=ready)
        t_state = now - ages[rng.integers(0, len(ages))]
        t_feats = now - ages[rng.integers(0, len(ages))]
        st_stamped = None if rng.random() < 0.02 else Stamped(st, 1, t_state, now)
        feats = None if rng.random() < 0.02 else Stamped("f", 1, t_feats, now)
        sensors = {}
        if rng.random() < 0.2:
            values = np.array([0.0, rng.choice([1.0, np.nan])])
            reading = SensorReading("ft", values, 0.0)
            sensors["ft"] = Stamped(reading, 1, now - ages[rng.integers(0, len(ages))], now)
        got = f.check_inputs(now, feats, st_stamped, sensors)
        want = _reference_inputs(f, now, feats, st_stamped, sensors)
        assert got == want, (positions, velocities, ready, t_state, t_feats, sensors)
        if got is not None or st_stamped is None:
            continue
        measured = f.measured(st)
        target = (
            _edge_values(rng, f._lower, f._upper, 6)
            if rng.random() < 0.5
            else q + f._max_step * rng.choice([0.5, 1.0, -1.0, 1.0001], 6)
        )
        chunk = np.vstack([target, np.zeros(6)])
        if rng.random() < 0.3:
            chunk = [chunk[0], chunk[0].astype(np.float32), _odd_form(rng, target)][
                rng.integers(0, 3)
            ]
        v = f.filter_action(chunk, st, measured)
        ref = f.filter_action(chunk, st)  # the state read again, no fast path on `measured`
        assert (v.send, v.reason, v.clamped) == (ref.send, ref.reason, ref.clamped), chunk
        if _readable(chunk):
            want = _reference_filter(f, np.atleast_2d(np.asarray(chunk, dtype=float)), st)
            assert (v.send, v.reason, v.clamped) == want[:3], chunk
        if v.send:
            np.testing.assert_array_equal(v.positions, ref.positions)
            assert v.positions.dtype == np.float64


def _readable(chunk) -> bool:
    """A chunk of the arm's width the reference filter can judge (the rest is malformed)."""
    try:
        arr = np.atleast_2d(np.asarray(chunk, dtype=float))
    except (TypeError, ValueError):
        return False
    return arr.ndim == 2 and arr.shape[1] == 6 and arr.shape[0] >= 1


def test_a_sent_action_is_a_copy_the_policy_cannot_change_afterwards():
    f = make()
    chunk = np.zeros((4, 6))
    v = f.filter_action(chunk, state(), f.measured(state()))
    chunk[0] = 1.0  # the policy reuses its buffer for the next call
    assert v.send and np.all(v.positions == 0.0)


def test_the_state_check_takes_any_numeric_sequence():
    f = make()
    assert f.state_problem(RobotState([0.0] * 6, (0,) * 6, 0.0)) is None
    assert f.state_problem(RobotState(np.zeros(6, dtype=np.float32), np.zeros(6), 0.0)) is None
    assert "non-finite" in f.state_problem(RobotState([0.0] * 5 + [float("nan")], [0.0] * 6, 0.0))
    assert "not numbers" in f.state_problem(RobotState(["a"] * 6, [0.0] * 6, 0.0))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lower", np.nan, "lower has a NaN entry"),
        ("upper", np.nan, "upper has a NaN entry"),
        ("max_velocity", np.nan, "max_velocity has a NaN entry"),
        ("max_velocity", -1.0, "max_velocity entry is negative"),
    ],
)
def test_limits_that_would_switch_a_check_off_are_refused(field, value, message):
    from drivers.base import JointLimits

    arrays = {
        "lower": np.full(6, -1.0),
        "upper": np.full(6, 1.0),
        "max_velocity": np.full(6, 1.0),
    }
    arrays[field][2] = value
    with pytest.raises(ValueError, match=message):
        JointLimits(**arrays)
