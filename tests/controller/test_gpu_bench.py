"""The prepared GPU benchmark (`python -m controller.gpu_bench`), run on the CPU with the tiny model.

The lend of a GPU machine is short and happens once: these tests make sure the
script records every row (or why a row is missing), writes its results as it
goes, survives an outer timeout, and builds the 3B architecture the figures
claim. They check behaviour, never speed.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from controller import gpu_bench

ROOT = Path(__file__).resolve().parents[2]
ACTION_SECONDS = 0.3
ACTION_HZ = 100.0


def _bench_cmd(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "controller.gpu_bench", "--out", str(out), "--model", "tiny",
        "--device", "cpu", "--iters", "2", "--warmup", "1", "--budget-s", "60",
        "--action-seconds", str(ACTION_SECONDS), "--action-hz", str(ACTION_HZ), *extra,
    ]  # fmt: skip


#: The GPU machine has none of these: the benchmark (and its children) must not import them.
_BLOCKER = """
import sys

BLOCKED = ("aiortc", "uvloop", "av", "aiohttp", "drivers.webrtc", "drivers.ur", "drivers.local")


class _Deny:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"not on the GPU machine: {name}", name=name)
        return None


sys.meta_path.insert(0, _Deny())
"""


def _env(tmp_path: Path) -> dict[str, str]:
    """The benchmark's environment: packages absent from the GPU machine made unimportable."""
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(_BLOCKER)
    env = dict(os.environ)
    paths = [str(blocker), str(ROOT), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env["VLA_CONTROLLER_CACHE"] = str(tmp_path / "outer-cache")  # must stay untouched
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.mark.peer  # the benchmark as a process of its own, on real time
def test_cpu_run_records_every_row_and_writes_the_table(tmp_path):
    out = tmp_path / "bench"
    env = _env(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import aiortc"], env=env, capture_output=True)
    assert blocked.returncode != 0  # the blocker is in force for the run below
    # A 1 s cap on the compile subprocess: it is killed mid-way, which is the
    # path a slow compile takes on the GPU machine; its rows must say so.
    proc = subprocess.run(
        _bench_cmd(out, "--compile-max-s", "1"),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "gpu_bench.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    expected = [name for name, _ in gpu_bench.expected_rows("cpu")]
    assert list(rows) == expected
    assert data["finished"] is True
    assert not (tmp_path / "outer-cache").exists()  # the run used its own temporary cache

    machine = data["machine"]
    for key in ("torch", "transformers", "python", "date_utc", "device"):
        assert machine[key]
    assert platform.node() not in json.dumps(data)  # hostname-free

    assert rows["setup"]["status"] == "ok"
    assert rows["setup"]["attn_implementation"] == "sdpa"
    hidden = rows["setup"]["hidden_size"]
    for label, backend in (("slow-cpu", "pil"), ("fast-cpu", "torchvision")):
        for size in gpu_bench.SIZES:
            r = rows[f"vl/{size}/{label}"]
            assert r["status"] == "ok", r
            assert r["processor"]["backend"] == backend
            assert r["feature_shape"] == [1, 1, hidden]
            for part in ("preprocess", "forward", "end_to_end"):
                assert r[part]["n"] == 2 and r[part]["p50_ms"] > 0
        # 448x448 is not resized down to the controller's 224x224 default: 4x the patches.
        assert (
            rows[f"vl/448/{label}"]["vision_patches"]
            == 4 * rows[f"vl/224/{label}"]["vision_patches"]
        )

    n_ticks = round(ACTION_SECONDS * ACTION_HZ)
    for head in gpu_bench.HEADS:
        for mode in gpu_bench.VL_MODES:
            r = rows[f"action/{head}/{mode}"]
            assert r["status"] == "ok", r
            assert r["streams"] == "cpu: no streams"
            assert r["ticks"] + r["missed_ticks"] == n_ticks
            assert r["latency"]["n"] == r["ticks"] and r["latency"]["p99_ms"] > 0
            # Through the controller's action path: a short act earns the inline path.
            assert r["action_path"] == "controller" and r["inline_bound_ms"] == 2.0
            assert 0 <= r["inline_calls"] <= r["ticks"]
            if mode == "idle":
                assert "vl_encodes" not in r
            else:  # the VL lane really ran during the window
                assert r["vl_encodes"] >= 1 and r["vl_encode_rate_hz"] > 0

    for size in gpu_bench.SIZES:
        r = rows[f"vl/{size}/compile"]
        assert r["status"] in ("ok", "error", "skipped")
        if r["status"] == "error":
            assert "compile subprocess" in r["error"]["message"]
    assert not (out / "gpu_bench.compile.json").exists()

    table = (out / "gpu_bench.md").read_text()
    assert "| vl/224/slow-cpu |" in table and "| vl/448/fast-cpu |" in table
    for mode in gpu_bench.VL_MODES:
        assert f"| flow | {mode} |" in table
    assert "vl/224/compile" in table


def _children_of(pid: int) -> set[int]:
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in text:
            found.add(int(status.parent.name))
    return found


def _gone(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.peer  # the benchmark as a process of its own, on real time
def test_sigterm_mid_run_ends_the_worker_and_keeps_the_rows_so_far(tmp_path):
    """An outer `timeout` sends SIGTERM: the figures measured so far must survive it."""
    out = tmp_path / "bench"
    proc = subprocess.Popen(
        _bench_cmd(out, "--skip", "vl"), cwd=ROOT, env=_env(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    started = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "process lane: starting the VL worker" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(120), "".join(lines)[-3000:]
        deadline = time.monotonic() + 30
        children: set[int] = set()
        while not children and time.monotonic() < deadline:  # deliberate poll: another process
            children = _children_of(proc.pid)
            time.sleep(0.05)
        assert children, "the VL worker process never appeared"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    assert rc == 128 + signal.SIGTERM, "".join(lines)[-3000:]
    deadline = time.monotonic() + 10
    while not all(_gone(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(c) for c in children), "a child outlived the benchmark"

    data = json.loads((out / "gpu_bench.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert data["finished"] is False
    assert list(rows) == [name for name, _ in gpu_bench.expected_rows("cpu")]
    assert rows["vl/224/slow-cpu"]["reason"] == "--skip vl"
    assert rows["action/flow/idle"]["status"] == "ok"  # measured before the signal: kept
    assert rows["action/flow/thread"]["status"] == "ok"
    assert rows["vl/448/compile"] == {
        "name": "vl/448/compile", "section": "vl", "status": "skipped", "reason": "interrupted",
    }  # fmt: skip
    assert "| flow | thread |" in (out / "gpu_bench.md").read_text()


def test_3b_config_builds_the_published_architecture(tmp_path):
    """Qwen2.5-VL-3B-Instruct's shapes, read back through the installed transformers, with
    the special token ids of the tokenizer the run really uses (the tiny default's)."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from policies.qwen_vla.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
    from policies.qwen_vla.tiny_default import tiny_model_dir

    tiny = tiny_model_dir(tmp_path, min_pixels=DEFAULT_MIN_PIXELS, max_pixels=DEFAULT_MAX_PIXELS)
    tokenizer = AutoProcessor.from_pretrained(tiny).tokenizer
    notes: list[str] = []
    config = gpu_bench.build_config("3b", tiny, tokenizer, notes)
    assert notes == [] and gpu_bench.check_3b_config(config) == {}
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert config.text_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.device("meta"):  # shapes only: no memory, no time
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        )
    assert sum(p.numel() for p in model.parameters()) == gpu_bench.QWEN25_VL_3B_PARAMS
    assert max(gpu_bench.token_ids(tokenizer).values()) < config.text_config.vocab_size


def test_a_shape_field_that_does_not_read_back_is_refused():
    config = gpu_bench.qwen25_vl_3b_config(
        {"image_token_id": 5, "video_token_id": 6, "vision_start_token_id": 3,
         "vision_end_token_id": 4, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 0}
    )  # fmt: skip
    config.text_config.num_hidden_layers = 28
    config.vision_config.tokens_per_second = 4
    bad = gpu_bench.check_3b_config(config)
    assert set(bad) == {"text.num_hidden_layers", "vision.tokens_per_second"}
    assert "text.num_hidden_layers" in gpu_bench.SHAPE_FIELDS
    assert "vision.tokens_per_second" not in gpu_bench.SHAPE_FIELDS


def test_compile_rows_cut_by_the_timeout_say_where_and_keep_what_was_measured():
    names = ["vl/224/compile", "vl/448/compile"]
    done = {"name": names[0], "section": "vl", "status": "ok", "compile_s": 50.0}
    running = {"name": names[1], "status": "running", "stage": "timing", "compile_s": 61.5}
    rows = gpu_bench.merge_compile_rows(
        names, {names[0]: done, names[1]: running}, "was killed after its 90 s timeout (budget)"
    )
    assert rows[0] == {**done, "variant": "compile"}
    assert rows[1]["status"] == "error" and rows[1]["compile_s"] == 61.5
    assert rows[1]["error"]["message"] == (
        "compile subprocess was killed after its 90 s timeout (budget) during timing"
    )
    never = gpu_bench.merge_compile_rows(names, {}, "exited with code 1")
    assert [r["status"] for r in never] == ["error", "error"]
    assert never[0]["error"]["message"].endswith("exited with code 1 before this row started")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--iters", "0"], "--iters"),
        (["--budget-s", "nan"], "--budget-s"),
        (["--action-seconds", "-1"], "--action-seconds"),
        (["--device", "cuda:x"], "--device"),
        (["--model", "7b"], "--model"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(tmp_path, capsys, flags, named):
    with pytest.raises(SystemExit) as exc:
        gpu_bench.main(["--out", str(tmp_path), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err
    assert not (tmp_path / "gpu_bench.json").exists()
