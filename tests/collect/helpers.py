"""Running `python -m controller.collect` in this process, on tiny images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.collect import main
from drivers.sim.world import open_worlds

#: Tests render tiny images: the pixels matter for determinism and layout, not for a policy.
TINY = ["--size", "16"]


def collect(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m controller.collect ARGV`, run in this process."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse exits on bad flags
        code = int(exc.code or 0)
    out = capsys.readouterr()
    assert not [w for w in open_worlds() if w.startswith("collect-")], "a sim world leaked"
    return code, out.out, out.err


def summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def column(rows: Any, key: str) -> np.ndarray:
    """A fixed-size-list column of an episode's rows as a (frames, n) array."""
    return np.array(rows[key].to_pylist(), dtype=np.float32)
