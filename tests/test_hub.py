"""The in-process hub: bounded subscribers and their overflow policies (a unit test)."""

from __future__ import annotations

import asyncio

import pytest

from broadcast.broker import Hub, Overflow, SubscriberClosed
from broadcast.events import Event
from broadcast.eviction import SHUTTING_DOWN


def event(number: int) -> Event:
    return Event("tick", number)


async def test_every_subscriber_gets_every_event_in_order() -> None:
    hub = Hub()
    first, second = hub.subscribe("c", 10), hub.subscribe("c", 10)
    other_channel = hub.subscribe("other", 10)
    for number in range(3):
        hub.dispatch("c", event(number))
    for subscriber in (first, second):
        assert [e.data for e in await subscriber.next_batch()] == [0, 1, 2]
    assert not other_channel.backlog


async def test_a_waiting_consumer_is_woken() -> None:
    hub = Hub()
    subscriber = hub.subscribe("c", 10)
    waiting = asyncio.create_task(subscriber.next_batch())
    await asyncio.sleep(0)  # let it start waiting: this test is about the wake-up itself
    assert not waiting.done()
    hub.dispatch("c", event(1))
    assert [e.data for e in await asyncio.wait_for(waiting, 5)] == [1]


async def test_a_full_subscriber_is_closed_and_the_others_carry_on() -> None:
    hub = Hub()
    slow, fast = hub.subscribe("c", 3), hub.subscribe("c", 100)
    for number in range(5):
        hub.dispatch("c", event(number))
    with pytest.raises(SubscriberClosed, match="too slow: 3 events"):
        await slow.next_batch()
    assert [e.data for e in await fast.next_batch()] == [0, 1, 2, 3, 4]
    assert not slow.backlog, "a closed subscriber holds no events"


async def test_drop_oldest_keeps_the_newest_events() -> None:
    hub = Hub()
    subscriber = hub.subscribe("c", 3, Overflow.DROP_OLDEST)
    for number in range(5):
        hub.dispatch("c", event(number))
    assert [e.data for e in await subscriber.next_batch()] == [2, 3, 4]
    assert subscriber.dropped == 2


async def test_close_all_wakes_consumers_with_the_reason() -> None:
    hub = Hub()
    subscriber = hub.subscribe("c", 10)
    waiting = asyncio.create_task(subscriber.next_batch())
    await asyncio.sleep(0)
    hub.close_all(SHUTTING_DOWN)
    with pytest.raises(SubscriberClosed, match="server shutting down"):
        await asyncio.wait_for(waiting, 5)


async def test_unsubscribed_receives_nothing() -> None:
    hub = Hub()
    subscriber = hub.subscribe("c", 10)
    hub.unsubscribe(subscriber)
    hub.dispatch("c", event(1))
    assert not subscriber.backlog


def sized(event: Event) -> int:
    return len(str(event.data))


async def test_a_subscriber_over_its_byte_budget_is_closed() -> None:
    hub = Hub()
    slow = hub.subscribe("c", 1000, max_bytes=10, size=sized)
    for data in ("aaaa", "bbbb"):
        hub.dispatch("c", Event("tick", data))
    assert slow.backlog_bytes == 8
    hub.dispatch("c", Event("tick", "ccc"))  # 11 bytes: over
    with pytest.raises(SubscriberClosed, match="over 10 bytes"):
        await slow.next_batch()


async def test_one_event_larger_than_the_budget_still_goes_to_an_idle_subscriber() -> None:
    hub = Hub()
    subscriber = hub.subscribe("c", 1000, max_bytes=10, size=sized)
    hub.dispatch("c", Event("tick", "x" * 50))
    assert [e.data for e in await subscriber.next_batch()] == ["x" * 50]
    assert subscriber.backlog_bytes == 0, "taking the batch frees its budget"
    hub.dispatch("c", Event("tick", "y" * 10))
    assert subscriber.backlog_bytes == 10


async def test_a_drop_oldest_subscriber_keeps_within_its_byte_budget() -> None:
    hub = Hub()
    subscriber = hub.subscribe("c", 1000, Overflow.DROP_OLDEST, max_bytes=10, size=sized)
    for data in ("aaaa", "bbbb", "cccc"):
        hub.dispatch("c", Event("tick", data))
    assert [e.data for e in await subscriber.next_batch()] == ["bbbb", "cccc"]
    assert subscriber.dropped == 1


def test_a_byte_budget_needs_a_size() -> None:
    with pytest.raises(ValueError, match="needs size"):
        Hub().subscribe("c", 10, max_bytes=10)
