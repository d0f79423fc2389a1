"""The VL cache over a LeRobot dataset and the expert stage: the cache is the real-time
encoder's output, both feature sources agree bitwise, the expert learns, and its
checkpoint runs in the policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from drivers.base import Frame, RobotState
from policies import vl_cache
from policies.lerobot_dataset import LeRobotDataset
from policies.qwen_vla.config import Preprocessing
from policies.qwen_vla.policy import QwenVLAPolicy
from policies.qwen_vla.vl_encoder import VLEncoder
from policies.train.__main__ import main
from policies.train.data import EpisodeStore
from policies.train.expert_stage import CachedFeatures, LiveFeatures
from tests.train import datasets


def expert_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        "expert",
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--batch",
        "16",
        "--val-fraction",
        "0.2",
        "--no-progress",
        "--threads",
        "1",
        *extra,
    ]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training/log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def encoder(tuned: Path) -> VLEncoder:
    return VLEncoder.load(tuned, Preprocessing(), "cpu")


def test_cache_holds_the_real_time_encoding_of_each_decoded_frame(cache, syn, encoder):
    ds = LeRobotDataset.open(syn)
    opened = vl_cache.VLCache.open(cache, encoder.identity())
    assert len(opened) == ds.total_frames == 60
    source = opened.manifest["source"]
    assert source["cameras"] == ["front", "top"] and source["digest"] == ds.digest()
    for e, k in [(0, 0), (2, 7), (4, 11)]:
        images = [ds.frames(e, "front")[k], ds.frames(e, "top")[k]]
        live = encoder.encode(images, ds.episodes[e].task)
        assert torch.equal(live, opened[vl_cache.sample_id(e, k)]), (e, k)


def test_cached_and_live_dataset_variants_are_bitwise_equal(cache, syn, encoder):
    ds = LeRobotDataset.open(syn)
    store = EpisodeStore(ds, range(5), ["front", "top"])
    samples = store.samples()
    cached = CachedFeatures(vl_cache.VLCache.open(cache, encoder.identity()), samples)
    live = LiveFeatures(encoder, store)
    picks = samples[::7]
    a, b = cached.batch(picks), live.batch(picks)
    assert a.dtype == b.dtype == torch.float32 and a.shape == (len(picks), 1, 128)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("head", "noise"), [("regression", "0"), ("flow", "0"), ("regression", "0.02")]
)
def test_expert_loss_falls_and_the_checkpoint_runs(head, noise, cache, syn, tmp_path):
    """(--state-noise: the chunk relabelled from the noisy state is still learnt; the fit is
    measured on the true states.)"""
    out = tmp_path / "ckpt"
    steps = 60 if head == "regression" else 160  # flow matching learns slower
    args = expert_args(syn, out, "--cache", str(cache), "--steps", str(steps))
    args += ["--state-noise", noise]
    assert main([*args, "--eval-every", str(steps // 2), "--head", head, "--lr", "1e-3"]) == 0
    log = _log(out)
    assert [m["step"] for m in log] == [0, steps // 2, steps]
    # the error of the chunk the policy outputs (for flow: integrated from the noise),
    # on the same training frames before and after
    assert log[-1]["fit_bc"] < 0.5 * log[0]["fit_bc"], (log[0], log[-1])
    if head == "flow":
        assert log[-1]["fit_flow"] < log[0]["fit_flow"]
    # an ordinary checkpoint, self-contained: the tuned VL inside, without its resume state
    assert (out / "vl_model/model.safetensors").is_file()
    assert not (out / "vl_model/training").exists()
    policy = QwenVLAPolicy.from_options({"checkpoint": str(out)})
    policy.load("cpu", datasets.ROBOT, 0.1)
    assert policy.config.cameras == ("front", "top") and policy.config.head == head
    ds = LeRobotDataset.open(syn)
    rows = ds.rows(1)
    frames = [Frame(c, ds.frames(1, c)[3], 0.0, 3) for c in ("front", "top")]
    features = policy.encode_vl(frames, ds.episodes[1].task)
    state = RobotState(
        positions=rows.state[3].astype(float), velocities=np.zeros(6), capture_time=0
    )
    chunk = policy.act(features, state, {})
    assert chunk.shape == (8, 6) and np.all(np.isfinite(chunk))
    step = np.abs(chunk[0] - rows.state[3]).max()
    assert step <= policy.config.action_space.max_delta + 1e-9


def test_live_variant_trains_too(syn, tuned, tmp_path):
    out = tmp_path / "live"
    args = expert_args(syn, out, "--no-cache", "--vl-model", str(tuned), "--steps", "2")
    assert main([*args, "--eval-every", "2", "--val-samples", "4"]) == 0
    run = json.loads((out / "training/run.json").read_text())
    assert run["features"] == "live" and run["step"] == 2


def test_expert_resume_equals_uninterrupted(cache, syn, tmp_path):
    from safetensors.torch import load_file

    common = ("--cache", str(cache), "--steps", "10", "--eval-every", "5", "--head", "flow")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(expert_args(syn, whole, *common)) == 0
    assert main(expert_args(syn, parts, *common, "--stop-after", "3")) == 0
    assert main(expert_args(syn, parts, *common, "--resume")) == 0
    for name in ("action_expert.safetensors", "encoders.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(parts / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_a_cache_from_another_model_or_dataset_is_refused(cache, syn, tiny_dir, tmp_path, capsys):
    base_cache = tmp_path / "base-cache"
    build = ["build", "--lerobot", str(syn), "--vl-model", str(tiny_dir), "--no-progress"]
    assert vl_cache.main([*build, "--out", str(base_cache)]) == 0
    other = datasets.synthetic(tmp_path / "other", episodes=5, steps=12, size=32, seed=9)
    tuned_dir = json.loads((cache / "manifest.json").read_text())["encoder"]["model"]
    cases = [
        # the base model's cache, with the tuned model asked for
        (syn, ["--cache", str(base_cache), "--vl-model", tuned_dir], "different model"),
        (other, ["--cache", str(cache)], "built from another version of the dataset"),
        (syn, ["--cache", str(cache), "--cameras", "top,front"], "built with cameras"),
    ]
    for dataset, extra, message in cases:
        assert main(expert_args(dataset, tmp_path / "x", "--steps", "1", *extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_cache_build_refuses_a_missing_camera_and_a_bad_dataset(syn, tuned, tmp_path, capsys):
    cases = [
        (syn, ["--cameras", "front,wrist"], "no camera 'wrist'"),
        (tmp_path, [], "is not a LeRobot v3 dataset"),
    ]
    for dataset, extra, message in cases:
        args = ["build", "--lerobot", str(dataset), "--vl-model", str(tuned)]
        assert vl_cache.main([*args, "--out", str(tmp_path / "c"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_a_diverging_run_stops_with_one_line_exit_1(cache, syn, tmp_path, capsys):
    args = expert_args(syn, tmp_path / "nan", "--cache", str(cache), "--steps", "20")
    assert main([*args, "--lr", "1e30", "--warmup", "0", "--grad-clip", "1e30"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "training failed" in err[0] and "the loss became nan" in err[0], err
