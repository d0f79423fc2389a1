"""`python -m controller --record DIR`: a run is one episode; bad directories and a full disk
are one line each, and a failing recording still ends with the arm stopped."""

from __future__ import annotations

import errno
import json

from controller.recording import video as video_mod
from controller.runtime import ControllerConfig
from tests.controller.cli_util import one_error_line, run_cli
from tests.recording import v3_reader

FAST = ["--policy", "fake", "--device", "cpu", "--status-interval", "0", "--no-uvloop"]
TWO_CAMERAS = ["--camera", "fake://front", "--camera", "fake://wrist"]


def test_each_run_appends_one_episode_with_the_instruction_as_its_task(capsys, tmp_path):
    root = tmp_path / "ds"
    for i, instruction in enumerate(["touch the red cube", "touch the blue cube"]):
        stats = tmp_path / f"s{i}.json"
        code, out, err = run_cli(
            capsys,
            *FAST,
            *TWO_CAMERAS,
            "--duration",
            "1",
            "--instruction",
            instruction,
            "--record",
            str(root),
            "--stats-json",
            str(stats),
        )
        assert code == 0, err
        summary = json.loads(stats.read_text())
        assert (
            f"recording           1 episode(s) saved to {root} ({summary['actions_sent']} steps,"
            " 0 dropped)"
        ) in out
        assert summary["recording"] == {
            "dir": str(root),
            "episodes_saved": 1,
            "steps_recorded": summary["actions_sent"],
            "steps_dropped": 0,
            "error": None,
        }
        ds = v3_reader.load(root)
        assert len(ds.episodes) == i + 1
        assert ds.episodes[i]["tasks"] == [instruction]
        assert ds.episodes[i]["length"] == summary["actions_sent"] > 0
        assert len(ds.frames("observation.images.wrist", i)) == summary["actions_sent"]
    assert ds.video_keys == ["observation.images.front", "observation.images.wrist"]
    assert ds.tasks == {0: "touch the red cube", 1: "touch the blue cube"}


def test_the_default_run_records_the_default_instruction(capsys, tmp_path):
    root = tmp_path / "ds"
    code, _, err = run_cli(capsys, *FAST, "--duration", "0.5", "--record", str(root))
    assert code == 0, err
    assert v3_reader.load(root).tasks == {0: ControllerConfig().instruction}


def test_a_directory_of_something_else_is_refused_before_anything_connects(capsys, tmp_path):
    root = tmp_path / "notes"
    root.mkdir()
    (root / "todo.txt").write_text("keep me")
    stats = tmp_path / "s.json"
    code, _, err = run_cli(
        capsys, *FAST, "--duration", "1", "--record", str(root), "--stats-json", str(stats)
    )
    assert code == 2
    assert "is not empty and holds no LeRobot dataset" in one_error_line(err)
    assert sorted(p.name for p in root.iterdir()) == ["todo.txt"]
    assert not stats.exists()  # refused as a configuration error: nothing ran


def test_a_rate_a_dataset_cannot_hold_is_refused(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, *FAST, "--hz", "12.5", "--duration", "1", "--record", str(tmp_path / "ds")
    )
    assert code == 2
    assert "whole-number control rate" in one_error_line(err)


def test_a_full_disk_ends_the_run_with_one_line_and_the_arm_stopped(capsys, tmp_path, monkeypatch):
    root = tmp_path / "ds"
    code, _, err = run_cli(capsys, *FAST, "--duration", "0.5", "--record", str(root))
    assert code == 0, err

    def full(self, rgb):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(video_mod.SegmentEncoder, "add", full)
    stats = tmp_path / "s.json"
    code, _, err = run_cli(
        capsys, *FAST, "--duration", "30", "--record", str(root), "--stats-json", str(stats)
    )
    assert code == 1
    line = one_error_line(err)
    assert line.endswith(
        f"recording to {str(root)!r} failed: No space left on device"
        " (the dataset keeps its 1 saved episode(s); the one in progress is lost)"
    )
    summary = json.loads(stats.read_text())
    assert summary["robot_stop_calls"] == 1
    assert summary["duration_s"] < 5  # the failure ended the run, not its 30 s duration
    assert summary["recording"]["episodes_saved"] == 0
    assert len(v3_reader.load(root).episodes) == 1  # the earlier run's episode is intact
