"""Presence and the conflated ``user count`` (a unit below the transports, on the real broker)."""

from __future__ import annotations

import pytest

from broadcast.broker import Broker, Subscriber
from broadcast.broker.memory import MemoryBackend, MemoryPresence
from broadcast.events import USER_COUNT
from broadcast.presence import CountAnnouncer, Presence
from broadcast.supervisor import Supervisor
from tests.support import until


async def started_broker() -> Broker:
    broker = Broker(MemoryBackend())
    await broker.start(Supervisor())
    return broker


def counts(subscriber: Subscriber) -> list[int]:
    announced = [e.data for e in subscriber.backlog if e.name == USER_COUNT]
    subscriber.backlog.clear()
    return announced


async def test_leading_edge_then_one_trailing_announcement() -> None:
    announced: list[int] = []
    current = [1]
    announcer = CountAnnouncer(lambda: 0.05, lambda: announced.append(current[0]))
    assert announcer.changed() is True, "a change after a quiet period goes out at once"
    assert announced == [1]
    for value in range(2, 50):
        current[0] = value
        assert announcer.changed() is False
    assert announced == [1], "changes within the window wait"
    await until(lambda: len(announced) == 2, 5, "the trailing announcement")
    assert announced == [1, 49], "the trailing announcement carries the latest number"
    announcer.close()


async def test_window_zero_announces_every_change() -> None:
    announced: list[int] = []
    announcer = CountAnnouncer(lambda: 0, lambda: announced.append(len(announced)))
    for _ in range(5):
        assert announcer.changed() is True
    assert announced == [0, 1, 2, 3, 4]


async def test_presence_ends_every_burst_on_the_exact_count() -> None:
    broker = await started_broker()
    watcher = broker.subscribe(10_000)
    presence = Presence(broker, MemoryPresence(), 0.02)
    for _ in range(300):
        presence.join("socketio")
    for _ in range(120):
        presence.leave("socketio")
    presence.join("sse")
    await until(lambda: bool(watcher.backlog) and watcher.backlog[-1].data == 181, 5, "181")
    announced = counts(watcher)
    assert announced[0] == 1
    assert len(announced) < 10
    assert presence.user_count == 181
    assert presence.connections == {"socketio": 180, "sse": 1}
    await presence.stop()
    await broker.stop()


async def test_a_count_that_changed_back_is_still_announced() -> None:
    broker = await started_broker()
    watcher = broker.subscribe(100)
    presence = Presence(broker, MemoryPresence(), 0.02)
    presence.join("sse")  # leading edge: 1
    presence.join("sse")  # within the window: 2 (the newcomer is told 2 by its transport) ...
    presence.leave("sse")  # ... and back to 1: whoever holds 2 must hear 1
    await until(lambda: len(watcher.backlog) == 2, 5, "the trailing announcement")
    assert counts(watcher) == [1, 1]
    await presence.stop()
    await broker.stop()


async def test_the_window_widens_with_the_audience() -> None:
    broker = await started_broker()
    presence = Presence(broker, MemoryPresence(), 0.05, max_frames_per_second=1000)
    assert presence._window() == 0.05
    for _ in range(500):
        presence.join("sse")
    assert presence._window() == 0.5, "500 clients at 1000 frames/s: one count every 0.5 s"
    assert Presence(broker, MemoryPresence(), 0, 1000)._window() == 0, "0 still means every change"
    await presence.stop()
    await broker.stop()


def test_leave_without_join_is_a_bug() -> None:
    presence = Presence(Broker(MemoryBackend()), MemoryPresence(), 0)
    with pytest.raises(RuntimeError, match="leave without join"):
        presence.leave("sse")


async def test_everyone_left_announces_each_named_connection_still_here_then_counts_none() -> None:
    broker = await started_broker()
    watcher = broker.subscribe(10_000)
    presence = Presence(broker, MemoryPresence(), 0)
    presence.join("sse", "ann")
    presence.join("socketio", "ann")  # two tabs
    presence.join("socketio", "bob")
    presence.join("socketio", "cat")
    presence.join("sse")
    presence.leave("socketio", "cat")
    assert await broker.flush(5) == 0, "the joins and the leave went out"
    watcher.backlog.clear()

    assert presence.everyone_left() == 3
    assert presence.local_users == 0
    assert await broker.flush(5) == 0
    leaves = [e.data for e in watcher.backlog if e.name == "user"]
    assert sorted(d["username"] for d in leaves) == ["ann", "ann", "bob"]
    assert all(d == {**d, "connected": False, "currentUsers": 0} for d in leaves)
    presence.leave("sse", "ann")  # a connection that ended the usual way after all: counted
    assert presence.local_users == 0
    await broker.stop()
