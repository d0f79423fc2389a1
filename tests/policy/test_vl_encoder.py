"""The VL encoder: real Qwen2.5-VL code path on the tiny default, pooling semantics."""

from __future__ import annotations

import json

import pytest
import torch

from policies.errors import PolicyConfigError, PolicyError
from policies.qwen_vla.config import Preprocessing
from policies.qwen_vla.vl_encoder import VLEncoder, masked_mean_pool


def test_pool_ignores_padding_values():
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    poisoned = hidden.clone()
    poisoned[0, 3:] = 1e6
    pooled = masked_mean_pool(poisoned, mask)
    assert pooled.shape == (2, 1, 4)
    torch.testing.assert_close(pooled[0, 0], hidden[0, :3].mean(dim=0))
    torch.testing.assert_close(pooled[1, 0], hidden[1].mean(dim=0))


def test_padded_batch_equals_each_sample_alone(encoder: VLEncoder, make_images):
    samples = [
        (make_images(1, 0), "pick up the red cube and place it in the blue bowl, slowly"),
        (make_images(3, 1), "push"),
    ]
    inputs = encoder.preprocess(samples)
    mask = inputs["attention_mask"]
    assert (mask == 0).any(), "the batch must actually contain padding"
    batched = encoder.forward(inputs)
    assert batched.shape == (2, 1, encoder.hidden_size)
    for i, (images, text) in enumerate(samples):
        alone = encoder.encode(images, text)
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_tiny_default_is_a_normal_model_dir(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl"
    assert (tiny_dir / "model.safetensors").is_file()
    assert (tiny_dir / "tokenizer.json").is_file()


def test_encoding_is_deterministic_and_finite(encoder: VLEncoder, make_images):
    images = make_images(2, 3)
    a = encoder.encode(images, "open the drawer")
    b = encoder.encode(images, "open the drawer")
    assert a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, encoder.encode(images, "close the drawer"))


def test_image_bounds_are_applied(encoder: VLEncoder, make_images):
    pp = encoder.preprocessing
    inputs = encoder.preprocess([(make_images(1, 4, size=(480, 640)), "x")])
    _t, h, w = inputs["image_grid_thw"][0].tolist()
    pixels = h * w * 14 * 14
    assert pp.min_pixels <= pixels <= pp.max_pixels


def test_bad_image_and_missing_model_are_clear(encoder: VLEncoder, tmp_path):
    import numpy as np

    with pytest.raises(PolicyError, match="RGB uint8"):
        encoder.encode([np.zeros((4, 4), np.uint8)], "x")
    with pytest.raises(PolicyConfigError, match="no such model directory"):
        VLEncoder.load(tmp_path / "nope", Preprocessing())
