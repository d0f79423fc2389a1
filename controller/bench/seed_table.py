"""`python -m controller.bench seed-table`: the design note's table, measured.

The note (../shared/seed/) compares a synchronous loop (encode, then act,
every step: 300 + 25 ms, "3.1 FPS") with an asynchronous one that reuses
each feature about three times ("40 FPS possible, run at 10 Hz"). Its
figures are arithmetic; this measures them, with a ~300 ms encoder, as the
control rate actually held, the action latency, the age of the features
each action used (p50/p99), how many ticks each feature served, and the
ticks missed.

Two clocks, said in every row:

* `virtual` (`controller.clock.run_virtual`): the controller on the test
  harness with the fake policy taking exactly the note's times (300 ms per
  encode, 25 ms per action) on its lanes. Faithful for what the schedule
  decides (rate, reuse, feature age, missed ticks: they follow from the
  lanes' latencies alone) and exact; it has no jitter and no contention.
* `real`: the controller as the CLI builds it, the tiny default model over
  five fake cameras with every encode padded to ~300 ms (`vl_latency`), its
  own `act`; and the note's loop (`controller.bench.note_loop`) with the
  same model, padding and cameras, whose queue serves each feature once.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from controller.bench.common import (
    Column,
    Progress,
    Report,
    add_policy_flags,
    fmt,
    fmt_spread,
    have_uvloop,
    number_in,
    policy_options,
    spread,
)
from controller.bench.probe import Probe, tick_figures
from controller.bench.runs import controller_run, note_run, run_on
from controller.config import RunConfig, from_mapping
from controller.errors import describe

NAME = "seed-table"
HELP = "the note's table: synchronous encode-then-act against asynchronous with reuse"
#: The note's action prediction: sensor and robot-state encoders (~10 ms) + action expert (~15 ms).
NOTE_ACTION_S = 0.025


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--clock",
        choices=("virtual", "real"),
        nargs="+",
        default=["virtual", "real"],
        help="virtual time (the harness, exact) and/or real time (default both)",
    )
    p.add_argument(
        "--seconds",
        type=number_in(0.0, 3600.0, low_open=True),
        default=5.0,
        help="real-time control per row, after the warm-up (default 5)",
    )
    p.add_argument(
        "--virtual-seconds",
        type=number_in(0.0, 100_000.0, low_open=True),
        default=60.0,
        help="virtual control time per row (default 60: milliseconds of real time)",
    )
    p.add_argument(
        "--hz", type=number_in(1.0, 1000.0), default=10.0, help="control rate (default 10)"
    )
    p.add_argument(
        "--encoder-ms",
        type=number_in(1.0, 10_000.0),
        default=300.0,
        help="VL encode time (default 300, the note's)",
    )
    p.add_argument(
        "--action-ms",
        type=number_in(0.0, 10_000.0),
        default=NOTE_ACTION_S * 1e3,
        help="action time of the virtual rows' fake policy (default 25, the note's)",
    )
    p.add_argument(
        "--cameras",
        type=number_in(1, 64, integer=True),
        default=5,
        help="fake cameras of the real rows (default 5, the note's)",
    )
    p.add_argument(
        "--no-note",
        action="store_true",
        help="leave out the real-time row of the note's own loop",
    )
    add_policy_flags(p)


def _virtual_row(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    from controller.clock import run_virtual
    from controller.harness import ControllerHarness
    from policies.fake import FakePolicy

    async def main() -> dict[str, Any]:
        harness = ControllerHarness(
            policy=FakePolicy(
                vl_latency=args.encoder_ms / 1e3, action_latency=args.action_ms / 1e3
            ),
            hz=args.hz,
            vl_mode=mode,
        )
        return await harness.run(args.virtual_seconds)

    return _from_summary(run_virtual(main))


def _real_config(args: argparse.Namespace, mode: str) -> RunConfig:
    return from_mapping(
        {
            "hz": args.hz,
            "vl_mode": mode,
            "vl_latency": args.encoder_ms / 1e3,
            "status_interval": 0,
            "device": args.device,
            "robot": {"driver": "fake"},
            "cameras": [{"spec": f"fake://cam{i}"} for i in range(args.cameras)],
            "policy": {"name": "qwen-vla", **policy_options(args)},
        },
        source="bench",
    )


def _from_summary(s: dict[str, Any]) -> dict[str, Any]:
    """The row's figures from the controller's telemetry summary."""
    return {
        "control_rate_hz": s["control_rate_hz"],
        "ticks": s["ticks"],
        "missed_ticks": s["missed_ticks"],
        "actions": s["actions_sent"],
        "vl_encodes": s["vl_encodes"],
        "vl_latency_ms": _ms(s["vl_latency_ms"]),
        "action_latency_ms": _ms(s["action_latency_ms"]),
        "step_ms": _ms(s["tick_work_ms"]),
        "feature_age_ms": _ms(s["feature_age_at_use_ms"]),
        "reuse_histogram": {int(k): v for k, v in s["reuse"]["histogram"].items()},
        "holds": s["hold_ticks"],
    }


def _ms(series: dict[str, Any]) -> dict[str, Any]:
    """The telemetry's series summary under the names `spread` uses."""
    return {
        "n": series["count"],
        "p50": series["p50"],
        "p99": series["p99"],
        "max": series["max"],
        "mean": series["mean"],
    }


