"""Bad input at the policy's boundaries: VL cache datasets and output directories,
checkpoint configs asking for huge sizes, pickled or corrupt VL model weights.

Each is refused with one line naming the problem, before anything expensive
(the model load, an allocation) happens and without touching data we did not
create.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from policies import vl_cache
from policies.errors import CheckpointError, PolicyConfigError
from policies.qwen_vla import checkpoint as ckpt
from policies.qwen_vla.action_expert import ActionModel
from policies.qwen_vla.config import VLAConfig
from policies.qwen_vla.policy import QwenVLAPolicy
from policies.qwen_vla.vl_encoder import VLEncoder

# -- VL cache: every input checked before the model loads -----------------------------


@pytest.fixture
def model_never_loads(monkeypatch):
    """Fail the test if the model is loaded: input errors must be found first."""

    def load(_args):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(vl_cache, "encoder_from_args", load)


@pytest.fixture
def real_encoder(monkeypatch, encoder):
    """The session's tiny encoder, so that builds that should succeed are real but cheap."""
    monkeypatch.setattr(vl_cache, "encoder_from_args", lambda _args: encoder)
    return encoder


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height: a few bytes that would decode to gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _dataset(root: Path, lines: list[object] | None = None, *, raw: bytes | None = None) -> Path:
    good = root / "good.png"
    Image.new("RGB", (32, 24), (200, 10, 10)).save(good)
    path = root / "samples.jsonl"
    if raw is not None:
        path.write_bytes(raw)
        return path
    if lines is None:
        lines = [{"id": "a", "images": ["good.png"], "instruction": "pick"}]
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _build(capsys, dataset: Path, out: Path) -> tuple[int, str]:
    code = vl_cache.main(["build", "--dataset", str(dataset), "--out", str(out)])
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


OK = {"id": "a", "images": ["good.png"], "instruction": "pick"}


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (["{ not json"], "samples.jsonl:1: not a sample"),
        ([[1, 2]], "samples.jsonl:1: not a sample (expected a JSON object"),
        (
            [{"id": "a", "images": "good.png", "instruction": "x"}],
            "images must be a non-empty list",
        ),
        ([{"id": "a", "images": [], "instruction": "x"}], "images must be a non-empty list"),
        ([{"id": "a", "images": [3], "instruction": "x"}], "images must be path strings, got 3"),
        ([{"id": "a", "images": ["good.png"]}], "missing key(s) instruction"),
        ([{"id": {"x": 1}, "images": ["good.png"], "instruction": "x"}], "id must be"),
        ([{"id": "a", "images": ["good.png"], "instruction": 7}], "instruction must be"),
        ([OK, OK], "samples.jsonl:2: duplicate sample id 'a'"),
        (
            [OK, "[]", "{", {"id": "b"}],
            "samples.jsonl:2: not a sample (expected a JSON object with id, images, instruction, got list) (and 2 more problem(s))",
        ),
        ([], "no samples"),
        ([{"id": "a", "images": ["absent.png"], "instruction": "x"}], "absent.png: no such file"),
        (
            [{"id": "a", "images": ["notes.txt"], "instruction": "x"}],
            "notes.txt: not an image file",
        ),
        ([{"id": "a", "images": ["cut.png"], "instruction": "x"}], "cut.png: corrupt image"),
        (
            [{"id": "a", "images": ["bomb.png"], "instruction": "x"}],
            "bomb.png: refused as a decompression bomb",
        ),
        (
            [{"id": "a", "images": ["big.png"], "instruction": "x"}],
            "big.png: 8000x8000 is more than 40000000 pixels",
        ),
        ([{"id": "a", "images": ["."], "instruction": "x"}], "not a regular file"),
    ],
)
def test_bad_dataset_is_one_line_before_the_model_loads(
    capsys, tmp_path, model_never_loads, lines, needle
):
    dataset = _dataset(tmp_path, lines)
    (tmp_path / "notes.txt").write_text("not an image\n")
    good = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    _png_header_only(tmp_path / "bomb.png", 50_000, 50_000)
    _png_header_only(tmp_path / "big.png", 8_000, 8_000)
    out = tmp_path / "cache"
    code, err = _build(capsys, dataset, out)
    assert code == 2
    assert needle in _one_line(err)
    assert not out.exists()


def test_dataset_that_is_not_utf8_or_missing_is_named(capsys, tmp_path, model_never_loads):
    line = json.dumps(OK).encode()
    dataset = _dataset(tmp_path, raw=line + b"\n" + b'{"id": "caf\xe9"}\n')
    code, err = _build(capsys, dataset, tmp_path / "cache")
    assert code == 2
    assert "samples.jsonl:2: not UTF-8 text (byte 11)" in _one_line(err)
    code, err = _build(capsys, tmp_path / "absent.jsonl", tmp_path / "cache")
    assert code == 2
    assert "absent.jsonl: no such file" in _one_line(err)
    code, err = _build(capsys, tmp_path, tmp_path / "cache")
    assert code == 2
    assert "not a regular file" in _one_line(err)


