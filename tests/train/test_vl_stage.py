"""`python -m policies.train vl`: the loss falls, a resumed run equals an uninterrupted one,
and the output is a model directory the rest of the pipeline loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from policies.lerobot_dataset import LeRobotDataset
from policies.qwen_vla.config import Preprocessing
from policies.qwen_vla.vl_encoder import VLEncoder
from policies.train.__main__ import main
from policies.train.data import EpisodeStore
from policies.train.vl_stage import PreprocessMemo
from tests.train.conftest import vl_args


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training/log.jsonl").read_text().splitlines()]


def test_separately_preprocessed_samples_batch_like_the_processor(syn, tiny_dir):
    encoder = VLEncoder.load(tiny_dir, Preprocessing(), "cpu")
    store = EpisodeStore(LeRobotDataset.open(syn), [0, 3], ["front", "top"])
    # different instructions (episodes 0 and 3 name other cubes), so lengths differ
    samples = [(0, 1), (3, 4), (0, 7)]
    assert store.tasks[0] != store.tasks[3]
    mine = PreprocessMemo(encoder, 64).batch(store, samples)
    theirs = encoder.preprocess([(store.images(e, k), store.tasks[e]) for e, k in samples])
    assert set(mine) == {k for k, v in theirs.items() if isinstance(v, torch.Tensor)}
    for key, value in mine.items():
        assert torch.equal(value, theirs[key]), key
    assert mine["attention_mask"].min() == 0  # padding really happened


@pytest.mark.parametrize(
    ("aux", "swap"), [("named-cube-xy", "0"), ("cubes-xy", "0"), ("named-cube-xy", "0.5")]
)
def test_micro_run_loss_falls(syn, tiny_cache, tmp_path, aux, swap):
    out = tmp_path / "vl"
    args = vl_args(syn, out, tiny_cache, "--steps", "16", "--eval-every", "8", "--lr", "1e-3")
    args += ["--aux-swap", swap]
    assert main([*args, "--aux-target", aux, "--json", str(tmp_path / "m.json")]) == 0
    log = _log(out)
    assert [m["step"] for m in log] == [0, 8, 16]
    first, last = log[0], log[-1]
    # the same training frames in eval mode, before and after
    assert last["fit_bc"] < 0.7 * first["fit_bc"], (first, last)
    assert last["fit_aux_rmse_m"] < first["fit_aux_rmse_m"], (first, last)
    if aux == "cubes-xy":  # every cube's place too, reported apart from the named cube's
        assert last["fit_aux_cubes_rmse_m"] < first["fit_aux_cubes_rmse_m"], (first, last)
    else:
        assert "fit_aux_cubes_rmse_m" not in last
    # instruction grounding: the probe's error when every validation frame names another cube
    assert last["val_aux_swapped_rmse_m"] > 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["step"] == 16 and result["metrics"]["val_aux_rmse_m"] > 0


def test_output_is_a_model_directory_the_pipeline_loads(tuned, tiny_dir, syn):
    base = VLEncoder.load(tiny_dir, Preprocessing(), "cpu")
    mine = VLEncoder.load(tuned, Preprocessing(), "cpu")
    assert mine.fingerprint() != base.fingerprint()
    record = json.loads((tuned / "vla_tuning.json").read_text())
    assert (
        record["cameras"] == ["front", "top"] and record["base_fingerprint"] == base.fingerprint()
    )
    assert record["dataset_digest"] == LeRobotDataset.open(syn).digest()
    assert set(record["split"]["val"]) and not set(record["split"]["val"]) & set(
        record["split"]["train"]
    )
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    assert mine.encode([image, image], "touch the red cube").shape == (1, 1, mine.hidden_size)


def test_resumed_run_equals_an_uninterrupted_one(syn, tiny_cache, tmp_path):
    common = ("--steps", "6", "--eval-every", "3", "--save-every", "3", "--val-samples", "6")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(vl_args(syn, whole, tiny_cache, *common)) == 0
    assert main(vl_args(syn, parts, tiny_cache, *common, "--stop-after", "4")) == 0
    assert json.loads((parts / "training/run.json").read_text())["step"] == 4
    assert main(vl_args(syn, parts, tiny_cache, *common, "--resume")) == 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(parts / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(whole / "training/state.pt", weights_only=True)
    sb = torch.load(parts / "training/state.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 6
    assert all(torch.equal(sa["heads"][k], sb["heads"][k]) for k in sa["heads"])
    assert [m["step"] for m in _log(parts)] == [0, 3, 4, 6]


@pytest.mark.parametrize(
    "case, message",
    [
        ("other-lr", "--resume: --lr 0.001 differs from the run being resumed (0.0003)"),
        ("no-resume", "pass --resume to continue it or --overwrite to start again"),
        ("not-ours", "not empty and not a training run of ours"),
        ("resume-nothing", "holds no training run of ours"),
    ],
)
def test_output_directory_rules(case, message, tuned, syn, tiny_cache, tmp_path, capsys):
    extra = {"other-lr": ["--resume", "--lr", "1e-3"], "resume-nothing": ["--resume"]}
    out = tuned
    if case == "not-ours":
        out = tmp_path / "mine"
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    if case == "resume-nothing":
        out = tmp_path / "empty"
    args = vl_args(syn, out, tiny_cache, "--steps", "8", *extra.get(case, []))
    before = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*")} if out.exists() else {}
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    after = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*")} if out.exists() else {}
    assert before == after  # nothing touched
