"""The backend contracts, run on every backend: one fixture parametrised over backend names
(as Litestar's channel tests do), on a real redis-server for Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson
import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from broadcast.broker import Backend, PresenceBackend, create_backends
from broadcast.broker.redis import LOG_PREFIX, SEQUENCE_KEY, TOPIC_PREFIX, TOPICS_KEY, RedisBackend
from broadcast.broker.redis_topics import EVENT_CHANNEL_PREFIX
from broadcast.events import Event, EventId, parse_event_id
from broadcast.settings import Settings
from broadcast.supervisor import Supervisor
from tests.support import RedisServer, until

BACKENDS = ["memory", "redis"]


@dataclass
class Node:
    """One process's view: its backends and what they handed it."""

    backend: Backend
    presence: PresenceBackend
    supervisor: Supervisor = field(default_factory=Supervisor)
    """Owns the backends' tasks (cancel them all to play a node killed without a goodbye)."""
    delivered: list[tuple[str, Event]] = field(default_factory=list)
    remote_totals: list[int] = field(default_factory=list)

    @property
    def remote_total(self) -> int | None:
        return self.remote_totals[-1] if self.remote_totals else None


NodeFactory = Callable[[], "asyncio.Future[Node]"]


@contextlib.asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's Redis, to look at or change what the backend keeps there."""
    client = aioredis.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


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
        history_bytes=request.node.get_closest_marker("history_bytes").args[0]
        if request.node.get_closest_marker("history_bytes")
        else 16 * 1024 * 1024,
    )
    nodes: list[Node] = []
    supervisors: list[Supervisor] = []

    async def make() -> Node:
        backend, presence = create_backends(settings)
        node = Node(backend, presence)
        supervisor = node.supervisor
        supervisors.append(supervisor)
        deliver = node.delivered.append
        await backend.start(lambda channel, event: deliver((channel, event)), supervisor)
        await presence.start(node.remote_totals.append, supervisor, lambda channel, count: None)
        await until(lambda: backend.unavailable_reason is None, 5, "the backend to connect")
        await until(lambda: presence.unavailable_reason is None, 5, "presence to connect")
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.presence.stop()
        await node.backend.stop()
    for supervisor in supervisors:
        await supervisor.stop()


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
    one, two = parse_event_id(first), parse_event_id(second)
    assert one is not None, "ids are <epoch>:<offset>"
    assert two is not None, "ids are <epoch>:<offset>"
    assert two == (one.epoch, one.offset + 1), "offsets order the events of one epoch"


async def test_topics_are_kept_apart_and_share_one_sequence(
    make_node: Callable[[], object],
) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    await node.backend.listen("a")
    await node.backend.listen("b")
    ids = [
        parse_event_id(await node.backend.publish(topic, Event("x", n)))
        for n, topic in enumerate(["a", "b", "global", "a"])
    ]
    await until(lambda: len(node.delivered) == 4, 5, "every event")
    assert [(c, e.data) for c, e in node.delivered] == [("a", 0), ("b", 1), ("global", 2), ("a", 3)]
    first = ids[0]
    assert first is not None
    assert ids == [EventId(first.epoch, first.offset + n) for n in range(4)], (
        "one sequence: every publish, whatever its topic, takes the next offset"
    )


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
    await two.supervisor.stop()
    await until(lambda: one.remote_total == 0, 3, "node two's share to expire")


def data(event: Event) -> object:
    """The event's data as JSON would give it (a backend may hand history out pre-encoded)."""
    return orjson.loads(event.json_data)


async def publish(node: Node, data: object, channel: str = "global") -> EventId:
    position = parse_event_id(await node.backend.publish(channel, Event("n", data)))
    assert position is not None
    return position


async def test_history_replays_what_came_after_an_id(make_node: Callable[[], object]) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    ids = [await publish(node, i) for i in range(5)]
    history = await node.backend.history(["global"], ids[1])
    assert [data(e) for e in history.events] == [2, 3, 4]
    assert [e.id for e in history.events] == [str(i) for i in ids[2:]]
    assert history.complete
    assert history.oldest_id == str(ids[0])
    assert (await node.backend.history(["global"], ids[-1])).events == []
    assert (await node.backend.history(["global"], ids[-1])).complete
    other = await node.backend.history(["other"], ids[0])
    assert (other.events, other.complete) == ([], True), "one sequence: nothing missed there"


