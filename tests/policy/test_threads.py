"""encode_vl and act can run concurrently (the two executor lanes) and match sequential calls.

(The VL and act benchmarks moved to `controller.bench`; their tests are in
tests/controller/test_bench.py.)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from drivers.base import Frame, RobotState
from policies.qwen_vla.policy import QwenVLAPolicy


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
