"""The recorder's promises: it never delays a tick, it counts what it drops, an interrupted
recording leaves the saved episodes readable, and bad directories are refused untouched."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from controller.errors import ConfigError
from controller.recording import DatasetDirError, Recorder, attach, lerobot_v3
from controller.recording import video as video_mod
from controller.recording.recorder import Recorder as _RecorderClass
from drivers.base import Frame
from policies.lerobot_dataset import LeRobotDataset
from tests.recording import synthetic, v3_reader

REPO = Path(__file__).resolve().parents[2]


def check_dataset(root: Path, episodes: list[tuple[str, int, int]]) -> v3_reader.V3Dataset:
    """The dataset holds exactly these (task, steps, seed) episodes, rows and frames intact."""
    ds = v3_reader.load(root)
    assert [e["episode_index"] for e in ds.episodes] == list(range(len(episodes)))
    first = 0
    for i, (task, steps, seed) in enumerate(episodes):
        ep = ds.episodes[i]
        assert (ep["length"], ep["tasks"]) == (steps, [task])
        assert (ep["dataset_from_index"], ep["dataset_to_index"]) == (first, first + steps)
        rows = ds.rows(i)
        np.testing.assert_array_equal(rows["index"].to_numpy(), first + np.arange(steps))
        states = np.array(rows["observation.state"].to_pylist())
        expected = [synthetic.state(seed, k).positions for k in range(steps)]
        np.testing.assert_allclose(states, expected, rtol=1e-6)
        frames = ds.frames("observation.images.cam", i)
        source = [synthetic.image(seed, k).astype(float) for k in range(steps)]
        for k, frame in enumerate(frames):
            errors = [np.abs(frame - s).mean() for s in source]
            assert int(np.argmin(errors)) == k and errors[k] < 4.0, (i, k, errors[k])
        first += steps
    # LeRobot reads rows by position: the committed ones come first, in order.
    positions = ds.all_rows()["index"].to_numpy()[:first]
    np.testing.assert_array_equal(positions, np.arange(first))
    return ds


def test_episodes_append_across_sessions_and_keep_their_success_flag(tmp_path):
    root = tmp_path / "ds"
    rec = Recorder(root, fps=10, cameras=[synthetic.CAMERA])
    synthetic.record_episode(rec, "a", 12, seed=0, success=True)
    synthetic.record_episode(rec, "b", 5, seed=1, success=False)
    assert rec.close(30) and rec.saved == 2 and rec.error is None
    rec = Recorder(root, fps=10, cameras=[synthetic.CAMERA])
    synthetic.record_episode(rec, "a", 7, seed=2, success=None)
    rec.start_episode("thrown away", synthetic.ROBOT)
    rec.record(synthetic.state(9, 0), synthetic.action(9, 0), {synthetic.CAMERA: _frame(9, 0)})
    rec.discard_episode()
    assert rec.close(30) and rec.saved == 1
    ds = check_dataset(root, [("a", 12, 0), ("b", 5, 1), ("a", 7, 2)])
    assert [e["success"] for e in ds.episodes] == [True, False, None]
    assert ds.tasks == {0: "a", 1: "b"}
    info = json.loads((root / "meta" / "info.json").read_text())
    assert (info["total_episodes"], info["total_frames"], info["robot_type"]) == (3, 24, "ur5")


def test_the_episodes_table_kept_between_commits_does_not_grow_a_chunk_per_episode(tmp_path):
    """The writer keeps the episodes table (~120 columns) to append each episode's row: one
    chunk per column per episode grew a collection's heap by ~0.15 MB an episode."""
    rec = Recorder(tmp_path / "ds", fps=10, cameras=[synthetic.CAMERA])
    for seed in range(4):
        synthetic.record_episode(rec, "a", 2, seed=seed)
    assert rec.close(30) and rec.saved == 4
    table = rec.writer._episodes_table
    assert table is not None and table.num_rows == 4
    assert {column.num_chunks for column in table.columns} == {1}
    check_dataset(tmp_path / "ds", [("a", 2, seed) for seed in range(4)])


