"""GPU figures for the VL encoder and the action lane (issue 11, item 6): one prepared script.

    python -m controller.gpu_bench --out DIR [--budget-s 400] [--model 3b|tiny]
                                   [--device cuda|cpu] [--iters N] [--warmup N]
                                   [--action-seconds 20] [--action-hz 100]
                                   [--action-path controller|lane]
                                   [--compile-backend inductor] [--compile-max-s S]
                                   [--skip vl|action|compile ...]

Why one script with a budget: a GPU machine is lent for a few minutes, once.
Everything it does is bounded by `--budget-s` (rows that no longer fit are
recorded as skipped), every row that fails records its error and the run goes
on, and `DIR/gpu_bench.json` is rewritten after every row, so a run killed by
an outer timeout still leaves every figure measured so far.

What it measures (Qwen2.5-VL-3B-Instruct's architecture with RANDOM weights,
built on the device in bf16 with SDPA: same shapes and FLOPs as the real
model, nothing downloaded):

1. VL encode of 5 synthetic images at 224x224 and 448x448 through the
   project's own `VLEncoder` (chat template, `process_vision_info`, forward
   with `output_hidden_states=True, use_cache=False, logits_to_keep=1`, masked
   mean pooling): preprocessing, forward and end to end p50/p99 with CUDA-
   synchronised timers, for (a) the slow PIL image processor on the CPU,
   (b) the torchvision image processor running on the device, and (c) (b)
   plus `torch.compile` of the model's forward, last, in a subprocess whose
   timeout is what the budget has left.
2. The action lane (the qwen-vla action expert at the 3B hidden size,
   regression and flow heads) called at 100 Hz through the controller's
   `ActionPath` over its `ComputeExecutor` (`--action-path controller`, the
   default: inline on the calling thread in the action stream while `act`
   stays under the controller's default bound for that rate, else on the
   action lane; `--action-path lane`: always on the lane, as before the
   inline path existed), with the VL lane (i) idle, (ii) encoding back to
   back on the executor's VL thread, (iii) encoding back to back in a
   separate process with its own CUDA context. Latency is what the asyncio
   caller sees; each row counts its inline calls.

The tokenizer and processor are the embedded tiny default's (built at run
time into a temporary `$VLA_CONTROLLER_CACHE`); its token ids are written
into the 3B config. `--model tiny` uses the tiny default's config instead, so
the whole script runs on a CPU in seconds (that is how it is tested).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

SCHEMA = 1
N_IMAGES = 5
SIZES = (224, 448)
INSTRUCTION = "pick up the red cube and place it in the blue bowl"
IMAGE_SEED = 0
ACTION_DOF = 6
HEADS = ("regression", "flow")
VL_MODES = ("idle", "thread", "process")

#: Qwen/Qwen2.5-VL-3B-Instruct's published config.json, in the field names of
#: transformers' `Qwen2_5_VLTextConfig` / `Qwen2_5_VLVisionConfig` (5.x).
#: Token ids are not here: they come from the tokenizer actually used.
QWEN25_VL_3B_TEXT: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 70,
    "attention_dropout": 0.0,
    "tie_word_embeddings": True,
}
QWEN25_VL_3B_ROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}
QWEN25_VL_3B_VISION: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "out_hidden_size": 2048,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "hidden_act": "silu",
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}
#: The published checkpoint's parameter count (bf16 safetensors: 7,509,245,952 bytes).
QWEN25_VL_3B_PARAMS = 3_754_622_976

#: Seconds kept back at the end of the budget to write the results.
FINAL_RESERVE_S = 8.0
#: Below this much budget the compile subprocess is not started ("skipped: budget").
COMPILE_MIN_S = 20.0
#: Cap on one VL row's timing loop, so the VL rows cannot starve the action rows.
VL_ROW_MAX_S = 25.0


# -- small helpers --------------------------------------------------------------------


def log(budget: Budget | None, msg: str) -> None:
    """Progress line, flushed: the lead watches the run live and may lose it to a timeout."""
    stamp = f"[{budget.elapsed():6.1f}s]" if budget is not None else "[  ----]"
    print(f"gpu_bench {stamp} {msg}", flush=True)


def stats(samples_s: Sequence[float]) -> dict[str, float | int]:
    """p50/p99/max/mean in ms. p99 of a few dozen samples is close to the max: n says how many."""
    import numpy as np

    if not samples_s:
        return {"n": 0}
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "n": int(ms.size),
    }


def error_info(exc: BaseException) -> dict[str, str]:
    """Type, message and the innermost frame: enough to act on after a one-shot run."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return {"type": type(exc).__name__, "message": str(exc)[:2000], "where": where}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def synthetic_images(size: int, n: int = N_IMAGES) -> list[Any]:
    """Seeded random RGB images: content does not change the FLOPs, only the shape does."""
    import numpy as np

    rng = np.random.default_rng(IMAGE_SEED)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: need a finite number > 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need an integer >= 1")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: need an integer >= 0")
    return value


@dataclass
class Budget:
    """Wall-clock budget of the whole run, started before torch is imported."""

    total_s: float
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.total_s - self.elapsed()


class Results:
    """The JSON document, rewritten atomically after every row (and the table with it).

    Atomic replace: a kill in the middle of a write leaves the previous
    complete file, never a truncated one.
    """

    def __init__(self, out_dir: Path, budget: Budget, argv: Sequence[str]) -> None:
        self.json_path = out_dir / "gpu_bench.json"
        self.md_path = out_dir / "gpu_bench.md"
        self.budget = budget
        self.data: dict[str, Any] = {
            "schema": SCHEMA,
            "command": "python -m controller.gpu_bench " + " ".join(argv),
            "budget_s": budget.total_s,
            "elapsed_s": 0.0,
            "finished": False,
            "machine": {},
            "model": {},
            "notes": [],
            "rows": [],
        }

    def row(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.data["rows"] if r["name"] == name), None)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        """Add or replace the row of that name, then write everything."""
        rows = self.data["rows"]
        for i, r in enumerate(rows):
            if r["name"] == row["name"]:
                rows[i] = row
                break
        else:
            rows.append(row)
        self.write()
        return row

    def skip(self, name: str, section: str, reason: str, **extra: Any) -> None:
        log(self.budget, f"{name}: skipped ({reason})")
        self.add({"name": name, "section": section, "status": "skipped", "reason": reason, **extra})

    def fail(self, name: str, section: str, exc: BaseException, **extra: Any) -> None:
        info = error_info(exc)
        log(self.budget, f"{name}: ERROR {info['type']}: {info['message'][:300]} ({info['where']})")
        self.add({"name": name, "section": section, "status": "error", "error": info, **extra})

    def write(self) -> None:
        self.data["elapsed_s"] = round(self.budget.elapsed(), 2)
        _atomic_write(self.json_path, json.dumps(self.data, indent=2, default=str) + "\n")
        _atomic_write(self.md_path, render_markdown(self.data))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- environment ------------------------------------------------------------------------


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def machine_info(device: str) -> dict[str, Any]:
    """What produced the figures, without the hostname."""
    import torch

    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": _version("transformers"),
        "torchvision": _version("torchvision"),
        "qwen_vl_utils": _version("qwen-vl-utils"),
        "tokenizers": _version("tokenizers"),
        "numpy": _version("numpy"),
        "pillow": _version("pillow"),
        "requests": _version("requests"),
        # torch.compile's inductor/Triton build their launchers with a C compiler
        # against Python.h: without either the compile rows fail, and this says why.
        "c_compiler": shutil.which("cc") or shutil.which("gcc"),
        "python_headers": Path(sysconfig.get_paths()["include"], "Python.h").is_file(),
        "device": device,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["cudnn"] = torch.backends.cudnn.version()
        info["stream_priority_range"] = list(torch.cuda.Stream.priority_range())
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            info["driver"] = out.stdout.strip().splitlines()[0]
        except Exception as exc:  # no nvidia-smi: say so, the rest stands
            info["driver"] = f"unknown ({type(exc).__name__})"
    return info


