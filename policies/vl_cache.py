"""Training-time VL cache: encode each sample once, store its pooled feature.

    python -m policies.vl_cache build --dataset samples.jsonl --out cache/ \
        [--checkpoint DIR | --vl-model DIR_OR_ID] [--min-pixels N --max-pixels N]
    python -m policies.vl_cache build --lerobot DATASET --vl-model VLDIR --out cache/ \
        [--cameras front,top]
    python -m policies.vl_cache check --cache cache/ [same model options]

`samples.jsonl` holds one sample per line:
`{"id": "ep3/t120", "images": ["front/120.png", "wrist/120.png"], "instruction": "..."}`
(image paths relative to the JSONL file). With `--lerobot`, a LeRobot v3 dataset
gives one sample per (episode, frame), keyed `"<episode>/<frame>"`, with its
cameras' frames and the episode's task. The cache directory holds
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
import os
import shutil
import stat
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.cli_args import OneLineArgumentParser
from policies.errors import PolicyError

LOG = logging.getLogger("policies.vl_cache")

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
FEATURES = "features.safetensors"
#: Written into every manifest: what marks a directory as a cache of ours.
KIND = "vla-controller VL cache"
#: The only files a cache of ours holds; a directory with anything else is
#: not ours to replace.
CACHE_FILES = frozenset({MANIFEST, FEATURES})
#: Largest image accepted (40 MP, beyond any camera frame a policy sees);
#: PIL's own guard only errors past ~179 MP and decodes anything below.
MAX_IMAGE_PIXELS = 40_000_000
#: What must agree between a cache and the encoder reading it.
CHECKED = ("fingerprint", "hidden_size", "preprocessing")


class VLCacheError(PolicyError):
    """A cache is missing, corrupt, or was built with another model or preprocessing."""


@dataclass(frozen=True)
class CacheSample:
    id: str
    images: tuple[Path, ...]
    instruction: str


def _check_regular_file(path: Path, what: str) -> None:
    """Refuse, naming `what` and `path`, a file that is missing, unreadable or not a regular
    file (a FIFO would block the open, /dev/zero would never end the read)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise VLCacheError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise VLCacheError(f"{what} {path}: cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise VLCacheError(f"{what} {path}: not a regular file")


def _image_size(path: Path) -> tuple[int, int]:
    """Open `path` as an image reading only its header and check it; -> (width, height).

    `verify()` checks the file's structure (PNG chunk CRCs, ...) without
    decoding pixels, so a whole dataset is checked in seconds. A size past
    `MAX_IMAGE_PIXELS` (a decompression bomb: a small file that decodes to
    gigabytes) is refused before anything is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    _check_regular_file(path, "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise VLCacheError(
                        f"image {path}: {width}x{height} is more than {MAX_IMAGE_PIXELS} pixels"
                        " (a decompression bomb?)"
                    )
                im.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise VLCacheError(f"image {path}: refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise VLCacheError(f"image {path}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise VLCacheError(f"image {path}: corrupt image: {exc}") from None
    return width, height


def load_image(path: Path) -> np.ndarray:
    """An image file as the RGB uint8 (H, W, 3) array a camera Frame carries.

    Checked again here (a file may change between validation and encoding):
    every problem is a `VLCacheError` naming the file.
    """
    from PIL import Image

    _image_size(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise VLCacheError(f"image {path}: cannot be decoded: {exc}") from None


def _sample(raw: object, base: Path) -> CacheSample:
    """One parsed JSONL line -> a sample; ValueError says which field is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(
            f"expected a JSON object with id, images, instruction, got {type(raw).__name__}"
        )
    missing = [k for k in ("id", "images", "instruction") if k not in raw]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    sid, images, instruction = raw["id"], raw["images"], raw["instruction"]
    if isinstance(sid, bool) or not isinstance(sid, (str, int)) or sid == "":
        raise ValueError(f"id must be a non-empty string or an integer, got {sid!r}")
    if not isinstance(images, list) or not images:
        raise ValueError(f"images must be a non-empty list of paths, got {images!r:.80}")
    bad = [p for p in images if not isinstance(p, str) or not p]
    if bad:
        raise ValueError(f"images must be path strings, got {bad[0]!r:.80}")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty string, got {instruction!r:.80}")
    return CacheSample(str(sid), tuple(base / p for p in images), instruction)


def read_dataset(path: str | Path) -> list[CacheSample]:
    """Parse a samples JSONL file; errors name the file and line.

    Every line is checked (shape, types, duplicate ids) and the first problem
    is reported with a count of the others, so one run shows what to fix.
    """
    path = Path(path)
    _check_regular_file(path, "dataset")
    samples: list[CacheSample] = []
    seen: set[str] = set()
    problems: list[str] = []
    with open(path, "rb") as f:
        for lineno, raw_line in enumerate(f, 1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(f"{path}:{lineno}: not UTF-8 text (byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                sample = _sample(json.loads(line), path.parent)
            except ValueError as exc:  # json.JSONDecodeError included
                problems.append(f"{path}:{lineno}: not a sample ({exc})")
                continue
            if sample.id in seen:
                problems.append(f"{path}:{lineno}: duplicate sample id {sample.id!r}")
                continue
            seen.add(sample.id)
            samples.append(sample)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise VLCacheError(problems[0] + more)
    if not samples:
        raise VLCacheError(f"dataset {path}: no samples")
    return samples


def check_images(samples: Sequence[CacheSample]) -> int:
    """Check every image of every sample (header and structure only); -> images checked.

    Run before the model loads: a missing or broken image is reported in
    seconds, not after a long model load or half-way through encoding.
    """
    problems: list[str] = []
    checked: set[Path] = set()
    for sample in samples:
        for image in sample.images:
            if image in checked:
                continue
            checked.add(image)
            try:
                _image_size(image)
            except VLCacheError as exc:
                problems.append(f"sample {sample.id!r}: {exc}")
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise VLCacheError(problems[0] + more)
    return len(checked)


def is_our_cache(root: Path) -> bool:
    """True when `root` is a directory holding a VL cache of ours and nothing else."""
    try:
        names = {p.name for p in root.iterdir()}
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        names <= CACHE_FILES
        and isinstance(manifest, dict)
        and manifest.get("format") == CACHE_FORMAT
        and manifest.get("kind", KIND) == KIND
        and isinstance(manifest.get("encoder"), dict)
    )


def check_output(out: Path) -> None:
    """Refuse an output path we may not replace: never delete what we did not create.

    Accepted: a path that does not exist, an empty directory, or a cache of
    ours (our manifest, and no file but ours).
    """
    if out.is_symlink():
        raise VLCacheError(f"output {out}: is a symbolic link; give the directory itself")
    if not out.exists():
        return
    if not out.is_dir():
        raise VLCacheError(f"output {out}: exists and is not a directory; refusing to replace it")
    try:
        empty = next(out.iterdir(), None) is None
    except OSError as exc:
        raise VLCacheError(f"output {out}: cannot be read: {exc.strerror}") from None
    if not empty and not is_our_cache(out):
        raise VLCacheError(
            f"output {out}: not empty and not a VL cache of ours (only {MANIFEST} and {FEATURES}"
            " with our manifest may be replaced); refusing to delete it: choose another --out"
        )


def _remove_cache(root: Path) -> None:
    """Delete a directory known to hold only our cache files: those files, then the directory.

    Never `rmtree`: if anything else appeared in it meanwhile, it stays
    (and so does the directory, with a warning).
    """
    for name in CACHE_FILES:
        (root / name).unlink(missing_ok=True)
    try:
        root.rmdir()
    except OSError as exc:
        LOG.warning("left %s in place (%s): it holds files that are not ours", root, exc.strerror)


def _install(tmp: Path, out: Path) -> None:
    """Put the finished cache `tmp` at `out`, replacing a cache of ours there.

    The old cache is first renamed aside (same directory, so both renames
    are atomic), then `tmp` takes its place, then the old one is removed.
    If the second rename fails, the old cache is renamed back; if the
    process dies between the two, the old cache is intact under its
    aside name (logged).
    """
    check_output(out)  # again: the directory may have changed while we encoded
    if not out.exists():
        os.rename(tmp, out)
        return
    aside = out.parent / f".{out.name}.replaced-{os.getpid()}-{time.monotonic_ns()}"
    os.rename(out, aside)
    LOG.info("previous cache moved aside to %s until the new one is in place", aside)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(aside, out)
        raise
    _remove_cache(aside)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("transformers", "qwen-vl-utils", "torch", "pillow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def build_cache(encoder: Any, samples: Sequence[CacheSample], out_dir: str | Path) -> Path:
    """Encode every JSONL sample with `encoder.encode` and write the cache atomically."""
    items = ((s.id, lambda s=s: [load_image(p) for p in s.images], s.instruction) for s in samples)
    return write_cache(encoder, items, out_dir, total=len(samples))


def sample_id(episode: int, frame: int) -> str:
    """The cache key of a LeRobot dataset's frame: `"<episode>/<frame>"`."""
    return f"{episode}/{frame}"


def build_lerobot_cache(
    encoder: Any,
    dataset: Any,
    cameras: Sequence[str],
    out_dir: str | Path,
    *,
    episodes: Sequence[int] | None = None,
    progress: bool = True,
) -> Path:
    """One feature per frame of a LeRobot dataset (`policies.lerobot_dataset.LeRobotDataset`),
    keyed by `sample_id(episode, frame)`: the frames of `cameras`, in that order, and the
    episode's task as the instruction, through `encoder.encode`.

    The manifest's `source` records the dataset's digest and the cameras, which the
    expert stage checks.
    """
    keys = dataset.require_cameras(cameras)
    chosen = list(range(len(dataset.episodes)) if episodes is None else episodes)
    total = sum(dataset.episodes[e].length for e in chosen)

    def items() -> Iterable[tuple[str, Any, str]]:
        for e in chosen:
            frames = [dataset.frames(e, key) for key in keys]
            task = dataset.episodes[e].task
            for k in range(dataset.episodes[e].length):
                yield sample_id(e, k), [f[k] for f in frames], task

    source = {
        "kind": "lerobot",
        "dataset": str(dataset.root),
        "digest": dataset.digest(),
        "cameras": list(cameras),
        "episodes": chosen,
        "frames": total,
    }
    return write_cache(encoder, items(), out_dir, total=total, source=source, progress=progress)


def write_cache(
    encoder: Any,
    items: Iterable[tuple[str, Any, str]],
    out_dir: str | Path,
    *,
    total: int,
    source: dict[str, Any] | None = None,
    progress: bool = False,
) -> Path:
    """Encode each (id, images or a function returning them, instruction) with
    `encoder.encode`, one sample at a time, and write the cache atomically.

    The cache is written to a new directory beside `out_dir` and swapped in
    at the end (`_install`): an interrupted or failed build leaves the
    previous cache, or whatever was there, untouched.
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    out = Path(out_dir)
    check_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    features: dict[str, torch.Tensor] = {}
    t0 = time.monotonic()
    bar = tqdm(total=total, desc="vl_cache", file=sys.stderr, disable=not progress, mininterval=1)
    try:
        for i, (sid, images, instruction) in enumerate(items, 1):
            imgs = images() if callable(images) else images
            features[sid] = encoder.encode(imgs, instruction).detach().cpu().contiguous()
            bar.update(1)
            if not progress and (i % 50 == 0 or i == total):
                LOG.info("encoded %d/%d samples (%.1f s)", i, total, time.monotonic() - t0)
    finally:
        bar.close()
    manifest = {
        "kind": KIND,
        "format": CACHE_FORMAT,
        "encoder": encoder.identity(),
        "samples": len(features),
        "device": str(encoder.device),
        "dtype": str(next(encoder.model.parameters()).dtype),
        "versions": _versions(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if source is not None:
        manifest["source"] = source
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache is an ordinary directory
        save_file(features, str(tmp / FEATURES), metadata={"format": "pt"})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary directory
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
        if not isinstance(manifest, dict):
            raise VLCacheError(f"VL cache {root}: {MANIFEST} is not a JSON object")
        if manifest.get("format") != CACHE_FORMAT:
            raise VLCacheError(
                f"VL cache {root}: format {manifest.get('format')!r}, expected {CACHE_FORMAT}"
            )
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
                LOG.warning(
                    "VL cache %s was built with %s, running %s",
                    root,
                    manifest.get("versions"),
                    _versions(),
                )
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
    p.add_argument(
        "--cache-dir", help="where the tiny default lives (default $VLA_CONTROLLER_CACHE)"
    )
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


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 on success; 2 with one line for bad input (dataset, images, output
    directory, model, cache), all checked before the model loads where possible;
    1 when writing the cache failed."""
    parser = OneLineArgumentParser(
        prog="python -m policies.vl_cache", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="encode a dataset of samples into a cache directory")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", type=Path, help="samples JSONL file")
    src.add_argument(
        "--lerobot", type=Path, help="LeRobot v3 dataset: one feature per (episode, frame)"
    )
    b.add_argument("--out", required=True, type=Path)
    b.add_argument(
        "--cameras",
        help="with --lerobot: cameras fed to the VL model, in this order, NAME,NAME (default:"
        " the tuned VL's, else the dataset's)",
    )
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    _model_args(b)
    c = sub.add_parser("check", help="verify a cache against a model and preprocessing")
    c.add_argument("--cache", required=True, type=Path)
    _model_args(c)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.cmd == "build" and args.lerobot is not None:
            return _build_lerobot(args)
        if args.cmd == "build":
            # Everything the user gave is checked before the model loads
            # (seconds, or minutes for a 3B model on CPU).
            check_output(args.out)
            samples = read_dataset(args.dataset)
            n_images = check_images(samples)
            LOG.info(
                "dataset %s: %d samples, %d images checked (sha256 %s)",
                args.dataset,
                len(samples),
                n_images,
                _dataset_digest(args.dataset),
            )
            encoder = encoder_from_args(args)
            out = build_cache(encoder, samples, args.out)
            print(f"built {out} ({len(samples)} samples, model {encoder.fingerprint()})")
        else:
            encoder = encoder_from_args(args)
            cache = VLCache.open(args.cache, encoder.identity())
            print(f"{args.cache}: {len(cache)} samples, matches model {encoder.fingerprint()}")
    except PolicyError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    return 0


def _build_lerobot(args: argparse.Namespace) -> int:
    """`build --lerobot`: the dataset and cameras checked before the model loads; the tuned
    VL directory's record (`vla_tuning.json`) gives the default cameras and image bounds."""
    from policies.lerobot_dataset import LeRobotDataset

    check_output(args.out)
    dataset = LeRobotDataset.open(args.lerobot)
    tuning = _tuning(args.vl_model)
    if args.cameras:
        cameras = [c.strip() for c in args.cameras.split(",") if c.strip()]
    else:
        cameras = list(tuning.get("cameras") or dataset.cameras)
    dataset.require_cameras(cameras)
    dataset.check()
    recorded = tuning.get("preprocessing") or {}
    if args.min_pixels is None and args.max_pixels is None and recorded:
        args.min_pixels, args.max_pixels = recorded.get("min_pixels"), recorded.get("max_pixels")
    encoder = encoder_from_args(args)
    out = build_lerobot_cache(encoder, dataset, cameras, args.out, progress=not args.no_progress)
    print(
        f"built {out} ({dataset.total_frames} frames of {len(dataset.episodes)} episodes,"
        f" cameras {cameras}, model {encoder.fingerprint()})"
    )
    return 0


def _tuning(vl_model: str | None) -> dict[str, Any]:
    """A tuned VL directory's `vla_tuning.json` (written by `policies.train vl`), or {}."""
    if not vl_model:
        return {}
    try:
        data = json.loads((Path(vl_model) / "vla_tuning.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


if __name__ == "__main__":
    sys.exit(main())
