"""The settings schema: config dataclasses are the one source of TOML keys, flags, checks and help."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import typing
from dataclasses import dataclass
from typing import Literal

import pytest

from controller.cli import build_parser
from controller.config import PLUGIN_FIELDS, RunConfig, from_mapping
from controller.errors import ConfigError
from controller.runtime import ControllerConfig
from controller.safety import SafetyConfig
from controller.settings import add_flags, apply_flags, describe_settings, flag_entries, flag_name
from drivers.options import (
    Entry,
    Renamed,
    build,
    describe_options,
    entries,
    is_section,
    option,
    spec_of,
    strip_optional,
)
from tests.controller.cli_util import one_error_line, run_cli


def settings() -> list[Entry]:
    """Every setting a config file accepts, in its own spelling (no sections, no old names)."""
    return [
        e
        for e in entries(RunConfig, skip=PLUGIN_FIELDS)
        if e.renamed is None and not is_section(e.hint)
    ]


def numeric(entry: Entry) -> bool:
    return strip_optional(entry.hint) in (int, float)


def outside(entry: Entry) -> float:
    """A value just past the top of the setting's range."""
    spec = entry.spec
    assert spec is not None and spec.high is not None
    return spec.high + max(1.0, abs(spec.high))


def toml_table(key: str, value: object) -> dict[str, object]:
    table, _, name = key.rpartition(".")
    return {table: {name: value}} if table else {name: value}


# -- the schema itself -----------------------------------------------------------------


def test_every_setting_declares_help_and_every_number_a_range():
    """A field without a spec would be read from TOML untyped and unchecked: refuse that here."""
    for cls in (RunConfig, ControllerConfig, SafetyConfig):
        for f in dataclasses.fields(cls):
            if f.name in PLUGIN_FIELDS:
                continue
            spec = spec_of(f)
            assert spec is not None and spec.help, f"{cls.__name__}.{f.name} has no option(...)"
    numbers = [e for e in settings() if numeric(e)]
    assert len(numbers) >= 15
    for e in numbers:
        assert e.spec is not None and e.spec.high is not None, f"{e.key} has no upper bound"
        assert e.spec.low is not None, f"{e.key} has no lower bound"


@pytest.mark.parametrize("entry", [e for e in settings() if numeric(e)], ids=lambda e: e.key)
def test_each_numeric_setting_is_range_checked_from_its_metadata(entry):
    key = entry.key
    with pytest.raises(ConfigError) as info:
        from_mapping(toml_table(key, outside(entry)), source="run.toml")
    message = str(info.value)
    assert message.startswith(f"run.toml: {key} must be ")
    assert entry.spec is not None and entry.spec.interval() in message
    finite = "an integer" if strip_optional(entry.hint) is int else "a finite number"
    with pytest.raises(ConfigError, match=rf"run.toml: key '{key}': expected {finite}"):
        from_mapping(toml_table(key, math.inf), source="run.toml")
    # The same check when the dataclass is built directly (a test, another program).
    owner = SafetyConfig if key.startswith("safety.") else None
    if owner is None:
        owner = (
            ControllerConfig
            if entry.field.name in ControllerConfig.__dataclass_fields__
            else RunConfig
        )
    with pytest.raises(ConfigError, match=entry.field.name):
        owner(**{entry.field.name: outside(entry)})


@pytest.mark.parametrize(
    "entry", [e for e in flag_entries() if e.renamed is None and numeric(e)], ids=flag_name
)
def test_each_numeric_flag_refuses_its_range_as_it_is_parsed(capsys, entry):
    code, _, err = run_cli(capsys, flag_name(entry), repr(outside(entry)))
    assert code == 2
    assert f"argument {flag_name(entry)}: must be " in err
    assert entry.spec is not None and entry.spec.interval() in err


