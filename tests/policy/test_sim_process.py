"""The Qwen VLA policy and the MuJoCo world in one process, as `python -m controller
--robot sim` runs them: torchvision (which loads triton, with its own LLVM) imported
after MuJoCo's EGL renderer (Mesa's LLVM) crashed the process; the policy now imports
it when it is configured, before any driver connects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.peer


def test_controller_with_the_sim_world_and_qwen_vla_exits_cleanly(tmp_path):
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    env["VLA_CONTROLLER_CACHE"] = str(tmp_path / "cache")
    cmd = [sys.executable, "-m", "controller", "--robot", "sim", "--camera", "sim://front"]
    proc = subprocess.run(
        [*cmd, "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "actions sent" in proc.stdout + proc.stderr