def missing_imports() -> dict[str, str]:
    """The imports the VL path needs, checked up front so one line says what is missing.

    qwen_vl_utils imports `requests` and `torchvision` at import time; on a
    bare GPU image either may be absent.
    """
    import importlib

    missing = {}
    for name in (
        "numpy",
        "PIL",
        "tokenizers",
        "transformers",
        "torchvision",
        "requests",
        "qwen_vl_utils",
    ):
        try:
            importlib.import_module(name)
        except Exception as exc:
            missing[name] = f"{type(exc).__name__}: {exc}"
    return missing


# -- model and processors -------------------------------------------------------------


def tiny_dir() -> Path:
    """The embedded tiny default's directory: tokenizer, processor and config come from it."""
    from policies.qwen_vla.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
    from policies.qwen_vla.tiny_default import tiny_model_dir

    return tiny_model_dir(None, min_pixels=DEFAULT_MIN_PIXELS, max_pixels=DEFAULT_MAX_PIXELS)


def token_ids(tokenizer: Any) -> dict[str, int]:
    """The special token ids of the tokenizer in use, for the config (the model embeds them)."""
    from policies.qwen_vla.tiny_default import SPECIAL_TOKENS

    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }


def qwen25_vl_3b_config(ids: dict[str, int]) -> Any:
    """Qwen2.5-VL-3B-Instruct's configuration with the given token ids (vocab stays 151936)."""
    from transformers import Qwen2_5_VLConfig

    text = dict(QWEN25_VL_3B_TEXT)
    text["rope_parameters"] = dict(QWEN25_VL_3B_ROPE)
    text.update({k: ids[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")})
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(QWEN25_VL_3B_VISION),
        tie_word_embeddings=True,
        **ids,
    )


#: Fields that set the shapes (hence the FLOPs): a mismatch there makes the figures wrong.
SHAPE_FIELDS = frozenset(
    {
        "text.vocab_size",
        "text.hidden_size",
        "text.intermediate_size",
        "text.num_hidden_layers",
        "text.num_attention_heads",
        "text.num_key_value_heads",
        "text.mrope_section",
        "vision.depth",
        "vision.hidden_size",
        "vision.out_hidden_size",
        "vision.intermediate_size",
        "vision.num_heads",
        "vision.patch_size",
        "vision.spatial_merge_size",
        "vision.temporal_patch_size",
        "vision.window_size",
        "vision.fullatt_block_indexes",
        "tie_word_embeddings",
    }
)


def check_3b_config(config: Any) -> dict[str, str]:
    """Read every constant back through the installed transformers' field names.

    A field renamed between transformers versions would silently fall back to
    a default. Returns {field: what was read} for each mismatch; the caller
    refuses shape fields (`SHAPE_FIELDS`) and only notes the others, so a
    renamed cosmetic field cannot cost the one run on a lent GPU.
    """
    bad: dict[str, str] = {}
    text, vision = config.text_config, config.vision_config
    for name, want in QWEN25_VL_3B_TEXT.items():
        if name == "sliding_window":
            continue  # transformers drops it to None when use_sliding_window is False
        got = getattr(text, name, getattr(config, name, None))
        if name == "tie_word_embeddings":
            got = getattr(config, name, got)
            name_key = name
        else:
            name_key = f"text.{name}"
        if got != want:
            bad[name_key] = f"{got!r} (want {want!r})"
    rope = dict(getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {})
    theta = rope.get("rope_theta", getattr(text, "rope_theta", None))
    if theta != QWEN25_VL_3B_ROPE["rope_theta"]:
        bad["text.rope_theta"] = repr(theta)
    if list(rope.get("mrope_section") or []) != QWEN25_VL_3B_ROPE["mrope_section"]:
        bad["text.mrope_section"] = repr(rope.get("mrope_section"))
    for name, want in QWEN25_VL_3B_VISION.items():
        got = getattr(vision, name, None)
        if isinstance(want, list):
            got = list(got) if got is not None else None
        if got != want:
            bad[f"vision.{name}"] = f"{got!r} (want {want!r})"
    return bad


def build_config(
    model_kind: str, tiny: Path, tokenizer: Any, notes: list[str] | None = None
) -> Any:
    """The model config: the tiny default's, or the 3B one checked field by field."""
    if model_kind == "tiny":
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(tiny)
    config = qwen25_vl_3b_config(token_ids(tokenizer))
    bad = check_3b_config(config)
    shape = {k: v for k, v in bad.items() if k in SHAPE_FIELDS}
    if shape:
        raise ValueError(
            "3B config does not read back as written: "
            + "; ".join(f"{k}={v}" for k, v in shape.items())
        )
    if bad and notes is not None:
        notes.append(
            "3B config fields read back differently (not shape fields, run continued): "
            + "; ".join(f"{k}={v}" for k, v in bad.items())
        )
    return config


def build_model(config: Any, device: str) -> Any:
    """Random weights, created directly on the device in the run dtype, SDPA attention."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from policies.qwen_vla.vl_encoder import resolve_dtype

    dtype = resolve_dtype(torch.device(device))
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation="sdpa"
        )
    model.eval()
    model.requires_grad_(False)
    return model


def model_info(model: Any) -> dict[str, Any]:
    vision_cfg = getattr(model.config, "vision_config", None)
    return {
        "params": int(sum(p.numel() for p in model.parameters())),
        "dtype": str(next(model.parameters()).dtype),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "vision_attn_implementation": getattr(vision_cfg, "_attn_implementation", None),
        "hidden_size": int(model.config.text_config.hidden_size),
        "layers": int(model.config.text_config.num_hidden_layers),
        "vision_depth": int(getattr(vision_cfg, "depth", 0)),
        "vocab_size": int(model.config.text_config.vocab_size),
        "logits": "logits_to_keep=1 through VLEncoder.forward (no full-vocab projection)",
    }


def _is_torchvision_backend(cls: type) -> bool:
    return any(c.__name__ in ("TorchvisionBackend", "BaseImageProcessorFast") for c in cls.__mro__)


def image_processor_classes() -> dict[str, type]:
    """{'slow': PIL class, 'fast': torchvision class} across the transformers 5.x rename.

    Before the image processor backend refactor `Qwen2VLImageProcessor` was the
    slow (PIL) class and `...Fast` the torchvision one; after it the plain name
    is torchvision and the PIL one is `Qwen2VLImageProcessorPil` (`...Fast` is
    a deprecated alias). Which one a version has is decided by the class
    hierarchy, not by the version number.
    """
    import transformers

    base = transformers.Qwen2VLImageProcessor
    found: dict[str, type] = {}
    if _is_torchvision_backend(base):
        found["fast"] = base
        pil = getattr(transformers, "Qwen2VLImageProcessorPil", None)
        if pil is not None:
            found["slow"] = pil
    else:
        found["slow"] = base
        fast = getattr(transformers, "Qwen2VLImageProcessorFast", None)
        if fast is not None and _is_torchvision_backend(fast):
            found["fast"] = fast
    return found


def processor_accepts_device() -> bool:
    """Whether the installed transformers routes `device=` to the image processor.

    `ImagesKwargs.device` ("only relevant for torchvision backend") is what the
    processor call merges into the image processor's kwargs.
    """
    try:
        from transformers.processing_utils import ImagesKwargs
    except ImportError:
        return False
    return "device" in getattr(ImagesKwargs, "__annotations__", {})


class DeviceProcessor:
    """BENCH-ONLY ADAPTER (not part of the encode path): passes `device=` to the processor call.

    `VLEncoder.preprocess` calls `processor(text=..., images=..., padding=True,
    return_tensors="pt")` and has no way to ask the torchvision image
    processor to run on the GPU. Rather than change `VLEncoder` (not this
    script's file), this proxy adds the keyword and forwards everything else,
    so the rest of the encode path is the project's own.
    """

    def __init__(self, processor: Any, device: str) -> None:
        self._processor = processor
        self._device = device

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._processor(*args, device=self._device, **kwargs)


def make_processor(tiny: Path, variant: str, device: str) -> tuple[Any, dict[str, Any]]:
    """The tiny default's processor with the image processor of `variant`.

    variant: 'default' (whatever `AutoProcessor` loads: what the controller
    runs today), 'slow' (PIL, CPU), 'fast' (torchvision, on `device` when the
    installed transformers accepts `device=`, else on the CPU).
    """
    from transformers import AutoProcessor

    from policies.qwen_vla.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

    processor = AutoProcessor.from_pretrained(tiny)
    info: dict[str, Any] = {"variant": variant}
    if variant != "default":
        classes = image_processor_classes()
        if variant not in classes:
            raise RuntimeError(
                f"no {variant} Qwen2-VL image processor in transformers {_version('transformers')}"
                f" (found: {sorted(classes) or 'none'})"
            )
        size = {"shortest_edge": DEFAULT_MIN_PIXELS, "longest_edge": DEFAULT_MAX_PIXELS}
        processor.image_processor = classes[variant](size=size)
    cls = type(processor.image_processor)
    info["image_processor"] = cls.__name__
    info["backend"] = "torchvision" if _is_torchvision_backend(cls) else "pil"
    info["runs_on"] = "cpu"
    if variant == "fast":
        if processor_accepts_device():
            processor = DeviceProcessor(processor, device)
            info["runs_on"] = device
            info["device_kwarg"] = True
        else:
            info["device_kwarg"] = False
            info["note"] = "this transformers has no ImagesKwargs.device: ran on the CPU"
    return processor, info


def make_encoder(model: Any, processor: Any, size: int, device: str) -> Any:
    """The project's `VLEncoder` around an in-memory model, bounds set to keep `size` as is.

    max_pixels = size*size so 448x448 images are not resized down to the
    controller's real-time default (224x224 worth).
    """
    import torch

    from policies.qwen_vla.config import DEFAULT_MIN_PIXELS, Preprocessing
    from policies.qwen_vla.vl_encoder import VLEncoder

    pp = Preprocessing(min_pixels=DEFAULT_MIN_PIXELS, max_pixels=size * size)
    return VLEncoder(model, processor, pp, torch.device(device), ref="gpu-bench-random")


# -- VL rows ----------------------------------------------------------------------------


def time_vl(
    encoder: Any, size: int, device: str, iters: int, warmup: int, max_s: float
) -> dict[str, Any]:
    """Preprocess / forward / end to end per iteration, synchronised; warm-up excluded.

    Stops early (recorded as `truncated`) when the row has used `max_s`, so
    one slow variant cannot eat the budget of the others.
    """
    import torch

    images = synthetic_images(size)
    sample = [(images, INSTRUCTION)]
    pre: list[float] = []
    fwd: list[float] = []
    e2e: list[float] = []
    first_s = None
    tokens = patches = 0
    pixel_device = ""
    feats = None
    t_row = time.monotonic()
    truncated = False
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + iters):
        sync(device)
        t0 = time.perf_counter()
        inputs = encoder.preprocess(sample)
        sync(device)
        t1 = time.perf_counter()
        feats = encoder.forward(inputs)
        sync(device)
        t2 = time.perf_counter()
        if i == 0:
            first_s = t2 - t0
            tokens = int(inputs["input_ids"].shape[1])
            patches = int(inputs["pixel_values"].shape[0])
            pixel_device = str(inputs["pixel_values"].device)
        if i >= warmup:
            pre.append(t1 - t0)
            fwd.append(t2 - t1)
            e2e.append(t2 - t0)
        if e2e and time.monotonic() - t_row > max_s:
            truncated = i + 1 < warmup + iters
            break
    assert feats is not None
    row: dict[str, Any] = {
        "images": N_IMAGES,
        "image_size": [size, size],
        "tokens": tokens,
        "vision_patches": patches,
        "pixel_values_device": pixel_device,
        "first_call_ms": round((first_s or 0.0) * 1e3, 2),
        "preprocess": stats(pre),
        "forward": stats(fwd),
        "end_to_end": stats(e2e),
        "feature_shape": list(feats.shape),
        "feature_finite": bool(torch.isfinite(feats).all().item()),
        "warmup": warmup,
        "truncated": truncated,
    }
    if device.startswith("cuda"):
        row["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def thread_lane_encode(model: Any, tiny: Path, device: str) -> Callable[[], Any]:
    """The VL job that saturates the thread lane: 5 x 224x224 with the processor the
    controller loads today (`AutoProcessor`'s default), exactly `VLEncoder.encode`."""
    processor, _ = make_processor(tiny, "default", device)
    encoder = make_encoder(model, processor, SIZES[0], device)
    images = synthetic_images(SIZES[0])
    return functools.partial(encoder.encode, images, INSTRUCTION)


def vl_rows(results: Results, args: argparse.Namespace, model: Any, tiny: Path) -> str | None:
    """Variants (a) slow-cpu and (b) fast-on-device, each at 224 and 448.

    Returns the processor variant the compile rows should use: 'fast' if (b)
    worked, else 'default'.
    """
    device = args.device
    fast_ok = False
    for variant, label in (("slow", "slow-cpu"), ("fast", f"fast-{device.split(':')[0]}")):
        try:
            processor, pinfo = make_processor(tiny, variant, device)
        except Exception as exc:
            for size in SIZES:
                results.fail(f"vl/{size}/{label}", "vl", exc, variant=label)
            continue
        for size in SIZES:
            name = f"vl/{size}/{label}"
            if results.budget.remaining() < FINAL_RESERVE_S + 5:
                results.skip(name, "vl", "budget", variant=label)
                continue
            log(
                results.budget,
                f"{name}: running ({pinfo['image_processor']} on {pinfo['runs_on']})",
            )
            try:
                encoder = make_encoder(model, processor, size, device)
                max_s = min(VL_ROW_MAX_S, max(1.0, results.budget.remaining() - FINAL_RESERVE_S))
                row = time_vl(encoder, size, device, args.iters, args.warmup, max_s)
            except Exception as exc:
                results.fail(name, "vl", exc, variant=label, processor=pinfo)
                _free_cuda(device)
                continue
            results.add(
                {
                    "name": name,
                    "section": "vl",
                    "status": "ok",
                    "variant": label,
                    "processor": pinfo,
                    **row,
                }
            )
            log(results.budget, f"{name}: {_summary(row)}")
            if variant == "fast":
                fast_ok = True
    return "fast" if fast_ok else "default"


def _summary(row: dict[str, Any]) -> str:
    def f(key: str) -> str:
        s = row.get(key) or {}
        return f"{s.get('p50_ms', float('nan')):.1f}/{s.get('p99_ms', float('nan')):.1f}"

    return (
        f"tokens {row.get('tokens')}, preprocess {f('preprocess')} ms, forward {f('forward')} ms,"
        f" end to end {f('end_to_end')} ms (p50/p99, n={row.get('end_to_end', {}).get('n')})"
    )


def _free_cuda(device: str) -> None:
    """Give cached GPU memory back (a failed row's, or the model's before the compile child)."""
    if device.startswith("cuda"):
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


# -- action lane ------------------------------------------------------------------------


def make_action_job(head: str, hidden: int, device: str) -> Callable[[], Any]:
    """What `QwenVLAPolicy.act` runs on the device, at the VL model's hidden size.

    The action expert (with its robot-state encoder) in float32 like the
    policy; each call copies the state in and the chunk out, as `act` does
    (the numpy mapping to joint targets after it costs microseconds and is
    left out).
    """
    import numpy as np
    import torch

    from policies.qwen_vla.action_expert import ActionModel
    from policies.qwen_vla.config import VLAConfig

    config = VLAConfig(vl_model="gpu-bench", vl_hidden=hidden, action_dim=ACTION_DOF, head=head)
    torch.manual_seed(0)
    model = ActionModel(config).to(device).eval()
    model.requires_grad_(False)
    features = torch.randn(1, 1, hidden, device=device, dtype=torch.float32)
    state = np.zeros((1, ACTION_DOF), dtype=np.float32)

    def act() -> Any:
        with torch.inference_mode():
            state_t = torch.as_tensor(state, device=device)
            out = model(features, state_t)[0]
            return out.to(torch.float64).cpu().numpy()

    return act


async def action_window(
    call: Callable[[], Awaitable[Any]], hz: float, seconds: float
) -> dict[str, Any]:
    """Call `call` on absolute deadlines at `hz` for `seconds`; latency as the caller sees it.

    A call that overruns skips the deadlines it passed (counted as missed),
    like the controller's scheduler: it never bursts to catch up.
    """
    period = 1.0 / hz
    n_ticks = max(1, round(seconds * hz))
    t0 = time.perf_counter() + period
    latencies: list[float] = []
    lateness: list[float] = []
    missed = 0
    k = 0
    while k < n_ticks:
        due = t0 + k * period
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        start = time.perf_counter()
        lateness.append(max(0.0, start - due))
        await call()
        end = time.perf_counter()
        latencies.append(end - start)
        nxt = max(k + 1, math.floor((end - t0) / period) + 1)
        missed += min(nxt, n_ticks) - (k + 1)
        k = nxt
    return {
        "hz": hz,
        "seconds": seconds,
        "latency": stats(latencies),
        "start_lateness": stats(lateness),
        "ticks": len(latencies),
        "missed_ticks": missed,
        "over_period": int(sum(1 for x in latencies if x > period)),
    }


def encode_rate(
    spans: Sequence[tuple[float, float]], t_start: float, t_end: float
) -> dict[str, Any]:
    """VL encodes that completed inside the action window [t_start, t_end] (monotonic s)."""
    inside = [(a, b) for a, b in spans if t_start <= b <= t_end]
    window = max(t_end - t_start, 1e-9)
    return {
        "vl_encodes": len(inside),
        "vl_encode_rate_hz": round(len(inside) / window, 3),
        "vl_encode": stats([b - a for a, b in inside]),
    }


def streams_note(device: str, mode: str) -> str:
    from controller.executor import Lane, stream_priority

    if not device.startswith("cuda"):
        return "cpu: no streams"
    import torch

    span = torch.cuda.Stream.priority_range()
    note = (
        f"action stream priority {stream_priority(Lane.ACTION, span)},"
        f" VL stream priority {stream_priority(Lane.VL, span)} (device range {span[0]} to {span[1]})"
    )
    if mode == "process":
        note += (
            "; VL in another process (own CUDA context): stream priorities do not cross contexts"
        )
    return note


@dataclass
class ActionSetup:
    """What the action section needs: the VL encode for the thread lane, the process spec."""

    hidden: int
    encode: Callable[[], Any] | None
    encode_error: BaseException | None
    worker_spec: dict[str, Any]


async def action_section(results: Results, args: argparse.Namespace, setup: ActionSetup) -> None:
    """(i) idle, (ii) thread lane, (iii) process lane; regression and flow heads in each."""
    from controller.action_path import ActionPath, InlineRule, default_inline_bound
    from controller.clock import precise_time
    from controller.executor import ComputeExecutor, Lane

    device = args.device
    seconds, hz = args.action_seconds, args.action_hz
    bound = default_inline_bound(1.0 / hz) if args.action_path == "controller" else 0.0
    ex = ComputeExecutor(device)
    await ex.start()
    jobs: dict[str, Callable[[], Any]] = {}
    try:
        for head in HEADS:
            try:
                jobs[head] = make_action_job(head, setup.hidden, device)
                await ex.run(Lane.ACTION, jobs[head])  # warm: first-call allocations excluded
            except Exception as exc:
                for mode in VL_MODES:
                    results.fail(f"action/{head}/{mode}", "action", exc, head=head, vl_lane=mode)

        async def window(head: str, mode: str, spans_fn: Callable[[], list] | None) -> None:
            name = f"action/{head}/{mode}"
            if head not in jobs:
                return
            if results.budget.remaining() < seconds + FINAL_RESERVE_S:
                results.skip(name, "action", "budget", head=head, vl_lane=mode)
                return
            log(results.budget, f"{name}: {seconds:g} s at {hz:g} Hz")
            # A fresh path per window: each starts on the lane and earns inline as the
            # controller's does; the timeout is left wide, latency is the figure.
            path = ActionPath(ex, InlineRule(bound), clock=precise_time)
            inline = 0

            async def act() -> None:
                nonlocal inline
                inline += (await path.run(jobs[head], within=60.0)).inline

            try:
                t_start = time.monotonic()
                row = await action_window(act, hz, seconds)
                t_end = time.monotonic()
                if spans_fn is not None:
                    row.update(encode_rate(spans_fn(), t_start, t_end))
            except Exception as exc:
                results.fail(name, "action", exc, head=head, vl_lane=mode)
                return
            row["window_monotonic"] = [round(t_start, 6), round(t_end, 6)]
            results.add(
                {
                    "name": name,
                    "section": "action",
                    "status": "ok",
                    "head": head,
                    "vl_lane": mode,
                    "streams": streams_note(device, mode),
                    "action_path": args.action_path,
                    "inline_bound_ms": bound * 1e3,
                    "inline_calls": inline,
                    **row,
                }
            )
            lat = row["latency"]
            log(
                results.budget,
                f"{name}: latency p50 {lat['p50_ms']:.3f} p99 {lat['p99_ms']:.3f}"
                f" max {lat['max_ms']:.3f} ms, missed {row['missed_ticks']}"
                + (f", VL {row['vl_encode_rate_hz']:.2f}/s" if "vl_encode_rate_hz" in row else ""),
            )

        for head in HEADS:
            await window(head, "idle", None)
        await thread_lane(results, args, ex, setup, window)
        await process_lane(results, args, setup, window)
    finally:
        await ex.close()


async def thread_lane(
    results: Results,
    args: argparse.Namespace,
    ex: Any,
    setup: ActionSetup,
    window: Callable[..., Awaitable[None]],
) -> None:
    """VL encodes back to back on the executor's VL thread while the actions run."""
    from controller.executor import Lane

    names = [f"action/{h}/thread" for h in HEADS]
    if setup.encode is None:
        exc = setup.encode_error or RuntimeError("no VL encoder")
        for head, name in zip(HEADS, names, strict=True):
            results.fail(name, "action", exc, head=head, vl_lane="thread")
        return
    if results.budget.remaining() < args.action_seconds + FINAL_RESERVE_S:
        for head, name in zip(HEADS, names, strict=True):
            results.skip(name, "action", "budget", head=head, vl_lane="thread")
        return
    encode = setup.encode
    spans: list[tuple[float, float]] = []
    stop = asyncio.Event()
    await ex.run(Lane.VL, encode)  # warm the VL lane's stream before the window

    async def vl_loop() -> None:
        while not stop.is_set():
            t = time.monotonic()
            await ex.run(Lane.VL, encode)
            spans.append((t, time.monotonic()))

    task = asyncio.create_task(vl_loop())
    try:
        for head in HEADS:
            if task.done():  # the encoder failed: record why, once per row
                exc = task.exception() or RuntimeError("VL loop ended")
                results.fail(f"action/{head}/thread", "action", exc, head=head, vl_lane="thread")
                continue
            await window(head, "thread", lambda: list(spans))
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=60)
        except Exception:
            pass


async def process_lane(
    results: Results,
    args: argparse.Namespace,
    setup: ActionSetup,
    window: Callable[..., Awaitable[None]],
) -> None:
    """VL encodes back to back in a spawned process (own model, own CUDA context)."""
    names = [f"action/{h}/process" for h in HEADS]
    need = args.action_seconds + FINAL_RESERVE_S + 5
    if results.budget.remaining() < need:
        for head, name in zip(HEADS, names, strict=True):
            results.skip(name, "action", "budget", head=head, vl_lane="process")
        return
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    queue = ctx.Queue()
    proc = ctx.Process(
        target=vl_worker_main,
        args=(setup.worker_spec, ready, stop, queue),
        name="gpu-bench-vl-worker",
        daemon=True,
    )
    log(results.budget, "process lane: starting the VL worker process (builds its own model)")
    proc.start()
    _CHILDREN.append(proc)
    worker: dict[str, Any] = {}
    try:
        # Wait for its first encode, leaving time for at least one window.
        wait_s = max(1.0, results.budget.remaining() - (args.action_seconds + FINAL_RESERVE_S))
        t0 = time.monotonic()
        while not ready.is_set() and proc.is_alive() and time.monotonic() - t0 < wait_s:
            await asyncio.to_thread(ready.wait, 0.5)
        if not ready.is_set():
            why = (
                "the VL worker process died before its first encode"
                if not proc.is_alive()
                else f"the VL worker process was not ready after {wait_s:.0f} s"
            )
            proc.terminate()  # still building: no grace period to wait out
            worker = _drain(queue)
            exc: BaseException = RuntimeError(why + _worker_error(worker))
            for head, name in zip(HEADS, names, strict=True):
                results.fail(name, "action", exc, head=head, vl_lane="process")
            return
        log(results.budget, f"process lane: worker ready after {time.monotonic() - t0:.1f} s")
        spans_box: list[tuple[float, float]] = []
        rows = []
        for head in HEADS:
            if not proc.is_alive():
                results.fail(
                    f"action/{head}/process",
                    "action",
                    RuntimeError("the VL worker process died"),
                    head=head,
                    vl_lane="process",
                )
                continue
            await window(head, "process", None)
            rows.append(head)
        stop.set()
        wait_result = min(60.0, max(5.0, results.budget.remaining() - FINAL_RESERVE_S))
        worker = await asyncio.to_thread(_get_result, queue, wait_result)
        if "error" in worker:
            results.data["notes"].append(f"process lane worker: {worker['error']}")
        spans_box = [tuple(s) for s in worker.get("spans", [])]
        for head in rows:  # the encode rate is known only once the worker reports
            name = f"action/{head}/process"
            row = results.row(name)
            if row is not None and row.get("status") == "ok":
                t_start, t_end = row["window_monotonic"]
                row.update(encode_rate(spans_box, t_start, t_end))
                row["worker"] = {k: v for k, v in worker.items() if k != "spans"}
                results.add(row)
                log(results.budget, f"{name}: VL worker {row['vl_encode_rate_hz']:.2f} encodes/s")
    except BaseException:
        # Interrupted (SIGTERM, cancellation): no grace period for a worker
        # that may be in the middle of building a 3B model.
        proc.terminate()
        raise
    finally:
        stop.set()
        await asyncio.to_thread(_stop_process, proc)


def _drain(queue: Any, timeout: float = 2.0) -> dict[str, Any]:
    """The worker's report if it sent one (it may still be in the pipe as it exits)."""
    try:
        return queue.get(timeout=timeout)
    except Exception:
        return {}


def _get_result(queue: Any, timeout: float) -> dict[str, Any]:
    try:
        return queue.get(timeout=timeout)
    except Exception as exc:
        return {"error": f"no result from the VL worker ({type(exc).__name__})"}


def _worker_error(worker: dict[str, Any]) -> str:
    return f": {worker['error']}" if "error" in worker else ""


def _stop_process(proc: Any, grace: float = 15.0) -> None:
    proc.join(grace)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def vl_worker_main(spec: dict[str, Any], ready: Any, stop: Any, queue: Any) -> None:
    """The process lane's VL worker: build the model, encode back to back until told to stop.

    Reports (start, end) monotonic times of every encode (CLOCK_MONOTONIC is
    system-wide, so the parent can place them in its windows). Exits by
    itself if the parent dies, so an outer timeout cannot leave it holding
    the GPU.
    """
    spans: list[tuple[float, float]] = []
    result: dict[str, Any] = {}
    try:
        os.environ.update(spec.get("env", {}))
        import torch

        from controller.executor import default_cpu_threads

        device = spec["device"]
        if device == "cpu":
            torch.set_num_threads(default_cpu_threads())
        t0 = time.monotonic()
        tiny = Path(spec["tiny_dir"])
        processor, pinfo = make_processor(tiny, "default", device)
        model = build_model(build_config(spec["model"], tiny, processor.tokenizer), device)
        encoder = make_encoder(model, processor, spec["size"], device)
        images = synthetic_images(spec["size"])
        result["build_s"] = round(time.monotonic() - t0, 2)
        result["processor"] = pinfo
        parent = mp.parent_process()
        first = True
        while not stop.is_set():
            if parent is not None and not parent.is_alive():
                return
            t = time.monotonic()
            encoder.encode(images, INSTRUCTION)
            sync(device)
            if first:
                first = False
                ready.set()
                continue  # the first encode is a warm-up
            spans.append((t, time.monotonic()))
    except BaseException as exc:  # report; `ready` stays unset, so the parent sees it die
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["spans"] = spans
    queue.put(result)


# -- torch.compile (subprocess) ----------------------------------------------------------


def compile_row_names(device: str) -> list[str]:
    return [f"vl/{size}/compile" for size in SIZES]


def merge_compile_rows(
    names: Sequence[str], child_rows: dict[str, dict[str, Any]], outcome: str
) -> list[dict[str, Any]]:
    """Turn what the compile subprocess wrote into final rows.

    A row the child finished is kept; one it was still in ("running") or
    never reached becomes an error that says how the child ended (`outcome`:
    "timeout after N s", "exit code N"), keeping whatever it had measured
    (e.g. the compile time of a row whose timing did not finish).
    """
    rows = []
    for name in names:
        row = dict(child_rows.get(name) or {"name": name, "section": "vl"})
        row.setdefault("name", name)
        row.setdefault("section", "vl")
        row.setdefault("variant", "compile")
        if row.get("status") in ("ok", "error", "skipped"):
            rows.append(row)
            continue
        stage = row.pop("stage", None)
        where = f" during {stage}" if stage else " before this row started"
        row["status"] = "error"
        row["error"] = {
            "type": "CompileSubprocess",
            "message": f"compile subprocess {outcome}{where}",
            "where": "",
        }
        rows.append(row)
    return rows


def compile_section(
    results: Results, args: argparse.Namespace, processor_variant: str, tiny: Path
) -> None:
    """Run the compile rows in a subprocess with a timeout from what the budget has left.

    A subprocess because a compile cannot be interrupted from inside: a
    timeout has to kill it, and the rest of the results must survive that.
    """
    names = compile_row_names(args.device)
    available = results.budget.remaining() - FINAL_RESERVE_S
    if available < COMPILE_MIN_S:
        for name in names:
            results.skip(name, "vl", "budget", variant="compile")
        return
    timeout = available if args.compile_max_s is None else min(available, args.compile_max_s)
    child_json = results.json_path.with_name("gpu_bench.compile.json")
    child_json.unlink(missing_ok=True)
    root = Path(__file__).resolve().parent.parent
    cmd = [
        sys.executable,
        "-m",
        "controller.gpu_bench",
        "--compile-child",
        str(child_json),
        "--out",
        str(results.json_path.parent),
        "--model",
        args.model,
        "--device",
        args.device,
        "--iters",
        str(args.iters),
        "--warmup",
        str(args.warmup),
        "--compile-backend",
        args.compile_backend,
        "--compile-processor",
        processor_variant,
        "--tiny-dir",
        str(tiny),
        # The child's clock is the parent's (CLOCK_MONOTONIC is system-wide): its
        # progress lines and its budget line up with the parent's.
        "--clock-start",
        repr(results.budget.start),
        "--budget-s",
        repr(results.budget.elapsed() + timeout),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    log(
        results.budget,
        f"compile: subprocess with a {timeout:.0f} s timeout"
        f" (backend {args.compile_backend}, processor {processor_variant})",
    )
    proc = subprocess.Popen(cmd, cwd=root, env=env)
    _CHILDREN.append(proc)
    try:
        rc = proc.wait(timeout=timeout)
        outcome = "ended" if rc == 0 else f"exited with code {rc}"
    except subprocess.TimeoutExpired:
        outcome = f"was killed after its {timeout:.0f} s timeout (budget)"
        _kill(proc)
    child_rows: dict[str, dict[str, Any]] = {}
    try:
        child_rows = json.loads(child_json.read_text()).get("rows", {})
    except (OSError, ValueError):
        pass
    child_json.unlink(missing_ok=True)  # merged into the main results below
    for row in merge_compile_rows(names, child_rows, outcome):
        results.add(row)
        if row["status"] == "ok":
            log(results.budget, f"{row['name']}: compile {row.get('compile_s')} s; {_summary(row)}")
        else:
            log(
                results.budget,
                f"{row['name']}: {row['status']}: {row.get('error', row.get('reason'))}",
            )


def _kill(proc: Any) -> None:
    if proc.poll() is None:
        proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def compile_child(args: argparse.Namespace) -> int:
    """Inside the compile subprocess: compile the model's forward and time each size.

    Writes its rows after every stage, so the parent keeps the compile time
    of a row whose timing a timeout cut off.
    """
    out = Path(args.compile_child)
    rows: dict[str, dict[str, Any]] = {}

    def write() -> None:
        _atomic_write(out, json.dumps({"rows": rows}, indent=2, default=str))

    budget = Budget(args.budget_s, start=args.clock_start or time.monotonic())
    parent = os.getppid()
    names = [f"vl/{size}/compile" for size in SIZES]
    try:
        import torch

        device = args.device
        tiny = Path(args.tiny_dir)
        processor, pinfo = make_processor(tiny, args.compile_processor, device)
        model = build_model(build_config(args.model, tiny, processor.tokenizer), device)
        model.forward = torch.compile(model.forward, backend=args.compile_backend, dynamic=False)
    except Exception as exc:  # say why in every row, rather than a bare exit code
        for name in names:
            rows[name] = {"name": name, "status": "error", "error": error_info(exc)}
        write()
        log(budget, f"compile subprocess: setup ERROR {type(exc).__name__}: {exc}")
        return 1
    for size, name in zip(SIZES, names, strict=True):
        if os.getppid() != parent:  # the parent is gone: do not hold the GPU for nobody
            return 1
        rows[name] = {
            "name": name,
            "section": "vl",
            "variant": "compile",
            "status": "running",
            "stage": "compile",
            "processor": pinfo,
            "backend": args.compile_backend,
        }
        write()
        breaks_before = _graph_breaks()
        try:
            encoder = make_encoder(model, processor, size, device)
            images = synthetic_images(size)
            t0 = time.perf_counter()
            encoder.encode(images, INSTRUCTION)  # compiles for this shape
            sync(device)
            rows[name]["compile_s"] = round(time.perf_counter() - t0, 2)
            rows[name]["stage"] = "timing"
            write()
            log(budget, f"{name}: compiled in {rows[name]['compile_s']} s (compile subprocess)")
            max_s = max(1.0, min(VL_ROW_MAX_S, budget.remaining() - 2))
            row = time_vl(encoder, size, device, args.iters, args.warmup, max_s)
            breaks_after = _graph_breaks()
            if breaks_before is not None and breaks_after is not None:
                row["graph_breaks"] = breaks_after - breaks_before
            rows[name].update(row, status="ok")
            rows[name].pop("stage", None)
        except Exception as exc:
            rows[name].update(status="error", error=error_info(exc))
            log(budget, f"{name}: ERROR {type(exc).__name__}: {exc} (compile subprocess)")
        write()
    return 0


def _graph_breaks() -> int | None:
    try:
        from torch._dynamo.utils import counters

        return int(sum(counters["graph_break"].values()))
    except Exception:
        return None


# -- markdown -------------------------------------------------------------------------


def _pp(s: dict[str, Any] | None) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f}"


def _path(row: dict[str, Any]) -> str:
    if row.get("action_path") == "controller":
        return f"inline under {row.get('inline_bound_ms', 0):g} ms, else lane"
    return "lane"


def render_markdown(data: dict[str, Any]) -> str:
    """The readable table of whatever the JSON holds (a partial run gives a partial table)."""
    m = data.get("machine", {})
    model = data.get("model", {})
    lines = [
        "# GPU benchmark: VL encode and action lane (`python -m controller.gpu_bench`)",
        "",
        f"- command: `{data.get('command')}`",
        f"- machine: {m.get('gpu', m.get('device', '?'))}, driver {m.get('driver', '-')},"
        f" torch {m.get('torch')} (CUDA {m.get('torch_cuda')}), transformers {m.get('transformers')},"
        f" torchvision {m.get('torchvision')}, python {m.get('python')}, {m.get('date_utc')}",
        f"- model: {model.get('kind', '?')}: {model.get('params', '?')} parameters, random weights,"
        f" {model.get('dtype', '?')}, attention {model.get('attn_implementation', '?')};"
        f" {model.get('logits', '')}",
        f"- budget {data.get('budget_s')} s, elapsed {data.get('elapsed_s')} s,"
        f" finished: {data.get('finished')}",
        "",
        f"## VL encode, {N_IMAGES} images (ms, p50 / p99; warm-up excluded)",
        "",
        "| row | processor (runs on) | tokens | preprocess | forward | end to end | n | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = data.get("rows", [])
    for r in rows:
        if r.get("section") != "vl" or r.get("status") != "ok":
            continue
        p = r.get("processor") or {}
        notes = []
        if "compile_s" in r:
            notes.append(f"compile {r['compile_s']} s, {r.get('graph_breaks')} graph breaks")
        if r.get("truncated"):
            notes.append("truncated (row time cap)")
        lines.append(
            f"| {r['name']} | {p.get('image_processor', '?')} ({p.get('runs_on', '?')}) |"
            f" {r.get('tokens')} | {_pp(r.get('preprocess'))} | {_pp(r.get('forward'))} |"
            f" {_pp(r.get('end_to_end'))} | {(r.get('end_to_end') or {}).get('n', 0)} |"
            f" {'; '.join(notes)} |"
        )
    lines += [
        "",
        "## Action lane, latency seen by the asyncio caller (ms)",
        "",
        "| head | VL lane | action path | p50 | p99 | max | ticks | inline | missed | over period"
        " | VL encodes/s | streams |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("section") != "action" or r.get("status") != "ok":
            continue
        lat = r.get("latency") or {}
        rate = r.get("vl_encode_rate_hz")
        lines.append(
            f"| {r.get('head')} | {r.get('vl_lane')} | {_path(r)} | {lat.get('p50_ms', 0):.3f} |"
            f" {lat.get('p99_ms', 0):.3f} | {lat.get('max_ms', 0):.3f} | {r.get('ticks')} |"
            f" {r.get('inline_calls', 0)} | {r.get('missed_ticks')} | {r.get('over_period')} |"
            f" {'-' if rate is None else f'{rate:.2f}'} | {r.get('streams', '')} |"
        )
    others = [r for r in rows if r.get("status") != "ok"]
    if others:
        lines += ["", "## Skipped and failed rows", "", "| row | status | why |", "|---|---|---|"]
        for r in others:
            if r.get("status") == "error":
                e = r.get("error") or {}
                why = f"{e.get('type')}: {e.get('message', '')}".replace("|", "/").replace(
                    "\n", " "
                )
            else:
                why = str(r.get("reason", ""))
            lines.append(f"| {r['name']} | {r.get('status')} | {why[:300]} |")
    notes = data.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------

#: Child processes to end if the run is interrupted (SIGTERM from an outer timeout).
_CHILDREN: list[Any] = []


class _Parser(argparse.ArgumentParser):
    """Bad flags: one line naming the flag and what is accepted, exit 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m controller.gpu_bench", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for gpu_bench.json and gpu_bench.md")
    p.add_argument(
        "--budget-s",
        type=positive_float,
        default=400.0,
        help="wall-clock budget of the whole run (default 400)",
    )
    p.add_argument("--model", choices=("3b", "tiny"), default="3b")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--iters", type=positive_int, default=30, help="timed iterations per VL row")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed iterations first")
    p.add_argument(
        "--action-seconds",
        type=positive_float,
        default=20.0,
        help="length of each action-lane window (default 20)",
    )
    p.add_argument("--action-hz", type=positive_float, default=100.0)
    p.add_argument(
        "--action-path",
        choices=("controller", "lane"),
        default="controller",
        help="controller: inline while act is short, as the controller runs it (default);"
        " lane: always on the action lane",
    )
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend for the compile rows (default inductor)",
    )
    p.add_argument(
        "--compile-max-s",
        type=positive_float,
        default=None,
        help="cap on the compile subprocess's timeout (default: what the budget has left)",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=("vl", "action", "compile"),
        help="leave a section out (repeatable); its rows are recorded as skipped",
    )
    # Internal: the compile subprocess.
    p.add_argument("--compile-child", help=argparse.SUPPRESS)
    p.add_argument("--compile-processor", default="fast", help=argparse.SUPPRESS)
    p.add_argument("--tiny-dir", help=argparse.SUPPRESS)
    p.add_argument("--clock-start", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    dev = args.device
    if not (dev == "cpu" or dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit())):
        p.error(f"--device {dev!r}: accepted: cuda, cuda:N, cpu")
    if args.action_hz > 10_000:
        p.error(f"--action-hz {args.action_hz:g}: at most 10000")
    return args


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    budget = Budget(0.0)  # replaced once the budget is known; started before torch is imported
    args = parse_args(argv)
    budget.total_s = args.budget_s
    if args.compile_child:
        return compile_child(args)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(
            f"gpu_bench: --out {out}: cannot create the directory ({exc.strerror})", file=sys.stderr
        )
        return 2
    # SIGTERM (an outer `timeout`) must run the finally below: children ended,
    # results written. Both process-wide settings are put back on the way out.
    previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_env = {k: os.environ.get(k) for k in ("VLA_CONTROLLER_CACHE", "HF_HUB_OFFLINE")}
    # Nothing is ever downloaded (the GPU machine has no network: a connect
    # attempt would only burn budget until it timed out).
    os.environ["HF_HUB_OFFLINE"] = "1"
    results = Results(out, budget, list(argv if argv is not None else sys.argv[1:]))
    cache = tempfile.mkdtemp(prefix="gpu-bench-cache-")
    os.environ["VLA_CONTROLLER_CACHE"] = cache  # the tiny builder writes here; children inherit it
    try:
        return _run(results, args, cache)
    except KeyboardInterrupt:
        results.data["notes"].append("interrupted (SIGINT)")
        return 130
    except SystemExit as exc:
        results.data["notes"].append(f"interrupted (exit {exc.code})")
        return int(exc.code) if isinstance(exc.code, int) else 1
    finally:
        while _CHILDREN:
            child = _CHILDREN.pop()
            try:
                if isinstance(child, subprocess.Popen):
                    _kill(child)
                elif child.is_alive():
                    child.terminate()
                    child.join(5)
            except Exception:
                pass
        if not results.data["finished"]:
            reason = results.data.get("stopped_by", "interrupted")
            for name, section in expected_rows(args.device):
                if results.row(name) is None:
                    results.data["rows"].append(
                        {
                            "name": name,
                            "section": section,
                            "status": "skipped",
                            "reason": reason,
                        }
                    )
        results.write()
        shutil.rmtree(cache, ignore_errors=True)
        for key, value in previous_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        signal.signal(signal.SIGTERM, previous_sigterm)
        log(budget, f"results: {results.json_path} and {results.md_path}")


def expected_rows(device: str) -> list[tuple[str, str]]:
    """Every row a complete run records, in order, with its section."""
    label = f"fast-{device.split(':')[0]}"
    rows = [("setup", "setup")]
    rows += [(f"vl/{size}/{v}", "vl") for v in ("slow-cpu", label) for size in SIZES]
    rows += [(f"action/{h}/{m}", "action") for m in VL_MODES for h in HEADS]
    rows += [(name, "vl") for name in compile_row_names(device)]
    return rows


def _run(results: Results, args: argparse.Namespace, cache: str) -> int:
    budget = results.budget
    log(budget, f"importing torch and transformers (budget {budget.total_s:g} s)")
    from controller.executor import resolve_device

    try:
        args.device = resolve_device(args.device)
    except RuntimeError as exc:
        print(f"gpu_bench: {exc}", file=sys.stderr)
        results.data["notes"].append(f"device: {exc}")
        results.data["stopped_by"] = "device unavailable"
        return 2
    results.data["machine"] = machine_info(args.device)
    missing = missing_imports()
    if missing:
        results.data["machine"]["missing_imports"] = missing
        log(
            budget,
            "MISSING imports (VL rows will fail): "
            + "; ".join(f"{k}: {v}" for k, v in missing.items()),
        )
    results.write()
    m = results.data["machine"]
    log(
        budget,
        f"machine: {m.get('gpu', 'cpu')}, torch {m['torch']}, transformers {m['transformers']}",
    )

    # Setup: tokenizer/processor (tiny default, built now), config, random model on the device.
    model = None
    hidden = QWEN25_VL_3B_TEXT["hidden_size"] if args.model == "3b" else 128
    tiny: Path | None = None
    try:
        t0 = time.monotonic()
        tiny = tiny_dir()
        processor, pinfo = make_processor(tiny, "default", args.device)
        config = build_config(args.model, tiny, processor.tokenizer, results.data["notes"])
        log(budget, f"setup: building the {args.model} model with random weights on {args.device}")
        t1 = time.monotonic()
        model = build_model(config, args.device)
        sync(args.device)
        info = model_info(model)
        hidden = info["hidden_size"]
        info.update(
            kind=args.model,
            tokenizer_s=round(t1 - t0, 2),
            build_s=round(time.monotonic() - t1, 2),
            default_processor=pinfo,
        )
        if args.model == "3b":
            info["params_published"] = QWEN25_VL_3B_PARAMS
            if info["params"] != QWEN25_VL_3B_PARAMS:
                results.data["notes"].append(
                    f"parameter count {info['params']} differs from the published {QWEN25_VL_3B_PARAMS}"
                )
        results.data["model"] = info
        results.add({"name": "setup", "section": "setup", "status": "ok", **info})
        log(
            budget,
            f"setup: {info['params'] / 1e9:.3f} B parameters in {info['build_s']} s"
            f" ({info['dtype']}, {info['attn_implementation']})",
        )
    except Exception as exc:
        results.fail("setup", "setup", exc)

    skip = set(args.skip)
    vl_names = [n for n, sec in expected_rows(args.device) if sec == "vl" and "compile" not in n]
    compile_processor = "fast"
    encode: Callable[[], Any] | None = None
    encode_error: BaseException | None = None
    if model is None or tiny is None:
        encode_error = RuntimeError("setup failed: no model")
        for name in vl_names:
            results.skip(name, "vl", "setup failed")
    else:
        if "vl" in skip:
            for name in vl_names:
                results.skip(name, "vl", "--skip vl")
        else:
            compile_processor = vl_rows(results, args, model, tiny) or "default"
        try:
            encode = thread_lane_encode(model, tiny, args.device)
        except Exception as exc:
            encode_error = exc

    spec = {
        "device": args.device,
        "model": args.model,
        "size": SIZES[0],
        "tiny_dir": str(tiny) if tiny else "",
        "env": {"VLA_CONTROLLER_CACHE": cache},
    }
    setup = ActionSetup(hidden=hidden, encode=encode, encode_error=encode_error, worker_spec=spec)
    del encode
    if "action" in skip:
        for head in HEADS:
            for mode in VL_MODES:
                results.skip(f"action/{head}/{mode}", "action", "--skip action")
    else:
        try:
            asyncio.run(action_section(results, args, setup))
        except Exception as exc:
            for head in HEADS:
                for mode in VL_MODES:
                    if results.row(f"action/{head}/{mode}") is None:
                        results.fail(f"action/{head}/{mode}", "action", exc)

    # Free the main process's copy before the compile subprocess builds its own.
    setup.encode = None
    del model
    _free_cuda(args.device)
    compile_names = compile_row_names(args.device)
    if "compile" in skip:
        for name in compile_names:
            results.skip(name, "vl", "--skip compile", variant="compile")
    elif tiny is None:
        for name in compile_names:
            results.skip(name, "vl", "setup failed", variant="compile")
    else:
        try:
            compile_section(results, args, compile_processor, tiny)
        except Exception as exc:
            for name in compile_names:
                if results.row(name) is None:
                    results.fail(name, "vl", exc, variant="compile")
    results.data["finished"] = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
