"""`python -m controller --robot sim`: the world's instruction when none is given, the world's
verdict in the summary, and a `--record` episode scored and seeded by it."""

from __future__ import annotations

import json

from drivers.sim.world import WorldConfig, plan_episode
from tests.controller.cli_util import run_cli
from tests.recording import v3_reader

#: The README's command, on 16x16 views (camera options live in the config file).
CONFIG = """
policy = "sim-expert"
[robot]
driver = "sim"
seed = {seed}
[[cameras]]
spec = "sim://front"
width = 16
height = 16
[[cameras]]
spec = "sim://top"
width = 16
height = 16
[[sensors]]
spec = "sim"
"""
FAST = ["--device", "cpu", "--status-interval", "0", "--no-uvloop", "--duration", "0.6"]


def _run(capsys, tmp_path, seed, *argv):
    config = tmp_path / f"sim{seed}.toml"
    config.write_text(CONFIG.format(seed=seed))
    stats = tmp_path / "s.json"
    code, out, err = run_cli(
        capsys, "--config", str(config), *FAST, "--stats-json", str(stats), *argv
    )
    assert code == 0, err
    return json.loads(stats.read_text()), out


def test_the_sim_world_proposes_the_instruction_and_judges_the_run(capsys, tmp_path):
    plan = plan_episode(WorldConfig(seed=5))
    root = tmp_path / "ds"
    summary, out = _run(capsys, tmp_path, 5, "--record", str(root))
    assert summary["instruction"] == plan.instruction
    outcome = summary["outcome"]
    assert (outcome["seed"], outcome["target"], outcome["task"]) == (5, plan.target, "reach")
    # 0.6 s is too short to reach a cube: judged, and said so, for the time simulated.
    assert outcome["success"] is False and outcome["time_to_success"] is None
    assert f"did not touch the {plan.target} cube in the " in outcome["detail"]
    assert f"outcome             failure: {outcome['detail']}" in out
    ds = v3_reader.load(root)
    episode = ds.episodes[0]
    assert (episode["tasks"], episode["success"], episode["seed"]) == (
        [plan.instruction],
        False,
        5,
    )
    env = ds.environment_state(0)
    assert env is not None and len(env) == episode["length"] == summary["actions_sent"]


def test_an_instruction_given_is_kept(capsys, tmp_path):
    plan = plan_episode(WorldConfig(seed=5))
    other = next(c for c in ("red", "green", "blue") if c != plan.target)
    summary, _ = _run(capsys, tmp_path, 5, "--instruction", f"touch the {other} cube")
    assert summary["instruction"] == f"touch the {other} cube"
    assert summary["outcome"]["target"] == plan.target  # the world's task is unchanged


def test_a_robot_without_a_world_keeps_the_default_and_has_no_verdict(capsys, tmp_path):
    stats = tmp_path / "s.json"
    argv = ["--policy", "fake", *FAST, "--stats-json", str(stats)]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    summary = json.loads(stats.read_text())
    assert summary["instruction"] == "pick up the red cube and place it in the bowl"
    assert "outcome" not in summary and "outcome " not in out