def test_files_close_at_the_frame_cap_so_a_commit_never_copies_the_whole_recording(
    tmp_path, monkeypatch
):
    """Each commit rewrites the file it appends to; the cap bounds that copy. Episodes after
    the cap start new files, and every reader finds each episode in its own file."""
    monkeypatch.setattr(lerobot_v3, "FILE_MAX_FRAMES", 20)
    root = tmp_path / "ds"
    episodes = [("a", 12, 0), ("b", 7, 1), ("a", 9, 2), ("b", 25, 3), ("a", 3, 4)]
    rec = Recorder(root, fps=10, cameras=[synthetic.CAMERA])
    for task, steps, seed in episodes[:3]:
        synthetic.record_episode(rec, task, steps, seed=seed)
    assert rec.close(30)
    rec = Recorder(root, fps=10, cameras=[synthetic.CAMERA])  # appending honours the cap too
    for task, steps, seed in episodes[3:]:
        synthetic.record_episode(rec, task, steps, seed=seed)
    assert rec.close(30) and rec.error is None
    ds = check_dataset(root, episodes)
    key = "observation.images.cam"
    # 12 + 7 fit in 20 frames; 9 does not; 25 is over the cap alone and gets a file of its own.
    assert [e[f"videos/{key}/file_index"] for e in ds.episodes] == [0, 0, 1, 2, 3]
    assert [e["data/file_index"] for e in ds.episodes] == [0, 0, 1, 2, 3]
    assert [e[f"videos/{key}/from_timestamp"] for e in ds.episodes] == [0.0, 1.2, 0.0, 0.0, 0.0]
    ours = LeRobotDataset.open(root)
    for i, (_task, steps, seed) in enumerate(episodes):
        frames = ours.frames(i, ours.cameras[0])
        assert len(frames) == steps
        np.testing.assert_allclose(
            ours.rows(i).state,
            [synthetic.state(seed, k).positions for k in range(steps)],
            rtol=1e-6,
        )


def _frame(seed: int, k: int) -> Frame:
    return Frame(synthetic.CAMERA, synthetic.image(seed, k), capture_time=float(k), seq=k)


@pytest.mark.virtual_clock
async def test_a_writer_that_falls_behind_costs_steps_not_ticks(
    controller_harness, tmp_path, monkeypatch
):
    """The writer is stuck for the whole run: every tick still commands; steps are dropped and counted."""
    gate = threading.Event()
    # If record() ever waited for the writer, the loop would stall; this only ends the wait
    # (after 20 s of real time) so that the test fails instead of hanging.
    rescue = threading.Timer(20.0, gate.set)
    rescue.start()
    real_add = _RecorderClass._add

    def stuck_add(self, ep, step):
        gate.wait()
        real_add(self, ep, step)

    monkeypatch.setattr(_RecorderClass, "_add", stuck_add)
    h = controller_harness()
    rec = Recorder(tmp_path / "ds", fps=10, cameras=["fake"], capacity=5)
    attach(h.controller, rec, "t")
    try:
        summary = await h.run(3.0)
        assert not gate.is_set(), "the run waited for the writer"
    finally:
        gate.set()
        rescue.cancel()
    assert summary["missed_ticks"] == 0 and summary["ticks_on_time"] == summary["ticks"]
    sent = summary["actions_sent"]
    assert sent == summary["ticks"] >= 29
    # One step may already be in the writer's hands; the queue holds `capacity` more.
    assert 5 <= rec.recorded <= 6 and rec.recorded + rec.dropped == sent
    await rec.drain()
    assert rec.close(30) and rec.saved == 1
    ds = v3_reader.load(tmp_path / "ds")
    assert ds.episodes[0]["length"] == rec.recorded
    assert ds.episodes[0]["dropped_steps"] == rec.dropped
    assert rec.summary()["steps_dropped"] == rec.dropped


