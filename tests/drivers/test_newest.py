"""The one newest-value primitive (`drivers.newest`): what the slots, mailboxes and hand-offs rely on.

`tests/controller/test_slot.py` checks the slot as the controller uses it;
these check what the drivers added: reads that do not consume (monitors),
the per-version stream, the shared pump, and publishing from a real thread.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from controller.slot import LatestValue as ControllerSlot
from drivers.newest import LatestValue, SlotClosed, Stamped, ThreadPublisher, pump


def test_the_controller_slot_is_the_same_primitive() -> None:
    assert ControllerSlot is LatestValue


@pytest.mark.virtual_clock
async def test_peek_and_unmarked_waits_do_not_hide_a_drop(virtual_clock) -> None:
    slot: LatestValue[int] = LatestValue("x")
    slot.publish(1, 0.0)
    assert slot.peek() is not None and slot.peek().value == 1
    slot.publish(2, 0.0)  # 1 was only peeked at: replaced unread
    assert slot.replaced_unread == 1
    got = await slot.wait_newer(1, mark_read=False)
    assert got.value == 2
    slot.publish(3, 0.0)  # 2 was only waited for by a monitor: replaced unread too
    assert slot.replaced_unread == 2
    assert slot.latest().value == 3
    slot.publish(4, 0.0)  # 3 was read: not a drop
    assert slot.replaced_unread == 2


@pytest.mark.virtual_clock
async def test_stream_yields_each_newest_once_and_ends_on_close(virtual_clock) -> None:
    slot: LatestValue[int] = LatestValue()
    seen: list[int] = []

    async def reader() -> None:
        async for stamped in slot.stream():
            seen.append(stamped.value)
            await asyncio.sleep(0.05)  # a slow reader

    task = asyncio.create_task(reader())
    for v in range(10):
        slot.publish(v, 0.0)
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    slot.close()
    await asyncio.wait_for(task, 1.0)
    assert seen == sorted(set(seen)), "a value twice or out of order"
    assert seen[-1] == 9, "the newest was missed"
    assert len(seen) < 10, "a slow reader saw every value: that is a queue"


@pytest.mark.virtual_clock
async def test_stream_of_a_failed_slot_raises_the_failure(virtual_clock) -> None:
    slot: LatestValue[int] = LatestValue()
    slot.publish(1, 0.0)
    failure = RuntimeError("the token was refused")
    stream = slot.stream()
    assert (await anext(stream)).value == 1
    slot.close(failure)
    with pytest.raises(RuntimeError) as info:
        await anext(stream)
    assert info.value is failure
    with pytest.raises(SlotClosed):
        await slot.wait_newer(1)


@pytest.mark.virtual_clock
async def test_pump_publishes_each_item_with_its_time(virtual_clock) -> None:
    async def items():
        for i in range(3):
            await asyncio.sleep(0.1)
            yield i

    slot: LatestValue[int] = LatestValue()
    published: list[Stamped[int]] = []
    await pump(items(), slot, lambda i: 10.0 + i, published.append)
    assert [(s.value, s.source_time) for s in published] == [(0, 10.0), (1, 11.0), (2, 12.0)]
    assert slot.latest() is published[-1] and slot.version == 3


# ------------------------------------------------------------------ threads


def _stamp(raw: int) -> tuple[int, float]:
    return raw, float(raw)


async def test_a_thread_publishes_without_ever_waiting_for_the_loop() -> None:
    """While the loop is blocked, a thread publishes 1000 values and finishes;
    the loop then gets one wake-up and the newest value, nothing queued."""
    loop = asyncio.get_running_loop()
    slot: LatestValue[int] = LatestValue("cam")
    publisher = ThreadPublisher(slot, loop, _stamp)
    done = threading.Event()

    def produce() -> None:
        for i in range(1000):
            assert publisher.publish(i)
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    # Block the loop on purpose: the thread must not need it to go on.
    assert done.wait(10.0), "the thread blocked while the loop was busy"
    thread.join()
    got = await asyncio.wait_for(slot.wait_newer(0), 5.0)
    assert got.value == 999 and got.source_time == 999.0
    await asyncio.sleep(0)  # any other pending delivery runs now
    assert slot.published == 1 and publisher.delivered == 1 and publisher.wakeups == 1
    assert publisher.offered == 1000 and publisher.coalesced == 999


async def test_values_from_a_running_thread_arrive_newest_only_and_in_order() -> None:
    loop = asyncio.get_running_loop()
    slot: LatestValue[int] = LatestValue("cam")
    publisher = ThreadPublisher(slot, loop, _stamp)
    n = 20_000

    def produce() -> None:
        for i in range(n):
            publisher.publish(i)

    seen: list[int] = []

    async def read() -> None:
        async for stamped in slot.stream():
            seen.append(stamped.value)
            if stamped.value == n - 1:
                return

    reader = asyncio.create_task(read())
    thread = threading.Thread(target=produce)
    thread.start()
    await asyncio.wait_for(reader, 20.0)
    thread.join()
    assert seen == sorted(set(seen)), "an older value after a newer one"
    assert seen[-1] == n - 1, "the newest value was lost"
    assert publisher.delivered + publisher.coalesced == n
    assert publisher.wakeups <= publisher.delivered + 1  # one wake-up per delivery, at most
    assert slot.published == publisher.delivered


def test_publishing_into_a_closed_loop_says_stop() -> None:
    loop = asyncio.new_event_loop()
    slot: LatestValue[int] = LatestValue()
    publisher = ThreadPublisher(slot, loop, _stamp)
    loop.close()
    assert publisher.publish(1) is False
