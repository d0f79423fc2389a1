"""What every subcommand of the suite shares: flags, the machine, progress, the table, the JSON.

A figure is only worth what is known about how it was produced, so every
report carries the machine (CPU model, cores, GPU), the versions of the
libraries that set the timing (python, torch, transformers, uvloop, aiortc),
the date and the exact command line, beside the rows it prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from controller.errors import ConfigError
from policies.cli_args import OneLineArgumentParser

#: Errors are one line naming the flag and the value, exit 2 (no usage block): the parser the
#: policy tools already use, so every tool of the project refuses a flag the same way.
OneLineParser = OneLineArgumentParser

#: Bumped when a report's layout changes in a way a reader must know about.
SCHEMA = 1
#: The libraries whose versions set the timing (asked by the issue), then the rest of the stack.
VERSIONED = (
    "torch",
    "transformers",
    "uvloop",
    "aiortc",
    "torchvision",
    "qwen-vl-utils",
    "numpy",
    "av",
)


# -- flag types ----------------------------------------------------------------------------


def number_in(
    low: float, high: float, *, low_open: bool = False, integer: bool = False
) -> Callable[[str], Any]:
    """A flag type: a finite number in [low, high] (`low_open`: (low, high]), named on refusal."""
    kind = "an integer" if integer else "a number"
    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> Any:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind} in {bounds}, got {text!r}") from None
        below = value <= low if low_open else value < low
        if not math.isfinite(value) or below or value > high:
            raise argparse.ArgumentTypeError(f"expected {kind} in {bounds}, got {text!r}")
        return value

    return parse


def image_size(text: str) -> tuple[int, int]:
    """`480x640` -> (480, 640), each side in [1, 8192]."""
    h, sep, w = text.lower().partition("x")
    if sep and h.isdigit() and w.isdigit() and 1 <= int(h) <= 8192 and 1 <= int(w) <= 8192:
        return int(h), int(w)
    raise argparse.ArgumentTypeError(
        f"expected HxW with sides in [1, 8192], e.g. 480x640, got {text!r}"
    )


def add_policy_flags(p: argparse.ArgumentParser, *, device: str = "cpu") -> None:
    """The model a benchmark runs: the tiny default unless a checkpoint or VL model is named."""
    p.add_argument("--checkpoint", metavar="DIR", help="a trained qwen-vla checkpoint")
    p.add_argument("--vl-model", metavar="DIR_OR_ID", help="a Qwen2.5-VL model (no download)")
    p.add_argument(
        "--cache-dir", metavar="DIR", help="where the tiny default lives ($VLA_CONTROLLER_CACHE)"
    )
    p.add_argument(
        "--device",
        default=device,
        metavar="DEVICE",
        help=f"compute device: auto, cpu, cuda, cuda:N (default {device})",
    )


def policy_options(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The qwen-vla options the flags name (unset ones left to the policy's defaults)."""
    named = {
        "checkpoint": getattr(args, "checkpoint", None),
        "vl_model": getattr(args, "vl_model", None),
        "cache_dir": getattr(args, "cache_dir", None),
        **extra,
    }
    return {k: v for k, v in named.items() if v is not None}


# -- event loops -----------------------------------------------------------------------------