@pytest.mark.parametrize(
    "argv",
    [["build", "--out", "x"], ["build", "--dataset", "d", "--out", "x", "--min-pixels", "many"]],
)
def test_bad_arguments_are_one_line(capsys, model_never_loads, argv):
    with pytest.raises(SystemExit) as info:
        vl_cache.main(argv)
    assert info.value.code == 2
    assert "error: " in _one_line(capsys.readouterr().err)


# -- VL cache: never delete what we did not create ------------------------------------


def test_unrelated_output_directory_is_refused_and_kept(capsys, tmp_path, model_never_loads):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("months of work\n")
    code, err = _build(capsys, _dataset(tmp_path), out)
    assert code == 2
    assert "not empty and not a VL cache of ours" in _one_line(err)
    assert (out / "chapter1.tex").read_text() == "months of work\n"


def test_our_cache_with_a_foreign_file_in_it_is_refused(capsys, tmp_path, real_encoder):
    dataset = _dataset(tmp_path)
    out = tmp_path / "cache"
    assert _build(capsys, dataset, out)[0] == 0
    (out / "README").write_text("mine\n")
    code, err = _build(capsys, dataset, out)
    assert code == 2
    assert "not a VL cache of ours" in _one_line(err)
    assert (out / "README").read_text() == "mine\n"


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_output_that_is_a_file_or_a_link_is_refused(capsys, tmp_path, model_never_loads, kind):
    out = tmp_path / "cache"
    if kind == "file":
        out.write_text("data\n")
    else:
        (tmp_path / "target").mkdir()
        out.symlink_to(tmp_path / "target")
    code, err = _build(capsys, _dataset(tmp_path), out)
    assert code == 2
    assert "output" in _one_line(err)
    assert out.exists()


def test_rebuilding_our_cache_replaces_it_and_leaves_nothing_beside(capsys, tmp_path, real_encoder):
    dataset = _dataset(tmp_path)
    out = tmp_path / "cache"
    out.mkdir()  # an empty directory is fine too
    assert _build(capsys, dataset, out)[0] == 0
    first = json.loads((out / "manifest.json").read_text())
    assert first["kind"] == vl_cache.KIND
    lines = [OK, {"id": "b", "images": ["good.png", "good.png"], "instruction": "place"}]
    assert _build(capsys, _dataset(tmp_path, lines), out)[0] == 0
    cache = vl_cache.VLCache.open(out, real_encoder.identity())
    assert sorted(cache.ids()) == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "good.png", "samples.jsonl"]


def test_failed_swap_keeps_the_previous_cache(capsys, tmp_path, real_encoder, monkeypatch):
    dataset = _dataset(tmp_path)
    out = tmp_path / "cache"
    assert _build(capsys, dataset, out)[0] == 0
    before = vl_cache.VLCache.open(out, real_encoder.identity())["a"].clone()

    # The moment of truth: moving the new cache into place fails (disk error,
    # or the process dies there). Whatever way the code moves it, block it.
    real_rename, real_replace = os.rename, os.replace

    def refuse_new_cache(src, dst, *rest, **kw):
        if Path(dst) == out and Path(src).name.startswith("cache."):
            raise OSError(5, "Input/output error (injected)")
        return real_rename(src, dst, *rest, **kw)

    def refuse_replace(src, dst, *rest, **kw):
        if Path(dst) == out and Path(src).name.startswith("cache."):
            raise OSError(5, "Input/output error (injected)")
        return real_replace(src, dst, *rest, **kw)

    monkeypatch.setattr(os, "rename", refuse_new_cache)
    monkeypatch.setattr(os, "replace", refuse_replace)
    code, err = _build(capsys, _dataset(tmp_path, [OK, {**OK, "id": "b"}]), out)
    assert code == 1
    assert "Input/output error (injected)" in err
    monkeypatch.undo()
    kept = vl_cache.VLCache.open(out, real_encoder.identity())
    assert sorted(kept.ids()) == ["a"]
    assert (kept["a"] == before).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "good.png", "samples.jsonl"]


# -- checkpoints: sizes bounded before anything is allocated --------------------------


def _small_config() -> VLAConfig:
    return VLAConfig(vl_model="vl_model", vl_hidden=64, action_dim=6, horizon=4, model_dim=32)


