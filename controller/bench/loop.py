"""`python -m controller.bench loop`: does the control loop keep time, beside a busy VL lane?

For each control rate (10 and 100 Hz) and each scenario:

* `idle`: one camera, VL encodes throttled to 2 per second (the lightest
  load that keeps features fresh; the controller's `--vl-max-hz 2`);
* `saturated`: five cameras, the encoder running back to back
  (`--vl-max-hz 0`), the issue's worst case for a thread VL lane;
* `slow-encoder`: five cameras, every encode padded to ~300 ms (the
  controller's `vl_latency`; the note's figure for Qwen2.5-VL-3B),

it runs the controller once per combination of its modes, and the design
note's loop (`controller.bench.note_loop`: VL in a plain thread, a bounded
queue, `asyncio.sleep` pacing) with the same model, cameras and event
loop, in the same process, so the ratio between the two is measured side by
side. The controller's modes are found at run time: every field of
`ControllerConfig` whose type is a `Literal` or a `bool` (a VL worker kind,
a wake mode, ...), except `vl_mode` (sync/async: `seed-table`'s subject), is
an axis; a new mode adds rows without an edit here. `--modes` picks values
or adds any other field as an axis, `--set` fixes a setting for every
controller row.

Every timing comes from `time.perf_counter()` stamps taken outside the
controller (`controller.bench.probe`): tick starts through the
controller's observer hook, `act` calls through a policy proxy, commands
through a robot proxy.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.bench.common import (
    Column,
    Progress,
    Report,
    add_policy_flags,
    event_loops,
    fmt,
    fmt_spread,
    number_in,
    policy_options,
    spread,
)
from controller.bench.probe import Probe, tick_figures
from controller.bench.runs import controller_run, note_run, run_on
from controller.config import RunConfig, from_mapping
from controller.errors import ConfigError, describe
from controller.runtime import ControllerConfig
from controller.settings import key_value

NAME = "loop"
HELP = "tick lateness, overhead and ticks on time of the controller beside the note's loop"

SCENARIO_NAMES = ("idle", "saturated", "slow-encoder")
#: Settings the benchmark sets per row: `--set` and `--modes` may not name them.
BENCH_SET = frozenset({"hz", "vl_max_hz", "vl_latency", "vl_mode", "duration", "stats_json"})
#: Not modes: sync/async is seed-table's subject.
NOT_AXES = frozenset({"vl_mode"})


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    cameras: int
    vl_max_hz: float
    vl_latency: float
    what: str


def scenarios(encoder_s: float) -> dict[str, Scenario]:
    return {
        "idle": Scenario("idle", 1, 2.0, 0.0, "1 camera, VL at 2 encodes/s"),
        "saturated": Scenario("saturated", 5, 0.0, 0.0, "5 cameras, VL back to back"),
        "slow-encoder": Scenario(
            "slow-encoder",
            5,
            0.0,
            encoder_s,
            f"5 cameras, each encode padded to {encoder_s * 1e3:g} ms",
        ),
    }


# -- the controller's modes ----------------------------------------------------------------


def _choices(hint: Any) -> tuple[Any, ...] | None:
    """The values a field's type allows when it is a mode (a Literal, a bool, either or None)."""
    if hint is bool:
        return (False, True)
    if typing.get_origin(hint) is Literal:
        return tuple(typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(parts) == 1:
            inner = _choices(parts[0])
            return None if inner is None else (None, *inner)
    return None


def mode_axes(config_cls: type = ControllerConfig) -> dict[str, tuple[Any, ...]]:
    """Every mode field of the controller's settings and its values, the default first."""
    hints = _hints(config_cls)
    axes: dict[str, tuple[Any, ...]] = {}
    for f in dataclasses.fields(config_cls):
        if f.name in NOT_AXES or f.name in BENCH_SET:
            continue
        values = _choices(hints.get(f.name))
        if values is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        axes[f.name] = tuple(sorted(values, key=lambda v, d=default: v != d))
    return axes


def _hints(config_cls: type) -> dict[str, Any]:
    """The fields' types; one that cannot be resolved (a name imported for type checking only)
    is left out rather than failing the run: it is not a Literal or a bool either way."""
    try:
        return typing.get_type_hints(config_cls)
    except Exception:
        pass
    namespace = vars(sys.modules[config_cls.__module__])
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        try:
            out[f.name] = eval(f.type, namespace) if isinstance(f.type, str) else f.type
        except Exception:
            continue
    return out


def variants(
    axes: Mapping[str, Sequence[Any]], chosen: Mapping[str, Sequence[Any]]
) -> list[dict[str, Any]]:
    """Every combination of the axes' values (`chosen` replaces an axis' values or adds one)."""
    merged = {**{k: list(v) for k, v in axes.items()}, **{k: list(v) for k, v in chosen.items()}}
    names = list(merged)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*merged.values())]


