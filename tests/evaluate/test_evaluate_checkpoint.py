"""`--checkpoint`: the qwen-vla policy from a checkpoint, closed loop on the sim arm.

An untrained checkpoint of the tiny default (random weights) is enough to
check the path: the checkpoint is loaded once, every encode sees the
evaluation's cameras and is padded to the emulated latency in virtual time.
Whether a trained checkpoint succeeds is the training's test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.evaluate.cli import main

pytestmark = pytest.mark.slow  # builds the tiny Qwen2.5-VL (~5 s on 2 cores)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from drivers.arms import arm_info
    from policies.qwen_vla.policy import QwenVLAPolicy

    cache = tmp_path_factory.mktemp("vla-cache")
    policy = QwenVLAPolicy.from_options({"cache_dir": str(cache), "seed": 3})
    policy.load("cpu", arm_info("sim", 6), 0.1)
    return policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "policy")


def test_a_checkpoint_runs_closed_loop_with_padded_encodes(capsys, tmp_path, checkpoint):
    out_json = tmp_path / "eval.json"
    code = main(
        [
            "--checkpoint",
            str(checkpoint),
            "--image-size",
            "56",
            "--episodes",
            "1",
            "--episode-limit",
            "1.5",
            "--vl-mode",
            "sync",
            "--vl-latency",
            "0.3",
            "--device",
            "cpu",
            "--json",
            str(out_json),
        ]
    )
    _, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out_json.read_text())
    assert report["settings"]["policy"] == "qwen-vla"
    assert report["settings"]["policy_options"] == {"checkpoint": str(checkpoint)}
    (row,) = report["episodes"]
    # Virtual time: each encode of the real model took exactly the emulated 0.3 s.
    assert row["vl_latency_ms_p50"] == pytest.approx(300.0)
    assert row["actions"] > 0 and row["control_rate_hz"] == pytest.approx(10 / 3, rel=0.05)
    assert row["feature_age_ms_p50"] >= 300.0
    assert row["elapsed_s"] >= 1.5
