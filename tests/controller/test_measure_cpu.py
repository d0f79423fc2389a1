"""docs/measure_cpu.sh: every command it runs is one the suite accepts, and the window stays short.

The script itself is run for real only by hand (`--smoke` takes a minute or
two); here its `--dry-run` lists the commands, and each is parsed and planned
as `python -m controller.bench` would before measuring anything, so a
renamed flag or a spin longer than a period fails here, not in the quiet
window.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from controller.bench import loop as loop_bench
from controller.bench import wake
from controller.bench.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "measure_cpu.sh"
#: The quiet window is ~11 minutes; start-ups, warm-ups and model loads take about 1.5.
TIMED_BUDGET_S = 560.0


def _commands(out: Path) -> list[list[str]]:
    done = subprocess.run(
        ["bash", str(SCRIPT), str(out), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert not out.exists()  # a dry run writes nothing
    lines = done.stdout.splitlines()
    assert lines and all(line.startswith("python -m controller.bench ") for line in lines)
    return [shlex.split(line)[3:] for line in lines]


@pytest.mark.peer  # bash, a process of its own
def test_every_command_of_the_script_is_accepted_and_the_window_stays_short(tmp_path) -> None:
    out = tmp_path / "run"
    commands = _commands(out)
    parser = build_parser()
    timed = 0.0
    names = []
    for argv in commands:
        args = parser.parse_args(argv)
        assert args.json == str(out / f"{Path(args.json).stem}.json")
        names.append(Path(args.json).stem)
        if args.bench == "wake":
            rows = wake.plan(args)
            timed += len(rows) * args.seconds
        elif args.bench == "loop":
            args.policy = "fake"  # the plan, without building the tiny model
            rows = loop_bench.plan(args)
            # The main loop rows put the note's loop beside the controller; the rt rows
            # compare the controller with itself, under each scheduling.
            designs = {r.design for r, _ in rows}
            if Path(args.json).stem.startswith("loop-rt"):
                assert designs == {"controller"}
                assert {r.modes.get("rt_priority") for r, _ in rows} == {0, 50}
            else:
                assert designs == {"note", "controller"}
            assert {r.modes.get("vl_worker") for r, _ in rows} >= {"thread", "process"}
            timed += len(rows) * args.seconds
        elif args.bench == "seed-table":
            timed += 3 * args.seconds  # the real rows: sync, async, the note's loop
        elif args.bench == "camera":
            timed += args.warmup + args.seconds
    assert names == [
        "wake-100hz", "wake-10hz", "loop-100hz", "loop-10hz", "loop-rt-100hz", "loop-rt-10hz",
        "seed-table", "vl", "act", "tick-cost", "camera",
    ]  # fmt: skip
    assert timed <= TIMED_BUDGET_S, f"{timed:g} s of timed rows leave no room in the window"


@pytest.mark.peer
@pytest.mark.parametrize("argv", [[], ["a", "b", "c"], ["out", "--bogus"]])
def test_bad_arguments_are_refused(tmp_path, argv) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and "usage:" in done.stderr


@pytest.mark.peer
def test_a_used_output_directory_is_refused(tmp_path) -> None:
    (tmp_path / "old.json").write_text("{}")
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and "is not empty" in done.stderr
