"""Channel presence in the presence backends: every node's per-channel subscribers and named
users, summed over the live nodes (on a real redis-server), and the in-process variant."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from broadcast.broker import PresenceBackend, create_backends
from broadcast.broker.memory import MemoryPresence
from broadcast.broker.redis_channels import FLUSH_SECONDS
from broadcast.broker.redis_channels_lua import CHANNELS_PREFIX
from broadcast.settings import Settings
from broadcast.supervisor import Supervisor
from tests.support import RedisServer, until


@dataclass
class Node:
    presence: PresenceBackend
    supervisor: Supervisor = field(default_factory=Supervisor)
    """Owns the presence loops (stop it to play a node that stops heartbeating)."""
    remote: dict[str, int] = field(default_factory=dict)
    """The last remote count reported per channel."""
    reports: list[tuple[str, int]] = field(default_factory=list)

    def report(self, channel: str, count: int) -> None:
        self.remote[channel] = count
        self.reports.append((channel, count))

    @property
    def node_id(self) -> str:
        node_id: str = self.presence.node_id  # type: ignore[attr-defined]
        return node_id


MakeNode = Callable[..., Awaitable[Node]]


@contextlib.asynccontextmanager
async def nodes_on(url: str) -> AsyncIterator[MakeNode]:
    """Makes nodes on ``url``; each is stopped cleanly at the end."""
    nodes: list[Node] = []

    async def make(ttl: float = 1.0, heartbeat: float = 0.2) -> Node:
        settings = Settings(
            broker_url=url,
            presence_ttl_seconds=ttl,
            presence_heartbeat_seconds=heartbeat,
            redis_reconnect_max_seconds=0.5,
        )
        _, presence = create_backends(settings)
        node = Node(presence)
        await presence.start(lambda total: None, node.supervisor, node.report)
        await until(lambda: presence.unavailable_reason is None, 5, "presence to connect")
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        for node in nodes:
            await node.presence.stop()
            await node.supervisor.stop()


@pytest.fixture
async def make_node(redis: RedisServer) -> AsyncIterator[MakeNode]:
    async with nodes_on(redis.url) as make:
        yield make


@pytest.fixture
async def client(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis.url)
    yield connection
    await connection.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """``until`` for a condition that must ask Redis."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


async def test_counts_are_summed_and_watchers_told_promptly(
    make_node: MakeNode, client: aioredis.Redis
) -> None:
    # A long heartbeat: whatever arrives within the deadline came by notification.
    one = await make_node(ttl=30, heartbeat=10)
    two = await make_node(ttl=30, heartbeat=10)
    one.presence.watch("post:1")
    two.presence.watch("post:1")
    await eventually(lambda: _watchers(client, "post:1", want=[2]), 2, "both watching")
    one.presence.channel_changed("post:1", 3, {})
    two.presence.channel_changed("post:1", 4, {"alice": 1})
    await until(lambda: one.remote.get("post:1") == 4, 1, "node one to hear of node two")
    await until(lambda: two.remote.get("post:1") == 3, 1, "node two to hear of node one")
    for node in (one, two):
        assert await node.presence.channel("post:1") == (7, ["alice"])

    started = time.monotonic()
    two.presence.channel_changed("post:1", 9, {"alice": 1})
    await until(lambda: one.remote["post:1"] == 9, 1, "the change")
    assert time.monotonic() - started < 0.5, "told at once, not at the next heartbeat (10 s)"
    assert ("post:1", 0) not in one.reports, "a count that never changed is not reported"


async def test_only_watchers_hear_of_a_channel(make_node: MakeNode, client: aioredis.Redis) -> None:
    one = await make_node()
    two = await make_node()
    heard: list[tuple[str, set[str]]] = []  # (node, channels) of every notification sent
    async with client.pubsub() as spy:
        await spy.subscribe(*(CHANNELS_PREFIX + "notify:" + n.node_id for n in (one, two)))
        listening = asyncio.create_task(
            _spy_on(spy, {one.node_id: "one", two.node_id: "two"}, heard)
        )
        one.presence.watch("a")
        two.presence.watch("a")
        two.presence.watch("b")
        await eventually(lambda: _watchers(client, "a", "b", "c", want=[2, 1, 0]), 2, "watches")
        one.presence.channel_changed("b", 2, {})
        one.presence.channel_changed("c", 5, {})
        two.presence.channel_changed("a", 1, {})
        await until(lambda: two.remote.get("b") == 2, 1, "node two to hear of b")
        await until(lambda: one.remote.get("a") == 1, 1, "node one to hear of a")
        assert "b" not in one.remote, "unwatched: never reported"
        assert "c" not in two.remote, "unwatched: never reported"
        # One message each, to the one node that watches what changed, never to its author.
        await until(lambda: len(heard) >= 2, 1, "the spy to hear both messages")
        assert sorted(heard) == [("one", {"a"}), ("two", {"b"})]

        two.presence.unwatch("b")
        await eventually(lambda: _watchers(client, "a", "b", want=[2, 0]), 2, "unwatched")
        one.presence.channel_changed("b", 3, {})
        await eventually(lambda: _total(two, "b", 3), 1, "the total, asked")
        assert two.remote["b"] == 2, "no longer reported once unwatched"
        assert len(heard) == 2, "nobody watches b now: nobody is told"
        listening.cancel()

    two.presence.watch("b")  # watched again: starts from 0, and is told the count at once
    await until(lambda: two.reports[-1] == ("b", 3), 1, "the count on watching again")


