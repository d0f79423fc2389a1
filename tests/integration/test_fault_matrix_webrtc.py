"""The fault matrix through the real WebRTC cameras (real time, loopback, aiortc peers).

Two representative rows of `python -m controller.fault_matrix_webrtc`, with
their rules asserted one by one: a WHIP publisher SIGKILLed mid-run (held as
stale features, recovered once a new publisher is admitted) and a local
intruder (refused 403/403/409; the camera keeps its publisher and the
controller never holds for the camera). The same intruder row against a
camera configured to accept the intruder's Host shows that the row reads the
intruder's real answers; the rules themselves are checked to fail on rows
that break them.

Timing is not asserted beyond generous bounds: the machine is shared. Holds
for other reasons than the camera (a full GC pause or a busy machine can
make the fake arm's 100 ms state stale for one tick) are reported in the
assertion messages, not judged here.
"""

from __future__ import annotations

import dataclasses

import pytest

from controller.fault_matrix_webrtc import (
    INTRUDER_EXPECTED,
    ROWS,
    Row,
    Timing,
    judge,
    make_row,
    measure,
    to_markdown,
)
from drivers.webrtc import ice

#: Shorter than the matrix's own phases, so the rows fit a CI budget on 2 cores.
FAST = Timing(warm=1.5, fault=2.0, after=1.0, recover_within=10.0)

ROW = {r.name: r for r in ROWS}

#: Hold reasons that would mean the camera lost its frames.
CAMERA_HOLDS = {"features_stale", "features_clock_invalid", "no_features"}


def _show(row: Row) -> str:
    return to_markdown({"faults": [dataclasses.asdict(row) | {"ok": row.ok}]})


async def _measure(name: str, **options: object) -> Row:
    with ice.host_addresses(["127.0.0.1"]):
        return await measure(ROW[name], FAST, options)


@pytest.mark.peer
async def test_a_killed_publisher_is_held_as_stale_and_a_new_one_recovers() -> None:
    row = await _measure("whip_publisher_killed")
    shown = _show(row)
    assert row.error is None, shown
    assert row.violations == [], shown
    assert row.detected_as[:1] == ["features_stale"], shown
    # detected once the newest features passed max_feature_age (0.5 s): generous bound
    assert row.detection_ms is not None and row.detection_ms < 2000, shown
    # the new publisher was admitted once the dead one's frames were watchdog_s old,
    # and the controller acted again on its frames
    assert row.answers["publishers_admitted"] == 2, shown
    assert row.recovery_ms is not None, shown
    assert row.actions_from_old_frames == 0, shown
    assert row.ok, shown


@pytest.mark.peer
async def test_an_intruder_is_refused_and_the_controller_never_holds_for_the_camera() -> None:
    row = await _measure("whip_intruder")
    shown = _show(row)
    assert row.error is None, shown
    assert row.answers["statuses"] == INTRUDER_EXPECTED, shown
    assert row.answers["kept_publisher"] is True, shown
    assert row.answers["publishers_admitted"] == 1, shown
    assert not CAMERA_HOLDS & set(row.holds_by_reason), shown
    assert row.commands_during > 0, shown
    assert row.violations == [], shown


@pytest.mark.peer
async def test_the_intruder_row_reads_the_real_answers() -> None:
    """A camera that accepts the intruder's Host name answers 409, not 403: the row breaks."""
    row = await _measure("whip_intruder", allowed_hosts=("evil.example",))
    shown = _show(row)
    assert row.error is None, shown
    assert row.answers["statuses"]["foreign Host"] == 409, shown
    assert row.answers["statuses"]["foreign Origin"] == 409, shown
    assert not row.ok and any("intruder answers" in b for b in row.broken), shown


def test_the_rules_fail_on_rows_that_break_them() -> None:
    killed, intruder = ROW["whip_publisher_killed"], ROW["whip_intruder"]
    good_kill = make_row(
        killed,
        detected_as=["features_stale"],
        detection_ms=400.0,
        recovery_ms=2600.0,
        answers={"publishers_admitted": 2},
    )
    assert judge(killed, good_kill) == []
    assert judge(killed, dataclasses.replace(good_kill, detection_ms=None))
    assert judge(killed, dataclasses.replace(good_kill, recovery_ms=None))
    assert judge(killed, dataclasses.replace(good_kill, violations=["stale command"]))
    assert judge(killed, dataclasses.replace(good_kill, actions_from_old_frames=1))
    assert judge(killed, dataclasses.replace(good_kill, error="RuntimeError: x"))

    good_attack = make_row(
        intruder,
        commands_during=20,
        ticks_during=20,
        answers={
            "statuses": dict(INTRUDER_EXPECTED),
            "kept_publisher": True,
            "publishers_admitted": 1,
        },
    )
    assert judge(intruder, good_attack) == []
    held = dataclasses.replace(
        good_attack, holds_during=1, detected_as=["state_stale"], gc_pauses_ms=[120.0]
    )
    assert any("full GC pause" in b for b in judge(intruder, held))
    let_in = dataclasses.replace(
        good_attack,
        answers=good_attack.answers | {"statuses": INTRUDER_EXPECTED | {"foreign Host": 201}},
    )
    assert judge(intruder, let_in)
    taken = dataclasses.replace(
        good_attack, answers=good_attack.answers | {"kept_publisher": False}
    )
    assert judge(intruder, taken)
    assert judge(intruder, dataclasses.replace(good_attack, commands_during=0))
