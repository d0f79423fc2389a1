"""The run configuration: a TOML file, overridden by command-line flags.

Everything is validated here, before any driver connects, and every error
names the key, the value and what would be accepted.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.errors import ConfigError
from controller.runtime import MAX_DURATION, ControllerConfig
from controller.safety import SafetyConfig

#: The policy a run uses when neither `--policy` nor `policy.name` names one.
DEFAULT_POLICY = "qwen-vla"
#: A config file is a few hundred bytes; refusing anything over this keeps a
#: wrong path (`/dev/zero`, a video, a core dump) from being read into memory.
MAX_CONFIG_BYTES = 1 << 20
#: `action_timeout_ms` as ControllerConfig bounds `action_timeout` (seconds).
_MIN_ACTION_TIMEOUT_MS, _MAX_ACTION_TIMEOUT_MS = 0.1, 10_000.0
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]{1,4})?")


@dataclass(frozen=True, slots=True)
class DriverEntry:
    """One driver to build: a spec string (`fake`, `whip://0.0.0.0:8080/front`) and its options."""

    spec: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunConfig:
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    robot: DriverEntry = field(default_factory=lambda: DriverEntry("fake"))
    cameras: tuple[DriverEntry, ...] = (DriverEntry("fake"),)
    sensors: tuple[DriverEntry, ...] = ()
    policy: str = DEFAULT_POLICY
    policy_options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    duration: float | None = None
    stats_json: str | None = None


_TOP = {
    "hz",
    "vl_max_hz",
    "instruction",
    "duration",
    "stats_json",
    "device",
    "spin_ms",
    "status_interval",
    "warmup_timeout",
    "stop_timeout",
    "action_timeout_ms",
    "safety",
    "robot",
    "cameras",
    "sensors",
    "policy",
}
_SAFETY = {"max_feature_age", "max_state_age", "limit_mode", "velocity_scale"}


def _number(where: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{where}: must be positive, got {value!r}")
    return float(value)


def _driver_entry(where: str, table: Any, *, spec_key: str) -> DriverEntry:
    if isinstance(table, str):
        return DriverEntry(table)
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table or a spec string, got {table!r}")
    opts = dict(table)
    spec = opts.pop(spec_key, None)
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f'{where}: needs {spec_key} = "NAME" or "NAME://TARGET"')
    return DriverEntry(spec, opts)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read and parse a TOML config file; every failure is one `ConfigError` line.

    Only a regular file of at most `MAX_CONFIG_BYTES` is read: a FIFO would
    block forever and `/dev/zero` would read until memory ran out. The file
    is opened non-blocking so that even a FIFO is refused without waiting.
    """
    name = repr(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(f"config file {name} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {name} cannot be read: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(f"config file {name} is not a regular file")
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file {name} cannot be read: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {name} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {name} is not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {name} is not valid TOML: {exc}") from None


def as_table(where: str, value: Any, *, spec_key: str | None = None) -> dict[str, Any]:
    """`value` as a (copied) table; a spec string `"fake"` is `{spec_key: "fake"}`.

    The CLI merges flags into these tables before `from_mapping` sees them, so
    a wrong type (`robot = 5`) must be named here rather than fail as a
    TypeError inside the merge.
    """
    if isinstance(value, dict):
        return dict(value)
    if spec_key is not None and isinstance(value, str):
        return {spec_key: value}
    wanted = "a table" if spec_key is None else "a table or a name string"
    raise ConfigError(f"{where} must be {wanted}, got {value!r}")


def from_mapping(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Build a RunConfig from a parsed TOML document (or the CLI's equivalent)."""
    unknown = set(data) - _TOP
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))} (accepted: {', '.join(sorted(_TOP))})"
        )
    safety_tbl = as_table(f"{source}: safety", data.get("safety", {}))
    bad = set(safety_tbl) - _SAFETY
    if bad:
        raise ConfigError(
            f"{source}: unknown [safety] key(s) {', '.join(sorted(bad))} (accepted: {', '.join(sorted(_SAFETY))})"
        )
    safety_kwargs: dict[str, Any] = {}
    for key in ("max_feature_age", "max_state_age", "velocity_scale"):
        if key in safety_tbl:
            safety_kwargs[key] = _number(f"{source}: safety.{key}", safety_tbl[key])
    if "limit_mode" in safety_tbl:
        safety_kwargs["limit_mode"] = safety_tbl["limit_mode"]
    try:
        safety = SafetyConfig(**safety_kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None

    ctl: dict[str, Any] = {"safety": safety}
    if "hz" in data:
        ctl["hz"] = _number(f"{source}: hz", data["hz"])
    if "instruction" in data:
        if not isinstance(data["instruction"], str) or not data["instruction"].strip():
            raise ConfigError(
                f"{source}: instruction must be a non-empty string, got {data['instruction']!r}"
            )
        ctl["instruction"] = data["instruction"]
    if "spin_ms" in data:
        ctl["spin"] = _number(f"{source}: spin_ms", data["spin_ms"], positive=False) / 1e3
    if "status_interval" in data:
        ctl["status_interval"] = _number(
            f"{source}: status_interval", data["status_interval"], positive=False
        )
    for key in ("warmup_timeout", "stop_timeout"):
        if key in data:
            ctl[key] = _number(f"{source}: {key}", data[key])
    if "vl_max_hz" in data:
        ctl["vl_max_hz"] = _number(f"{source}: vl_max_hz", data["vl_max_hz"], positive=False)
    if "action_timeout_ms" in data:
        ctl["action_timeout"] = (
            _number(f"{source}: action_timeout_ms", data["action_timeout_ms"]) / 1e3
        )
    if "action_timeout_ms" in data and not (
        _MIN_ACTION_TIMEOUT_MS <= data["action_timeout_ms"] <= _MAX_ACTION_TIMEOUT_MS
    ):
        # Named here, in the unit the user wrote: ControllerConfig speaks seconds.
        raise ConfigError(
            f"{source}: action_timeout_ms must be in [{_MIN_ACTION_TIMEOUT_MS:g},"
            f" {_MAX_ACTION_TIMEOUT_MS:g}] ms, got {data['action_timeout_ms']!r}"
        )
    if "spin_ms" in data and "spin" in ctl:
        period_ms = 1e3 / ctl.get("hz", ControllerConfig().hz)
        if not ctl["spin"] * 1e3 < period_ms:
            raise ConfigError(
                f"{source}: spin_ms must be less than one control period ({period_ms:g} ms),"
                f" got {data['spin_ms']!r}"
            )
    try:
        controller = ControllerConfig(**ctl)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None

    out: dict[str, Any] = {"controller": controller}
    if "robot" in data:
        out["robot"] = _driver_entry(f"{source}: [robot]", data["robot"], spec_key="driver")
    if "cameras" in data:
        cams = data["cameras"]
        if not isinstance(cams, list) or not cams:
            raise ConfigError(
                f"{source}: cameras must be a non-empty array of tables ([[cameras]])"
            )
        out["cameras"] = tuple(
            _driver_entry(f"{source}: cameras[{i}]", c, spec_key="spec") for i, c in enumerate(cams)
        )
    if "sensors" in data:
        sens = data["sensors"]
        if not isinstance(sens, list):
            raise ConfigError(f"{source}: sensors must be an array of tables ([[sensors]])")
        out["sensors"] = tuple(
            _driver_entry(f"{source}: sensors[{i}]", c, spec_key="spec") for i, c in enumerate(sens)
        )
    if "policy" in data:
        pol = data["policy"]
        if isinstance(pol, str):
            out["policy"] = pol
        elif isinstance(pol, dict):
            opts = dict(pol)
            # Not `RunConfig.policy`: on a slots dataclass that is the field's
            # member descriptor, not its default.
            name = opts.pop("name", DEFAULT_POLICY)
            if not isinstance(name, str):
                raise ConfigError(f"{source}: policy.name must be a string, got {name!r}")
            out["policy"], out["policy_options"] = name, opts
        else:
            raise ConfigError(f"{source}: policy must be a name or a table, got {pol!r}")
    if "device" in data:
        dev = data["device"]
        if not isinstance(dev, str) or not _DEVICE.fullmatch(dev):
            raise ConfigError(f"{source}: device must be auto, cpu, cuda or cuda:N, got {dev!r}")
        out["device"] = dev
    if "duration" in data:
        out["duration"] = _number(f"{source}: duration", data["duration"])
        if out["duration"] > MAX_DURATION:
            raise ConfigError(
                f"{source}: duration must be at most {MAX_DURATION:g} s, got {data['duration']!r}"
            )
    if "stats_json" in data:
        if not isinstance(data["stats_json"], str):
            raise ConfigError(f"{source}: stats_json must be a path string")
        out["stats_json"] = data["stats_json"]
    return RunConfig(**out)