async def test_a_position_not_of_this_stream_replays_nothing(
    make_node: Callable[[], object],
) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    ids = [await publish(node, i) for i in range(5)]
    another_epoch = "zzzzzzzz" if ids[0].epoch != "zzzzzzzz" else "yyyyyyyy"
    for position in (
        EventId(another_epoch, 1),  # before a restart, or before Redis lost its data
        EventId(ids[0].epoch, ids[-1].offset + 1),  # not given yet
        None,  # not an id at all
    ):
        history = await node.backend.history(["global"], position)
        assert (history.events, history.complete) == ([], False), position
        assert history.oldest_id == str(ids[0]), "the gap notice says what is held"


@pytest.mark.parametrize("make_node", ["redis"], indirect=True)
async def test_redis_losing_its_data_starts_a_new_epoch(
    make_node: Callable[[], object], request: pytest.FixtureRequest
) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    old = [await publish(node, i) for i in range(3)]
    redis: RedisServer = request.getfixturevalue("redis")
    redis.flush()  # as a failover to an empty replica would
    new = [await publish(node, i) for i in range(3, 8)]
    assert new[0].epoch != old[0].epoch
    assert [p.offset for p in new] == [1, 2, 3, 4, 5], "offsets count the new epoch afresh"
    history = await node.backend.history(["global"], old[-1])
    assert (history.events, history.complete) == ([], False), "never the new epoch's events"
    assert history.oldest_id == str(new[0])
    assert [data(e) for e in (await node.backend.history(["global"], new[1])).events] == [5, 6, 7]


async def test_a_new_backend_is_a_new_epoch(make_node: Callable[[], object]) -> None:
    one: Node = await make_node()  # type: ignore[misc]
    first = await publish(one, 0)
    two: Node = await make_node()  # type: ignore[misc]
    second = await publish(two, 1)
    # In-process: a restart loses the stream. Redis: the nodes share one.
    same = isinstance(one.backend, RedisBackend)
    assert (second.epoch == first.epoch) == same
    history = await two.backend.history(["global"], first)
    assert [data(e) for e in history.events] == ([1] if same else [])
    assert history.complete == same


@pytest.mark.history_bytes(10_000)
async def test_history_is_bounded_by_bytes(make_node: Callable[[], object]) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    ids = [await publish(node, {"n": i, "pad": "x" * 2_000}) for i in range(20)]
    history = await node.backend.history(["global"], ids[0])
    assert not history.complete, "the oldest events went to keep within the bound"
    held = [data(e)["n"] for e in history.events]  # type: ignore[index]
    assert 2 <= len(held) <= 5, held
    assert held == list(range(20 - len(held), 20)), "the newest are kept, in order"
    assert history.oldest_id == history.events[0].id
    assert (await node.backend.history(["global"], ids[-len(held) - 1])).complete

    # One event over the bound alone is not kept at all (the bound holds), and says so.
    big = await publish(node, "x" * 20_000)
    after = await node.backend.history(["global"], ids[-1])
    assert (after.events, after.complete, after.oldest_id) == ([], False, None)
    assert (await node.backend.history(["global"], big)).complete
    # and the history takes events again after it
    await publish(node, "small")
    assert [data(e) for e in (await node.backend.history(["global"], big)).events] == ["small"]


@pytest.mark.history_size(3)
async def test_history_is_bounded_and_says_when_events_are_missing(
    make_node: Callable[[], object],
) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    ids = [await publish(node, i) for i in range(20)]
    history = await node.backend.history(["global"], ids[0])
    assert not history.complete, "events after the id are no longer held"
    assert [data(e) for e in history.events] == [17, 18, 19]

    # Events older than the age limit (1 s here) are not replayed either.
    async def aged() -> bool:
        return not (await node.backend.history(["global"], ids[-2])).events

    deadline = asyncio.get_running_loop().time() + 5
    while not await aged():
        assert asyncio.get_running_loop().time() < deadline, "events never aged out"
        await asyncio.sleep(0.05)  # polling a condition, with a deadline
    assert not (await node.backend.history(["global"], ids[-2])).complete


