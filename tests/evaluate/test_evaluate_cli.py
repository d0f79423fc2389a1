"""`python -m controller.evaluate` in-process: episodes with the scripted expert, outputs, bad input.

The expert ignores pixels, so the cameras render 16x16 images here (the
rendering is most of an episode's real time); episodes run on virtual time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from controller.evaluate.cli import main
from controller.evaluate.seeds import DEFAULT_SEED
from drivers.sim.world import open_worlds
from policies.errors import PolicyError

TINY = ["--image-size", "16"]
EXPERT = ["--policy", "sim-expert", *TINY]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one error line (progress-bar redraws aside); fails if there is not exactly one."""
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


@pytest.fixture(autouse=True)
def _no_world_left():
    yield
    assert not [w for w in open_worlds() if w.startswith("eval-")], "an episode's world leaked"


def test_the_expert_succeeds_and_the_json_has_every_field(capsys, tmp_path):
    out_json = tmp_path / "eval.json"
    code, out, err = run(capsys, *EXPERT, "--episodes", "3", "--json", str(out_json))
    assert code == 0, err
    assert "episode" in err  # the progress bar, on stderr
    (summary_line,) = out.splitlines()
    assert summary_line.startswith("reach async VL 0 s: 3/3 succeeded")
    report = json.loads(out_json.read_text())
    s = report["summary"]
    assert s["episodes"] == 3 and s["successes"] == 3 and s["success_rate"] == 1.0
    assert s["success_ci95"][1] == 1.0 and 0.4 < s["success_ci95"][0] < 0.5
    assert 0 < s["time_to_success_s"]["median"] <= s["time_to_success_s"]["p90"] < 10
    assert s["control_rate_hz"] == pytest.approx(10.0, rel=0.01)
    assert s["overruns"] == 0 and s["missed_ticks"] == 0
    assert s["feature_age_at_use_ms"]["count"] == s["actions"] > 0
    assert report["settings"]["seeds"] == [DEFAULT_SEED, DEFAULT_SEED + 2]
    assert report["settings"]["cameras"] == ["front", "top"]
    assert (report["vl_mode"], report["vl_latency"]) == ("async", 0.0)
    rows = report["episodes"]
    assert [r["seed"] for r in rows] == [DEFAULT_SEED, DEFAULT_SEED + 1, DEFAULT_SEED + 2]
    for r in rows:
        assert r["success"] and r["min_distance_m"] <= 0.03
        assert r["instruction"] == f"touch the {r['target']} cube"
        assert r["time_to_success_s"] <= r["elapsed_s"]
        assert r["actions"] > 0 and r["feature_age_ms_p50"] <= r["feature_age_ms_p95"]
        assert set(r) >= {"control_rate_hz", "missed_ticks", "overruns", "holds", "wall_s"}


def test_virtual_time_episodes_are_reproducible(capsys, tmp_path):
    rows = []
    for i in range(2):
        path = tmp_path / f"{i}.json"
        code, _, err = run(capsys, *EXPERT, "--episodes", "1", "--seed", "7", "--json", str(path))
        assert code == 0, err
        (row,) = json.loads(path.read_text())["episodes"]
        row.pop("wall_s")
        rows.append(row)
    assert rows[0] == rows[1]


def test_sync_at_600ms_loses_on_reach_moving_where_async_holds(capsys, tmp_path):
    out_json = tmp_path / "sweep.json"
    code, out, err = run(
        capsys,
        *EXPERT,
        "--task",
        "reach-moving",
        "--episodes",
        "2",
        "--episode-limit",
        "4",
        "--sweep",
        "--latencies",
        "0.6",
        "--max-feature-age",
        "1.5",
        "--json",
        str(out_json),
    )
    assert code == 0, err
    report = json.loads(out_json.read_text())
    cells = {c["vl_mode"]: c["summary"] for c in report["cells"]}
    assert set(cells) == {"sync", "async"}
    assert [c["vl_latency"] for c in report["cells"]] == [0.6, 0.6]
    # Sync: one action per 0.6 s encode, overruns counted; async holds 10 Hz.
    assert cells["sync"]["control_rate_hz"] == pytest.approx(1 / 0.6, rel=0.02)
    assert cells["sync"]["overruns"] > 0
    assert cells["async"]["control_rate_hz"] == pytest.approx(10.0, rel=0.02)
    assert cells["async"]["successes"] == 2 and cells["sync"]["successes"] == 0
    assert len(out.splitlines()) == 3  # one line per cell, then the plot's path
    png = Path(report["plot"])
    assert png == out_json.with_suffix(".png")
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 300
        img.load()


def test_the_video_is_an_h264_mp4_of_the_episode_with_its_overlay(capsys, tmp_path):
    video = tmp_path / "episode.mp4"
    out_json = tmp_path / "e.json"
    code, _out, err = run(
        capsys,
        "--policy",
        "sim-expert",
        "--image-size",
        "32",
        "--cameras",
        "top,front",
        "--episodes",
        "2",
        "--video",
        str(video),
        "--video-episode",
        "1",
        "--json",
        str(out_json),
    )
    assert code == 0, err
    report = json.loads(out_json.read_text())
    assert report["video"] == {"path": str(video), "episode": 1, "camera": "front"}
    elapsed = report["episodes"][1]["elapsed_s"]
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    # 10 frames a second of the episode, plus one second holding the outcome.
    assert abs(len(frames) - (elapsed * 10 + 10)) <= 3
    assert frames[0].shape == (64, 64, 3)  # 32 px upscaled twice for the text
    # The overlay: black bands with text at the top and the bottom; the last
    # frame's outcome is drawn in green (success).
    last = frames[-1].astype(int)
    bottom = last[-12:, :, :]
    assert (bottom[..., 1] - bottom[..., 0] > 80).any()