def _modes_flag(text: str) -> tuple[str, list[Any]]:
    """`FIELD=V1,V2`: each value read as TOML (`true`, `0.002`), else kept as a word."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise argparse.ArgumentTypeError(f"expected FIELD=V1,V2, got {text!r}")
    return key.strip(), [key_value(f"v={item.strip()}")[1] for item in raw.split(",")]


def describe_modes(modes: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in modes.items()) or "defaults"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- rows ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    hz: float
    scenario: Scenario
    event_loop: str
    design: Literal["note", "controller"]
    modes: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        who = "note's loop" if self.design == "note" else f"controller {describe_modes(self.modes)}"
        return f"{self.hz:g} Hz {self.scenario.name} {self.event_loop}: {who}"


def run_config(args: argparse.Namespace, row: Row) -> RunConfig:
    """The controller's settings for one row, read the way the CLI reads them."""
    sc = row.scenario
    data: dict[str, Any] = {
        "status_interval": 0,  # no status lines between the progress lines (unless --set)
        **dict(args.set),
        **row.modes,
        "hz": row.hz,
        "vl_max_hz": sc.vl_max_hz,
        "vl_latency": sc.vl_latency,
        "device": args.device,
        "robot": {"driver": "fake"},
        "cameras": [{"spec": f"fake://cam{i}"} for i in range(sc.cameras)],
        "policy": {"name": args.policy, **policy_options(args), **dict(args.policy_option)},
    }
    return from_mapping(data, source="bench")


