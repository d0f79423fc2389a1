"""UR5 options that would switch a safeguard off are refused with one line naming them."""

from __future__ import annotations

import math
import re

import pytest

from drivers.errors import DriverConfigError
from drivers.ur.config import UR5Config
from drivers.ur.robot import UR5Robot


@pytest.mark.parametrize(
    "option,value,accepted",
    [
        ("connect_timeout", 1e308, r"\(0, 60\] s"),
        ("connect_timeout", 0, r"\(0, 60\] s"),
        ("stale_after", 30, r"\(0, 5\] s"),
        ("stop_timeout", 1e9, r"\(0, 5\] s"),
        ("stop_timeout", -1, r"\(0, 5\] s"),
        ("unlock_wait", -3, r"\[5, 60\] s"),
        ("unlock_wait", 1, r"\[5, 60\] s"),
        ("reconnect_max", 3600, r"\(0, 60\] s"),
        ("reconnect_min", 0, r"\(0, 60\] s"),
        ("frequency", 0.5, r"\[1, 500\] Hz"),
        ("frequency", 1000, r"\[1, 500\] Hz"),
        ("watchdog_hz", 0, r"\[0.5, 50\] Hz"),
        ("keepalive_hz", 1e6, r"\[1, 500\] Hz"),
        ("max_jump", 1e308, r"\(0, 1\] rad"),
    ],
)
def test_out_of_range_numbers_are_one_line(option: str, value: float, accepted: str) -> None:
    with pytest.raises(DriverConfigError) as err:
        UR5Robot.from_spec("10.0.0.1", {option: value})
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"UR5Robot: option {option!r} = ") and re.search(accepted, msg), msg


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused_even_without_the_option_parser(value: float) -> None:
    for option in ("connect_timeout", "stale_after", "stop_timeout", "reconnect_min"):
        with pytest.raises(DriverConfigError, match=option):
            UR5Config(host="h", **{option: value})


def test_reconnect_min_above_max_is_refused() -> None:
    with pytest.raises(DriverConfigError, match="'reconnect_min' = 5 exceeds 'reconnect_max' = 2"):
        UR5Robot.from_spec("h", {"reconnect_min": 5, "reconnect_max": 2})


def test_ports_must_be_ports() -> None:
    with pytest.raises(DriverConfigError, match="'dashboard_port' = 70000 outside"):
        UR5Robot.from_spec("h", {"dashboard_port": 70000})


def test_defaults_and_documented_values_are_accepted() -> None:
    UR5Config(host="h")
    UR5Robot.from_spec(
        "h",
        {
            "connect_timeout": 60,
            "unlock_wait": 5,
            "reconnect_min": 2,
            "reconnect_max": 2,
            "frequency": 500,
            "stop_timeout": 5,
            "stale_after": 5,
        },
    )