def test_seeds_a_dataset_used_are_refused(capsys, tmp_path):
    data = _dataset(tmp_path / "data", seeds=[0, 1, DEFAULT_SEED + 1])
    code, _, err = run(capsys, *EXPERT, "--episodes", "3", "--dataset", str(data))
    assert code == 2
    line = error_line(err)
    assert "overlap 1 training seed(s)" in line and str(DEFAULT_SEED + 1) in line
    assert f"--seed {DEFAULT_SEED + 2}" in line
    # Seeds clear of the dataset's run.
    code, _out, err = run(capsys, *EXPERT, "--episodes", "1", "--dataset", str(data), "--seed", "2")
    assert code == 0, err


def test_a_dataset_without_seeds_is_a_warning(capsys, tmp_path):
    data = _dataset(tmp_path / "data", seeds=None)
    code, _, err = run(capsys, *EXPERT, "--episodes", "1", "--dataset", str(data))
    assert code == 0
    assert "does not record its episodes' seeds" in err


def test_an_unreadable_dataset_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, *EXPERT, "--dataset", str(tmp_path))
    assert code == 2 and "is not a LeRobot v3 dataset (no meta/info.json)" in error_line(err)
    data = _dataset(tmp_path / "data", seeds=[1])
    (data / "meta" / "episodes" / "chunk-000" / "file-000.parquet").write_bytes(b"PAR1 torn")
    code, _, err = run(capsys, *EXPERT, "--dataset", str(data))
    assert code == 2 and "cannot read file-000.parquet" in error_line(err)


def _dataset(root: Path, seeds: list[int] | None) -> Path:
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v3.0"}))
    n = len(seeds) if seeds is not None else 2
    columns: dict[str, Any] = {"episode_index": pa.array(np.arange(n, dtype=np.int64))}
    if seeds is not None:
        columns["seed"] = pa.array(seeds, type=pa.int64())
    pq.write_table(pa.table(columns), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    return root


class _Picky:
    """A policy trained on the wrist camera only: it refuses frames from any other."""

    name = "picky"

    def load(self, device, robot, control_period):
        pass

    def encode_vl(self, frames, instruction):
        cams = [f.camera for f in frames]
        if cams != ["wrist"]:
            raise PolicyError(f"picky: trained on camera(s) ['wrist'], got {cams}")
        return 0

    def act(self, features, state, sensors):
        return np.asarray(state.positions)[None, :]


class _Broken(_Picky):
    """Encodes anything, then fails every action: a runtime failure, not bad input."""

    def encode_vl(self, frames, instruction):
        return 0

    def act(self, features, state, sensors):
        raise RuntimeError("the expert head is on fire")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--policy", "sim-expert", "--task", "stack"], "argument --task: invalid choice: 'stack'"),
        (["--policy", "sim-expert", "--vl-latency", "-0.1"], "argument --vl-latency: must be"),
        (["--policy", "sim-expert", "--episodes", "0"], "episodes must be in [1, 100000]"),
        ([], "name the policy: --checkpoint DIR (qwen-vla) or --policy NAME"),
        (["--policy", "no-such-policy"], "no-such-policy"),
        (["--policy", "sim-expert", "--sweep", "--vl-mode", "sync"], "--sweep runs every"),
        (["--policy", "sim-expert", "--video", "x.avi"], "the video is an MP4"),
        (["--policy", "sim-expert", "--plot", "x.png"], "--plot draws a sweep: add --sweep"),
        (["--policy", "sim-expert", "--cameras", "front,side"], "argument --cameras"),
        (["--policy", "sim-expert", "--json", "/no/such/dir/x.json"], "does not exist"),
        (["--policy", "sim-expert", "--conveyor-speed", "0.1"], "needs task 'reach-moving'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, expected):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert expected in error_line(err)
    assert out == ""


def test_a_missing_or_corrupt_checkpoint_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "--checkpoint", str(tmp_path / "nope"))
    assert code == 2 and "no such directory" in error_line(err)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    code, _, err = run(capsys, "--checkpoint", str(bad))
    assert code == 2 and str(bad) in error_line(err)


def test_a_policy_refusing_the_cameras_is_one_line_before_any_episode(capsys, monkeypatch):
    from policies import base

    monkeypatch.setattr(base, "create", lambda name, options=None: _Picky())
    code, _out, err = run(capsys, "--policy", "picky", *TINY)
    assert code == 2
    line = error_line(err)
    assert "refuses this evaluation's observation (cameras front, top, 16x16)" in line
    assert "trained on camera(s) ['wrist']" in line
    assert "episode" not in err.replace(line, "")  # no progress bar: nothing ran


def test_a_failing_episode_is_one_line_and_exit_1(capsys, monkeypatch):
    from policies import base

    monkeypatch.setattr(base, "create", lambda name, options=None: _Broken())
    code, _, err = run(capsys, "--policy", "broken", *TINY, "--episodes", "2")
    assert code == 1
    line = error_line(err)
    assert f"episode 0 (seed {DEFAULT_SEED}, async, VL latency 0 s) failed" in line
    assert "the expert head is on fire" in line


def test_real_time_episodes_run_on_the_wall_clock(capsys, tmp_path):
    out_json = tmp_path / "rt.json"
    code, _, err = run(
        capsys,
        *EXPERT,
        "--cameras",
        "top",
        "--episodes",
        "1",
        "--episode-limit",
        "1",
        "--real-time",
        "--device",
        "cpu",
        "--json",
        str(out_json),
    )
    assert code == 0, err
    (row,) = json.loads(out_json.read_text())["episodes"]
    assert row["wall_s"] >= row["elapsed_s"] >= 1.0
    assert row["actions"] > 0
