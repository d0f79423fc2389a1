"""The controller's settings on the command line, generated from the config dataclasses.

`RunConfig`, `ControllerConfig` and `SafetyConfig` are the schema: every
field marked `flag=True` in its `option(...)` metadata becomes a flag named
after it (`max_state_age` -> `--max-state-age`), with a type check, a range
check and a help line made from the same metadata; an old spelling kept for
one release (`spin_ms`) gets its flag too (`--spin-ms`), marked deprecated.
A flag's value is refused at parse time, naming the flag, the value and the
accepted range; an accepted one is merged into the TOML document at the
key it stands for, so the file and the flags are read by one parser
(`controller.config.from_mapping`).
"""

from __future__ import annotations

import argparse
import tomllib
import typing
from collections.abc import Callable
from typing import Any, Literal, Protocol

from controller.config import PLUGIN_FIELDS, RunConfig, as_table
from drivers.options import (
    Entry,
    OptionError,
    admits,
    coerce,
    describe,
    describe_options,
    entries,
    help_line,
    is_section,
    strip_optional,
)

#: Metavars by unit, for flags that do not name their own.
_METAVARS = {"s": "S", "ms": "MS", "Hz": "HZ"}


def flag_entries(cls: type = RunConfig) -> list[Entry]:
    """The settings that have a flag, old spellings included, in declaration order."""
    return [
        e
        for e in entries(cls, skip=PLUGIN_FIELDS)
        if e.spec is not None and e.spec.flag and not is_section(e.hint)
    ]


def flag_name(entry: Entry) -> str:
    return "--" + entry.name.replace("_", "-")


def _dest(entry: Entry) -> str:
    return "setting:" + entry.key


def _converter(entry: Entry) -> Callable[[str], Any]:
    """argparse's `type=`: the text as the option's type, inside its range, or one clear line."""
    spec = entry.effective_spec
    assert spec is not None
    hint = entry.hint

    def convert(text: str) -> Any:
        try:
            value = coerce(hint, text)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if not admits(spec, hint, value):
            raise argparse.ArgumentTypeError(f"must be {describe(spec, hint)}, got {text!r}")
        return value

    convert.__name__ = entry.name  # what argparse would name in its own messages
    return convert


def converter_for(cls: type, name: str) -> Callable[[str], Any]:
    """An argparse `type=` for option `name` of config class `cls`: its type and range, once.

    For tools whose flags stand for a few options of a config dataclass
    (`controller.evaluate`: `--vl-latency`, `--hz`, `--episode-limit`),
    flagged there or not, so the range is declared in one place.
    """
    for entry in entries(cls):
        if entry.renamed is None and entry.name == name and entry.spec is not None:
            return _converter(entry)
    raise KeyError(f"{cls.__name__} has no option {name!r}")


def key_value(text: str) -> tuple[str, Any]:
    """argparse's `type=` for `KEY=VALUE` (plugin options, `--set`): the value read as TOML.

    `0.002`, `true`, `"x"` are read as a TOML file would read them, so a
    flag means what the same line in the config file means; a bare word that
    TOML refuses is kept as a string. One parser for every tool with such flags.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    return key.strip(), value


def _help(entry: Entry) -> str:
    if entry.renamed is not None:
        field = entry.field.name
        new = "--" + field.replace("_", "-")
        unit = entry.spec.unit if entry.spec is not None else ""
        text = f"deprecated (removed in the next release): {new} in {unit or 'its unit'}"
    else:
        text = help_line(entry)
    return text.replace("%", "%%")  # argparse formats help with %


class _TakesArguments(Protocol):
    """An ArgumentParser or one of its argument groups."""

    def add_argument(self, *names: str, **kwargs: Any) -> Any: ...


def add_flags(parser: _TakesArguments, cls: type = RunConfig) -> None:
    """One flag per setting marked `flag=True`, with its check and help from the schema."""
    for entry in flag_entries(cls):
        spec = entry.effective_spec
        assert spec is not None
        base = strip_optional(entry.hint)
        kwargs: dict[str, Any] = {"dest": _dest(entry), "help": _help(entry), "default": None}
        if typing.get_origin(base) is Literal:
            kwargs["choices"] = typing.get_args(base)
        else:
            kwargs["type"] = _converter(entry)
            kwargs["metavar"] = spec.metavar or _METAVARS.get(spec.unit, "VALUE")
        parser.add_argument(flag_name(entry), **kwargs)


def apply_flags(
    args: argparse.Namespace, data: dict[str, Any], source: str, cls: type = RunConfig
) -> dict[str, Any]:
    """The TOML document with the given flags written in at their keys (flags win).

    A flag replaces every spelling of its setting in the file (`--spin`
    drops a `spin_ms` the file had), so an override is never refused as a
    duplicate. Tables are type-checked before they are written into.
    """
    data = dict(data)
    for entry in flag_entries(cls):
        value = getattr(args, _dest(entry))
        if value is None:
            continue
        table = data
        for part in entry.path.rstrip(".").split(".") if entry.path else ():
            table[part] = as_table(f"{source}: {part}", table.get(part, {}))
            table = table[part]
        for other in entries(cls, skip=PLUGIN_FIELDS):
            if other.field is entry.field and other.path == entry.path:
                table.pop(other.name, None)
        table[entry.name] = value
    return data


def describe_settings(cls: type = RunConfig) -> str:
    """Every setting a config file accepts, with unit, range, default and flag (`--help-config`)."""
    flags = {e.key: flag_name(e) for e in flag_entries(cls) if e.renamed is None}
    lines = ["settings (TOML keys at the top level and in [safety]; a flag overrides the file):"]
    for line, entry in zip(
        describe_options(cls, skip=PLUGIN_FIELDS), entries(cls, skip=PLUGIN_FIELDS), strict=True
    ):
        flag = flags.get(entry.key)
        lines.append(f"{line} [{flag}]" if flag else line)
    lines += [
        "plugins (each reads its own options; see --list-drivers and --help-policy):",
        '  [robot]                    driver = "NAME" or "NAME://TARGET", then its options',
        '  [[cameras]], [[sensors]]   spec = "NAME" or "NAME://TARGET", then its options',
        '  [policy]                   name = "NAME" (default qwen-vla), then its options',
    ]
    return "\n".join(lines)