def test_flags_and_file_keys_build_the_same_run():
    argv = [
        "--hz", "20", "--instruction", "stack the cups", "--max-feature-age", "2",
        "--max-state-age", "0.2", "--limit-mode", "reject", "--status-interval", "0",
        "--spin", "0.001", "--vl-max-hz", "0", "--device", "cuda:1", "--duration", "3",
        "--stats-json", "s.json", "--record", "datasets/run", "--vl-mode", "sync",
        "--vl-latency", "0.3", "--action-inline-max", "0.0005",
        "--vl-worker", "process", "--vl-worker-timeout", "1.5", "--vl-worker-nice", "3",
        "--rt-priority", "40",
    ]  # fmt: skip
    args = build_parser().parse_args(argv)
    from_flags = from_mapping(apply_flags(args, {}, "flags"), source="flags")
    from_file = from_mapping(
        {
            "hz": 20,
            "instruction": "stack the cups",
            "status_interval": 0,
            "spin": 0.001,
            "vl_max_hz": 0,
            "device": "cuda:1",
            "duration": 3,
            "stats_json": "s.json",
            "record": "datasets/run",
            "vl_mode": "sync",
            "vl_latency": 0.3,
            "action_inline_max": 0.0005,
            "vl_worker": "process",
            "vl_worker_timeout": 1.5,
            "vl_worker_nice": 3,
            "rt_priority": 40,
            "safety": {"max_feature_age": 2, "max_state_age": 0.2, "limit_mode": "reject"},
        }
    )
    assert from_flags == from_file
    assert from_flags.controller.safety.limit_mode == "reject"
    assert from_flags.controller.hz == 20.0 and from_flags.duration == 3.0
    # Every generated flag was exercised above: a new one must be added here.
    assert {flag_name(e) for e in flag_entries() if e.renamed is None} == {
        a for a in argv if a.startswith("--")
    }


def test_a_flag_overrides_the_file_even_in_its_old_spelling():
    args = build_parser().parse_args(["--spin", "0.002", "--max-state-age", "0.3"])
    data = apply_flags(args, {"spin_ms": 1, "safety": {"max_state_age": 0.05}}, "c.toml")
    run = from_mapping(data, source="c.toml")
    assert run.controller.spin == 0.002
    assert run.controller.safety.max_state_age == 0.3


# -- one unit convention: seconds; old `_ms` spellings for one release ----------------


@pytest.mark.parametrize(
    ("old", "value", "field", "seconds"),
    [("spin_ms", 5, "spin", 0.005), ("action_timeout_ms", 250, "action_timeout", 0.25)],
)
def test_old_millisecond_keys_still_work_with_a_warning(caplog, old, value, field, seconds):
    with caplog.at_level(logging.WARNING):
        run = from_mapping({old: value}, source="c.toml")
    assert getattr(run.controller, field) == seconds
    assert f"c.toml: {old} is deprecated" in caplog.text and f"use {field} = " in caplog.text
    with pytest.raises(ConfigError, match=f"'{field}' and '{old}' are the same key"):
        from_mapping({old: value, field: seconds}, source="c.toml")


def test_old_flag_spelling_still_works(capsys, caplog, tmp_path):
    import json

    stats = tmp_path / "s.json"
    with caplog.at_level(logging.WARNING):
        code, _, err = run_cli(
            capsys,
            *("--policy", "fake", "--device", "cpu", "--no-uvloop", "--status-interval", "0"),
            *("--duration", "0.3", "--spin-ms", "2", "--stats-json", str(stats)),
        )
    assert code == 0, err
    assert "flags: spin_ms is deprecated" in caplog.text
    assert json.loads(stats.read_text())["exit_code"] == 0


# -- help generated from the schema ----------------------------------------------------


def test_help_lists_each_flag_with_its_range_and_default(capsys):
    text = " ".join(build_parser().format_help().split())
    for e in flag_entries():
        assert flag_name(e) in text
        if e.renamed is None and numeric(e):
            assert e.spec is not None and e.spec.interval().strip() in text
    assert "control rate; a number in [1, 1000] Hz; default 10 Hz" in text


def test_help_config_lists_every_key(capsys):
    code, out, _ = run_cli(capsys, "--help-config")
    assert code == 0
    keys = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert {e.key for e in settings()} <= set(keys)
    assert "spin_ms" in keys and "[robot]" in keys
    assert describe_settings() == out.strip()


def test_help_policy_lists_the_policys_own_options(capsys):
    code, out, _ = run_cli(capsys, "--policy", "fake", "--help-policy")
    assert code == 0
    for name in ("vl_latency", "action_latency", "horizon", "amplitude", "frequency", "seed"):
        assert f"\n  {name} " in out
    assert "an integer >= 1; default 8" in out
    code, _, err = run_cli(capsys, "--policy", "nosuch", "--help-policy")
    assert code == 2 and "unknown policy 'nosuch'" in one_error_line(err)