async def _spy_on(spy: PubSub, names: dict[str, str], heard: list[tuple[str, set[str]]]) -> None:
    prefix = len(CHANNELS_PREFIX + "notify:")
    async for message in spy.listen():
        if message["type"] == "message":
            node = names[message["channel"].decode()[prefix:]]
            heard.append((node, set(message["data"].decode().split("\n"))))


async def _watchers(client: aioredis.Redis, *channels: str, want: list[int]) -> bool:
    """Whether ``channels`` have ``want`` watching nodes each, as Redis knows them."""
    counts = [await client.scard(CHANNELS_PREFIX + "watchers:" + channel) for channel in channels]
    return counts == want


async def _total(node: Node, channel: str, count: int) -> bool:
    return (await node.presence.channel(channel))[0] == count


async def test_named_users_are_listed_once_sorted(make_node: MakeNode) -> None:
    one = await make_node()
    two = await make_node()
    one.presence.channel_changed("room", 4, {"zoe": 1, "bob": 2})
    two.presence.channel_changed("room", 3, {"bob": 1, "amy": 1, "gone": 0})
    await eventually(lambda: _total(one, "room", 7), 2, "both shares")
    assert await one.presence.channel("room") == (7, ["amy", "bob", "zoe"])
    # An anonymous join changes the count, not the names; a named leave changes both.
    one.presence.channel_changed("room", 6, {"zoe": 1, "bob": 2})
    two.presence.channel_changed("room", 2, {"amy": 1})
    await eventually(lambda: _total(one, "room", 8), 2, "both changes")  # (only both make 8)
    assert await two.presence.channel("room") == (8, ["amy", "bob", "zoe"])
    one.presence.channel_changed("room", 1, {})
    await eventually(lambda: _total(one, "room", 3), 2, "node one's named users to leave")
    assert await two.presence.channel("room") == (3, ["amy"])
    assert await two.presence.channel("nobody-here") == (0, [])


async def test_channels_are_listed_by_prefix_in_pages(make_node: MakeNode) -> None:
    one = await make_node()
    two = await make_node()
    for number in range(12):
        one.presence.channel_changed(f"post:{number:02}", 1, {})
        two.presence.channel_changed(f"post:{number:02}", number, {})
    for name in ("news", "posters", "a/b=c+d@e.f", "post-it"):
        two.presence.channel_changed(name, 1, {})
    await eventually(lambda: _listed(one, "", 16), 2, "every channel with a share to be listed")
    first = await one.presence.channels("post:", None, 5)
    assert first == [(f"post:{n:02}", n + 1) for n in range(5)]
    second = await one.presence.channels("post:", first[-1][0], 5)
    assert second == [(f"post:{n:02}", n + 1) for n in range(5, 10)]
    third = await one.presence.channels("post:", second[-1][0], 5)
    assert third == [("post:10", 11), ("post:11", 12)]
    assert await one.presence.channels("post:", third[-1][0], 5) == []
    everything = await two.presence.channels("", None, 100)
    names = [name for name, _ in everything]
    assert names == sorted(names)
    assert len(names) == 16
    assert names[0] == "a/b=c+d@e.f"
    assert await two.presence.channels("post", "post:05", 3) == [
        ("post:06", 7),
        ("post:07", 8),
        ("post:08", 9),
    ]
    assert await two.presence.channels("zzz", None, 10) == []

    # A channel with no subscriber left on any node is no longer active.
    one.presence.channel_changed("post:00", 0, {})
    two.presence.channel_changed("post:00", 0, {})
    two.presence.channel_changed("news", 0, {})
    await eventually(lambda: _listed(one, "", 14), 2, "the emptied channels to go")
    assert (await one.presence.channels("", None, 100))[0] == ("a/b=c+d@e.f", 1)
    assert await one.presence.channel("post:00") == (0, [])


