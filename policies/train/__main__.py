"""`python -m policies.train {vl,expert}`: see `policies.train`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from policies.cli_args import OneLineArgumentParser
from policies.errors import PolicyError


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when the run finished (or stopped at --stop-after), 2 with one line for bad
    input (flags, dataset, cache, model, output directory), 1 when training failed, 130
    after Ctrl-C (the run saved where it was)."""
    from policies.train import expert_stage, vl_stage

    parser = OneLineArgumentParser(
        prog="python -m policies.train",
        description="Train the Qwen2.5-VL policy from a LeRobot v3 dataset.",
    )
    sub = parser.add_subparsers(dest="stage", required=True)
    vl_stage.add_arguments(
        sub.add_parser("vl", help="tune the VL model end to end (VL + a small BC head)")
    )
    expert_stage.add_arguments(
        sub.add_parser("expert", help="train the action expert on cached (or live) VL features")
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ours is the one progress bar
    stage = vl_stage if args.stage == "vl" else expert_stage
    from policies.train import common

    try:
        result = stage.run(args)
        common.write_json(args.json, result)
    except PolicyError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except (RuntimeError, MemoryError) as exc:  # torch's failures: out of memory, a device gone
        print(
            f"error: training failed: {type(exc).__name__}: {_one_line(str(exc))}"[:2000],
            file=sys.stderr,
        )
        return 1
    print(common.summary_line(result))
    return 130 if result.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