async def test_history_merges_topics_in_offset_order(make_node: Callable[[], object]) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    topics = ["global", "channel:a", "channel:b", "channel:a", "global", "channel:b", "global"]
    ids = [await publish(node, n, topic) for n, topic in enumerate(topics)]
    history = await node.backend.history(["channel:a", "global", "channel:a"], ids[0])
    assert [data(e) for e in history.events] == [1, 3, 4, 6], "in offset order, each once"
    assert [e.id for e in history.events] == [str(ids[n]) for n in (1, 3, 4, 6)]
    assert [e.channel for e in history.events] == ["a", "a", None, None]
    assert history.complete
    assert history.oldest_id == str(ids[0])
    assert (await node.backend.history(["channel:b"], ids[0])).oldest_id == str(ids[2])
    every = await node.backend.history(["global", "channel:a", "channel:b"], ids[2])
    assert [data(e) for e in every.events] == [3, 4, 5, 6]


@pytest.mark.history_size(3)
async def test_a_busy_topic_does_not_evict_a_quiet_ones_events(
    make_node: Callable[[], object],
) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    start = await publish(node, "start")
    quiet = await publish(node, "quiet", "channel:quiet")
    busy = [await publish(node, n, "channel:busy") for n in range(20)]
    history = await node.backend.history(["channel:quiet"], start)
    assert [data(e) for e in history.events] == ["quiet"], "kept: the busy topic has its own"
    assert history.complete
    both = await node.backend.history(["channel:quiet", "channel:busy"], start)
    assert [data(e) for e in both.events] == ["quiet", 17, 18, 19]
    assert not both.complete, "the busy topic evicted some after that position"
    assert both.oldest_id == str(quiet)
    # Complete again from the highest offset the busy topic evicted on.
    assert (await node.backend.history(["channel:quiet", "channel:busy"], busy[16])).complete
    assert not (await node.backend.history(["channel:busy"], busy[15])).complete


async def test_a_quiet_topics_aged_events_count_as_missing(
    make_node: Callable[[], object],
) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    start = await publish(node, "start")
    await publish(node, "quiet", "channel:quiet")

    async def aged() -> bool:
        return not (await node.backend.history(["channel:quiet"], start)).events

    deadline = asyncio.get_running_loop().time() + 5
    while not await aged():  # the age limit is 1 s here
        assert asyncio.get_running_loop().time() < deadline, "events never aged out"
        await asyncio.sleep(0.05)  # polling a condition, with a deadline
    later = await publish(node, "later")  # in process: forgets the quiet topic's history
    history = await node.backend.history(["channel:quiet", "global"], start)
    assert [data(e) for e in history.events] == ["later"]
    assert not history.complete, "the quiet topic's event is missing"
    assert history.oldest_id == str(later)
    assert (await node.backend.history(["channel:quiet", "channel:new"], later)).complete


@pytest.mark.parametrize("make_node", ["redis"], indirect=True)
async def test_a_topics_stream_expires_and_its_loss_is_seen(
    make_node: Callable[[], object], request: pytest.FixtureRequest
) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    start = await publish(node, "start")
    lost = [await publish(node, n, "channel:a") for n in range(2)]
    redis: RedisServer = request.getfixturevalue("redis")
    async with redis_client(redis.url) as client:
        # Set to expire a little after its events are too old to replay (1 s here).
        assert 1000 < await client.pttl(LOG_PREFIX + "channel:a") <= 1000 + 5000
        await client.delete(LOG_PREFIX + "channel:a")  # as its expiry would
    history = await node.backend.history(["channel:a", "global"], start)
    assert (history.events, history.complete) == ([], False), "its newest event went"
    assert (await node.backend.history(["channel:a"], lost[-1])).complete
    after = await publish(node, "after", "channel:a")
    history = await node.backend.history(["channel:a"], start)
    assert [data(e) for e in history.events] == ["after"]
    assert not history.complete, "what the stream held before is missing"
    assert history.oldest_id == str(after)
    assert (await node.backend.history(["channel:a"], lost[-1])).complete