def have_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def event_loops(requested: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """The event loops to run rows on: `requested`, else `default` (asyncio without uvloop).

    uvloop named but not installed is refused before anything runs.
    """
    if requested is None:
        return list(default) if have_uvloop() else ["asyncio"]
    if "uvloop" in requested and not have_uvloop():
        raise ConfigError("--event-loop uvloop: uvloop is not installed")
    return list(requested)


# -- where the figures come from ---------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def cpu_model() -> str:
    """The CPU's marketing name (`/proc/cpuinfo`), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    """Names of the CUDA devices torch sees (none without torch or a GPU)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def machine() -> dict[str, Any]:
    """The machine, without its hostname."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 0,
        "cores_usable": usable,
        "gpu": gpus() or None,
        "platform": platform.platform(),
        # Other work on the machine pollutes real-time figures: say how busy it was.
        "load_average_1m": round(load[0], 2) if load else None,
    }


def versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), **{d: _version(d) for d in VERSIONED}}


def command_line(argv: Sequence[str] | None) -> str:
    """The exact command: the interpreter's own argv when run as a program, else the call's."""
    if argv is None:
        return shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    return shlex.join(["python", "-m", "controller.bench", *argv])


# -- progress --------------------------------------------------------------------------------


class Progress:
    """A progress line on stderr: rewritten in place on a terminal, one line per step elsewhere.

    The benchmarks run for minutes; a silent terminal looks hung, and a CI log
    should still say which row was running when something went wrong.
    """

    def __init__(self, total: int, what: str, stream: TextIO | None = None) -> None:
        self.total = max(1, total)
        self.what = what
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._width = 0
        self._label = ""
        self._tenth = -1

    def step(self, label: str) -> None:
        """Say that step `done + 1` of `total` (`label`) starts now.

        Off a terminal a line is written when the label changes or another
        tenth of the steps is done, so a log gets a few lines, not thousands.
        """
        self.done = min(self.done + 1, self.total)
        tenth = 10 * (self.done - 1) // self.total
        if not self._tty and label == self._label and tenth == self._tenth:
            return
        self._label, self._tenth = label, tenth
        bar_len = 20
        filled = round(bar_len * (self.done - 1) / self.total)
        line = (
            f"{self.what} [{'#' * filled}{'.' * (bar_len - filled)}]"
            f" {self.done}/{self.total} {label}"
        )
        if self._tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Close with how many rows ran and how many failed (a failed row holds an `error`)."""
        failed = sum("error" in r for r in rows)
        self.close(f"{len(rows)} rows" + (f", {failed} failed" if failed else ""))

    def close(self, message: str = "done") -> None:
        line = f"{self.what}: {message}"
        if self._tty:
            self.stream.write("\r" + line + " " * max(0, self._width - len(line)) + "\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# -- figures ---------------------------------------------------------------------------------


def spread(values: Iterable[float], scale: float = 1e3) -> dict[str, float | int | None]:
    """n, p50, p99, max (and mean) of `values` times `scale` (seconds -> ms by default)."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    arr = arr * scale
    return {
        "n": int(arr.size),
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
    }


def fmt(value: Any, digits: int = 3) -> str:
    """A figure for the table: `-` for none, a few significant digits otherwise."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    return str(value)


def fmt_spread(s: Mapping[str, Any] | None, digits: int = 3) -> str:
    """`p50 / p99 / max` of a `spread`."""
    if not s or not s.get("n"):
        return "-"
    return " / ".join(fmt(s[k], digits) for k in ("p50", "p99", "max"))


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    cell: Callable[[Mapping[str, Any]], str]


@dataclass(slots=True)
class Report:
    """One subcommand's result: rows of figures, how to show them, and notes that say how."""

    bench: str
    title: str
    columns: Sequence[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: `real` (wall-clock time), `virtual` (controller.clock) or `mixed`, said in the output.
    clock: str = "real"
    extra: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """A Markdown table (it goes into docs/performance.md as is)."""
        head = [c.header for c in self.columns]
        body = [[c.cell(r) for c in self.columns] for r in self.rows]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)

    def text(self) -> str:
        out = [f"# {self.title} (clock: {self.clock})", "", self.table()]
        if self.notes:
            out += ["", *(f"- {n}" for n in self.notes)]
        return "\n".join(out)

    def note_failures(self, label: Callable[[Mapping[str, Any]], str]) -> None:
        """Name each failed row and its error in the notes; count them in the JSON.

        A failed row stays in the table (a hole in a sweep is a result), so
        the reader needs its error next to it, not only in the progress log.
        """
        failed = [r for r in self.rows if "error" in r]
        if failed:
            self.notes.append(
                "Failed rows: " + "; ".join(f"{label(r)}: {r['error']}" for r in failed)
            )
        self.extra["failed_rows"] = len(failed)

    def document(self, argv: Sequence[str] | None, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "suite": "controller.bench",
            "bench": self.bench,
            "title": self.title,
            "command": command_line(argv),
            "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "versions": versions(),
            "clock": self.clock,
            "settings": _jsonable(dict(settings)),
            "rows": _jsonable(self.rows),
            "notes": list(self.notes),
            "table": self.table(),
            **_jsonable(self.extra),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def write_json(path: str, document: Mapping[str, Any]) -> None:
    """Written whole beside the target, then renamed: a reader never sees half a report."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, target)


def check_json_path(parser: argparse.ArgumentParser, path: str | None) -> None:
    """Refuse an unwritable `--json PATH` before minutes of measuring, not after."""
    if path is None:
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        parser.error(f"argument --json: directory {str(parent)!r} does not exist")
    if Path(path).is_dir():
        parser.error(f"argument --json: {path!r} is a directory")
    if not os.access(parent, os.W_OK):
        parser.error(f"argument --json: directory {str(parent)!r} is not writable")
