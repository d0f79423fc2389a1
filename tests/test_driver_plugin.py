"""A third-party driver package, installed like a user would, drives the controller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.peer  # pip and the controller as processes of their own

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_driver"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """pip-install the example into its own folder (the shared venv stays untouched)."""
    target = tmp_path_factory.mktemp("plugin-site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return target


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return env


def test_installed_plugin_is_listed(plugin_site):
    out = subprocess.run(
        [sys.executable, "-m", "controller", "--list-drivers"],
        capture_output=True,
        text=True,
        env=_env(plugin_site),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "camera.checker" in out.stdout and "example_driver.camera:CheckerCamera" in out.stdout


def test_installed_plugin_drives_the_controller(plugin_site, tmp_path):
    stats = tmp_path / "s.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "--robot",
            "fake",
            "--camera",
            "checker://left",
            "--policy",
            "fake",
            "--policy-option",
            "vl_latency=0.05",
            "--duration",
            "2",
            "--device",
            "cpu",
            "--stats-json",
            str(stats),
            "--status-interval",
            "0",
        ],
        capture_output=True,
        text=True,
        env=_env(plugin_site),
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(stats.read_text())
    assert summary["cameras"] == ["checker://left"]
    assert summary["actions_sent"] >= 10
    assert summary["feature_age_at_use_ms"]["count"] == summary["actions_sent"]


def test_bad_plugin_option_is_one_clear_line(plugin_site, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[cameras]]\nspec = "checker"\nfps = -1\n')
    out = subprocess.run(
        [sys.executable, "-m", "controller", "--config", str(cfg), "--policy", "fake"],
        capture_output=True,
        text=True,
        env=_env(plugin_site),
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "fps must be positive" in out.stderr
