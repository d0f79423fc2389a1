"""Privileged state in recordings: a run's sensor readings as `observation.environment_state`,
and the episode's own columns (a world seed) in the episodes table."""

from __future__ import annotations

import numpy as np
import pytest

from controller.recording import DatasetDirError, Recorder, feed, sensor_names
from drivers.base import Frame, SensorReading
from drivers.fake import FakeCamera, FakeForceSensor
from drivers.fake.config import FakeCameraConfig, FakeForceSensorConfig
from policies.fake import FakePolicy
from tests.recording import synthetic, v3_reader

ENV = "observation.environment_state"


class NamedSensor(FakeForceSensor):
    """A force sensor that names its three first values (and reads six: the names are wrong)."""

    value_names = ("fx", "fy", "fz")


class Gripper(FakeForceSensor):
    """Two values, named."""

    value_names = ("width", "force")

    async def readings(self):
        async for r in super().readings():
            yield SensorReading(self.name, r.values[:2] + 10.0, r.capture_time)


class SpyPolicy(FakePolicy):
    """Keeps the sensor readings of every `act` call, in order."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.seen: list[dict[str, np.ndarray]] = []

    def act(self, features, state, sensors):
        self.seen.append({name: np.array(r.values) for name, r in sensors.items()})
        return super().act(features, state, sensors)


@pytest.mark.virtual_clock
@pytest.mark.parametrize("vl_mode", ["async", "sync"])
async def test_each_row_holds_the_readings_the_action_was_decided_on(
    controller_harness, tmp_path, vl_mode
):
    """In sync mode each tick first waits for its encode (60 ms here): the readings are
    those the policy acted on after it, not those of the tick's start."""
    sensors = [
        FakeForceSensor(FakeForceSensorConfig(name="ft", rate_hz=37.0)),
        Gripper(FakeForceSensorConfig(name="grip")),
    ]
    policy = SpyPolicy(vl_latency=0.06)
    h = controller_harness(
        cameras=[FakeCamera(FakeCameraConfig(name="cam"))],
        sensors=sensors,
        policy=policy,
        vl_mode=vl_mode,
    )
    rec = Recorder(tmp_path / "ds", fps=10, cameras=["cam"], sensors=sensor_names(sensors))
    assert rec.sensors == ("ft", "grip")
    feed(h.controller, rec)
    sent: list = []
    h.controller.observers.append(lambda e, _t, d: sent.append(d) if e == "action" else None)
    rec.start_episode("hold still", h.robot.info)
    summary = await h.run(3.0)
    rec.end_episode(True, {"seed": 17})
    await rec.drain()
    assert rec.close(30) and rec.dropped == 0 and rec.error is None
    ds = v3_reader.load(tmp_path / "ds")
    feature = ds.info["features"][ENV]
    assert feature["dtype"] == "float32"
    assert feature["names"] == [f"ft.{i}" for i in range(6)] + ["grip.width", "grip.force"]
    env = ds.environment_state(0)
    assert env is not None
    # The warm-up's actions are not sent: one on the action lane and, where the inline
    # path may be chosen, one more inline (controller.action_path); after them, one act
    # per command sent.
    warmup = len(policy.seen) - len(sent)
    assert warmup in (1, 2)
    acts = policy.seen[warmup:]
    assert len(acts) == len(sent) == summary["actions_sent"] == len(env) > 20
    want = np.array([np.concatenate([a["ft"], a["grip"]]) for a in acts], dtype=np.float32)
    np.testing.assert_array_equal(env, want)
    # A 37 Hz sensor against 10 Hz ticks: readings change from row to row.
    assert len({tuple(r) for r in env[:, :6]}) == len(env)
    assert ds.stats[ENV]["mean"].shape == (8,)
    assert ds.episodes[0]["seed"] == 17


def test_value_names_that_do_not_fit_the_reading_fall_back_to_indices(tmp_path):
    sensor = NamedSensor(FakeForceSensorConfig(name="ft"))
    rec = Recorder(
        tmp_path / "ds", fps=10, cameras=[synthetic.CAMERA], sensors=sensor_names([sensor])
    )
    _episode(rec, values=6)
    assert rec.close(30)
    names = v3_reader.load(tmp_path / "ds").info["features"][ENV]["names"]
    assert names == [f"ft.{i}" for i in range(6)]


