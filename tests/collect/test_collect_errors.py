"""Bad input is one line and exit 2, nothing written; an interrupted collection keeps what it saved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import controller.collect as collect_mod
from controller.recording import Recorder
from drivers.arms import arm_info
from drivers.base import Frame, RobotState
from policies.sim_expert import SimExpertOptions, SimExpertPolicy
from tests.controller.cli_util import one_error_line
from tests.recording import v3_reader

from .helpers import TINY, collect, summary

ROOT = Path(__file__).resolve().parents[2]


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def _plain_dataset(root: Path, size: int) -> None:
    """A dataset of the same cameras and rate but no environment state (a run without sensors)."""
    import numpy as np

    rec = Recorder(root, fps=10, cameras=["front", "top"])
    rec.start_episode("touch the red cube", arm_info("sim", 6))
    img = np.zeros((size, size, 3), dtype=np.uint8)
    frames = {n: Frame(n, img, capture_time=0.0, seq=0) for n in ("front", "top")}
    rec.record(RobotState(np.zeros(6), np.zeros(6), 0.0), np.zeros(6), frames)
    rec.end_episode(True)
    assert rec.close(30)


@pytest.mark.parametrize(
    ("case", "argv", "needle"),
    [
        ("unknown task", ["--task", "grasp"], "argument --task: invalid choice: 'grasp'"),
        ("no episodes", ["--episodes", "0"], "--episodes: must be an integer in [1, 100000]"),
        ("negative", ["--episodes", "-2"], "--episodes: must be an integer in [1, 100000]"),
        ("not a number", ["--episodes", "many"], "--episodes: expected an integer, got 'many'"),
        ("unknown view", ["--camera", "side"], "argument --camera: invalid choice: 'side'"),
        ("a view twice", ["--camera", "top", "--camera", "top"], "each view once, got top, top"),
        ("tiny", ["--size", "4"], "--size: must be an integer in [8, "),
        ("belt on reach", ["--conveyor-speed", "0.1"], "needs task 'reach-moving'"),
        ("no out", None, "--out DIR is required"),
        ("not a dataset", "photos", "is not empty and holds no LeRobot dataset"),
        ("a file", "file", "exists and is not a directory"),
        ("unwritable", "under_a_file", "cannot be written: Not a directory"),
        ("other size", "size", "holds observation.images.front images of 32x32; this collection"),
        ("no sensor data", "plain", "has no observation.environment_state; this run has sensors"),
        ("other cameras", "cameras", "records cameras ['observation.images.front',"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, case, argv, needle):
    out = tmp_path / "ds"
    extra: list[str] = []
    if isinstance(argv, list):
        extra = argv
    elif argv == "photos":
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    elif argv == "file":
        out.write_text("x")
    elif argv == "under_a_file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "ds"
    elif argv == "size":
        code, _, err = collect(capsys, "--episodes", "1", "--size", "32", "--out", str(out))
        assert code == 0, err
    elif argv == "plain":
        _plain_dataset(out, 16)
    elif argv == "cameras":
        code, _, err = collect(capsys, "--episodes", "1", "--out", str(out), *TINY)
        assert code == 0, err
        extra = ["--camera", "top"]
    before = _tree(out) if out.is_dir() else None
    args = [*TINY, "--episodes", "1", *extra]
    if argv is not None:
        args += ["--out", str(out)]
    code, stdout, err = collect(capsys, *args)
    assert code == 2, err
    line = one_error_line(err)
    assert line.startswith("python -m controller.collect: error: ")
    assert needle in line, line
    assert stdout == ""
    if before is not None:
        assert _tree(out) == before  # refused without touching it
    elif case not in ("a file", "unwritable"):
        assert not out.exists()


class _Interrupting(SimExpertPolicy):
    """The expert, sending this process `sig` at its `at`-th action of world seed `when`."""

    def __init__(self, seed: int, when: int, at: int, sig: signal.Signals) -> None:
        super().__init__(SimExpertOptions(seed=seed))
        self.seed, self.when, self.at, self.sig, self.calls = seed, when, at, sig, 0

    def act(self, features, state, sensors):
        self.calls += 1
        if self.seed == self.when and self.calls == self.at:
            os.kill(os.getpid(), self.sig)
        return super().act(features, state, sensors)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_episode_keeps_the_saved_episodes(capsys, tmp_path, monkeypatch, sig):
    """The signal arrives in the middle of the second episode: the first stays saved and
    readable, the second is not saved, the third never starts; exit 128+N."""
    monkeypatch.setattr(collect_mod, "_expert", lambda seed: _Interrupting(seed, 1, 10, sig))
    root, report = tmp_path / "ds", tmp_path / "c.json"
    code, out, err = collect(
        capsys, "--episodes", "3", "--camera", "top", "--out", str(root), "--json", str(report),
        *TINY,
    )  # fmt: skip
    assert code == 128 + sig, err
    ds = v3_reader.load(root)
    assert [(e["episode_index"], e["seed"]) for e in ds.episodes] == [(0, 0)]
    assert ds.info["total_episodes"] == 1
    assert len(ds.frames("observation.images.top", 0)) == ds.episodes[0]["length"]
    assert [p.name for p in root.iterdir()] and not (root / ".recording").exists()
    result = summary(report)
    assert result["interrupted_by"] == sig.name and result["episodes_saved"] == 1
    assert f"interrupted by {sig.name} after 1 of 3" in out
    # The dataset takes more episodes afterwards, after seed 0.
    monkeypatch.undo()
    code, _, err = collect(capsys, "--episodes", "1", "--camera", "top", "--out", str(root), *TINY)
    assert code == 0, err
    assert [e["seed"] for e in v3_reader.load(root).episodes] == [0, 1]


class _Broken(SimExpertPolicy):
    def act(self, features, state, sensors):
        raise RuntimeError("the expert's model file is corrupt")


def test_a_failing_run_is_one_line_and_exit_1_keeping_the_saved_episodes(
    capsys, tmp_path, monkeypatch
):
    def expert(seed):
        options = SimExpertOptions(seed=seed)
        return _Broken(options) if seed == 1 else SimExpertPolicy(options)

    monkeypatch.setattr(collect_mod, "_expert", expert)
    root = tmp_path / "ds"
    code, out, err = collect(
        capsys, "--episodes", "3", "--camera", "top", "--out", str(root), *TINY
    )
    assert code == 1
    lines = [line for line in err.splitlines() if "error" in line or "failed" in line]
    assert lines == [
        "python -m controller.collect: episode 1 (seed 1): the run failed: RuntimeError: the"
        " expert's model file is corrupt"
    ], err
    assert "Traceback" not in err
    assert "stopped by an error after 1 of 3" in out
    assert [e["seed"] for e in v3_reader.load(root).episodes] == [0]


@pytest.mark.peer  # a process of its own, on real signals
def test_ctrl_c_in_a_collection_process_leaves_a_readable_dataset(tmp_path):
    root = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.collect", "--episodes", "50", "--camera", "top",
         "--out", str(root), "--json", str(tmp_path / "c.json"), *TINY],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # two episodes saved, then Ctrl-C
            info = root / "meta" / "info.json"
            if info.is_file() and json.loads(info.read_text())["total_episodes"] >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    ds = v3_reader.load(root)
    saved = len(ds.episodes)
    assert 2 <= saved < 50
    assert [e["seed"] for e in ds.episodes] == list(range(saved))
    assert all(len(ds.frames("observation.images.top", i)) == e["length"] for i, e in
               enumerate(ds.episodes))  # fmt: skip
    assert f"interrupted by SIGINT after {saved} of 50" in out
    assert "Traceback" not in err
