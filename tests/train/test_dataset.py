"""The LeRobot v3 reader: what the recorder wrote comes back, and bad datasets are one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from policies.lerobot_dataset import DatasetError, LeRobotDataset
from tests.recording import v3_reader
from tests.train import datasets
from tests.train.conftest import SIZE, vl_args

FRONT = "videos/observation.images.front/chunk-000/file-000.mp4"


@pytest.fixture
def copy(syn: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(syn, out)
    return out


def test_rows_and_metadata_are_what_was_recorded(syn):
    ds = LeRobotDataset.open(syn)
    assert ds.fps == 10 and ds.cameras == ["front", "top"] and len(ds.episodes) == 5
    assert [e.success for e in ds.episodes] == [True, False, True, False, True]
    assert ds.joint_names == tuple(datasets.ROBOT.joint_names)
    for e in range(5):
        rows = ds.rows(e)
        rng = np.random.default_rng([0, e])
        u, _ = rng.uniform(0, 1, 2)
        target = int(rng.integers(0, 3))
        assert ds.episodes[e].task == f"touch the {('red', 'green', 'blue')[target]} cube"
        assert rows.state.shape == rows.action.shape == (12, 6)
        assert np.array_equal(rows.frame_index, np.arange(12))
        assert np.allclose(rows.timestamp, np.arange(12) / 10)
        # the command of row k is the state of row k+1 before its noise
        assert np.all(np.abs(rows.state[1:] - rows.action[:-1]) < 0.01)
        env = rows.environment_state
        assert env is not None and env.shape == (12, 14)
        assert int(env[0, 12]) == target
        assert env[0, target * 4] == pytest.approx(-0.65 + u * 0.30, abs=1e-6)


def test_frame_k_is_row_k_and_matches_an_independent_reader(syn):
    ds = LeRobotDataset.open(syn)
    ref = v3_reader.load(syn)
    for e in (0, 3):
        rng = np.random.default_rng([0, e])
        u, v = rng.uniform(0, 1, 2)
        for cam in ("front", "top"):
            frames = ds.frames(e, cam)
            assert frames.shape == (12, SIZE, SIZE, 3) and frames.dtype == np.uint8
            assert np.array_equal(frames, np.stack(ref.frames(f"observation.images.{cam}", e)))
        front = ds.frames(e, "front")
        for k in (0, 5, 11):  # the shade cycles with k, so a shifted frame would not match
            want = datasets.synthetic_image(u, v, SIZE, 40 + 10 * (k % 3))
            assert np.abs(front[k].astype(int) - want).mean() < 4, k


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError) as err:
        LeRobotDataset.open(tmp_path)
    assert "not a LeRobot v3 dataset" in _one_line(err.value)
    with pytest.raises(DatasetError, match="no such directory"):
        LeRobotDataset.open(tmp_path / "absent")


def test_corrupt_parquet_names_the_file(copy):
    (copy / "data/chunk-000/file-000.parquet").write_bytes(b"PAR1 not really")
    ds = LeRobotDataset.open(copy)  # metadata alone is fine
    with pytest.raises(DatasetError) as err:
        ds.check()
    assert "data/chunk-000/file-000.parquet is not a readable parquet file" in _one_line(err.value)


def test_corrupt_episodes_table(copy):
    (copy / "meta/episodes/chunk-000/file-000.parquet").write_bytes(b"\x00" * 64)
    with pytest.raises(DatasetError, match=r"meta/episodes/chunk-000/file-000\.parquet"):
        LeRobotDataset.open(copy)


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_corrupt_video_names_the_file(copy, damage):
    path = copy / FRONT
    data = path.read_bytes()
    n = len(data)
    if damage == "truncated":
        path.write_bytes(data[: int(0.6 * n)])  # the index (moov) is at the end: lost
    else:
        noise = np.random.default_rng(1).integers(0, 256, n // 3, dtype=np.uint8).tobytes()
        path.write_bytes(data[: n // 3] + noise + data[2 * n // 3 :])
    ds = LeRobotDataset.open(copy)
    with pytest.raises(DatasetError) as err:
        for e in range(len(ds.episodes)):
            ds.frames(e, "front")
    assert f"video {FRONT} is corrupt or unreadable" in _one_line(err.value)


def test_a_valid_video_with_too_few_frames(copy):
    """A file cut cleanly (a valid MP4) that ends inside the last episode."""
    path = copy / FRONT
    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        packets = [p for p in src.demux(stream) if p.dts is not None]
        keep = len(packets) - 3
        tmp = path.with_suffix(".cut.mp4")
        with av.open(str(tmp), "w", format="mp4") as dst:
            out = dst.add_stream_from_template(stream)
            for p in sorted(packets, key=lambda p: p.pts)[:keep]:
                p.stream = out
                dst.mux(p)
    tmp.replace(path)
    ds = LeRobotDataset.open(copy)
    ds.frames(0, "front")  # the first episodes are whole
    with pytest.raises(DatasetError) as err:
        ds.frames(4, "front")
    assert f"video {FRONT} lacks 3 of episode 4's 12 frames" in _one_line(err.value)


def test_missing_camera_names_what_there_is(syn):
    ds = LeRobotDataset.open(syn)
    with pytest.raises(DatasetError) as err:
        ds.require_cameras(["front", "wrist"])
    assert "no camera 'wrist' (it records ['front', 'top'])" in _one_line(err.value)


def test_cli_bad_datasets_are_one_line_exit_2(copy, tmp_path, tiny_cache, capsys):
    from policies.train.__main__ import main

    (copy / "data/chunk-000/file-000.parquet").write_bytes(b"junk")
    cases = [
        (tmp_path, "is not a LeRobot v3 dataset"),
        (copy, "file-000.parquet is not a readable parquet file"),
    ]
    for dataset, message in cases:
        args = vl_args(dataset, tmp_path / "out", tiny_cache, "--steps", "1")
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_cli_missing_camera_and_missing_environment_state(syn, tmp_path, tiny_cache, capsys):
    from policies.train.__main__ import main

    no_env = datasets.synthetic(tmp_path / "noenv", episodes=2, steps=4, size=16, environment=False)
    cases = [
        (syn, ["--cameras", "front,wrist"], "no camera 'wrist'"),
        (no_env, ["--aux-target", "named-cube-xy"], "has no observation.environment_state"),
        (syn, ["--aux-swap", "0.5"], "--aux-swap needs an --aux-target"),
    ]
    for dataset, extra, message in cases:
        args = vl_args(dataset, tmp_path / "out", tiny_cache, "--steps", "1", *extra)
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_a_sim_recording_reads_back_with_its_privileged_state(tmp_path):
    """Expert episodes of the MuJoCo world (as controller.collect records them): the named
    cube of each row's environment_state is the one the episode's instruction names."""
    from drivers.sim.world import WorldConfig, plan_episode
    from policies.train.data import named_cube_xy

    root = datasets.record_sim(tmp_path / "sim", [3, 4], cameras=("front", "top"), size=16)
    ds = LeRobotDataset.open(root)
    assert len(ds.episodes) == 2 and all(e.success for e in ds.episodes)
    for e, seed in enumerate((3, 4)):
        plan = plan_episode(WorldConfig(task="reach", seed=seed))
        rows = ds.rows(e)
        assert ds.episodes[e].task == plan.instruction
        cube = next(c for c in plan.cubes if c.colour == plan.target)
        xy = named_cube_xy(rows.environment_state)
        assert np.allclose(xy, [cube.x, cube.y], atol=1e-5)  # reach: the cubes stay put
        assert ds.frames(e, "top").shape == (len(rows), 16, 16, 3)