def _episode(rec: Recorder, values: int, steps: int = 3, columns=None, kept=True) -> None:
    """An episode of `steps` steps, each with a reading of `values` values (all accepted, with
    `kept`; without, the writer may have failed already and refuse the later ones)."""
    rec.start_episode("a", synthetic.ROBOT)
    for k in range(steps):
        frame = Frame(synthetic.CAMERA, synthetic.image(0, k), capture_time=k, seq=k)
        reading = SensorReading("ft", np.arange(values, dtype=float) + k, float(k))
        accepted = rec.record(
            synthetic.state(0, k),
            synthetic.action(0, k),
            {synthetic.CAMERA: frame},
            {"ft": reading},
        )
        assert accepted or not kept
    rec.end_episode(True, columns)


def test_a_step_without_the_sensor_reading_is_dropped_and_counted(tmp_path):
    rec = Recorder(tmp_path / "ds", fps=10, cameras=[synthetic.CAMERA], sensors={"ft": None})
    rec.start_episode("a", synthetic.ROBOT)
    frame = Frame(synthetic.CAMERA, synthetic.image(0, 0), capture_time=0, seq=0)
    assert not rec.record(synthetic.state(0, 0), synthetic.action(0, 0), {synthetic.CAMERA: frame})
    assert rec.dropped == rec.episode_dropped == 1
    rec.discard_episode()
    assert rec.close(30)


def test_appending_needs_the_same_environment_state(tmp_path):
    root = tmp_path / "ds"
    rec = Recorder(root, fps=10, cameras=[synthetic.CAMERA], sensors={"ft": None})
    _episode(rec, values=4)
    assert rec.close(30)
    with pytest.raises(
        DatasetDirError, match=r"records observation\.environment_state .* no sensors"
    ):
        Recorder(root, fps=10, cameras=[synthetic.CAMERA])
    plain = tmp_path / "plain"
    rec = Recorder(plain, fps=10, cameras=[synthetic.CAMERA])
    synthetic.record_episode(rec, "a", 2, seed=0)
    assert rec.close(30)
    assert v3_reader.load(plain).environment_state(0) is None
    with pytest.raises(
        DatasetDirError, match=r"has no observation\.environment_state; this run has"
    ):
        Recorder(plain, fps=10, cameras=[synthetic.CAMERA], sensors={"ft": None})
    # Another number of values: the writer refuses the episode, in one line, and keeps the rest.
    rec = Recorder(root, fps=10, cameras=[synthetic.CAMERA], sensors={"ft": None})
    _episode(rec, values=5, kept=False)
    assert rec.close(30)
    assert rec.error is not None and "records 4 values of observation.environment_state" in str(
        rec.error
    )
    assert len(v3_reader.load(root).episodes) == 1


def test_episode_columns_are_kept_and_the_formats_own_names_refused(tmp_path):
    root = tmp_path / "ds"
    rec = Recorder(root, fps=10, cameras=[synthetic.CAMERA], sensors={"ft": None})
    _episode(rec, values=2, columns={"seed": 3, "world_task": "reach", "time_to_success": None})
    _episode(rec, values=2, columns={"seed": 4, "world_task": "reach", "time_to_success": 1.5})
    for bad, match in (
        ({"success": True}, "the format uses it"),
        ({"stats/x": 1}, "are the format's"),
        ({"seed": [1, 2]}, "a bool, int, float or str"),
    ):
        rec.start_episode("b", synthetic.ROBOT)
        with pytest.raises(ValueError, match=match):
            rec.end_episode(True, bad)
        rec.discard_episode()
    assert rec.close(30)
    eps = v3_reader.load(root).episodes
    assert [(e["seed"], e["world_task"], e["time_to_success"]) for e in eps] == [
        (3, "reach", None),
        (4, "reach", 1.5),
    ]