@pytest.mark.parametrize("make_node", ["redis"], indirect=True)
async def test_a_quiet_topics_bookkeeping_is_forgotten_and_its_loss_is_seen(
    make_node: Callable[[], object], request: pytest.FixtureRequest
) -> None:
    """Redis keeps nothing of a quiet topic for ever: a publish forgets the topics quiet for
    longer than their streams live; a resume from before the forgotten events is told it
    missed something, one from after them is not, and the topic when it comes back starts with
    them as evicted."""
    node: Node = await make_node()  # type: ignore[misc]
    start = await publish(node, "start")
    quiet = [await publish(node, n, "channel:quiet") for n in range(2)]
    redis: RedisServer = request.getfixturevalue("redis")
    async with redis_client(redis.url) as client:
        assert await client.exists(TOPIC_PREFIX + "channel:quiet")
        await client.zadd(TOPICS_KEY, {"channel:quiet": 0})  # as a long quiet would
        later = await publish(node, "later", "channel:other")
        assert not await client.exists(TOPIC_PREFIX + "channel:quiet", LOG_PREFIX + "channel:quiet")
        assert await client.zscore(TOPICS_KEY, "channel:quiet") is None
        assert await client.hget(SEQUENCE_KEY, "forgotten") == str(quiet[-1].offset).encode()
        assert await client.exists(TOPIC_PREFIX + "channel:other"), "the busy one is kept"
    history = await node.backend.history(["channel:quiet", "global"], start)
    assert (history.events, history.complete) == ([], False), "its events went with it"
    assert (await node.backend.history(["channel:quiet", "global"], quiet[-1])).complete
    assert (await node.backend.history(["channel:quiet", "channel:other"], later)).complete
    back = await publish(node, "back", "channel:quiet")
    history = await node.backend.history(["channel:quiet"], start)
    assert [data(e) for e in history.events] == ["back"]
    assert not history.complete, "what it had before it was forgotten is missing"
    assert history.oldest_id == str(back)
    assert (await node.backend.history(["channel:quiet"], quiet[-1])).complete


@pytest.mark.parametrize("make_node", ["redis"], indirect=True)
async def test_losing_the_sequence_wipes_a_topics_older_history(
    make_node: Callable[[], object], request: pytest.FixtureRequest
) -> None:
    node: Node = await make_node()  # type: ignore[misc]
    old = [await publish(node, n, "channel:a") for n in range(3)]
    redis: RedisServer = request.getfixturevalue("redis")
    async with redis_client(redis.url) as client:
        await client.delete(SEQUENCE_KEY)  # as an eviction of that key alone would
    new = await publish(node, "new", "global")
    assert new.epoch != old[0].epoch
    assert new.offset == 1
    history = await node.backend.history(["channel:a", "global"], EventId(new.epoch, 0))
    assert [data(e) for e in history.events] == ["new"], "never the old epoch's events"
    assert history.complete
    assert history.oldest_id == str(new)
    again = await publish(node, "again", "channel:a")  # wipes its old history
    history = await node.backend.history(["channel:a"], EventId(new.epoch, 0))
    assert [data(e) for e in history.events] == ["again"]
    assert history.complete
    assert history.oldest_id == str(again)
    assert (await node.backend.history(["channel:a"], old[0])).events == []


@pytest.mark.parametrize("make_node", ["redis"], indirect=True)
async def test_a_node_receives_only_the_topics_it_listens_to(
    make_node: Callable[[], object], request: pytest.FixtureRequest
) -> None:
    one: Node = await make_node()  # type: ignore[misc]
    two: Node = await make_node()  # type: ignore[misc]
    await one.backend.listen("channel:a")
    # Published right after ``listen`` returned, from another node: it arrives.
    await two.backend.publish("channel:a", Event("n", 1))
    await two.backend.publish("channel:b", Event("n", 2))
    await two.backend.publish("global", Event("n", 3))
    # One connection delivers in order: once the last is in, "channel:b"'s would be too.
    await until(lambda: len(one.delivered) >= 2, 5, "the events of a and global")
    assert [(c, e.data) for c, e in one.delivered] == [("channel:a", 1), ("global", 3)]
    assert [c for c, _ in two.delivered] == ["global"], "two listens to everyone's only"

    await one.backend.unlisten("channel:a")
    await one.backend.unlisten("global")  # everyone's events are always listened to
    # (unlisten does not wait: events already under way may still arrive)
    url = request.getfixturevalue("redis").url
    expected = {"channel:a": 0, "global": 2}
    await until(lambda: subscribers(url, expected) == expected, 5, "the unsubscription")
    await two.backend.publish("channel:a", Event("n", 4))
    await two.backend.publish("global", Event("n", 5))
    await until(lambda: len(one.delivered) >= 3, 5, "the event to everyone")
    assert [e.data for _, e in one.delivered] == [1, 3, 5]


