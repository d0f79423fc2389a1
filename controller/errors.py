"""The errors a user of the controller can meet, in one place.

Driver and policy errors are defined in their own packages (which must not
import the controller) and re-exported here.
"""

from __future__ import annotations

from drivers.errors import ConnectionLost, DriverConfigError, DriverError, NotReady, ProtocolError
from policies.errors import CheckpointError, PolicyConfigError, PolicyError


class ConfigError(ValueError):
    """A controller option, CLI flag or config file value is invalid; the message names it."""


class WarmupError(Exception):
    """The controller could not finish its warm-up (no state, frames, features or action in time)."""


#: Errors whose message is meant for the user as is: the CLI prints them as one line.
USER_ERRORS = (ConfigError, DriverConfigError, PolicyConfigError, CheckpointError)

__all__ = [
    "USER_ERRORS",
    "CheckpointError",
    "ConfigError",
    "ConnectionLost",
    "DriverConfigError",
    "DriverError",
    "NotReady",
    "PolicyConfigError",
    "PolicyError",
    "ProtocolError",
    "WarmupError",
]


#: Longest message a tool prints for one error: library exceptions can be pages long.
MAX_MESSAGE = 1000


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """A message as one bounded line: exceptions from libraries may span many."""
    line = "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """`TypeName: message`, one line; an exception group names each of its leaves."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    message = one_line(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
