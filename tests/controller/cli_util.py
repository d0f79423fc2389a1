"""Running `controller.cli.main` (or another program's `main`) in-process, as the CLI tests do."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from controller.cli import main


def run_program(
    program: Callable[[Sequence[str]], int], capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a program's `main(ARGV)`, run in this process."""
    try:
        code = program(list(argv))
    except SystemExit as exc:  # argparse exits on bad flags
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m controller ARGV`, run in this process."""
    return run_program(main, capsys, *argv)


def one_error_line(err: str) -> str:
    """The stderr of a refused invocation: exactly one line, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]
