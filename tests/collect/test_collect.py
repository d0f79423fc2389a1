"""`python -m controller.collect`: episodes, seeds, tasks and outcomes in the dataset; the same
seed records the same episode; appending continues; privileged state is the sensor's reading."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from drivers.sim.model import COLOURS
from drivers.sim.task import CONVEYOR_Y, SENSOR_NAMES, ObjectReading, conveyor_y
from drivers.sim.world import WorldConfig, plan_episode
from tests.recording import v3_reader

from .helpers import TINY, collect, column, summary

ENV = "observation.environment_state"


def test_each_episode_is_saved_with_its_seed_task_and_outcome(capsys, tmp_path):
    out_dir, report = tmp_path / "ds", tmp_path / "collect.json"
    code, out, err = collect(
        capsys, "--episodes", "3", "--seed", "40", "--out", str(out_dir), "--json", str(report),
        *TINY,
    )  # fmt: skip
    assert code == 0, err
    result = summary(report)
    ds = v3_reader.load(out_dir)
    plans = [plan_episode(WorldConfig(task="reach", seed=s)) for s in (40, 41, 42)]
    assert [e["seed"] for e in ds.episodes] == [40, 41, 42] == result["seeds"]
    assert [e["tasks"] for e in ds.episodes] == [[p.instruction] for p in plans]
    assert [e["world_task"] for e in ds.episodes] == ["reach"] * 3
    # The expert touches the named cube in these episodes; the world's verdict is recorded.
    assert [e["success"] for e in ds.episodes] == [r["success"] for r in result["episodes"]]
    assert all(e["success"] for e in ds.episodes)
    assert [e["length"] for e in ds.episodes] == [r["frames"] for r in result["episodes"]]
    assert ds.video_keys == ["observation.images.front", "observation.images.top"]
    assert ds.info["features"]["observation.images.top"]["shape"] == [16, 16, 3]
    assert ds.info["fps"] == 10 and ds.info["robot_type"] == "sim"
    assert result["dropped_steps"] == 0 and all(e["dropped_steps"] == 0 for e in ds.episodes)
    assert result["episodes_saved"] == 3 and result["successes"] == 3
    assert f"collected 3 episode(s) into {out_dir}: 3 success(es)" in out
    assert f"{result['frames']} frames, 0 dropped" in out
    assert "3/3" in err and "success 3/3" in err  # the progress bar, on stderr
    for i, ep in enumerate(ds.episodes):
        # Stopped a settle time (0.5 s) after the touch: the data shows arriving and staying.
        # (Rows start at the first tick, a warm-up of 0.05-0.15 s after world time 0.)
        after = ep["length"] / 10 - ep["time_to_success"]
        assert 0.3 <= after <= 0.7, (i, after)
        assert len(ds.frames("observation.images.front", i)) == ep["length"]


def test_an_episode_the_expert_fails_is_saved_with_success_false(capsys, tmp_path):
    report = tmp_path / "c.json"
    code, out, err = collect(
        capsys, "--episodes", "1", "--episode-limit", "0.5", "--camera", "top",
        "--out", str(tmp_path / "ds"), "--json", str(report), *TINY,
    )  # fmt: skip
    assert code == 0, err
    ds = v3_reader.load(tmp_path / "ds")
    assert [(e["success"], e["seed"]) for e in ds.episodes] == [(False, 0)]
    assert ds.episodes[0]["length"] == summary(report)["frames"] >= 4  # the whole 0.5 s
    assert "time_to_success" not in ds.episodes[0] or ds.episodes[0]["time_to_success"] is None
    assert "0 success(es)" in out


def test_the_same_seed_records_the_same_episode(capsys, tmp_path):
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        code, _, err = collect(
            capsys, "--episodes", "1", "--seed", "7", "--camera", "top", "--out", str(root), *TINY
        )
        assert code == 0, err
    a, b = (v3_reader.load(r) for r in roots)
    ra, rb = a.rows(0), b.rows(0)
    for key in ("observation.state", "action"):
        assert np.array_equal(column(ra, key), column(rb, key)), key
    assert np.array_equal(a.environment_state(0), b.environment_state(0))
    # ...and another seed records another one.
    code, _, _ = collect(
        capsys, "--episodes", "1", "--seed", "8", "--camera", "top", "--out", str(tmp_path / "c"),
        *TINY,
    )  # fmt: skip
    other = v3_reader.load(tmp_path / "c")
    assert not np.array_equal(other.environment_state(0), a.environment_state(0))


@pytest.mark.xfail(
    strict=False,
    reason="known defect (issue 10 note): once every 4-40 runs of a repeated seed in one process"
    " records an MP4 whose decoded pixels differ (mean 0.4-8/255 per 16 px frame, at any frame) while"
    " the frames handed to the encoder are byte-identical (md5 per frame) and states, commands"
    " and privileged state are equal; the same frames encoded 300 times outside a controller"
    " run give one output, so the cause is in encoding inside a run, not found yet",
)
def test_the_same_seed_records_the_same_images(capsys, tmp_path):
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        code, _, err = collect(
            capsys, "--episodes", "1", "--seed", "7", "--camera", "top", "--out", str(root), *TINY
        )
        assert code == 0, err
    fa, fb = (v3_reader.load(r).frames("observation.images.top", 0) for r in roots)
    bad = [k for k, (x, y) in enumerate(zip(fa, fb, strict=True)) if not np.array_equal(x, y)]
    assert not bad, f"frames {bad} of {len(fa)} differ"


def test_appending_continues_episode_indices_and_seeds(capsys, caplog, tmp_path):
    root = tmp_path / "ds"
    args = ["--camera", "top", "--out", str(root), *TINY]
    code, _, err = collect(capsys, "--episodes", "2", *args)
    assert code == 0, err
    code, _, err = collect(capsys, "--episodes", "1", "--json", str(tmp_path / "j"), *args)
    assert code == 0, err
    ds = v3_reader.load(root)
    assert [e["episode_index"] for e in ds.episodes] == [0, 1, 2]
    # Without --seed, an append goes on after the highest seed: no episode is collected twice.
    assert [e["seed"] for e in ds.episodes] == [0, 1, 2]
    assert summary(tmp_path / "j")["episodes"][0]["episode_index"] == 2
    assert ds.info["total_episodes"] == 3
    rows = ds.all_rows()
    assert rows["index"].to_pylist() == list(range(sum(e["length"] for e in ds.episodes)))
    # An explicit seed the dataset already has is collected again, with a warning.
    code, _, err = collect(capsys, "--episodes", "1", "--seed", "1", *args)
    assert code == 0, err
    assert "the dataset already has episodes of seed(s) 1" in caplog.text
    assert [e["seed"] for e in v3_reader.load(root).episodes] == [0, 1, 2, 1]


def test_environment_state_is_the_sim_sensor_reading(capsys, tmp_path):
    """Static cubes: every row is the episode's layout; the conveyor: the layout carried along
    by one time per row, moving forward."""
    for task, seed in (("reach", 11), ("reach-moving", 12)):
        root = tmp_path / task
        code, _, err = collect(
            capsys, "--task", task, "--episodes", "1", "--seed", str(seed), "--camera", "top",
            "--out", str(root), *TINY,
        )  # fmt: skip
        assert code == 0, err
        ds = v3_reader.load(root)
        feature = ds.info["features"][ENV]
        assert feature["dtype"] == "float32"
        assert feature["names"] == [f"sim.{n}" for n in SENSOR_NAMES]
        assert ds.stats[ENV]["mean"].shape == (len(SENSOR_NAMES),)
        plan = plan_episode(WorldConfig(task=task, seed=seed))
        env = ds.environment_state(0)
        assert env is not None and env.shape == (ds.episodes[0]["length"], len(SENSOR_NAMES))
        times = []
        for values in env:
            reading = ObjectReading.from_values(values)
            assert reading.target == plan.target
            assert reading.conveyor_speed == pytest.approx(plan.conveyor_speed)
            for cube, planned in zip(reading.cubes, plan.cubes, strict=True):
                assert (cube.colour, cube.x, cube.z, cube.yaw) == pytest.approx(
                    (planned.colour, planned.x, planned.z, planned.yaw), abs=1e-6
                )
            if task == "reach":
                assert [c.y for c in reading.cubes] == pytest.approx(
                    [c.y for c in plan.cubes], abs=1e-6
                )
            else:
                # One belt time t explains all three cubes' y.
                c0 = plan.cubes[0]
                dy = (reading.cubes[0].y - c0.y) % (CONVEYOR_Y[1] - CONVEYOR_Y[0])
                t = dy / plan.conveyor_speed
                for cube, planned in zip(reading.cubes, plan.cubes, strict=True):
                    want = conveyor_y(planned.y, plan.conveyor_speed, t)
                    assert cube.y == pytest.approx(want, abs=1e-5)
                times.append(t)
        assert env[:, len(COLOURS) * 4] == pytest.approx(COLOURS.index(plan.target))
        if times:
            assert all(b > a for a, b in itertools.pairwise(times))