def measure(args: argparse.Namespace, row: Row, run: RunConfig) -> dict[str, Any]:
    """Run one row on a fresh event loop; its figures, or its error."""
    probe = Probe()
    period = 1.0 / row.hz
    result: dict[str, Any] = {
        "hz": row.hz,
        "scenario": row.scenario.name,
        "scenario_what": row.scenario.what,
        "event_loop": row.event_loop,
        "design": row.design,
        "modes": dict(row.modes),
        "seconds": args.seconds,
    }
    body = note_run if row.design == "note" else controller_run
    try:
        out = run_on(row.event_loop, body(run, args.seconds, probe))
    except Exception as exc:
        result["error"] = describe(exc)
        return result
    if row.design == "note":
        extra = {
            "action_timeouts": None,  # the note's loop has no bound on an action
            "holds": out["queue_empty"],
            "queue_empty": out["queue_empty"],
            "vl_encodes": out["vl_encodes"],
            "vl_latency_ms": spread(out["vl_encode_s"]),
            "reuse_histogram": out["reuse_histogram"],
            "errors": {"vl_encode": out["vl_errors"]} if out["vl_errors"] else {},
        }
    else:
        extra = {
            "action_timeouts": out["errors"].get("action_timeout", 0),
            "holds": out["hold_ticks"],
            "vl_encodes": out["vl_encodes"],
            "vl_latency_ms": out["vl_latency_ms"],
            "errors": out["errors"],
            # What the loop thread's scheduling was, not just what was asked (rt_priority
            # needs a privilege: a refused row ran under the normal scheduler).
            "realtime": out.get("realtime"),
        }
    figures = tick_figures(probe.ticks, period, "interval" if row.design == "note" else "grid")
    result.update(figures)
    result.update(extra)
    span = figures["span_s"]
    result["vl_rate_hz"] = extra["vl_encodes"] / span if span > 0 else None
    return result


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's lateness p99 against the note's loop in the same rate, scenario and loop."""
    note = {
        (r["hz"], r["scenario"], r["event_loop"]): r
        for r in rows
        if r["design"] == "note" and "error" not in r
    }
    for r in rows:
        base = note.get((r["hz"], r["scenario"], r["event_loop"]))
        mine = r.get("lateness_ms", {}).get("p99")
        theirs = base["lateness_ms"]["p99"] if base is not None else None
        ok = mine is not None and theirs is not None and mine > 0
        r["note_p99_over_this_p99"] = theirs / mine if ok else None


COLUMNS = (
    Column("Hz", lambda r: fmt(r["hz"])),
    Column("scenario", lambda r: r["scenario"]),
    Column("loop", lambda r: r["event_loop"]),
    Column(
        "design",
        lambda r: (
            "note's loop" if r["design"] == "note" else f"controller: {describe_modes(r['modes'])}"
        ),
    ),
    Column("ticks", lambda r: fmt(r.get("ticks")) if "error" not in r else "failed"),
    Column(
        "on time",
        lambda r: f"{r['ticks_on_time']}/{r['ticks_judged']}" if "error" not in r else "-",
    ),
    Column("missed", lambda r: fmt(r.get("missed_ticks"))),
    Column("lateness p50 / p99 / max ms", lambda r: fmt_spread(r.get("lateness_ms"))),
    Column(
        "note p99 / this p99",
        lambda r: (
            "-"
            if r.get("note_p99_over_this_p99") is None
            else f"{r['note_p99_over_this_p99']:.3g}x"
        ),
    ),
    Column("overhead p50 / p99 / max us", lambda r: fmt_spread(r.get("overhead_us"))),
    Column("tick to command p50 / p99 / max ms", lambda r: fmt_spread(r.get("tick_to_command_ms"))),
    Column("action timeouts", lambda r: fmt(r.get("action_timeouts"))),
    Column("ticks without command", lambda r: fmt(r.get("ticks_without_command"))),
    Column("VL encodes/s", lambda r: fmt(r.get("vl_rate_hz"))),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seconds",
        type=number_in(0.0, 3600.0, low_open=True),
        default=3.0,
        help="control time per row, after the warm-up (default 3)",
    )
    p.add_argument(
        "--hz",
        type=number_in(1.0, 1000.0),
        nargs="+",
        default=[10.0, 100.0],
        help="control rates (default 10 100)",
    )
    p.add_argument(
        "--scenario",
        choices=SCENARIO_NAMES,
        nargs="+",
        default=list(SCENARIO_NAMES),
        help="VL loads (default: all)",
    )
    p.add_argument(
        "--encoder-ms",
        type=number_in(1.0, 10_000.0),
        default=300.0,
        help="what the slow-encoder scenario pads each encode to (default 300)",
    )
    p.add_argument(
        "--design",
        choices=("note", "controller"),
        nargs="+",
        default=["note", "controller"],
        help="which loops to run (default both)",
    )
    p.add_argument(
        "--variants",
        choices=("all", "default"),
        default="all",
        help="controller rows: every combination of its modes (all), or its defaults only",
    )
    p.add_argument(
        "--modes",
        metavar="FIELD=V1,V2",
        type=_modes_flag,
        action="append",
        default=[],
        help="the values of one mode axis (or any other controller setting made an axis);"
        " repeatable",
    )
    p.add_argument(
        "--set",
        metavar="KEY=VALUE",
        type=key_value,
        action="append",
        default=[],
        help="a controller setting for every controller row (e.g. spin=0.002); repeatable",
    )
    p.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        nargs="+",
        default=None,
        help="event loops to run each row on (default uvloop if installed, else asyncio)",
    )
    p.add_argument(
        "--policy", default="qwen-vla", help="policy (default qwen-vla: the tiny default)"
    )
    p.add_argument(
        "--policy-option",
        metavar="KEY=VALUE",
        type=key_value,
        action="append",
        default=[],
        help="policy option (repeatable)",
    )
    add_policy_flags(p)


def plan(args: argparse.Namespace) -> list[tuple[Row, RunConfig]]:
    """Every row and its validated settings, before anything runs: a typo costs no minutes."""
    for key, _ in [*args.set, *args.modes]:
        if key in BENCH_SET:
            raise ConfigError(f"{key} is set by the benchmark per row; it cannot be given")
    fields = {f.name for f in dataclasses.fields(ControllerConfig)}
    for key, _ in args.set:
        if key not in fields:
            raise ConfigError(
                f"--set {key}: not a controller setting (its settings: {', '.join(sorted(fields))})"
            )
    for key, values in args.modes:
        if key not in fields:
            raise ConfigError(
                f"--modes {key}: the controller has no setting {key!r}"
                f" (its settings: {', '.join(sorted(fields))})"
            )
        if not values:
            raise ConfigError(f"--modes {key}: no values given")
    args.event_loop = event_loops(args.event_loop, default=["uvloop"])
    axes = mode_axes() if args.variants == "all" else {}
    combos = variants(axes, dict(args.modes))
    by_name = scenarios(args.encoder_ms / 1e3)
    rows: list[tuple[Row, RunConfig]] = []
    for hz in args.hz:
        for name in args.scenario:
            for event_loop in args.event_loop:
                if "note" in args.design:
                    row = Row(hz, by_name[name], event_loop, "note")
                    rows.append((row, run_config(args, row)))
                if "controller" in args.design:
                    for modes in combos:
                        row = Row(hz, by_name[name], event_loop, "controller", modes)
                        rows.append((row, run_config(args, row)))
    if rows:
        from policies import base as policies

        first = rows[0][1]
        policies.create(first.policy, first.policy_options)  # bad policy options: now, once
    return rows


def run(args: argparse.Namespace) -> Report:
    rows = plan(args)
    progress = Progress(len(rows), "loop")
    results = []
    for row, config in rows:
        progress.step(row.label)
        results.append(measure(args, row, config))
    progress.finish(results)
    add_ratios(results)
    axes = mode_axes()
    report = Report(
        bench=NAME,
        title="Control loop: tick lateness and cost, the controller beside the design note's loop",
        columns=COLUMNS,
        rows=results,
        clock="real",
        extra={"mode_axes": {k: list(v) for k, v in axes.items()}},
    )
    report.notes += [
        f"{args.seconds:g} s of control per row, after each loop's warm-up; policy {args.policy}"
        f" on {args.device}; scenarios: "
        + "; ".join(f"{s.name}: {s.what}" for s in scenarios(args.encoder_ms / 1e3).values()),
        "Times are time.perf_counter() stamps taken outside the loops (tick starts through the"
        " controller's observer hook, act calls and commands through proxies). Lateness is"
        " measured against each loop's own schedule (the controller: absolute deadlines; the"
        " note: one period after the previous start), the row's smallest difference taken as"
        " zero. On time: within 10 % of a period. Missed: slots of the target rate with no tick.",
        "Overhead: tick start to command, minus the policy's act call. Ticks without command:"
        " holds (the controller) or an empty queue (the note's loop).",
        "The note's loop: VL in a plain thread putting into queue.Queue(maxsize=3) (the consumer"
        " paces the encoder, so its VL rate is about one encode per tick), act inline on the"
        " loop, asyncio.sleep(period - elapsed); see controller/bench/note_loop.py.",
        "Controller modes found in ControllerConfig: "
        + (", ".join(f"{k} {list(map(_show, v))}" for k, v in axes.items()) or "none")
        + ("" if args.variants == "all" else " (only the defaults were run: --variants default)"),
    ]
    refused = [
        r for r in results if (rt := r.get("realtime")) and rt["requested"] and not rt["granted"]
    ]
    if refused:
        report.notes.append(
            f"rt_priority was REFUSED in {len(refused)} row(s), which ran under the normal"
            f" scheduler: {refused[0]['realtime']['detail']}"
        )
    report.note_failures(
        lambda r: f"{r['hz']:g} Hz {r['scenario']} {r['design']} {describe_modes(r['modes'])}"
    )
    return report
