"""A checkpoint records the cameras it was trained on, in order, and the policy holds run
time to them: the same cameras in another order are put back in the trained order, any
other set is one PolicyError line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from drivers.base import Frame
from policies.errors import CheckpointError, PolicyError
from policies.qwen_vla.config import VLAConfig
from policies.qwen_vla.policy import QwenVLAPolicy


@pytest.fixture(scope="module")
def trained_on_two(tmp_path_factory, tiny_cache, make_robot) -> QwenVLAPolicy:
    policy = QwenVLAPolicy.from_options({"cache_dir": str(tiny_cache)})
    policy.load("cpu", make_robot(6), 0.1)
    out = policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "policy")
    config = json.loads((out / "config.json").read_text())
    config["cameras"] = ["front", "top_left"]  # a dataset stores "top.left" as "top_left"
    (out / "config.json").write_text(json.dumps(config))
    loaded = QwenVLAPolicy.from_options({"checkpoint": str(out)})
    loaded.load("cpu", make_robot(6), 0.1)
    return loaded


def test_frames_in_another_order_are_encoded_in_the_trained_order(trained_on_two, make_images):
    a, b = make_images(2, 5)
    policy = trained_on_two
    trained = policy.encode_vl([Frame("front", a, 0, 0), Frame("top.left", b, 0, 0)], "touch")
    swapped = policy.encode_vl([Frame("top.left", b, 0, 0), Frame("front", a, 0, 0)], "touch")
    assert torch.equal(trained, swapped)
    # and the order matters to the model: the trained order is really what was fed
    direct = policy.encoder.encode([b, a], "touch")
    assert not torch.equal(trained, direct)


@pytest.mark.parametrize("names", [["front"], ["front", "wrist"], ["front", "top_left", "wrist"]])
def test_other_cameras_are_refused_in_one_line(trained_on_two, make_images, names):
    frames = [Frame(n, img, 0, 0) for n, img in zip(names, make_images(len(names), 1), strict=True)]
    with pytest.raises(PolicyError) as err:
        trained_on_two.encode_vl(frames, "touch")
    text = str(err.value)
    assert "\n" not in text
    assert "trained on cameras ['front', 'top_left']" in text and repr(names) in text


def test_config_round_trip_and_older_checkpoints(tmp_path):
    config = VLAConfig(vl_model="m", vl_hidden=8, action_dim=2, cameras=("front", "top"))
    raw = json.loads(config.to_json())
    assert raw["cameras"] == ["front", "top"]
    assert VLAConfig.from_dict(raw) == config
    raw.pop("cameras")  # a checkpoint from before the field
    assert VLAConfig.from_dict(raw).cameras is None
    for bad in (["front", "front"], [], "front"):
        path = tmp_path / "config.json"
        path.write_text(json.dumps({**raw, "cameras": bad}))
        with pytest.raises(CheckpointError, match="cameras"):
            VLAConfig.load(Path(path))
