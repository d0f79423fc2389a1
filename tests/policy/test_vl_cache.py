"""VL cache: train/serve parity and refusal of a cache built differently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from drivers.base import Frame
from policies import vl_cache
from policies.qwen_vla.config import Preprocessing
from policies.qwen_vla.policy import QwenVLAPolicy
from policies.qwen_vla.vl_encoder import VLEncoder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, make_images) -> tuple[Path, dict[str, tuple[list, str]]]:
    root = tmp_path_factory.mktemp("dataset")
    truth: dict[str, tuple[list, str]] = {}
    lines = []
    for k, (n, text) in enumerate(
        [(1, "pick up the red cube"), (3, "open the drawer"), (2, "push")]
    ):
        images = make_images(n, 100 + k, size=(96, 128))
        names = []
        for j, img in enumerate(images):
            name = f"s{k}_cam{j}.png"
            Image.fromarray(img).save(root / name)
            names.append(name)
        sid = f"episode0/t{k}"
        truth[sid] = (images, text)
        lines.append(json.dumps({"id": sid, "images": names, "instruction": text}))
    (root / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return root / "samples.jsonl", truth


@pytest.fixture(scope="module")
def built(dataset, tiny_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vlcache") / "cache"
    rc = vl_cache.main(
        ["build", "--dataset", str(dataset[0]), "--out", str(out), "--cache-dir", str(tiny_cache)]
    )
    assert rc == 0
    return out


def test_real_time_features_equal_cached_ones_bitwise(built, dataset, tiny_cache, make_robot):
    policy = QwenVLAPolicy.from_options({"cache_dir": str(tiny_cache)})
    policy.load("cpu", make_robot(6), 0.1)
    cache = vl_cache.VLCache.open(built, policy.encoder.identity())
    assert len(cache) == 3
    for sid, (images, text) in dataset[1].items():
        frames = [Frame(f"cam{j}", img, 0.0, 0) for j, img in enumerate(images)]
        live = policy.encode_vl(frames, text)
        assert live.dtype == cache[sid].dtype == torch.float32
        assert torch.equal(live, cache[sid]), sid


def test_cache_with_other_preprocessing_is_refused(built, tiny_dir):
    other = VLEncoder.load(tiny_dir, Preprocessing(max_pixels=32 * 28 * 28), "cpu")
    with pytest.raises(vl_cache.VLCacheError, match="preprocessing"):
        vl_cache.VLCache.open(built, other.identity())


def test_cache_from_other_model_is_refused(built, encoder, tiny_cache, tmp_path):
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(built, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["encoder"]["fingerprint"] = "0" * 16
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(vl_cache.VLCacheError, match="fingerprint"):
        vl_cache.VLCache.open(copy, encoder.identity())
    assert vl_cache.main(["check", "--cache", str(copy), "--cache-dir", str(tiny_cache)]) == 2


def test_check_command_accepts_matching_cache(built, tiny_cache, capsys):
    assert vl_cache.main(["check", "--cache", str(built), "--cache-dir", str(tiny_cache)]) == 0
    assert "3 samples" in capsys.readouterr().out


def test_bad_dataset_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "images": ["x.png"], "instruction": "go"}\n{"id": "b"}\n')
    with pytest.raises(vl_cache.VLCacheError, match=r"bad.jsonl:2"):
        vl_cache.read_dataset(path)
