"""Controller runs recorded with `Recorder`, read back with the independent v3 reader.

Three episodes (two tasks) over two recorder sessions, two cameras of which
one has an odd size: the files land where LeRobot's v3 layout puts them,
several episodes share each file, and every row and video frame is the
state, command and camera frame of the command the controller really sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from controller.recording import Recorder, attach
from controller.runtime import ActionSent
from drivers.arms import UR5_JOINTS
from drivers.fake import FakeCamera
from drivers.fake.config import FakeCameraConfig
from tests.recording import v3_reader

RUNS = [("touch the red cube", 3.0), ("touch the blue cube", 2.0), ("touch the red cube", 2.5)]
FPS = 10


def cameras() -> list[FakeCamera]:
    return [
        FakeCamera(FakeCameraConfig(name="front")),
        # An odd size: yuv420p needs even dimensions, so the dataset keeps 160x120.
        FakeCamera(FakeCameraConfig(name="wrist", width=161, height=121, fps=15)),
    ]


async def record_runs(make_harness: Any, root: Path) -> tuple[list[list[ActionSent]], list[Any]]:
    """Runs 0 and 1 through one recorder, run 2 through a second one (appending)."""
    sent: list[list[ActionSent]] = []
    summaries = []
    recorder = None
    for i, (task, seconds) in enumerate(RUNS):
        if i in (0, 2):
            if recorder is not None:
                assert recorder.close(30)
            recorder = Recorder(root, fps=FPS, cameras=["front", "wrist"])
        assert recorder is not None
        h = make_harness(cameras=cameras())
        attach(h.controller, recorder, task)
        mine: list[ActionSent] = []
        h.controller.observers.append(
            lambda e, _t, d, mine=mine: mine.append(d) if e == "action" else None
        )
        summaries.append(await h.run(seconds))
        await recorder.drain()
        assert recorder.dropped == 0 and recorder.error is None
        sent.append(mine)
    assert recorder is not None and recorder.close(30)
    return sent, summaries


@pytest.fixture
async def recorded(controller_harness, virtual_clock, tmp_path):
    root = tmp_path / "dataset"
    sent, summaries = await record_runs(controller_harness, root)
    return root, sent, summaries


async def test_the_files_are_where_the_v3_layout_puts_them(recorded):
    root, sent, _ = recorded
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [
        "data/chunk-000/file-000.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "meta/info.json",
        "meta/stats.json",
        "meta/tasks.parquet",
        "videos/observation.images.front/chunk-000/file-000.mp4",
        "videos/observation.images.wrist/chunk-000/file-000.mp4",
    ]
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # scratch removed
    info = json.loads((root / "meta" / "info.json").read_text())
    total = sum(len(s) for s in sent)
    assert info["codebase_version"] == "v3.0"
    assert info["fps"] == FPS
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, total, 2)
    assert info["splits"] == {"train": "0:3"}
    assert info["robot_type"] == "fake"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert (
        info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    )
    feats = info["features"]
    for key in ("observation.state", "action"):
        assert feats[key] == {"dtype": "float32", "shape": [6], "names": list(UR5_JOINTS)}
    for key, shape in (("front", [224, 224, 3]), ("wrist", [120, 160, 3])):
        ft = feats[f"observation.images.{key}"]
        assert (ft["dtype"], ft["shape"], ft["names"]) == (
            "video",
            shape,
            ["height", "width", "channels"],
        )
        assert ft["info"]["video.codec"] == "h264"
        assert ft["info"]["video.pix_fmt"] == "yuv420p"
        assert ft["info"]["video.fps"] == FPS
        assert (ft["info"]["video.height"], ft["info"]["video.width"]) == tuple(shape[:2])
    for key, dtype in (
        ("timestamp", "float32"),
        ("frame_index", "int64"),
        ("index", "int64"),
        ("episode_index", "int64"),
        ("task_index", "int64"),
    ):
        assert feats[key] == {"dtype": dtype, "shape": [1], "names": None}


async def test_rows_are_the_commands_sent_and_the_states_they_came_from(recorded):
    root, sent, _ = recorded
    ds = v3_reader.load(root)
    assert ds.tasks == {0: "touch the red cube", 1: "touch the blue cube"}
    first = 0
    for i, (task, _) in enumerate(RUNS):
        ep, steps = ds.episodes[i], sent[i]
        n = len(steps)
        assert n >= 10 * RUNS[i][1] - 1  # every tick commanded (fake robot, no holds)
        assert (ep["episode_index"], ep["length"], ep["tasks"]) == (i, n, [task])
        assert (ep["dataset_from_index"], ep["dataset_to_index"]) == (first, first + n)
        assert ep["success"] is None  # a controller run is not scored
        assert ep["dropped_steps"] == 0
        rows = ds.rows(i)
        assert rows.schema.field("observation.state").type == pa.list_(pa.float32(), 6)
        assert rows.schema.field("timestamp").type == pa.float32()
        frame = np.arange(n)
        np.testing.assert_array_equal(rows["frame_index"].to_numpy(), frame)
        np.testing.assert_array_equal(rows["index"].to_numpy(), first + frame)
        np.testing.assert_array_equal(rows["episode_index"].to_numpy(), np.full(n, i))
        task_index = {t: k for k, t in ds.tasks.items()}[task]
        np.testing.assert_array_equal(rows["task_index"].to_numpy(), np.full(n, task_index))
        np.testing.assert_array_equal(
            rows["timestamp"].to_numpy(), (frame / FPS).astype(np.float32)
        )
        states = np.array(rows["observation.state"].to_pylist(), dtype=np.float32)
        actions = np.array(rows["action"].to_pylist(), dtype=np.float32)
        np.testing.assert_array_equal(
            states, np.array([s.state.positions for s in steps], dtype=np.float32)
        )
        np.testing.assert_array_equal(
            actions, np.array([s.command.positions for s in steps], dtype=np.float32)
        )
        first += n
    # LeRobot indexes rows by position over all data files: position k is index k.
    all_rows = ds.all_rows()
    np.testing.assert_array_equal(all_rows["index"].to_numpy(), np.arange(first))
    meta = pq.read_schema(root / "data" / "chunk-000" / "file-000.parquet").metadata
    hf = json.loads(meta[b"huggingface"])["info"]["features"]
    assert hf["observation.state"] == {
        "feature": {"dtype": "float32", "_type": "Value"},
        "length": 6,
        "_type": "List",
    }


async def test_video_frame_k_is_the_frame_recorded_with_row_k(recorded):
    root, sent, _ = recorded
    ds = v3_reader.load(root)
    for key, camera in (
        ("observation.images.front", "front"),
        ("observation.images.wrist", "wrist"),
    ):
        previous_end = 0.0
        for i, steps in enumerate(sent):
            ep = ds.episodes[i]
            # Episodes sit back to back in one file, each where the last one ended.
            assert ep[f"videos/{key}/from_timestamp"] == pytest.approx(previous_end)
            assert ep[f"videos/{key}/to_timestamp"] == pytest.approx(
                previous_end + len(steps) / FPS
            )
            previous_end = ep[f"videos/{key}/to_timestamp"]
            decoded = ds.frames(key, i)
            assert len(decoded) == len(steps)
            h, w = ds.info["features"][key]["shape"][:2]
            source = [s.frames[camera].image[:h, :w].astype(np.float64) for s in steps]
            for k, frame in enumerate(decoded):
                errors = [np.abs(frame - src).mean() for src in source]
                # Lossy, but close; and closer to its own frame than to any other.
                assert errors[k] < 3.0, (key, i, k, errors[k])
                assert int(np.argmin(errors)) == k, (key, i, k)
        total = sum(len(s) for s in sent)
        assert len(v3_reader.decode(ds.video_path(key, 0))) == total


async def test_stats_describe_the_dataset(recorded):
    root, sent, _ = recorded
    ds = v3_reader.load(root)
    rows = ds.all_rows()
    states = np.array(rows["observation.state"].to_pylist(), dtype=np.float64)
    st = ds.stats["observation.state"]
    np.testing.assert_allclose(st["mean"], states.mean(axis=0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(st["std"], states.std(axis=0), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(st["min"], states.min(axis=0))
    np.testing.assert_allclose(st["max"], states.max(axis=0))
    assert st["count"].tolist() == [len(states)]
    assert set(st) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    assert ds.stats["frame_index"]["max"].tolist() == [max(len(s) for s in sent) - 1]
    img = ds.stats["observation.images.front"]
    assert img["mean"].shape == (3, 1, 1) and img["count"].tolist() == [len(states)]
    pixels = np.stack([s.frames["front"].image for steps in sent for s in steps]) / 255.0
    np.testing.assert_allclose(img["mean"].ravel(), pixels.mean(axis=(0, 1, 2)), atol=1e-9)
    np.testing.assert_allclose(img["min"].ravel(), pixels.min(axis=(0, 1, 2)))
    np.testing.assert_allclose(img["max"].ravel(), pixels.max(axis=(0, 1, 2)))
    # Per-episode statistics ride in the episodes table, as LeRobot keeps them.
    assert ds.episodes[1]["stats/action/count"] == [len(sent[1])]
