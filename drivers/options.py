"""Option schemas: a config dataclass whose fields say their unit, range and help.

One config dataclass is the single source of an option: its type and default
(the field), and in the field's metadata (`option(...)`) its unit, its range,
a line of help and whether it has a command-line flag. Everything else is
generated from that: parsing a TOML table or `KEY=VALUE` options into the
dataclass (`parse_fields`), type coercion with one clear message (`coerce`),
range checks (`validate`, called from `__post_init__`, so a config built in
Python is checked exactly like one read from a file) and help text
(`describe`). The controller builds its argparse flags from the same
metadata (`controller.settings`).

It lives in `drivers/` because this is the layer drivers, policies and the
controller may all import: a driver or a policy declares its options with it
without importing the controller.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

#: The key of a field's `Spec` in its dataclass field metadata.
SPEC_KEY = "option"


class OptionError(ValueError):
    """A value that cannot be read as its option's type; the message names the value only.

    Callers add where the value came from (a file and key, a flag, a driver's
    option), since only they know.
    """


@dataclass(frozen=True, slots=True)
class Renamed:
    """An old spelling of an option, still read for one release, with a warning.

    `per` is how many of the old spelling's `unit` make one of the field's
    (`spin_ms` -> `spin`: 1000); its range is the field's, scaled, so a
    refusal names the value and the range in the unit the user wrote.
    """

    name: str
    unit: str = ""
    per: float = 1.0


@dataclass(frozen=True, slots=True)
class Spec:
    """What the field metadata says about one option (see `option`)."""

    help: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    #: 0 is accepted besides the range: an "off" value (`status_interval = 0`: no lines).
    zero_ok: bool = False
    #: For strings: a regular expression the whole value must match, and how to say it.
    pattern: str | None = None
    accepted: str | None = None
    #: The option has a command-line flag, `--` + its name with dashes.
    flag: bool = False
    metavar: str | None = None
    #: What a default of None means, for help (`None` for `action_timeout`: one period).
    default_text: str | None = None
    #: A dataclass-typed field whose own fields sit at this level, not in a table of their own.
    inline: bool = False
    renamed: tuple[Renamed, ...] = ()

    def scaled(self, old: Renamed) -> Spec:
        """This spec in an old spelling's unit (its range times `per`)."""

        def conv(x: float | None) -> float | None:
            return None if x is None else x * old.per

        return dataclasses.replace(
            self, unit=old.unit, low=conv(self.low), high=conv(self.high), renamed=()
        )

    def interval(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f" in {left}{_num(lo)}, {_num(hi)}{right}"
        if lo is not None:
            return f" {'>' if self.low_open else '>='} {_num(lo)}"
        if hi is not None:
            return f" {'<' if self.high_open else '<='} {_num(hi)}"
        return ""

    def in_range(self, x: float) -> bool:
        """Compared so that NaN is never inside (`not x <= high` is true for NaN)."""
        if self.zero_ok and x == 0:
            return True
        if not math.isfinite(x):
            return False
        if self.low is not None and not (x > self.low if self.low_open else x >= self.low):
            return False
        return self.high is None or (x < self.high if self.high_open else x <= self.high)


def _num(x: float) -> str:
    """Short (`1e+07`, `0.1`) where that is exact, else every digit: a bound is never rounded."""
    short = f"{x:g}"
    return short if float(short) == x else repr(x)


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    **spec: Any,
) -> Any:
    """A dataclass field that carries its `Spec`: `hz: float = option(10.0, help=..., unit="Hz", low=1, high=1000, flag=True)`."""
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        metadata={SPEC_KEY: Spec(help=help, **spec)},
    )


