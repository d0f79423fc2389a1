"""The errors a driver may raise, named by what went wrong (python-can style).

The controller treats `ConnectionLost` as recoverable (the driver reconnects
and the controller holds meanwhile); any other `DriverError` escaping a
driver's stream ends the run, with the robot stopped.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base of every error a driver raises on purpose."""


class DriverConfigError(DriverError, ValueError):
    """A driver option or spec is invalid; the message names the value and what is accepted."""


class ConnectionLost(DriverError):
    """The link to the device is down; the driver may be reconnecting."""


class ProtocolError(DriverError):
    """The device (or a peer) sent something the protocol does not allow."""


class NotReady(DriverError):
    """The device is connected but refuses motion (protective stop, not running, ...)."""
