"""`python -m controller.bench SUBCOMMAND ...`: parse, run one benchmark, print, write JSON.

Exit codes: 0 measured; 1 a row or the run failed (the rows measured are
still printed and written); 2 bad flags or settings, one line naming them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from controller.bench.common import OneLineParser, check_json_path, write_json
from controller.errors import USER_ERRORS, PolicyError, WarmupError, describe, one_line

PROG = "python -m controller.bench"
#: subcommand -> module of this package (each has NAME, HELP, add_arguments, run).
SUBCOMMANDS = {
    "loop": "loop",
    "seed-table": "seed_table",
    "vl": "vl",
    "act": "act",
    "camera": "camera",
    "wake": "wake",
    "tick-cost": "tick_cost",
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"controller.bench.{SUBCOMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="One benchmark suite: each subcommand prints a Markdown table and, with"
        " --json PATH, writes it with the machine, the versions, the date and the command line.",
    )
    sub = parser.add_subparsers(
        dest="bench", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}"
    )
    for name in SUBCOMMANDS:
        module = _module(name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__.split("\n\n")[0])
        module.add_arguments(p)
        p.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
        p.set_defaults(parser=p)
    return parser


class _Once(logging.Filter):
    """Each distinct log message once: thirty rows must not print the same warning thirty times."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.getMessage())
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def _quiet_logs() -> None:
    """Warnings once each, and no model-loading bars between the benchmark's progress lines."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_Once())
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None, *, owns_process: bool = False) -> int:
    """Run one benchmark; returns the exit code. With `owns_process` (`python -m`), the
    process's logging is set up here; called in-process, the host's logging is left alone."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_json_path(args.parser, args.json)
    if owns_process:
        _quiet_logs()
    module = _module(args.bench)
    settings = {k: v for k, v in vars(args).items() if k not in ("parser",)}
    try:
        report = module.run(args)
    except USER_ERRORS as exc:
        print(f"{PROG} {args.bench}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except (PolicyError, WarmupError, OSError, RuntimeError) as exc:
        print(f"{PROG} {args.bench}: failed: {describe(exc)}", file=sys.stderr)
        return 1
    print(report.text())
    if args.json:
        try:
            write_json(args.json, report.document(argv, settings))
        except OSError as exc:
            print(f"{PROG}: cannot write {args.json!r}: {exc.strerror}", file=sys.stderr)
            return 1
    return 1 if report.extra.get("failed_rows") else 0


if __name__ == "__main__":
    sys.exit(main(owns_process=True))
