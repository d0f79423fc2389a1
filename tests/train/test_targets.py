"""Training targets agree with what run time does with the network's output."""

from __future__ import annotations

import numpy as np
import pytest

from policies.lerobot_dataset import EpisodeRows, LeRobotDataset
from policies.qwen_vla.config import MAX_DELTA, ActionSpace
from policies.train.data import (
    DELTA_HEADROOM,
    choose_action_space,
    chunk_indices,
    chunk_targets,
    cubes_xy,
    named_cube_xy,
    perturb_states,
    split_episodes,
)


def _rows(states: np.ndarray, actions: np.ndarray) -> EpisodeRows:
    n = len(states)
    z = np.zeros(n, dtype=np.int64)
    return EpisodeRows(
        state=states.astype(np.float32),
        action=actions.astype(np.float32),
        timestamp=np.arange(n, dtype=np.float32) / 10,
        frame_index=np.arange(n),
        episode_index=z,
        task_index=z,
    )


def test_chunk_is_the_next_commands_with_the_last_repeated():
    assert chunk_indices(4, 3).tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 3], [3, 3, 3]]


def test_delta_targets_map_back_to_the_recorded_commands(syn):
    ds = LeRobotDataset.open(syn)
    rows = [ds.rows(e) for e in range(len(ds.episodes))]
    horizon = 5
    space = choose_action_space(rows, horizon)
    assert space.kind == "delta" and 0 < space.max_delta <= MAX_DELTA
    for r in rows:
        out = chunk_targets(r, horizon, space)
        assert out.shape == (len(r), horizon, 6) and out.dtype == np.float32
        # the largest step over the horizon sits at DELTA_HEADROOM of max_delta, no more
        assert np.abs(np.tanh(out)).max() <= DELTA_HEADROOM + 1e-5
        # what QwenVLAPolicy.act computes from this output, row by row
        back = space.to_targets(r.state[:, None, :], out)
        want = r.action[chunk_indices(len(r), horizon)]
        assert np.allclose(back, want, atol=1e-5)
        assert np.allclose(back[:, 0], r.action, atol=1e-5)  # row 0: the command sent


def test_max_delta_grows_with_the_horizon_and_is_capped():
    n = 20
    states = np.cumsum(np.full((n, 2), 0.01), axis=0)
    actions = states + 0.01  # one period ahead
    rows = [_rows(states, actions)]
    short = choose_action_space(rows, 1).max_delta
    long = choose_action_space(rows, 8).max_delta
    assert short == pytest.approx(0.01 / DELTA_HEADROOM, rel=1e-4)
    assert long == pytest.approx(0.08 / DELTA_HEADROOM, rel=1e-4)
    jumps = [_rows(np.zeros((3, 2)), np.full((3, 2), 10.0))]
    assert choose_action_space(jumps, 2).max_delta == MAX_DELTA
    assert choose_action_space(rows, 8, max_delta=0.5).max_delta == 0.5


def test_out_of_range_deltas_are_clipped_not_infinite():
    space = ActionSpace(kind="delta", max_delta=0.1)
    out = space.from_targets(np.zeros(2), np.array([[0.5, -0.5]]))
    assert np.all(np.isfinite(out)) and np.allclose(np.tanh(out), [[0.999, -0.999]])


def test_absolute_targets_round_trip(syn):
    ds = LeRobotDataset.open(syn)
    rows = [ds.rows(e) for e in range(3)]
    space = choose_action_space(rows, 4, "absolute")
    out = chunk_targets(rows[0], 4, space)
    back = space.to_targets(rows[0].state[:, None, :], out)
    assert np.allclose(back, rows[0].action[chunk_indices(12, 4)], atol=1e-5)


def test_named_cube_xy_follows_the_target_index():
    env = np.zeros((2, 14))
    env[0, 0:2] = (1, 2)  # red
    env[0, 8:10] = (5, 6)  # blue
    env[0, 12] = 2
    env[1, 4:6] = (3, 4)  # green
    env[1, 12] = 1
    assert named_cube_xy(env).tolist() == [[5, 6], [3, 4]]


def test_cubes_xy_is_the_named_cube_then_every_cube_in_colour_order():
    env = np.zeros((1, 14))
    env[0, 0:2], env[0, 4:6], env[0, 8:10] = (1, 2), (3, 4), (5, 6)
    env[0, 12] = 1  # green
    assert cubes_xy(env).tolist() == [[3, 4, 1, 2, 3, 4, 5, 6]]


def test_split_is_by_episode_seeded_and_disjoint():
    a = split_episodes(range(20), 0.2, seed=3)
    assert len(a.val) == 4 and not set(a.val) & set(a.train)
    assert sorted(a.train + a.val) == list(range(20))
    assert a == split_episodes(range(20), 0.2, seed=3)
    assert a != split_episodes(range(20), 0.2, seed=4)
    assert split_episodes([7], 0.5, seed=0).val == ()


def test_feature_lag_stays_within_the_episode_and_the_bound():
    from policies.train.data import lagged_frame

    rng = np.random.default_rng(0)
    lags = [10 - lagged_frame(10, 3, rng) for _ in range(400)]
    assert set(lags) == {0, 1, 2, 3}
    assert {lagged_frame(1, 3, rng) for _ in range(100)} == {0, 1}
    assert lagged_frame(7, 0, rng) == 7


def test_perturbed_states_keep_the_commands():
    """--state-noise: from the noisy state the relabelled chunk reaches the same targets."""
    rng = np.random.default_rng(0)
    space = ActionSpace(kind="delta", max_delta=0.5)
    states = rng.uniform(-1, 1, (5, 6))
    chunks = rng.uniform(-1, 1, (5, 8, 6))
    noisy, relabelled = perturb_states(space, states, chunks, 0.02, rng)
    assert np.abs(noisy - states).max() > 1e-3
    np.testing.assert_allclose(
        space.to_targets(noisy[:, None, :], relabelled),
        space.to_targets(states[:, None, :], chunks),
        atol=1e-9,
    )
