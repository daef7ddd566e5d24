"""The in-process hub: bounded subscribers and their overflow policies (a unit test)."""

from __future__ import annotations

import asyncio

import pytest

from broadcast.broker import Hub, Overflow, SubscriberClosed
from broadcast.events import Event


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
    hub.close_all("server shutting down")
    with pytest.raises(SubscriberClosed, match="server shutting down"):
        await asyncio.wait_for(waiting, 5)


async def test_unsubscribed_receives_nothing() -> None:
    hub = Hub()
    subscriber = hub.subscribe("c", 10)
    hub.unsubscribe(subscriber)
    hub.dispatch("c", event(1))
    assert not subscriber.backlog