def _checkpoint(root: Path, **changes: object) -> Path:
    root.mkdir()
    raw = json.loads(_small_config().to_json())
    for key, value in changes.items():
        section, _, field = key.partition(".")
        if field:
            raw[section][field] = value
        else:
            raw[key] = value
    (root / ckpt.CONFIG_FILE).write_text(json.dumps(raw))
    return root


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        # Each size in range, the product far beyond memory (about 2e10 parameters).
        ({"model_dim": 65536, "vl_hidden": 65536}, "parameters (model_dim 65536"),
        ({"vl_hidden": 10**12}, "vl_hidden must be an integer in [1, 65536]"),
        ({"horizon": 10**9}, "horizon must be an integer in [1, 1024]"),
        ({"action_dim": 0}, "action_dim must be an integer in [1, 1024]"),
        ({"model_dim": 1.5}, "model_dim must be an integer"),
        ({"flow_steps": True}, "flow_steps must be an integer"),
        ({"sensor_enabled": True, "sensors": [["ft", 10**9]]}, "sensor 'ft' dim must be"),
        ({"action_space.max_delta": 1e9}, "max_delta must be in (0, 3.1416] rad"),
        ({"state_norm": {"mean": [float("nan")] * 6, "std": [1.0] * 6}}, "finite number"),
        ({"preprocessing": {"min_pixels": 4, "max_pixels": 10**12}}, "max_pixels must be"),
    ],
)
def test_checkpoint_asking_for_huge_or_odd_sizes_is_refused_at_configuration(
    tmp_path, changes, needle
):
    root = _checkpoint(tmp_path / "ckpt", **changes)
    with pytest.raises(CheckpointError, match=r"config\.json") as info:
        QwenVLAPolicy.from_options({"checkpoint": str(root)})
    assert needle in str(info.value)
    with pytest.raises(CheckpointError, match=r"config\.json"):
        ckpt.load_config(root)


def test_oversized_config_json_is_not_parsed(tmp_path):
    root = _checkpoint(tmp_path / "ckpt")
    text = (root / ckpt.CONFIG_FILE).read_text()
    (root / ckpt.CONFIG_FILE).write_text(text[:-1] + " " * (17 << 20) + "}")
    with pytest.raises(CheckpointError, match="larger than"):
        QwenVLAPolicy.from_options({"checkpoint": str(root)})


def test_parameter_count_matches_the_built_model():
    from policies.qwen_vla.action_expert import parameter_count

    for head, state, sensor, inputs in itertools.product(
        ("regression", "flow"),
        (True, False),
        (True, False),
        (("positions",), ("positions", "velocities")),
    ):
        config = VLAConfig(
            vl_model="x",
            vl_hidden=48,
            action_dim=5,
            horizon=3,
            head=head,
            model_dim=24,
            robot_state_enabled=state,
            state_inputs=inputs,
            sensor_enabled=sensor,
            sensors=(("ft", 6), ("gripper", 1)) if sensor else (),
        )
        built = sum(p.numel() for p in ActionModel(config).parameters())
        assert parameter_count(config) == built, (head, state, sensor, inputs)


def test_over_budget_fresh_policy_options_are_a_config_error(make_robot):
    from policies.qwen_vla.action_expert import MAX_PARAMETERS, parameter_count
    from policies.qwen_vla.policy import QwenVLAOptions, default_config

    # 1024 joints x 1024 rows, each within its bound: the flow head's first and
    # last layers alone are 2 x 256 x 1M weights, past the budget.
    options = QwenVLAOptions(horizon=1024, head="flow")
    with pytest.raises(PolicyConfigError, match=r"at most 500,000,000 are accepted"):
        default_config(options, make_robot(1024), vl_hidden=128, vl_ref="x")
    assert MAX_PARAMETERS == 500_000_000
    small = default_config(QwenVLAOptions(), make_robot(6), vl_hidden=128, vl_ref="x")
    assert parameter_count(small) < 1_000_000


# -- VL model directories: safetensors only, named when corrupt -----------------------


@pytest.fixture
def model_copy(tmp_path, tiny_dir) -> Path:
    return Path(shutil.copytree(tiny_dir, tmp_path / "vl"))


def test_pickled_vl_weights_are_never_loaded(model_copy, monkeypatch):
    import torch
    from safetensors.torch import load_file

    weights = model_copy / "model.safetensors"
    torch.save(load_file(str(weights)), model_copy / "pytorch_model.bin")
    weights.unlink()

    def no_unpickling(*_a, **_k):
        raise AssertionError("torch.load was called on a pickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    message = r"pytorch_model.bin\), which are never loaded"
    with pytest.raises(PolicyConfigError, match=message):
        QwenVLAPolicy.from_options({"vl_model": str(model_copy)})
    from policies.qwen_vla.config import Preprocessing

    with pytest.raises(PolicyConfigError, match=message):
        VLEncoder.load(model_copy, Preprocessing(), "cpu")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_vl_weights_are_named(model_copy, damage):
    weights = model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"\xff" * 4096, "empty": b""}[damage]
    )
    with pytest.raises(PolicyConfigError, match=r"model.safetensors is corrupt or unreadable"):
        QwenVLAPolicy.from_options({"vl_model": str(model_copy)})
