"""The harness plugin (controller.testing) is loaded through its pytest11 entry point."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir holding the tiny default, built once per session through the first-use path
    (the policy and training tests share it)."""
    from policies.qwen_vla.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
    from policies.qwen_vla.tiny_default import tiny_model_dir

    root = tmp_path_factory.mktemp("vla-cache")
    tiny_model_dir(root, min_pixels=DEFAULT_MIN_PIXELS, max_pixels=DEFAULT_MAX_PIXELS)
    return root


@pytest.fixture(scope="session")
def tiny_dir(tiny_cache: Path) -> Path:
    from policies.qwen_vla.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
    from policies.qwen_vla.tiny_default import tiny_model_dir

    return tiny_model_dir(tiny_cache, min_pixels=DEFAULT_MIN_PIXELS, max_pixels=DEFAULT_MAX_PIXELS)
