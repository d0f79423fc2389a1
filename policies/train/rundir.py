"""A training run's output directory: what it holds, resuming it, replacing it safely.

Both stages write an ordinary model directory (a tuned VL model, or a policy
checkpoint) plus, beside the weights, a `training/` folder that run time never
reads:

```
training/run.json     marks the directory as a run of ours: stage, arguments, split
training/state.pt     what resuming needs: trainable weights not in the model files,
                      optimizer, step, RNG (torch.save, loaded with weights_only=True:
                      tensors and plain values only, nothing that runs code)
training/log.jsonl    one line per evaluation (step, train and validation losses)
```

Every save is a whole new directory written beside the old one and swapped in
(`publish`), so an interrupted run leaves the last complete save, which
`--resume` continues from.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from policies.errors import PolicyError
from policies.qwen_vla.checkpoint import TRAINING_DIR

RUN_FILE = "run.json"
STATE_FILE = "state.pt"
LOG_FILE = "log.jsonl"
KIND = "vla-controller training run"


class TrainError(PolicyError):
    """A training run cannot start or go on (the message names the flag, file or value)."""


class TrainingFailed(RuntimeError):
    """Training itself went wrong (the loss diverged): a runtime failure, not bad input."""


def read_run(out: Path) -> dict[str, Any] | None:
    """The run record of `out`, or None when `out` is not a run of ours."""
    try:
        run = json.loads((out / TRAINING_DIR / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return run if isinstance(run, dict) and run.get("kind") == KIND else None


def check_out(out: Path, stage: str, *, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Refuse an --out that this run may not write; -> the run record to resume, if resuming.

    Accepted: a new or empty directory; with --resume, a run of ours of the same
    stage; with --overwrite, a run of ours (replaced at the first save). Anything
    else is never deleted.
    """
    if out.is_symlink():
        raise TrainError(f"--out {out}: is a symbolic link; give the directory itself")
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out}: exists and is not a directory")
    run = read_run(out) if out.is_dir() else None
    if resume:
        if run is None:
            raise TrainError(
                f"--resume: {out} holds no training run of ours (no {TRAINING_DIR}/{RUN_FILE})"
            )
        if run.get("stage") != stage:
            raise TrainError(f"--resume: {out} is a {run.get('stage')!r} run, not a {stage!r} one")
        if not (out / TRAINING_DIR / STATE_FILE).is_file():
            raise TrainError(f"--resume: {out}/{TRAINING_DIR}/{STATE_FILE} is missing")
        return run
    if out.is_dir() and any(out.iterdir()):
        if run is None:
            raise TrainError(
                f"--out {out}: not empty and not a training run of ours; refusing to replace it"
                " (choose another --out)"
            )
        if not overwrite:
            raise TrainError(
                f"--out {out}: holds a {run.get('stage')!r} run at step {run.get('step')};"
                " pass --resume to continue it or --overwrite to start again"
            )
    return None


def check_same(saved: Mapping[str, Any], now: Mapping[str, Any], keys: Iterable[str]) -> None:
    """--resume continues the same run: the arguments that shape it must not change."""
    for key in keys:
        if saved.get(key) != now.get(key):
            flag = "--" + key.replace("_", "-")
            raise TrainError(
                f"--resume: {flag} {now.get(key)!r} differs from the run being resumed"
                f" ({saved.get(key)!r}); give the same value (only --steps and the reporting"
                " options may change)"
            )


def new_tmp(out: Path) -> Path:
    """An empty directory beside `out` to write the next save into."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.saving-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model directory is an ordinary one
    return tmp


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A save written into a fresh directory beside `out`, published at `out` only once
    complete; a save that fails midway is removed and `out` keeps the previous one."""
    tmp = new_tmp(out)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, out)


def write_training(tmp: Path, run: Mapping[str, Any], state: Mapping[str, Any], log: list) -> None:
    import torch

    folder = tmp / TRAINING_DIR
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state), folder / STATE_FILE)
    (folder / RUN_FILE).write_text(json.dumps({"kind": KIND, **run}, indent=2, sort_keys=True))
    (folder / LOG_FILE).write_text("".join(json.dumps(line) + "\n" for line in log))


def load_state(out: Path) -> dict[str, Any]:
    import pickle

    import torch

    path = out / TRAINING_DIR / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        cause = " ".join(str(exc).split())[:200]
        raise TrainError(f"--resume: {path} cannot be read ({cause})") from None


def read_log(out: Path) -> list[dict[str, Any]]:
    try:
        text = (out / TRAINING_DIR / LOG_FILE).read_text(encoding="utf-8")
    except OSError:
        return []
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def publish(tmp: Path, out: Path) -> None:
    """Put the finished save `tmp` at `out`, replacing a run of ours there.

    The old directory is renamed aside (same parent: both renames are atomic), the
    new one renamed in, then the old one removed; if the second rename fails the
    old one is put back.
    """
    if out.exists() and any(out.iterdir()) and read_run(out) is None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrainError(f"--out {out}: something else appeared there meanwhile; not replaced")
    if not out.exists():
        os.rename(tmp, out)
        return
    aside = out.parent / f".{out.name}.replaced-{os.getpid()}-{time.monotonic_ns()}"
    os.rename(out, aside)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    import torch

    return {"torch": torch.get_rng_state()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    import torch

    if "torch" in state:
        torch.set_rng_state(state["torch"])
