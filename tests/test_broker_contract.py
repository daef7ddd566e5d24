"""The backend contracts, run on every backend: one fixture parametrised over backend names
(as Litestar's channel tests do), on a real redis-server for Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from broadcast.broker import Backend, PresenceBackend, create_backends
from broadcast.events import Event
from broadcast.settings import Settings
from tests.support import RedisServer, until

BACKENDS = ["memory", "redis"]


@dataclass
class Node:
    """One process's view: its backends and what they handed it."""

    backend: Backend
    presence: PresenceBackend
    delivered: list[tuple[str, Event]] = field(default_factory=list)
    remote_totals: list[int] = field(default_factory=list)

    @property
    def remote_total(self) -> int | None:
        return self.remote_totals[-1] if self.remote_totals else None


NodeFactory = Callable[[], "asyncio.Future[Node]"]


@pytest.fixture(params=BACKENDS)
async def make_node(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], object]]:
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis")
        url = redis.url
    else:
        url = "memory://"
    settings = Settings(
        broker_url=url,
        presence_ttl_seconds=1.0,
        presence_heartbeat_seconds=0.2,
        history_size=request.node.get_closest_marker("history_size").args[0]
        if request.node.get_closest_marker("history_size")
        else 1000,
        history_seconds=1.0,
    )
    nodes: list[Node] = []

    async def make() -> Node:
        backend, presence = create_backends(settings)
        node = Node(backend, presence)
        await backend.start(lambda channel, event: node.delivered.append((channel, event)))
        await presence.start(node.remote_totals.append)
        await until(lambda: backend.unavailable_reason is None, 5, "the backend to connect")
        await until(lambda: presence.unavailable_reason is None, 5, "presence to connect")
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.presence.stop()
        await node.backend.stop()


async def test_a_published_event_is_delivered_once_with_its_id(
    make_node: Callable[[], object],
) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    first = await node.backend.publish("global", Event("news", {"n": 1}))
    second = await node.backend.publish("global", Event("news", {"n": 2}))
    await until(lambda: len(node.delivered) == 2, 5, "both events")
    assert [(c, e.name, e.data, e.id) for c, e in node.delivered] == [
        ("global", "news", {"n": 1}, first),
        ("global", "news", {"n": 2}, second),
    ]
    assert int(second) > int(first), "ids order the events"


async def test_channels_are_kept_apart(make_node: Callable[[], object]) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    await node.backend.publish("a", Event("x", 1))
    await node.backend.publish("b", Event("x", 2))
    await until(lambda: len(node.delivered) == 2, 5, "both events")
    assert sorted((c, e.data) for c, e in node.delivered) == [("a", 1), ("b", 2)]


async def test_a_lone_node_hears_no_other(make_node: Callable[[], object]) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    node.presence.local_changed(3)
    # Memory reports nothing (there is no other node); Redis reports 0 others.
    assert node.remote_total in (None, 0)


@pytest.mark.parametrize("make_node", ["redis"], indirect=True)
async def test_every_node_receives_every_event_exactly_once(
    make_node: Callable[[], object],
) -> None:
    one: Node = await make_node()  # type: ignore[misc]
    two: Node = await make_node()  # type: ignore[misc]
    ids = [await one.backend.publish("global", Event("n", i)) for i in range(20)]
    ids += [await two.backend.publish("global", Event("n", i)) for i in range(20, 40)]
    for node in (one, two):
        await until(lambda node=node: len(node.delivered) >= 40, 5, "forty events")  # type: ignore[misc]
        assert [e.id for _, e in node.delivered] == ids, "once each, in one global order"


@pytest.mark.parametrize("make_node", ["redis"], indirect=True)
async def test_nodes_see_each_others_counts_and_a_silent_node_expires(
    make_node: Callable[[], object],
) -> None:
    one: Node = await make_node()  # type: ignore[misc]
    two: Node = await make_node()  # type: ignore[misc]
    one.presence.local_changed(5)
    two.presence.local_changed(7)
    await until(lambda: one.remote_total == 7 and two.remote_total == 5, 5, "both totals")

    three: Node = await make_node()  # type: ignore[misc]
    three.presence.local_changed(1)
    await until(lambda: one.remote_total == 8, 5, "node one to hear of node three")
    await three.presence.stop()  # a clean stop removes its share at once
    await until(lambda: one.remote_total == 7, 1, "node three's share to go")

    # A node that stops refreshing (as if killed) drops out within the TTL (1 s here).
    for task in two.presence._tasks:  # type: ignore[attr-defined]
        task.cancel()
    await until(lambda: one.remote_total == 0, 3, "node two's share to expire")


async def test_history_replays_what_came_after_an_id(make_node: Callable[[], object]) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    ids = [int(await node.backend.publish("global", Event("n", i))) for i in range(5)]
    history = await node.backend.history("global", ids[1])
    assert [e.data for e in history.events] == [2, 3, 4]
    assert [int(e.id or 0) for e in history.events] == ids[2:]
    assert history.complete
    assert history.last_id == ids[-1]
    assert (await node.backend.history("global", ids[-1])).events == []
    assert (await node.backend.history("global", ids[-1])).complete
    assert (await node.backend.history("other", 0)).events == []


@pytest.mark.history_size(3)
async def test_history_is_bounded_and_says_when_events_are_missing(
    make_node: Callable[[], object],
) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    ids = [int(await node.backend.publish("global", Event("n", i))) for i in range(20)]
    history = await node.backend.history("global", ids[0])
    assert not history.complete, "events after the id are no longer held"
    assert [e.data for e in history.events][-3:] == [17, 18, 19]
    assert len(history.events) < 19

    # Events older than the age limit (1 s here) are not replayed either.
    async def aged() -> bool:
        return not (await node.backend.history("global", ids[-2])).events

    deadline = asyncio.get_running_loop().time() + 5
    while not await aged():
        assert asyncio.get_running_loop().time() < deadline, "events never aged out"
        await asyncio.sleep(0.05)  # polling a condition, with a deadline
    assert not (await node.backend.history("global", ids[-2])).complete
