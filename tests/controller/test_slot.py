from __future__ import annotations

import asyncio

import pytest

from controller.slot import LatestValue, SlotClosed

pytestmark = pytest.mark.virtual_clock


async def test_latest_is_none_then_newest(virtual_clock):
    slot: LatestValue[int] = LatestValue("x")
    assert slot.latest() is None
    slot.publish(1, source_time=1.0)
    slot.publish(2, source_time=2.0)
    got = slot.latest()
    assert got is not None and (got.value, got.version, got.source_time) == (2, 2, 2.0)
    assert got.publish_time == virtual_clock.time()
    assert slot.replaced_unread == 1


async def test_waiting_reader_gets_the_next_value(virtual_clock):
    slot: LatestValue[str] = LatestValue()
    reader = asyncio.create_task(slot.wait_newer(0))
    await asyncio.sleep(0)
    assert not reader.done()
    slot.publish("a", 0.0)
    assert (await reader).value == "a"


async def test_busy_reader_never_gets_a_stale_value(virtual_clock):
    slot: LatestValue[int] = LatestValue()
    first = slot.publish(1, 0.0)
    for v in range(2, 6):
        slot.publish(v, 0.0)
    # A reader that was busy while four values landed gets the newest at once.
    got = await asyncio.wait_for(slot.wait_newer(first.version), 0.001)
    assert got.value == 5


async def test_many_readers_all_wake_on_one_publish(virtual_clock):
    slot: LatestValue[int] = LatestValue()
    readers = [asyncio.create_task(slot.wait_newer(0)) for _ in range(50)]
    await asyncio.sleep(0)
    slot.publish(7, 0.0)
    results = await asyncio.gather(*readers)
    assert {r.value for r in results} == {7}


async def test_no_value_lost_to_a_reader_that_keeps_waiting(virtual_clock):
    slot: LatestValue[int] = LatestValue()
    seen = []

    async def reader():
        version = 0
        while len(seen) < 20:
            got = await slot.wait_newer(version)
            version = got.version
            seen.append(got.value)

    task = asyncio.create_task(reader())
    for i in range(20):
        await asyncio.sleep(0.01)
        slot.publish(i, 0.0)
    await task
    assert seen == list(range(20))


async def test_cancelling_a_waiter_leaves_the_slot_usable(virtual_clock):
    slot: LatestValue[int] = LatestValue()
    waiter = asyncio.create_task(slot.wait_newer(0))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    other = asyncio.create_task(slot.wait_newer(0))
    slot.publish(1, 0.0)
    assert (await other).value == 1


async def test_close_wakes_waiters_and_keeps_the_last_value(virtual_clock):
    slot: LatestValue[int] = LatestValue()
    slot.publish(1, 0.0)
    waiter = asyncio.create_task(slot.wait_newer(1))
    await asyncio.sleep(0)
    failure = RuntimeError("camera unplugged")
    slot.close(failure)
    with pytest.raises(SlotClosed) as info:
        await waiter
    assert info.value.__cause__ is failure
    assert slot.closed and slot.error is failure
    assert slot.latest().value == 1
    with pytest.raises(SlotClosed):
        slot.publish(2, 0.0)


async def test_age_is_measured_from_the_source_time(virtual_clock):
    slot: LatestValue[int] = LatestValue()
    now = virtual_clock.time()
    got = slot.publish(1, source_time=now - 0.25)
    await asyncio.sleep(0.5)
    assert got.age(virtual_clock.time()) == pytest.approx(0.75)
