"""The benchmark runs and reports measured figures; encode_vl and act can run concurrently."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from drivers.base import Frame, RobotState
from policies import bench
from policies.qwen_vla.policy import QwenVLAPolicy


def test_bench_vl_reports_split_latencies(tiny_cache, capsys):
    rc = bench.main(
        [
            "vl",
            "--cache-dir",
            str(tiny_cache),
            "--images",
            "1",
            "2",
            "--iters",
            "2",
            "--warmup",
            "0",
            "--size",
            "96x128",
            "--json",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["images"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        for part in ("preprocess", "forward", "total"):
            assert r[part]["n"] == 2 and r[part]["p50_ms"] > 0


def test_encode_and_act_concurrently_match_sequential(tiny_cache, make_images, make_robot):
    policy = QwenVLAPolicy.from_options({"cache_dir": str(tiny_cache), "head": "flow"})
    policy.load("cpu", make_robot(6), 0.1)
    frames = [Frame("front", img, 0.0, 0) for img in make_images(2, 5)]
    features = policy.encode_vl(frames, "pick")
    state = RobotState(np.zeros(6), np.zeros(6), 0.0)
    expected_chunk = policy.act(features, state, {})

    with ThreadPoolExecutor(2) as pool:
        vl = [pool.submit(policy.encode_vl, frames, "pick") for _ in range(4)]
        acts = [pool.submit(policy.act, features, state, {}) for _ in range(40)]
        for f in vl:
            assert torch.equal(f.result(), features)
        for a in acts:
            np.testing.assert_array_equal(a.result(), expected_chunk)


def test_bench_bad_arguments_are_one_line_before_any_model_loads(capsys, monkeypatch):
    import pytest

    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(QwenVLAPolicy, "from_options", classmethod(no_model))
    for argv in (
        ["vl", "--size", "abc"],
        ["vl", "--iters", "0"],
        ["act", "--dof", "0"],
        ["vl", "--images", "0"],
        ["act", "--warmup", "-1"],
    ):
        with pytest.raises(SystemExit) as info:
            bench.main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "error: argument" in err, err
