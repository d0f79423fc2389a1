from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from drivers import registry
from drivers.base import build_config
from drivers.errors import DriverConfigError
from drivers.fake import FakeCamera, FakeRobot


@pytest.mark.parametrize(
    ("text", "name", "target"),
    [
        ("fake", "fake", ""),
        ("fake://front", "fake", "front"),
        ("whip://0.0.0.0:8080/front", "whip", "0.0.0.0:8080/front"),
        ("whep+http://cam-host:8889/wrist/whep", "whep", "http://cam-host:8889/wrist/whep"),
        ("whep+https://h/x?token=a:b", "whep", "https://h/x?token=a:b"),
        ("v4l2:///dev/video0", "v4l2", "/dev/video0"),
        ("lavfi://testsrc=size=640x480:rate=30", "lavfi", "testsrc=size=640x480:rate=30"),
        ("UR5", "ur5", ""),
    ],
)
def test_parse_spec(text, name, target):
    spec = registry.parse_spec("camera", text)
    assert (spec.name, spec.target) == (name, target)


@pytest.mark.parametrize("text", ["", "   ", "bad name://x", "://x"])
def test_bad_specs_are_named(text):
    with pytest.raises(DriverConfigError):
        registry.parse_spec("camera", text)


def test_builtins_come_from_entry_points_and_load_lazily():
    names = registry.available()
    assert names["robot.fake"] == "drivers.fake.robot:FakeRobot"
    assert "camera.whip" in registry.available("camera")
    assert all(k.startswith("robot.") for k in registry.available("robot"))
    robot = registry.create("robot", "fake", {"rate_hz": 500})
    assert isinstance(robot, FakeRobot) and robot.config.rate_hz == 500
    cam = registry.create("camera", "fake://wrist", {"fps": "15"})
    assert isinstance(cam, FakeCamera) and cam.name == "wrist" and cam.config.fps == 15.0


def test_unknown_driver_lists_what_is_accepted():
    with pytest.raises(
        DriverConfigError, match=r"unknown robot driver 'kuka' \(accepted: .*fake.*ur5"
    ):
        registry.create("robot", "kuka")


@dataclass(frozen=True)
class Cfg:
    host: str = "localhost"
    port: int = 30004
    rate: float = 125.0
    fast: bool = False
    mode: Literal["servoj", "speedj"] = "servoj"
    joints: tuple[float, ...] = ()
    token: str | None = None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"colour": "red"},
            "unknown option 'colour' (accepted: fast, host, joints, mode, port, rate, token)",
        ),
        ({"port": "http"}, "option 'port': expected an integer, got 'http'"),
        ({"port": 1.5}, "expected an integer"),
        ({"rate": "nan"}, "expected a finite number"),
        ({"fast": "maybe"}, "expected true or false"),
        ({"mode": "teleport"}, "'teleport' is not one of 'servoj', 'speedj'"),
        ({"host": 5}, "expected a string"),
    ],
)
def test_build_config_names_the_bad_option(options, message):
    with pytest.raises(DriverConfigError) as info:
        build_config(Cfg, options, what="ur5")
    assert message in str(info.value)
    assert str(info.value).startswith("ur5: ")


def test_build_config_coerces_cli_strings():
    cfg = build_config(
        Cfg,
        {"port": "30004", "rate": "500", "fast": "yes", "joints": "0.1,0.2", "token": None},
        what="x",
    )
    assert (cfg.port, cfg.rate, cfg.fast, cfg.joints, cfg.token) == (
        30004,
        500.0,
        True,
        (0.1, 0.2),
        None,
    )
