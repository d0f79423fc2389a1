"""Training-time VL cache: encode each sample once, store its pooled feature.

    python -m policies.vl_cache build --dataset samples.jsonl --out cache/ \
        [--checkpoint DIR | --vl-model DIR_OR_ID] [--min-pixels N --max-pixels N]
    python -m policies.vl_cache check --cache cache/ [same model options]

`samples.jsonl` holds one sample per line:
`{"id": "ep3/t120", "images": ["front/120.png", "wrist/120.png"], "instruction": "..."}`
(image paths relative to the JSONL file). The cache directory holds
`features.safetensors` (sample id -> the (1, 1, hidden) float32 feature) and
`manifest.json` (model fingerprint, preprocessing, versions).

Parity with run time is by construction: features come from
`VLEncoder.encode`, the very function `QwenVLAPolicy.encode_vl` calls, one
sample at a time (no batching, whose float sums could differ). Opening a
cache checks the model fingerprint and preprocessing against the encoder
that will be used, and refuses a mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.errors import PolicyError

LOG = logging.getLogger("policies.vl_cache")

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
FEATURES = "features.safetensors"
#: What must agree between a cache and the encoder reading it.
CHECKED = ("fingerprint", "hidden_size", "preprocessing")


class VLCacheError(PolicyError):
    """A cache is missing, corrupt, or was built with another model or preprocessing."""


@dataclass(frozen=True)
class CacheSample:
    id: str
    images: tuple[Path, ...]
    instruction: str


def load_image(path: Path) -> np.ndarray:
    """An image file as the RGB uint8 (H, W, 3) array a camera Frame carries."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_dataset(path: str | Path) -> list[CacheSample]:
    """Parse a samples JSONL file; errors name the line."""
    path = Path(path)
    samples: list[CacheSample] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            sid, images, instruction = str(raw["id"]), raw["images"], str(raw["instruction"])
        except (ValueError, KeyError, TypeError) as exc:
            raise VLCacheError(f"{path}:{lineno}: not a sample ({exc})") from None
        if sid in seen:
            raise VLCacheError(f"{path}:{lineno}: duplicate sample id {sid!r}")
        if not images:
            raise VLCacheError(f"{path}:{lineno}: sample {sid!r} has no images")
        seen.add(sid)
        samples.append(CacheSample(sid, tuple(path.parent / p for p in images), instruction))
    return samples


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("transformers", "qwen-vl-utils", "torch", "pillow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def build_cache(encoder: Any, samples: Sequence[CacheSample], out_dir: str | Path) -> Path:
    """Encode every sample with `encoder.encode` and write the cache atomically."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    features: dict[str, torch.Tensor] = {}
    t0 = time.monotonic()
    for i, sample in enumerate(samples, 1):
        images = [load_image(p) for p in sample.images]
        features[sample.id] = encoder.encode(images, sample.instruction).detach().cpu().contiguous()
        if i % 50 == 0 or i == len(samples):
            LOG.info("encoded %d/%d samples (%.1f s)", i, len(samples), time.monotonic() - t0)
    manifest = {
        "format": CACHE_FORMAT,
        "encoder": encoder.identity(),
        "samples": len(features),
        "device": str(encoder.device),
        "dtype": str(next(encoder.model.parameters()).dtype),
        "versions": _versions(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        save_file(features, str(tmp / FEATURES), metadata={"format": "pt"})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class VLCache:
    """A built cache, opened only if it matches the encoder identity given."""

    def __init__(self, root: Path, manifest: dict[str, Any], features: dict[str, torch.Tensor]):
        self.root = root
        self.manifest = manifest
        self._features = features

    @classmethod
    def open(cls, root: str | Path, expected: dict[str, Any] | None) -> VLCache:
        """`expected` is `VLEncoder.identity()` of the model training will use;
        None skips the check (inspection only)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        root = Path(root)
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except FileNotFoundError:
            raise VLCacheError(f"VL cache {root}: missing {MANIFEST}") from None
        except ValueError as exc:
            raise VLCacheError(f"VL cache {root}: {MANIFEST} is invalid: {exc}") from None
        if manifest.get("format") != CACHE_FORMAT:
            raise VLCacheError(f"VL cache {root}: format {manifest.get('format')!r}, expected {CACHE_FORMAT}")
        if expected is not None:
            built = manifest.get("encoder", {})
            diffs = [
                f"{key}: cache {built.get(key)!r} vs now {expected.get(key)!r}"
                for key in CHECKED
                if built.get(key) != expected.get(key)
            ]
            if diffs:
                raise VLCacheError(
                    f"VL cache {root} was built with a different model or preprocessing"
                    f" ({'; '.join(diffs)}); rebuild it with `python -m policies.vl_cache build`"
                )
            if manifest.get("versions") != _versions():
                LOG.warning("VL cache %s was built with %s, running %s", root, manifest.get("versions"), _versions())
        try:
            features = load_file(str(root / FEATURES))
        except (FileNotFoundError, SafetensorError, OSError) as exc:
            raise VLCacheError(f"VL cache {root}: {FEATURES} unreadable: {exc}") from None
        return cls(root, manifest, features)

    def __len__(self) -> int:
        return len(self._features)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._features

    def __getitem__(self, sample_id: str) -> torch.Tensor:
        try:
            return self._features[sample_id]
        except KeyError:
            raise VLCacheError(f"VL cache {self.root}: no sample {sample_id!r}") from None

    def ids(self) -> Iterable[str]:
        return self._features.keys()


# -- command line ------------------------------------------------------------------


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="policy checkpoint: its VL model and image bounds")
    p.add_argument("--vl-model", help="VL model directory or (already downloaded) hub id")
    p.add_argument("--cache-dir", help="where the tiny default lives (default $VLA_CONTROLLER_CACHE)")
    p.add_argument("--min-pixels", type=int)
    p.add_argument("--max-pixels", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))


def encoder_from_args(args: argparse.Namespace) -> Any:
    """The encoder the policy itself would build from the same options."""
    from policies.qwen_vla.policy import QwenVLAPolicy, build_vl_encoder

    options = {
        k: v
        for k, v in {
            "checkpoint": args.checkpoint,
            "vl_model": args.vl_model,
            "cache_dir": args.cache_dir,
            "min_pixels": args.min_pixels,
            "max_pixels": args.max_pixels,
            "dtype": args.dtype,
        }.items()
        if v is not None
    }
    return build_vl_encoder(QwenVLAPolicy.from_options(options).options, args.device)


def _dataset_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m policies.vl_cache", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="encode a dataset of samples into a cache directory")
    b.add_argument("--dataset", required=True, type=Path, help="samples JSONL file")
    b.add_argument("--out", required=True, type=Path)
    _model_args(b)
    c = sub.add_parser("check", help="verify a cache against a model and preprocessing")
    c.add_argument("--cache", required=True, type=Path)
    _model_args(c)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        encoder = encoder_from_args(args)
        if args.cmd == "build":
            samples = read_dataset(args.dataset)
            LOG.info("dataset %s: %d samples (sha256 %s)", args.dataset, len(samples), _dataset_digest(args.dataset))
            out = build_cache(encoder, samples, args.out)
            print(f"built {out} ({len(samples)} samples, model {encoder.fingerprint()})")
        else:
            cache = VLCache.open(args.cache, encoder.identity())
            print(f"{args.cache}: {len(cache)} samples, matches model {encoder.fingerprint()}")
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
