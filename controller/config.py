"""The run configuration: a TOML file, overridden by command-line flags.

Everything is validated here, before any driver connects, and every error
names the key, the value and what would be accepted. The settings are the
config dataclasses (`RunConfig`, `ControllerConfig`, `SafetyConfig`): their
fields' `option(...)` metadata is the schema the file is read with
(`drivers.options`), and the flags are generated from it
(`controller.settings`). What is written here by hand is only what is not a
setting: which drivers and which policy to build, with their own options.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.errors import ConfigError
from controller.runtime import MAX_DURATION, ControllerConfig
from drivers.options import option, parse_fields, validate

#: The policy a run uses when neither `--policy` nor `policy.name` names one.
DEFAULT_POLICY = "qwen-vla"
#: A config file is a few hundred bytes; refusing anything over this keeps a
#: wrong path (`/dev/zero`, a video, a core dump) from being read into memory.
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class DriverEntry:
    """One driver to build: a spec string (`fake`, `whip://0.0.0.0:8080/front`) and its options."""

    spec: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """One run: the controller's settings (top-level keys), the plugins, and the run's own settings."""

    controller: ControllerConfig = option(
        default_factory=ControllerConfig, help="the controller's settings", inline=True
    )
    robot: DriverEntry = field(default_factory=lambda: DriverEntry("fake"))
    cameras: tuple[DriverEntry, ...] = (DriverEntry("fake"),)
    sensors: tuple[DriverEntry, ...] = ()
    policy: str = DEFAULT_POLICY
    policy_options: dict[str, Any] = field(default_factory=dict)
    device: str = option(
        "auto",
        help="compute device",
        pattern=r"auto|cpu|cuda(:[0-9]{1,4})?",
        accepted="auto, cpu, cuda or cuda:N",
        flag=True,
        metavar="DEVICE",
    )
    duration: float | None = option(
        None,
        help="stop after this much control",
        unit="s",
        low=0.0,
        low_open=True,
        high=MAX_DURATION,
        flag=True,
        default_text="until stopped",
    )
    stats_json: str | None = option(
        None, help="write the run summary as JSON to this file", flag=True, metavar="PATH"
    )
    record: str | None = option(
        None,
        help="record the run as an episode of a LeRobot v3 dataset in this directory"
        " (created, or appended to; a directory holding anything else is refused)",
        pattern=r"(?s).*\S.*",
        accepted="a directory path",
        flag=True,
        metavar="DIR",
        default_text="no recording",
    )

    def __post_init__(self) -> None:
        validate(self, error=ConfigError)


#: The tables that choose plugins: read here, each plugin reads its own options.
PLUGIN_KEYS = ("robot", "cameras", "sensors", "policy")
#: The `RunConfig` fields those tables fill.
PLUGIN_FIELDS = (*PLUGIN_KEYS, "policy_options")


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
    out = parse_fields(
        RunConfig,
        data,
        where=source,
        error=ConfigError,
        noun="key",
        skip=PLUGIN_FIELDS,
        also_accepted=PLUGIN_KEYS,
        name_checks=True,
    )
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
    try:
        return RunConfig(**out)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