async def _listed(node: Node, prefix: str, count: int) -> bool:
    return len(await node.presence.channels(prefix, None, 1000)) == count


async def test_a_node_that_stops_cleanly_vanishes_at_once(
    make_node: MakeNode, client: aioredis.Redis
) -> None:
    one = await make_node(ttl=30, heartbeat=10)
    two = await make_node(ttl=30, heartbeat=10)
    one.presence.watch("room")
    await eventually(lambda: _watchers(client, "room", want=[1]), 2, "node one watching")
    two.presence.channel_changed("room", 4, {"amy": 1})
    two.presence.channel_changed("only-two", 2, {})
    await until(lambda: one.remote.get("room") == 4, 1, "node two's share")
    await two.presence.stop()
    await until(lambda: one.remote["room"] == 0, 1, "node two's share to go at once (TTL 30 s)")
    assert await one.presence.channel("room") == (0, [])
    assert await one.presence.channels("", None, 10) == []
    leftovers = {key.decode() async for key in client.scan_iter(CHANNELS_PREFIX + "*")}
    assert leftovers == {  # nothing of node two's; node one still watches room
        CHANNELS_PREFIX + "alive:" + one.node_id,
        CHANNELS_PREFIX + "nodes",
        CHANNELS_PREFIX + "watching:" + one.node_id,
        CHANNELS_PREFIX + "watchers:room",
    }
    assert await client.smembers(CHANNELS_PREFIX + "nodes") == {one.node_id.encode()}


async def test_a_silent_node_expires_and_its_shares_vanish(
    make_node: MakeNode, client: aioredis.Redis
) -> None:
    one = await make_node()  # TTL 1 s, heartbeat 0.2 s
    two = await make_node()
    one.presence.watch("room")
    one.presence.channel_changed("room", 1, {"bob": 1})
    two.presence.channel_changed("room", 4, {"amy": 1})
    two.presence.channel_changed("only-two", 2, {})
    await until(lambda: one.remote.get("room") == 4, 2, "node two's share")
    assert await one.presence.channels("", None, 10) == [("only-two", 2), ("room", 5)]

    await two.supervisor.stop()  # no goodbye: its heartbeat stops, as if it were killed
    await until(lambda: one.remote["room"] == 0, 3, "node two's share to expire")
    assert await one.presence.channel("room") == (1, ["bob"])
    assert await one.presence.channels("", None, 10) == [("room", 1)]
    assert not await client.exists(CHANNELS_PREFIX + "node:" + two.node_id)
    assert not await client.sismember(CHANNELS_PREFIX + "nodes", two.node_id)


async def test_a_node_taken_for_dead_shares_again(
    make_node: MakeNode, client: aioredis.Redis
) -> None:
    one = await make_node()
    two = await make_node()
    one.presence.watch("room")
    two.presence.channel_changed("room", 4, {"amy": 1})
    await until(lambda: one.remote.get("room") == 4, 2, "node two's share")
    # As if node two had stalled past its TTL: node one removes its shares...
    await client.delete(CHANNELS_PREFIX + "alive:" + two.node_id)
    # ...and node two, finding itself forgotten at its next heartbeat, writes them all again.
    await eventually(lambda: _dropped_then_back(client, two.node_id), 3, "node two to share again")
    await until(lambda: one.remote["room"] == 4, 2, "node one to count node two again")
    assert await one.presence.channel("room") == (4, ["amy"])


async def _dropped_then_back(client: aioredis.Redis, node_id: str) -> bool:
    alive = await client.exists(CHANNELS_PREFIX + "alive:" + node_id)
    member = await client.sismember(CHANNELS_PREFIX + "node:" + node_id, "room")
    return bool(alive and member)