def _real_row(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    # The note's loop reads only the rate, padding, drivers and policy: vl_mode is the controller's.
    run = _real_config(args, "async" if mode == "note" else mode)
    probe = Probe()
    if mode == "note":
        out = run_on(_event_loop(), note_run(run, args.seconds, probe))
        ticks = tick_figures(probe.ticks, 1.0 / args.hz, "interval")
        span = ticks["span_s"]
        return {
            "control_rate_hz": ticks["commands"] / (span + 1.0 / args.hz) if span else None,
            "ticks": ticks["ticks"],
            "missed_ticks": ticks["missed_ticks"],
            "actions": ticks["commands"],
            "vl_encodes": out["vl_encodes"],
            "vl_latency_ms": spread(out["vl_encode_s"]),
            "action_latency_ms": ticks["act_ms"],
            "step_ms": ticks["tick_to_command_ms"],
            "feature_age_ms": spread(out["feature_age_s"]),
            "reuse_histogram": out["reuse_histogram"],
            "holds": out["queue_empty"],
        }
    return _from_summary(run_on(_event_loop(), controller_run(run, args.seconds, probe)))


def _event_loop() -> str:
    """uvloop if installed, else asyncio: the loop `python -m controller` would run on."""
    return "uvloop" if have_uvloop() else "asyncio"


def _reuse(hist: dict[int, int]) -> str:
    """`ticks served x features`, e.g. `3x12 4x1`."""
    return " ".join(f"{k}x{v}" for k, v in sorted(hist.items())) or "-"


COLUMNS = (
    Column("clock", lambda r: r["clock"]),
    Column("mode", lambda r: r["what"]),
    Column("control rate held Hz", lambda r: fmt(r.get("control_rate_hz"))),
    Column("ticks", lambda r: fmt(r.get("ticks")) if "error" not in r else "failed"),
    Column("missed", lambda r: fmt(r.get("missed_ticks"))),
    Column("VL encode p50 ms", lambda r: fmt((r.get("vl_latency_ms") or {}).get("p50"))),
    Column("action latency p50 / p99 / max ms", lambda r: fmt_spread(r.get("action_latency_ms"))),
    Column("per step p50 / p99 / max ms", lambda r: fmt_spread(r.get("step_ms"))),
    Column(
        "feature age at use p50 / p99 ms",
        lambda r: " / ".join(fmt((r.get("feature_age_ms") or {}).get(k)) for k in ("p50", "p99")),
    ),
    Column("reuse: ticks x features", lambda r: _reuse(r.get("reuse_histogram") or {})),
)

WHAT = {
    "sync": "synchronous: encode, then act, every tick (vl_mode sync)",
    "async": "asynchronous with reuse (vl_mode async)",
    "note": "the note's loop: thread + queue.Queue(3), act inline",
}


def run(args: argparse.Namespace) -> Report:
    plan = [("virtual", m) for m in ("sync", "async") if "virtual" in args.clock]
    if "real" in args.clock:
        plan += [("real", m) for m in ("sync", "async")]
        if not args.no_note:
            plan.append(("real", "note"))
            from policies import base as policies

            policies.create("qwen-vla", policy_options(args))  # bad options: now, once
        for clock, mode in plan:
            if clock == "real" and mode != "note":
                _real_config(args, mode)  # bad settings: before anything runs
    progress = Progress(len(plan), "seed-table")
    rows: list[dict[str, Any]] = []
    for clock, mode in plan:
        progress.step(f"{clock} {mode}")
        row: dict[str, Any] = {"clock": clock, "mode": mode, "what": WHAT[mode]}
        try:
            row.update(_virtual_row(args, mode) if clock == "virtual" else _real_row(args, mode))
        except Exception as exc:
            row["error"] = describe(exc)
        rows.append(row)
    progress.finish(rows)
    vl, act, period = args.encoder_ms / 1e3, args.action_ms / 1e3, 1.0 / args.hz
    grid = args.hz / math.ceil((vl + act) * args.hz - 1e-9)
    report = Report(
        bench=NAME,
        title=f"The note's table with a {args.encoder_ms:g} ms encoder at {args.hz:g} Hz",
        columns=COLUMNS,
        rows=rows,
        clock="+".join(dict.fromkeys(c for c, _ in plan)) or "none",
    )
    report.notes.append(
        f"The note: synchronous {vl * 1e3:g} + {act * 1e3:g} ms per step -> {1 / (vl + act):.3g} Hz;"
        f" on the controller's absolute deadlines an overrunning tick waits for the next"
        f" deadline, so synchronous holds {grid:.3g} Hz at {args.hz:g} Hz. Asynchronous: the"
        f" rate held, each feature serving about {vl / period:.3g} ticks."
    )
    if "virtual" in args.clock:
        report.notes.append(
            f"virtual rows: the test harness on controller.clock's virtual time, the fake policy"
            f" taking {vl * 1e3:g} ms per encode and {act * 1e3:g} ms per action on its lanes"
            f" (exact; {args.virtual_seconds:g} s of virtual control per row)."
        )
    if "real" in args.clock:
        report.notes.append(
            f"real rows: the tiny default qwen-vla over {args.cameras} fake cameras, each encode"
            f" padded to {vl * 1e3:g} ms (vl_latency), its own act; {args.seconds:g} s per row"
            f" on {args.device}"
            + ("." if args.no_note else "; the note's row: its queue serves each feature once.")
        )
    report.notes.append(
        f"Goals (issue 11): asynchronous >= {0.99 * args.hz:.3g} Hz; feature age at use p99 <="
        f" VL latency + one period = {(vl + period) * 1e3:g} ms. With one encoder, a feature"
        " stays the newest for a whole encode after it lands, so its age at use reaches about"
        " twice the VL latency whatever the loop does."
    )
    report.note_failures(lambda r: f"{r['clock']} {r['mode']}")
    return report