def spec_of(field: dataclasses.Field[Any]) -> Spec | None:
    return field.metadata.get(SPEC_KEY)


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _union_args(hint: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return None


def strip_optional(hint: Any) -> Any:
    """`float | None` -> `float`; other hints unchanged."""
    args = _union_args(hint)
    if args is not None and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return rest[0] if len(rest) == 1 else typing.Union[rest]  # noqa: UP007 - built at run time
    return hint


def is_section(hint: Any) -> bool:
    """A field whose type is itself a config dataclass: a table of options."""
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


# -- coercion ------------------------------------------------------------------------


def coerce(hint: Any, value: Any) -> Any:
    """`value` as type `hint`, from TOML or from command-line text; `OptionError` if it cannot be.

    Text is read the way a user means it (`"500"` for a number, `"yes"` for a
    bool, `"0.1,0.2"` for a tuple); a number must be finite: NaN or infinity
    in a limit would switch its check off.
    """
    args = _union_args(hint)
    if args is not None:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value)
            except OptionError as exc:
                errors.append(str(exc))
        raise OptionError(errors[0] if errors else f"bad value {value!r}")
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        raise OptionError(f"{value!r} is not one of {', '.join(map(repr, choices))}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise OptionError(f"expected a list, got {value!r}")
        item_args = typing.get_args(hint)
        item = item_args[0] if item_args else Any
        items = [coerce(item, v) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        words = ("1", "true", "yes", "on", "0", "false", "no", "off")
        if isinstance(value, str) and value.lower() in words:
            return value.lower() in ("1", "true", "yes", "on")
        raise OptionError(f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise OptionError(f"expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError, OverflowError):
            raise OptionError(f"expected an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise OptionError(f"expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise OptionError(f"expected a number, got {value!r}") from None
        if not math.isfinite(out):
            raise OptionError(f"expected a finite number, got {value!r}")
        return out
    if hint is str:
        if not isinstance(value, str):
            raise OptionError(f"expected a string, got {value!r}")
        return value
    return value


# -- checks --------------------------------------------------------------------------


def _is_number(value: Any, *, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, (int, float))


def admits(spec: Spec, hint: Any, value: Any) -> bool:
    """Whether `value` (already of roughly the right type) is what the option accepts."""
    hint = strip_optional(hint)
    args = _union_args(hint)
    if args is not None:
        return any(admits(spec, a, value) for a in args)
    if typing.get_origin(hint) is Literal:
        return value in typing.get_args(hint)
    if hint in (int, float):
        return _is_number(value, integer=hint is int) and spec.in_range(float(value))
    if hint is str:
        if not isinstance(value, str):
            return False
        return spec.pattern is None or re.fullmatch(spec.pattern, value) is not None
    if hint is bool:
        return isinstance(value, bool)
    return True


def describe(spec: Spec, hint: Any) -> str:
    """What the option accepts, as the end of "X must be ...": `0 or a number in [0.1, 1000] Hz`."""
    hint = strip_optional(hint)
    if spec.accepted is not None:
        return spec.accepted
    args = _union_args(hint)
    if args is not None:
        return " or ".join(describe(spec, a) for a in args)
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if hint in (int, float):
        noun = "an integer" if hint is int else "a number"
        zero = "0 or " if spec.zero_ok else ""
        unit = f" {spec.unit}" if spec.unit and spec.interval() else ""
        return f"{zero}{noun}{spec.interval()}{unit}"
    if hint is str:
        return "a string"
    if hint is bool:
        return "true or false"
    return getattr(hint, "__name__", str(hint))


def problem(spec: Spec, hint: Any, value: Any, name: str) -> str | None:
    """`"name must be <accepted>, got <value>"` when `value` is refused, else None."""
    if admits(spec, hint, value):
        return None
    return f"{name} must be {describe(spec, hint)}, got {value!r}"


def validate(instance: Any, *, error: type[Exception], where: str = "") -> None:
    """Check every field that has a `Spec` against it; raise `error` naming the first refused.

    Called from a config's `__post_init__`: whatever builds the config (a
    file, a flag, a test, another program), no value outside its range gets
    through. None is accepted where the type allows it (it means "derive").
    """
    cls = type(instance)
    for f in dataclasses.fields(instance):
        spec = spec_of(f)
        if spec is None:
            continue
        value = getattr(instance, f.name)
        hint = hints(cls)[f.name]
        args = _union_args(hint)
        if value is None and args is not None and type(None) in args:
            continue
        if is_section(strip_optional(hint)):
            continue  # checked by its own __post_init__
        message = problem(spec, hint, value, f"{where}{f.name}")
        if message is not None:
            raise error(message)


# -- tables --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One option as a table key: where it sits (`path`, e.g. `safety.`), its field and spec."""

    path: str
    field: dataclasses.Field[Any]
    hint: Any
    spec: Spec | None
    #: Set for the entry of an old spelling (`spin_ms`), None for the field's own name.
    renamed: Renamed | None = None

    @property
    def name(self) -> str:
        return self.renamed.name if self.renamed else self.field.name

    @property
    def key(self) -> str:
        return self.path + self.name

    @property
    def effective_spec(self) -> Spec | None:
        if self.spec is not None and self.renamed is not None:
            return self.spec.scaled(self.renamed)
        return self.spec


def entries(cls: type, path: str = "", *, skip: Collection[str] = ()) -> Iterator[Entry]:
    """Every option of `cls` as it is spelled in a table, sections and inline fields walked.

    A section (a dataclass-typed field) yields its own entry first, then its
    options with `path` = `name.`; an inline one yields its options at this
    level. Old spellings follow their field.
    """
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        hint = hints(cls)[f.name]
        spec = spec_of(f)
        if is_section(hint):
            if spec is not None and spec.inline:
                yield from entries(hint, path)
                continue
            yield Entry(path, f, hint, spec)
            yield from entries(hint, f"{path}{f.name}.")
            continue
        yield Entry(path, f, hint, spec)
        for old in spec.renamed if spec is not None else ():
            yield Entry(path, f, hint, spec, old)


def _level(cls: type, path: str, skip: Collection[str]) -> dict[str, Entry]:
    """The keys accepted directly in a table of `cls` (inline fields included)."""
    return {e.name: e for e in entries(cls, path, skip=skip) if e.path == path}


def parse_fields(
    cls: type,
    table: Mapping[str, Any],
    *,
    where: str,
    error: type[Exception],
    noun: str = "option",
    path: str = "",
    skip: Collection[str] = (),
    also_accepted: Collection[str] = (),
    name_checks: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for `cls` from a table (TOML, `KEY=VALUE` options, flags merged in).

    Every refusal is one `error` line naming `where`, the key and the value:
    an unknown key (with the accepted ones listed), a value of the wrong type,
    a section that is not a table, an old spelling used with the new one.
    Sections are built here (their checks run in their `__post_init__`);
    with `name_checks` their refusals get `where` in front too. Fields in
    `skip` are the caller's to fill; `also_accepted` are keys it reads itself.
    """
    level = _level(cls, path, skip)
    norm = {str(k).replace("-", "_"): k for k in table}
    unknown = [raw for key, raw in norm.items() if key not in level and key not in also_accepted]
    if unknown:
        accepted = sorted(
            {e.name for e in level.values() if e.renamed is None} | set(also_accepted)
        )
        nouns = noun if len(unknown) == 1 else f"{noun}s"
        raise error(
            f"{where}: unknown {nouns} {', '.join(repr(path + str(k)) for k in unknown)}"
            f" (accepted: {', '.join(accepted) or 'none'})"
        )
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        hint = hints(cls)[f.name]
        spec = spec_of(f)
        if is_section(hint) and spec is not None and spec.inline:
            own = {
                k: v for k, v in table.items() if str(k).replace("-", "_") in _level(hint, path, ())
            }
            kwargs[f.name] = _construct(
                hint,
                parse_fields(
                    hint,
                    own,
                    where=where,
                    error=error,
                    noun=noun,
                    path=path,
                    name_checks=name_checks,
                ),
                where=where,
                error=error,
                name_checks=name_checks,
            )
            continue
        given = [e for e in level.values() if e.field is f and e.name in norm]
        if not given:
            continue
        if len(given) > 1:
            names = " and ".join(repr(path + e.name) for e in given)
            raise error(f"{where}: {names} are the same {noun}: give one of them")
        entry = given[0]
        raw = table[norm[entry.name]]
        if is_section(hint):
            if not isinstance(raw, Mapping):
                raise error(f"{where}: {entry.key} must be a table, got {raw!r}")
            sub = parse_fields(
                hint,
                raw,
                where=where,
                error=error,
                noun=noun,
                path=f"{entry.key}.",
                name_checks=name_checks,
            )
            kwargs[f.name] = _construct(
                hint, sub, where=where, error=error, name_checks=name_checks
            )
            continue
        kwargs[f.name] = _read(entry, raw, where=where, error=error, noun=noun)
    return kwargs


def _read(entry: Entry, raw: Any, *, where: str, error: type[Exception], noun: str) -> Any:
    try:
        value = coerce(entry.hint, raw)
    except OptionError as exc:
        raise error(f"{where}: {noun} {entry.key!r}: {exc}") from None
    if entry.renamed is None:
        return value
    spec = entry.effective_spec
    if spec is not None and value is not None:
        message = problem(spec, entry.hint, value, entry.key)
        if message is not None:
            raise error(f"{where}: {message}")
    new = value if value is None else value / entry.renamed.per
    unit = entry.spec.unit if entry.spec is not None else ""
    log.warning(
        "%s: %s is deprecated and will be removed in the next release: use %s%s = %s%s",
        where,
        entry.key,
        entry.path,
        entry.field.name,
        new,
        f" ({unit})" if unit else "",
    )
    return new


def _construct(
    cls: type, kwargs: dict[str, Any], *, where: str, error: type[Exception], name_checks: bool
) -> Any:
    try:
        return cls(**kwargs)
    except error as exc:
        if name_checks:
            raise error(f"{where}: {exc}") from None
        raise
    except (TypeError, ValueError) as exc:
        raise error(f"{where}: {exc}") from None


def build(
    cls: type, table: Mapping[str, Any], *, where: str, error: type[Exception], **kw: Any
) -> Any:
    """`cls` built from a table: `parse_fields`, then the constructor (its checks) with `where` named."""
    name_checks = kw.get("name_checks", False)
    return _construct(
        cls,
        parse_fields(cls, table, where=where, error=error, **kw),
        where=where,
        error=error,
        name_checks=name_checks,
    )


# -- help ----------------------------------------------------------------------------


def default_text(entry: Entry) -> str:
    f = entry.field
    if entry.spec is not None and entry.spec.default_text is not None:
        return entry.spec.default_text
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        return ""
    else:
        return "required"
    if value is None:
        return ""
    unit = entry.spec.unit if entry.spec is not None else ""
    shown = _num(value) if isinstance(value, float) else repr(value)
    return f"{shown} {unit}".strip()


def help_line(entry: Entry) -> str:
    """`help; accepted values; default`: one line for `--help` or a listing."""
    spec = entry.spec
    if spec is None:
        return f"{describe(Spec(help=''), entry.hint)}; default {default_text(entry)}"
    accepted = describe(spec, entry.hint)
    text = spec.help if accepted == "a string" else f"{spec.help}; {accepted}"
    default = default_text(entry)
    return f"{text}; default {default}" if default else text


def describe_options(cls: type, *, skip: Collection[str] = ()) -> list[str]:
    """A listing of every option of `cls`: key, then what it is, accepts and defaults to."""
    lines = []
    for e in entries(cls, skip=skip):
        if e.renamed is not None:
            lines.append(
                f"  {e.key:<26} deprecated spelling of {e.path}{e.field.name},"
                f" in {e.renamed.unit or 'its unit'}"
            )
            continue
        if is_section(e.hint):
            lines.append(f"  [{e.key}]")
            continue
        lines.append(f"  {e.key:<26} {help_line(e)}")
    return lines