async def test_a_storm_costs_few_round_trips_and_ends_exact(
    make_node: MakeNode, client: aioredis.Redis
) -> None:
    one = await make_node(ttl=30, heartbeat=10)
    two = await make_node(ttl=30, heartbeat=10)
    channels = [f"room-{number}" for number in range(500)]
    for channel in channels:
        two.presence.watch(channel)
    await eventually(
        lambda: _watchers(client, channels[0], channels[-1], want=[1, 1]), 2, "watching"
    )
    await client.config_resetstat()
    # 5,000 joins over 500 channels, ten at a time every millisecond, as connections arrive.
    counts = dict.fromkeys(channels, 0)
    started = time.monotonic()
    for join in range(5000):
        channel = channels[(join * 7) % 500]
        counts[channel] += 1
        one.presence.channel_changed(channel, counts[channel], {f"user-{join % 3}": 1})
        if join % 10 == 0:
            await asyncio.sleep(0.001)
    await until(lambda: two.remote == counts, 5, "node two on every exact count")
    passes = (time.monotonic() - started) / FLUSH_SECONDS + 5
    stats = await client.info("commandstats")
    scripts = stats.get("cmdstat_evalsha", {}).get("calls", 0)
    scripts += stats.get("cmdstat_eval", {}).get("calls", 0)
    # At most a write (node one) and a read (node two) per pass, of all that changed meanwhile.
    assert scripts <= 2 * passes, f"{scripts} Lua calls for 5,000 changes: not batched"
    page = await two.presence.channels("room-", None, 1000)
    assert sorted(page) == sorted(counts.items())


async def test_shares_come_back_after_redis_loses_them(own_redis: RedisServer) -> None:
    async with nodes_on(own_redis.url) as make_node:
        one = await make_node()
        two = await make_node()
        one.presence.watch("room")
        one.presence.channel_changed("room", 1, {"bob": 1})
        two.presence.channel_changed("room", 4, {"amy": 1})
        await until(lambda: one.remote.get("room") == 4, 2, "node two's share")

        own_redis.stop()
        await until(lambda: one.presence.unavailable_reason is not None, 15, "the outage seen")
        two.presence.channel_changed("room", 5, {"amy": 1, "cy": 1})  # a change meanwhile
        own_redis.start()  # empty: it keeps nothing on disk
        for node in (one, two):
            await until(lambda n=node: n.presence.unavailable_reason is None, 15, "reconnected")  # type: ignore[misc]
        await until(lambda: one.remote["room"] == 5, 5, "node two's share, shared again")
        await eventually(lambda: _total(one, "room", 6), 5, "both shares, shared again")
        assert await two.presence.channel("room") == (6, ["amy", "bob", "cy"])


async def test_shares_come_back_after_redis_is_emptied(
    make_node: MakeNode, redis: RedisServer
) -> None:
    one = await make_node()
    two = await make_node()
    one.presence.channel_changed("room", 1, {"bob": 1})
    two.presence.channel_changed("room", 4, {"amy": 1})
    await eventually(lambda: _total(one, "room", 5), 2, "both shares")
    redis.flush()  # as a failover to an empty replica would, with no disconnection
    # Each node finds its TTL key gone at its next heartbeat (0.2 s) and shares all again.
    await eventually(lambda: _total(one, "room", 5), 2, "both shares again")
    assert await one.presence.channels("", None, 10) == [("room", 5)]
    assert await two.presence.channel("room") == (5, ["amy", "bob"])


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_one_node_lists_its_own_channels(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis").url if backend == "redis" else "memory://"
    async with nodes_on(url) as make_node:
        node = await make_node()
        presence = node.presence
        presence.watch("post:1")
        presence.channel_changed("post:1", 3, {"bob": 2, "amy": 1, "gone": 0})
        presence.channel_changed("post:2", 1, {})
        presence.channel_changed("news", 2, {})
        presence.channel_changed("post:3", 1, {})
        await eventually(lambda: _listed(node, "", 4), 2, "the channels")
        if backend == "memory":
            assert isinstance(presence, MemoryPresence)
        assert await presence.channel("post:1") == (3, ["amy", "bob"])
        assert await presence.channel("nobody") == (0, [])
        assert await presence.channels("", None, 10) == [
            ("news", 2),
            ("post:1", 3),
            ("post:2", 1),
            ("post:3", 1),
        ]
        assert await presence.channels("post:", None, 2) == [("post:1", 3), ("post:2", 1)]
        assert await presence.channels("post:", "post:2", 2) == [("post:3", 1)]
        assert await presence.channels("post:", "a", 1) == [("post:1", 3)]
        assert await presence.channels("p", "zzz", 5) == []
        assert await presence.channels("", None, 0) == []
        presence.channel_changed("post:2", 0, {})
        presence.channel_changed("news", 0, {})
        await eventually(lambda: _listed(node, "", 2), 2, "the emptied channels to go")
        assert await presence.channels("", None, 10) == [("post:1", 3), ("post:3", 1)]
        assert await presence.channel("news") == (0, [])
        assert node.reports == [], "no other node: a watched channel's remote count stays 0"
