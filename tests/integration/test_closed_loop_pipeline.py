"""The whole closed loop of issue 10 on a few tiny episodes: expert demonstrations recorded
by `controller.collect`, the VL tuned on them, the VL cache built over the dataset, the
expert trained on the cache, and the checkpoint evaluated on the simulated arm by
`controller.evaluate` on seeds the dataset never used. Each tool runs through its own
command-line entry point, as a user would chain them; what is checked is that every
stage consumes the previous one's output and the result is an honest evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller import collect
from controller.evaluate import cli as evaluate
from policies import vl_cache
from policies.lerobot_dataset import LeRobotDataset
from policies.train.__main__ import main as train

#: The smallest images the tiny VL's bounds accept without upscaling (56 = 2 x 28).
SIZE = "56"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    paths = {k: root / k for k in ("data", "vl", "cache", "ckpt")}
    assert (
        collect.main(
            [
                "--task",
                "reach",
                "--episodes",
                "3",
                "--seed",
                "0",
                "--size",
                SIZE,
                "--out",
                str(paths["data"]),
            ]
        )
        == 0
    )
    common = ["--dataset", str(paths["data"]), "--no-progress", "--threads", "1"]
    assert (
        train(
            [
                "vl",
                *common,
                "--out",
                str(paths["vl"]),
                "--steps",
                "6",
                "--batch",
                "4",
                "--eval-every",
                "3",
                "--aux-target",
                "named-cube-xy",
            ]
        )
        == 0
    )
    assert (
        vl_cache.main(
            [
                "build",
                "--lerobot",
                str(paths["data"]),
                "--vl-model",
                str(paths["vl"]),
                "--out",
                str(paths["cache"]),
            ]
        )
        == 0
    )
    assert (
        train(
            [
                "expert",
                *common,
                "--cache",
                str(paths["cache"]),
                "--out",
                str(paths["ckpt"]),
                "--steps",
                "20",
                "--batch",
                "8",
                "--eval-every",
                "10",
            ]
        )
        == 0
    )
    return paths


def test_record_cache_train_evaluate(pipeline: dict[str, Path], tmp_path: Path, capsys):
    ds = LeRobotDataset.open(pipeline["data"])
    assert len(ds.episodes) == 3 and set(ds.cameras) == {"front", "top"}
    report = tmp_path / "eval.json"
    code = evaluate.main(
        ["--checkpoint", str(pipeline["ckpt"]), "--task", "reach", "--episodes", "2",
         "--image-size", SIZE, "--episode-limit", "2", "--vl-latency", "0.3",
         "--dataset", str(pipeline["data"]), "--json", str(report)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    result = json.loads(report.read_text())
    rows = result["episodes"]
    assert len(rows) == 2
    # Evaluation seeds are disjoint from the three the dataset was recorded with.
    assert not {r["seed"] for r in rows} & {0, 1, 2}
    # The trained policy drove the arm: commands were sent on every episode.
    assert all(r["actions"] > 0 for r in rows)


def test_the_checkpoint_refuses_a_run_without_its_cameras(pipeline: dict[str, Path], capsys):
    code = evaluate.main(
        ["--checkpoint", str(pipeline["ckpt"]), "--episodes", "1", "--cameras", "top",
         "--image-size", SIZE]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "front" in lines[0], err