async def test_listening_to_100_000_topics(redis: RedisServer) -> None:
    one, two = RedisBackend(redis.url, 0.2), RedisBackend(redis.url, 0.2)
    async with started(one) as delivered, started(two):
        # One SUBSCRIBE for them all, but 100,000 confirmations to read (about 1 s with
        # hiredis, a few without): how fast is the benchmark's to say (ch-memory), not a test's.
        await asyncio.gather(*(one.listen(f"channel:{n}") for n in range(100_000)))
        await two.publish("channel:99999", Event("n", "last"))
        await until(lambda: len(delivered) == 1, 5, "the event of the last topic")
        await one.unlisten("channel:99999")
        gone = {"channel:99999": 0, "channel:0": 1}
        await until(lambda: subscribers(redis.url, gone) == gone, 10, "the unsubscription")
        await two.publish("channel:99999", Event("n", "unheard"))
        await two.publish("channel:0", Event("n", "first"))
        await until(lambda: len(delivered) == 2, 5, "the event of the first topic")
        assert [e.data for _, e in delivered] == ["last", "first"]


async def test_listening_survives_reconnections(own_redis: RedisServer) -> None:
    one, two = RedisBackend(own_redis.url, 0.2), RedisBackend(own_redis.url, 0.2)
    async with started(one) as delivered, started(two):
        await one.listen("channel:before")
        own_redis.stop()
        await until(lambda: one.unavailable_reason is not None, 15, "the outage to be seen")
        # While disconnected, listen returns at once: the reconnection subscribes.
        await asyncio.wait_for(one.listen("channel:during"), 1)
        own_redis.start()
        # Healthy again only once every listened topic is subscribed again.
        await until(lambda: one.unavailable_reason is None, 10, "one to reconnect")
        await until(lambda: two.unavailable_reason is None, 10, "two to reconnect")
        for topic in ("channel:before", "channel:during", "channel:unheard", "global"):
            await two.publish(topic, Event("n", topic))
        await until(lambda: len(delivered) == 3, 5, "the listened topics' events")
        assert [c for c, _ in delivered] == ["channel:before", "channel:during", "global"]

        # A subscription cut by Redis (CLIENT KILL) comes back with them too.
        async with redis_client(own_redis.url) as client:
            await client.client_kill_filter(_type="pubsub")
        await one.listen("channel:after")
        await until(lambda: one.unavailable_reason is None, 10, "one to reconnect")
        expected = {"channel:before": 1, "channel:after": 1, "global": 2}
        await until(lambda: subscribers(own_redis.url, expected) == expected, 10, "subscriptions")
        for topic in ("channel:before", "channel:after", "global"):
            await two.publish(topic, Event("n", topic))
        await until(lambda: len(delivered) == 6, 5, "the listened topics' events")
        assert [c for c, _ in delivered[3:]] == ["channel:before", "channel:after", "global"]


@contextlib.asynccontextmanager
async def started(backend: RedisBackend) -> AsyncIterator[list[tuple[str, Event]]]:
    """``backend`` running (connected), and the list of what it delivers."""
    delivered: list[tuple[str, Event]] = []
    supervisor = Supervisor()
    await backend.start(lambda topic, event: delivered.append((topic, event)), supervisor)
    try:
        await until(lambda: backend.unavailable_reason is None, 5, "the backend to connect")
        yield delivered
    finally:
        await backend.stop()
        await supervisor.stop()


def subscribers(url: str, topics: dict[str, int]) -> dict[str, int]:
    """How many connections subscribe to each of ``topics``' channels (``PUBSUB NUMSUB``)."""
    with sync_redis.Redis.from_url(url) as client:
        counts = client.pubsub_numsub(*(EVENT_CHANNEL_PREFIX + topic for topic in topics))
    return {topic: count for topic, (_, count) in zip(topics, counts, strict=True)}