def test_qwen_policy_options_are_its_schema():
    from policies.base import PolicyClass, describe_options
    from policies.qwen_vla.config import QwenVLAOptions
    from policies.qwen_vla.policy import QwenVLAPolicy

    assert QwenVLAPolicy.Options is QwenVLAOptions
    assert isinstance(QwenVLAPolicy, PolicyClass)
    text = describe_options("qwen-vla")
    for f in dataclasses.fields(QwenVLAOptions):
        assert f"\n  {f.name} " in text
    assert "an integer in [1, 1024]" in text  # horizon, from its metadata


def test_checkpoint_flags_are_policy_option_shorthands():
    args = build_parser().parse_args(["--checkpoint", "/ckpt", "--vl-model", "Qwen/x"])
    from controller.cli import _overlay

    data = _overlay(args, {}, "flags")
    assert data["policy"] == {"checkpoint": "/ckpt", "vl_model": "Qwen/x"}


# -- the machinery on a schema of its own: a new option is one field ---------------------


@dataclass(frozen=True)
class _Limits:
    depth: int = option(3, help="how deep", low=1, high=9, flag=True)


@dataclass(frozen=True)
class _Toy:
    rate: float = option(5.0, help="how often", unit="Hz", low=1.0, high=10.0, flag=True)
    mode: Literal["a", "b"] = option("a", help="which", flag=True)
    wait: float = option(
        0.5,
        help="how long",
        unit="s",
        low=0.0,
        high=2.0,
        flag=True,
        renamed=(Renamed("wait_ms", unit="ms", per=1000.0),),
    )
    limits: _Limits = option(default_factory=_Limits, help="limits")


def _toy_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, _Toy)
    return parser.parse_args(list(argv))


def test_a_new_field_gets_its_flag_key_check_and_help_from_its_declaration(capsys):
    args = _toy_args("--rate", "7", "--mode", "b", "--wait-ms", "250", "--depth", "4")
    toy = build(_Toy, apply_flags(args, {}, "flags", _Toy), where="flags", error=ConfigError)
    assert toy == _Toy(rate=7.0, mode="b", wait=0.25, limits=_Limits(depth=4))
    with pytest.raises(SystemExit):
        _toy_args("--rate", "11")
    assert "argument --rate: must be a number in [1, 10] Hz, got '11'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _toy_args("--wait-ms", "3000")
    assert "argument --wait-ms: must be a number in [0, 2000] ms" in capsys.readouterr().err
    with pytest.raises(
        ConfigError, match=r"t.toml: unknown key 'limits.width' \(accepted: depth\)"
    ):
        build(_Toy, {"limits": {"width": 2}}, where="t.toml", error=ConfigError, noun="key")
    with pytest.raises(ConfigError, match=r"t.toml: key 'rate': expected a number, got 'x'"):
        build(_Toy, {"rate": "x"}, where="t.toml", error=ConfigError, noun="key")
    listing = "\n".join(describe_options(_Toy))
    assert "rate" in listing and "a number in [1, 10] Hz; default 5 Hz" in listing
    assert "limits.depth" in listing and "wait_ms" in listing
    assert typing.get_type_hints(_Toy)["limits"] is _Limits


def test_a_bad_section_or_value_in_the_schema_is_one_config_error():
    with pytest.raises(ConfigError, match=r"c.toml: safety must be a table, got 5"):
        from_mapping({"safety": 5}, source="c.toml")
    with pytest.raises(ConfigError, match=r"c.toml: unknown key 'safety.bogus' \(accepted: "):
        from_mapping({"safety": {"bogus": 1}}, source="c.toml")
    with pytest.raises(ConfigError, match=r"c.toml: instruction must be a non-empty string"):
        from_mapping({"instruction": "  "}, source="c.toml")
    with pytest.raises(ConfigError, match=r"c.toml: key 'safety.limit_mode': 'ignore' is not one"):
        from_mapping({"safety": {"limit_mode": "ignore"}}, source="c.toml")
