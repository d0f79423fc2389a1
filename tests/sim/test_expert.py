"""sim-expert reaches the named cube through the controller (harness, virtual clock,
invariants checked), follows the instruction, and refuses what it cannot work with."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drivers.arms import UR5_HOME, UR5_LIMITS, arm_info
from drivers.base import Frame, RobotState, SensorReading
from drivers.sim.model import COLOURS
from drivers.sim.task import ObjectReading
from drivers.sim.world import SimWorld, WorldConfig
from policies.base import Policy
from policies.errors import PolicyConfigError, PolicyError
from policies.sim_expert import ExpertFeatures, SimExpertOptions, SimExpertPolicy

from .helpers import expert_episode

pytestmark = pytest.mark.virtual_clock

#: Seeds of the measured episodes (never the seeds a dataset is collected with).
EPISODES = range(1000, 1020)


async def test_the_expert_touches_the_named_cube_in_nine_of_ten_episodes(world_name):
    outcomes = []
    for seed in EPISODES:
        outcome, summary, _ = await expert_episode(f"{world_name}-{seed}", seed=seed)
        assert summary["actions_sent"] > 0 and summary["hold_ticks"] == 0, summary["holds"]
        outcomes.append(outcome)
    rate = sum(o.success for o in outcomes) / len(outcomes)
    times = sorted(o.time_to_success for o in outcomes if o.success)
    print(
        f"\nsim-expert, reach, {len(outcomes)} episodes: success {rate:.0%},"
        f" time to success median {times[len(times) // 2]:.2f} s, max {times[-1]:.2f} s"
    )
    assert rate >= 0.9
    assert times[-1] < 6.0  # well inside the 10 s limit


async def test_the_expert_touches_a_cube_on_the_moving_conveyor(world_name):
    outcomes = [
        (await expert_episode(f"{world_name}-{s}", seed=s, task="reach-moving"))[0]
        for s in range(2000, 2004)
    ]
    assert sum(o.success for o in outcomes) >= 3, outcomes


async def test_the_expert_follows_the_instruction_not_the_world(world_name):
    """Told to touch another cube than the world's task names, it touches that one: success
    stays false, and the tool ends on the instructed cube."""
    seed = 1003
    target = SimWorld(WorldConfig(seed=seed)).episode().target
    other = next(c for c in COLOURS if c != target)
    outcome, _, world = await expert_episode(
        world_name, seed=seed, instruction=f"touch the {other} cube", until_success=False
    )
    assert not outcome.success and outcome.min_distance > 0.05
    cube = next(c for c in world.episode().cubes if c.colour == other)
    sample = world._arm_sample()  # the world is closed: read its last state directly
    assert np.linalg.norm(sample.tool_pose[:2] - cube.position[:2]) < 0.02


# -- the policy on its own -------------------------------------------------------------


def _loaded(**options: object) -> SimExpertPolicy:
    policy = SimExpertPolicy(SimExpertOptions(**options))  # type: ignore[arg-type]
    policy.load("cpu", arm_info("sim", 6), 0.1)
    return policy


def _inputs(seed: int = 0) -> tuple[RobotState, dict[str, SensorReading], str]:
    world = SimWorld(WorldConfig(seed=seed))
    ep = world.episode()
    reading = ObjectReading(ep.cubes, ep.target, 0.0).to_values()
    state = RobotState(np.array(UR5_HOME), np.zeros(6), capture_time=5.0)
    return state, {"sim": SensorReading("sim", reading, 5.0)}, ep.instruction


def test_it_is_a_policy_and_its_steps_stay_within_the_speed_limits():
    policy = _loaded(velocity_fraction=0.5, noise=0.0, speed=1.0, gain=20.0, horizon=3)
    assert isinstance(policy, Policy)
    state, sensors, instruction = _inputs()
    features = policy.encode_vl([Frame("top", np.zeros((8, 8, 3), np.uint8), 5.0, 0)], instruction)
    assert features == ExpertFeatures(instruction.split()[2], instruction)
    chunk = policy.act(features, state, sensors)
    assert chunk.shape == (3, 6)
    step = chunk[0] - state.positions
    limit = 0.5 * np.asarray(UR5_LIMITS.max_velocity) * 0.1
    assert np.all(np.abs(step) <= limit + 1e-12)
    assert np.max(np.abs(step) / limit) == pytest.approx(1.0)  # far away: at the limit
    np.testing.assert_allclose(chunk[2] - chunk[1], step)


def test_its_noise_is_seeded():
    state, sensors, instruction = _inputs()

    def first(seed: int) -> np.ndarray:
        p = _loaded(seed=seed, noise=0.01)
        return p.act(p.encode_vl([], instruction), state, sensors)

    np.testing.assert_array_equal(first(1), first(1))
    assert not np.array_equal(first(1), first(2))


@pytest.mark.parametrize(
    ("instruction", "words"),
    [
        ("pick up the cube", "names no single cube colour"),
        ("touch the red cube, then the blue cube", "names no single cube colour"),
    ],
)
def test_an_instruction_without_one_colour_is_one_clear_error(instruction, words):
    with pytest.raises(PolicyError, match=words) as info:
        _loaded().encode_vl([], instruction)
    assert "\n" not in str(info.value) and "touch the red cube" in str(info.value)


def test_missing_or_foreign_sensor_and_wrong_arm_are_one_clear_error():
    policy = _loaded()
    state, sensors, instruction = _inputs()
    features = policy.encode_vl([], instruction)
    with pytest.raises(PolicyError, match="needs the object reading of sensor 'sim'"):
        policy.act(features, state, {})
    with pytest.raises(PolicyError, match="expected 14 finite values"):
        policy.act(features, state, {"sim": SensorReading("sim", np.zeros(6), 5.0)})
    nan = sensors["sim"].values.copy()
    nan[0] = math.nan
    with pytest.raises(PolicyError, match="expected 14 finite values"):
        policy.act(features, state, {"sim": SensorReading("sim", nan, 5.0)})
    with pytest.raises(PolicyError, match="features of type str"):
        policy.act("features", state, sensors)
    with pytest.raises(PolicyConfigError, match="simulated UR5"):
        SimExpertPolicy().load("cpu", arm_info("arm7", 7), 0.1)


def test_bad_options_are_one_clear_line():
    with pytest.raises(PolicyConfigError, match=r"speed must be a number in \[0.01, 1\]"):
        SimExpertPolicy.from_options({"speed": 5})
    with pytest.raises(PolicyConfigError, match="unknown option 'sped'"):
        SimExpertPolicy.from_options({"sped": 0.2})
    assert SimExpertPolicy.from_options({"noise": "0"}).options.noise == 0.0