#: The renames of a commit that adds a new task, in order; the episodes table is the commit.
RENAMES = ["video", "data", "tasks", "episodes", "stats", "info"]


@pytest.mark.parametrize("cut", range(len(RENAMES)))
def test_a_commit_cut_short_leaves_the_saved_episodes_readable(tmp_path, monkeypatch, cut):
    root = tmp_path / "ds"
    rec = Recorder(root, fps=10, cameras=[synthetic.CAMERA])
    synthetic.record_episode(rec, "a", 12, seed=0)
    synthetic.record_episode(rec, "a", 8, seed=1)
    assert rec.wait_idle(30)
    real_replace = os.replace
    done: list[str] = []

    def failing_replace(src, dst):
        if len(done) == cut:
            raise OSError(errno.EIO, "Input/output error")
        done.append(str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    synthetic.record_episode(rec, "b", 5, seed=2)
    assert rec.wait_idle(30)
    monkeypatch.undo()
    assert rec.error is not None and "Input/output error" in str(rec.error)
    assert not rec.record(synthetic.state(0, 0), synthetic.action(0, 0), {})  # failed: dropped
    assert rec.close(30)
    assert list(root.rglob("*.partial")) == []
    saved = [("a", 12, 0), ("a", 8, 1)]
    if cut > RENAMES.index("episodes"):
        saved.append(("b", 5, 2))  # the episodes table was renamed: the episode is in
    assert f"keeps its {len(saved)} saved episode(s)" in str(rec.error)
    check_dataset(root, saved)
    # The next session appends after the committed episodes; rows past them are gone.
    rec = Recorder(root, fps=10, cameras=[synthetic.CAMERA])
    synthetic.record_episode(rec, "c", 7, seed=3)
    assert rec.close(30) and rec.error is None
    ds = check_dataset(root, [*saved, ("c", 7, 3)])
    assert len(ds.all_rows()) == sum(n for _, n, _ in saved) + 7
    assert ds.info["total_episodes"] == len(saved) + 1


KILLED_MID_EPISODE = """
import os, signal, sys
from controller.recording import Recorder
from tests.recording import synthetic
rec = Recorder(sys.argv[1], fps=10, cameras=[synthetic.CAMERA])
synthetic.record_episode(rec, "a", 12, seed=0)
synthetic.record_episode(rec, "b", 6, seed=1)
rec.start_episode("never saved", synthetic.ROBOT)
for k in range(9):
    rec.record(synthetic.state(2, k), synthetic.action(2, k),
               {synthetic.CAMERA: synthetic.Frame(synthetic.CAMERA, synthetic.image(2, k), float(k), k)})
assert rec.wait_idle(30)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.peer
def test_a_process_killed_mid_episode_leaves_the_saved_episodes_readable(tmp_path):
    root = tmp_path / "ds"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_MID_EPISODE, str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    check_dataset(root, [("a", 12, 0), ("b", 6, 1)])
    assert list((root / ".recording").glob("*.mp4"))  # the killed episode's segment, ours
    rec = Recorder(root, fps=10, cameras=[synthetic.CAMERA])
    assert not list((root / ".recording").glob("*.mp4"))
    synthetic.record_episode(rec, "c", 4, seed=3)
    assert rec.close(30)
    check_dataset(root, [("a", 12, 0), ("b", 6, 1), ("c", 4, 3)])


def test_a_full_disk_is_one_line_and_keeps_what_was_saved(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    errors = []
    rec = Recorder(root, fps=10, cameras=[synthetic.CAMERA], on_error=errors.append)
    synthetic.record_episode(rec, "a", 6, seed=0)
    assert rec.wait_idle(30)
    real_add = video_mod.SegmentEncoder.add
    calls = []

    def add(self, rgb):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_add(self, rgb)

    monkeypatch.setattr(video_mod.SegmentEncoder, "add", add)
    synthetic.record_episode(rec, "a", 6, seed=1, kept=False)  # steps after the error: dropped
    assert rec.wait_idle(30) and rec.close(30)
    assert len(errors) == 1 and errors[0] is rec.error
    line = str(rec.error)
    assert "\n" not in line
    assert line == (
        f"recording to {str(root)!r} failed: No space left on device"
        " (the dataset keeps its 1 saved episode(s); the one in progress is lost)"
    )
    check_dataset(root, [("a", 6, 0)])


# -- directories that cannot take a dataset ------------------------------------------


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_a_directory_that_is_not_a_dataset_is_refused_and_untouched(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "holiday.jpg").write_bytes(b"\xff\xd8")
    before = _tree(root)
    with pytest.raises(DatasetDirError) as err:
        Recorder(root, fps=10, cameras=["cam"])
    assert isinstance(err.value, ConfigError)
    assert str(err.value) == (
        f"--record {str(root)!r} is not empty and holds no LeRobot dataset (no meta/info.json):"
        " name a new or empty directory (nothing there was touched)"
    )
    assert _tree(root) == before


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        ("file", "exists and is not a directory"),
        ("under_a_file", "cannot be written: Not a directory"),
        ("v2", "holds a LeRobot dataset of version 'v2.1'; only v3.0 can be appended to"),
        ("fps", "holds a dataset recorded at 30 fps; this run's control rate is 10 Hz"),
        ("cameras", "records cameras ['observation.images.cam']; this run has"),
        ("unreadable", "holds a dataset that cannot be read"),
        ("reward", "has features this recorder does not write the same way (next.reward)"),
    ],
)
def test_bad_directories_are_one_line(tmp_path, setup, needle):
    root = tmp_path / "ds"
    cameras = [synthetic.CAMERA]
    if setup == "file":
        root.write_text("x")
    elif setup == "under_a_file":
        (tmp_path / "f").write_text("x")
        root = tmp_path / "f" / "ds"
    elif setup in ("v2", "fps", "unreadable"):
        (root / "meta").mkdir(parents=True)
        info = {"codebase_version": "v2.1" if setup == "v2" else "v3.0", "fps": 30}
        text = json.dumps(info) if setup != "unreadable" else "{not json"
        (root / "meta" / "info.json").write_text(text)
    elif setup in ("cameras", "reward"):
        rec = Recorder(root, fps=10, cameras=[synthetic.CAMERA])
        synthetic.record_episode(rec, "a", 3, seed=0)
        assert rec.close(30)
        if setup == "cameras":
            cameras = ["front", "wrist"]
        else:  # a dataset of LeRobot's own with a column we do not write
            info_path = root / "meta" / "info.json"
            info = json.loads(info_path.read_text())
            info["features"]["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
            info_path.write_text(json.dumps(info))
    before = _tree(root) if root.is_dir() else None
    fps = 30 if setup == "unreadable" else 10
    with pytest.raises(DatasetDirError) as err:
        Recorder(root, fps=fps, cameras=cameras)
    assert needle in str(err.value) and "\n" not in str(err.value)
    if before is not None:
        assert _tree(root) == before


def test_a_rate_that_is_not_whole_is_refused(tmp_path):
    with pytest.raises(DatasetDirError, match=r"whole-number control rate .* got hz = 12\.5"):
        Recorder(tmp_path / "ds", fps=12.5, cameras=["cam"])
    assert not (tmp_path / "ds").exists()


def test_a_run_that_saved_nothing_leaves_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for root in (tmp_path / "new", empty):
        rec = Recorder(root, fps=10, cameras=["cam"])
        rec.start_episode("a", synthetic.ROBOT)
        rec.end_episode()  # no step: nothing to save
        assert rec.close(30) and rec.saved == 0
    assert not (tmp_path / "new").exists()
    assert list(empty.iterdir()) == []
