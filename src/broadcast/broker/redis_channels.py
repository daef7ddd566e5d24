"""Redis channel presence: every channel's subscribers and named users, shared by every node.

The layout (all under ``broadcast:channels:``), each piece sized for one question:
- ``count:<channel>``, a hash node -> this node's subscribers: a channel's total and a watched
  channel's remote count cost O(nodes), never O(channels). ``users:<channel>``, a hash node ->
  the JSON list of its named users there, read only by ``channel()``.
- ``active``, a sorted set (all scores 0) of the channels with a share on some node: listing is
  ``ZRANGEBYLEX`` from a cursor. A channel is in it exactly while its ``count:`` hash exists.
- ``node:<node>``, the set of channels a node has a share in (what to remove when it goes);
  ``alive:<node>``, a key with the node's TTL, refreshed by its heartbeat; ``nodes``, the nodes.
- ``changed:<channel>``, a pub/sub channel: a write that changes a node's count there publishes
  the node's id on it. A node subscribes only to the channels it watches (its clients use), so a
  change reaches exactly the nodes that care; a quiet or unwatched channel costs nothing.

Deliberate choices:
- Notifications carry no numbers: a watcher marks the channel dirty and re-reads it from Redis
  (batched). A read always sees the truth, and any later write notifies again, so the count is
  exact at rest whatever the order in which messages and replies arrive. A subscription is
  confirmed before the channel is read, so nothing between the two is missed.
- Batched both ways: ``channel_changed`` only notes the channel; one loop writes everything noted
  at most every ``flush_seconds`` (leading edge: the first change after a quiet spell goes at
  once), in one Lua call per 500 channels, and re-reads every dirty watched channel the same
  way. A storm over 500 channels costs each node a few calls per pass, not one per join.
- Every write also refreshes ``alive:`` (``SET ... GET``): finding it gone means this node was
  taken for dead (a stall or an outage longer than the TTL) and maybe removed, so it writes all
  its shares again. Reads count only nodes whose ``alive:`` exists, so a dead node drops out of
  every total at its TTL; at their next heartbeat the live nodes remove its shares (in bounded
  steps) and notify the watchers. ``stop()`` removes this node's shares at once.
- Named users: the node's sorted list is written only when it differs from the last written
  (compared by hash), so anonymous churn never rewrites a big list.
- Scripts compute key names, as the rest of the Redis backend assumes one Redis (not a Redis
  Cluster). ``SET ... GET`` needs Redis 6.2 or later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from broadcast.broker.base import BrokerUnavailable, RemoteChannelCallback
from broadcast.broker.redis_link import (
    CONNECTION_ERRORS,
    PREFIX,
    Backoff,
    Health,
    raise_if_cancelling,
    until_cancelled,
)
from broadcast.supervisor import Supervisor

logger = logging.getLogger(__name__)

CHANNELS_PREFIX = PREFIX + "channels:"
CHANGED_PREFIX = CHANNELS_PREFIX + "changed:"
HELLO_CHANNEL = CHANNELS_PREFIX + "hello"
"""Never published to: keeps the subscription open while no channel is watched."""

FLUSH_SECONDS = 0.01
"""At most one pass (writes, then reads) per this many seconds under a storm."""
BATCH = 500
"""Channels per Lua call (writes, reads), so no call blocks Redis for long."""
DROP_BUDGET = 1000
"""Channels of a departed node removed per Lua call."""
SCAN = 200
"""Active channel names looked at per Lua call when listing."""

_HELPERS = f"""
local P = '{CHANNELS_PREFIX}'
local alive = {{}}
local function live(node)
  local known = alive[node]
  if known == nil then
    known = redis.call('EXISTS', P .. 'alive:' .. node) == 1
    alive[node] = known
  end
  return known
end
-- A channel's subscribers on the live nodes, but for ``leave_out``.
local function total(channel, leave_out)
  local flat = redis.call('HGETALL', P .. 'count:' .. channel)
  local sum = 0
  for i = 1, #flat, 2 do
    if flat[i] ~= leave_out and live(flat[i]) then sum = sum + tonumber(flat[i + 1]) end
  end
  return sum
end
-- Remove up to ``budget`` of ``node``'s shares, telling their watchers; forget the node once it
-- has none left. How many were removed.
local function drop(node, budget)
  local mine = P .. 'node:' .. node
  local channels = redis.call('SPOP', mine, budget)
  for _, channel in ipairs(channels) do
    local counts = P .. 'count:' .. channel
    redis.call('HDEL', counts, node)
    redis.call('HDEL', P .. 'users:' .. channel, node)
    if redis.call('EXISTS', counts) == 0 then redis.call('ZREM', P .. 'active', channel) end
    redis.call('PUBLISH', P .. 'changed:' .. channel, node)
  end
  if redis.call('EXISTS', mine) == 0 then redis.call('SREM', P .. 'nodes', node) end
  return #channels
end
"""

# ARGV[1]: this node, ARGV[2]: its TTL (ms), then (channel, count, users) triples; users is the
# JSON list of named users, '' for none, '=' for as last written. Returns 1 when ``alive:`` was
# gone (this node was taken for dead: it must write all its shares again).
_WRITE = (
    _HELPERS
    + """
local node = ARGV[1]
local fresh = not redis.call('SET', P .. 'alive:' .. node, '1', 'PX', ARGV[2], 'GET')
redis.call('SADD', P .. 'nodes', node)
local mine = P .. 'node:' .. node
for i = 3, #ARGV, 3 do
  local channel, count, users = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local counts, named = P .. 'count:' .. channel, P .. 'users:' .. channel
  local before = tonumber(redis.call('HGET', counts, node) or '0')
  if count > 0 then
    redis.call('HSET', counts, node, count)
    redis.call('SADD', mine, channel)
    redis.call('ZADD', P .. 'active', 0, channel)
  else
    redis.call('HDEL', counts, node)
    redis.call('SREM', mine, channel)
    if redis.call('EXISTS', counts) == 0 then redis.call('ZREM', P .. 'active', channel) end
  end
  if count == 0 or users == '' then
    redis.call('HDEL', named, node)
  elseif users ~= '=' then
    redis.call('HSET', named, node, users)
  end
  if count ~= before then redis.call('PUBLISH', P .. 'changed:' .. channel, node) end
end
if fresh then return 1 end
return 0
"""
)

# ARGV[1]: a budget. Removes the shares of nodes whose ``alive:`` is gone; 1 if some remain.
_REAP = (
    _HELPERS
    + """
local budget = tonumber(ARGV[1])
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if not live(node) then
    budget = budget - drop(node, budget)
    if budget <= 0 then return 1 end
  end
end
return 0
"""
)

# ARGV[1]: this node, ARGV[2]: a budget. Its clean stop; 1 if some of its shares remain.
_LEAVE = (
    _HELPERS
    + """
redis.call('DEL', P .. 'alive:' .. ARGV[1])
local budget = tonumber(ARGV[2])
if drop(ARGV[1], budget) < budget then return 0 end
return redis.call('EXISTS', P .. 'node:' .. ARGV[1])
"""
)

# ARGV[1]: the node to leave out ('' for none), then channels: each one's count.
_TOTALS = (
    _HELPERS
    + """
local counts = {}
for i = 2, #ARGV do counts[#counts + 1] = total(ARGV[i], ARGV[1]) end
return counts
"""
)

# ARGV[1]: a channel. Its total, then the JSON lists of named users of the live nodes.
_CHANNEL = (
    _HELPERS
    + """
local reply = {total(ARGV[1], '')}
local flat = redis.call('HGETALL', P .. 'users:' .. ARGV[1])
for i = 1, #flat, 2 do
  if live(flat[i]) then reply[#reply + 1] = flat[i + 1] end
end
return reply
"""
)

# ARGV[1], ARGV[2]: ZRANGEBYLEX bounds, ARGV[3]: names to look at, ARGV[4]: active ones wanted.
# Returns the last name looked at, '1' if more may follow, then (name, total) pairs. (A name
# whose nodes all died but are not yet reaped has no live share, and is skipped.)
_PAGE = (
    _HELPERS
    + """
local names = redis.call('ZRANGEBYLEX', P .. 'active', ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])
local reply = {'', ''}
local wanted = tonumber(ARGV[4])
for _, name in ipairs(names) do
  reply[1] = name
  local count = total(name, '')
  if count > 0 then
    reply[#reply + 1] = name
    reply[#reply + 1] = count
    if #reply - 2 >= 2 * wanted then return reply end
  end
end
if #names == tonumber(ARGV[3]) then reply[2] = '1' end
return reply
"""
)


class RedisChannels:
    """This node's channel shares, kept in Redis, and the other nodes' counts of the channels it
    watches, reported through ``on_remote_channel``."""

    def __init__(
        self,
        client: aioredis.Redis,
        node_id: str,
        ttl_ms: int,
        heartbeat_seconds: float,
        reconnect_max_seconds: float,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self._redis = client
        self._node = node_id
        self._node_bytes = node_id.encode()
        self._ttl_ms = ttl_ms
        self._heartbeat = heartbeat_seconds
        self._flush_seconds = flush_seconds
        self._write_script = client.register_script(_WRITE)
        self._reap_script = client.register_script(_REAP)
        self._leave_script = client.register_script(_LEAVE)
        self._totals_script = client.register_script(_TOTALS)
        self._channel_script = client.register_script(_CHANNEL)
        self._page_script = client.register_script(_PAGE)
        self._health = Health("channel presence")
        self._listener_health = Health("channel presence notifications")
        self._sync_backoff = Backoff(reconnect_max_seconds)
        self._listen_backoff = Backoff(reconnect_max_seconds)
        self._on_remote_channel: RemoteChannelCallback | None = None
        self._supervisor: Supervisor | None = None
        self._wake = asyncio.Event()
        # This node's shares as last told (what a rewrite writes again).
        self._counts: dict[str, int] = {}
        self._users: dict[str, Mapping[str, int]] = {}
        self._users_written: dict[str, int] = {}
        """The hash of the JSON list last written per channel with named users."""
        self._pending: set[str] = set()
        """Channels whose share changed since it was last written."""
        self._rewrite_all = True
        self._reap_more = False
        # The channels watched, with the remote count last reported; the ones to re-read.
        self._watched: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._subscriptions_changed = asyncio.Event()

    @property
    def unavailable_reason(self) -> str | None:
        return self._health.reason or self._listener_health.reason

    async def start(self, on_remote_channel: RemoteChannelCallback, supervisor: Supervisor) -> None:
        self._on_remote_channel = on_remote_channel
        self._supervisor = supervisor
        supervisor.start(
            "redis-channels",
            lambda: until_cancelled(
                "channel presence", self._health, self._sync_backoff, self._sync_forever
            ),
        )
        supervisor.start(
            "redis-channels-notifications",
            lambda: until_cancelled(
                "channel presence notifications",
                self._listener_health,
                self._listen_backoff,
                self._listen,
            ),
        )

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.cancel("redis-channels")
            await self._supervisor.cancel("redis-channels-notifications")
        with contextlib.suppress(*CONNECTION_ERRORS):
            while await self._leave_script(args=[self._node, DROP_BUDGET]) == 1:
                pass

    def channel_changed(self, channel: str, local_count: int, users: Mapping[str, int]) -> None:
        if local_count > 0:
            self._counts[channel] = local_count
            if users:
                self._users[channel] = users
            else:
                self._users.pop(channel, None)
        else:
            self._counts.pop(channel, None)
            self._users.pop(channel, None)
        self._pending.add(channel)
        self._wake.set()

    def watch(self, channel: str) -> None:
        if channel in self._watched:
            return
        # Read once the subscription is confirmed: no change after it can then be missed.
        self._watched[channel] = 0
        self._to_subscribe.add(channel)
        self._to_unsubscribe.discard(channel)
        self._subscriptions_changed.set()

    def unwatch(self, channel: str) -> None:
        if self._watched.pop(channel, None) is None:
            return
        self._to_subscribe.discard(channel)
        self._to_unsubscribe.add(channel)
        self._dirty.discard(channel)
        self._subscriptions_changed.set()

    async def channels(self, prefix: str, after: str | None, limit: int) -> list[tuple[str, int]]:
        # Channel names are ASCII: every name with the prefix sorts before prefix + b"\xff".
        low = b"[" + prefix.encode() if prefix else b"-"
        if after is not None and after >= prefix:
            low = b"(" + after.encode()
        high = b"[" + prefix.encode() + b"\xff" if prefix else b"+"
        page: list[tuple[str, int]] = []
        try:
            while len(page) < limit:
                wanted = limit - len(page)
                last, more, *pairs = await self._page_script(args=[low, high, SCAN, wanted])
                for index in range(0, len(pairs), 2):
                    page.append((pairs[index].decode(), int(pairs[index + 1])))
                if more != b"1":
                    break
                low = b"(" + last
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"redis unreachable: {exc}") from exc
        return page[:limit]

    async def channel(self, channel: str) -> tuple[int, list[str]]:
        try:
            total, *lists = await self._channel_script(args=[channel])
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"redis unreachable: {exc}") from exc
        names: set[str] = set()
        for encoded in lists:
            names.update(orjson.loads(encoded))
        return int(total), sorted(names)

    async def _sync_forever(self) -> None:
        # One pass: write what changed (or everything, after a (re)connection), refresh this
        # node's TTL and remove departed nodes at each heartbeat, re-read the dirty watched
        # channels. Then wait for more, but at most one pass per `flush_seconds`.
        self._rewrite_all = True
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time()
        while True:
            raise_if_cancelling()
            self._wake.clear()
            started = loop.time()
            heartbeat = started >= next_heartbeat
            if heartbeat:
                next_heartbeat = started + self._heartbeat
            await self._write(heartbeat)
            if heartbeat or self._reap_more:
                self._reap_more = await self._reap_script(args=[DROP_BUDGET]) == 1
                if self._reap_more:
                    self._wake.set()
            await self._read()
            self._health.ok()
            self._sync_backoff.reset()
            raise_if_cancelling()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_heartbeat - loop.time()))
            await asyncio.sleep(max(0.0, started + self._flush_seconds - loop.time()))

    async def _write(self, heartbeat: bool) -> None:
        rewrite, self._rewrite_all = self._rewrite_all, False
        names = list(self._pending | self._counts.keys() if rewrite else self._pending)
        self._pending = set()
        if not names and not heartbeat and not rewrite:
            return
        try:
            for start in range(0, max(len(names), 1), BATCH):
                args: list[str | int | bytes] = [self._node, self._ttl_ms]
                for channel in names[start : start + BATCH]:
                    count = self._counts.get(channel, 0)
                    args += (channel, count, self._users_arg(channel, count, rewrite))
                fresh = await self._write_script(args=args)
                if fresh == 1 and not (rewrite and start == 0):
                    logger.warning("channel presence: this node was taken for dead; sharing again")
                    self._rewrite_all = True
                    self._wake.set()
        except BaseException:
            # A rewrite follows a reconnection; only the channels that went to 0 need noting
            # again, but noting them all is harmless.
            self._pending.update(names)
            raise

    def _users_arg(self, channel: str, count: int, rewrite: bool) -> bytes:
        users = self._users.get(channel) if count > 0 else None
        if not users:
            self._users_written.pop(channel, None)
            return b""
        encoded = orjson.dumps(sorted(name for name, connections in users.items() if connections))
        digest = hash(encoded)
        if not rewrite and self._users_written.get(channel) == digest:
            return b"="
        self._users_written[channel] = digest
        return encoded

    async def _read(self) -> None:
        names = [channel for channel in self._dirty if channel in self._watched]
        self._dirty = set()
        try:
            for start in range(0, len(names), BATCH):
                chunk = names[start : start + BATCH]
                remotes = await self._totals_script(args=[self._node, *chunk])
                for channel, remote in zip(chunk, remotes, strict=True):
                    if channel in self._watched and self._watched[channel] != remote:
                        self._watched[channel] = remote
                        assert self._on_remote_channel is not None
                        self._on_remote_channel(channel, remote)
        except BaseException:
            self._dirty.update(names)
            raise

    async def _listen(self) -> None:
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(HELLO_CHANNEL)
            self._listener_health.ok()
            self._listen_backoff.reset()
            # A new connection: every watched channel again (each confirmed one is re-read).
            self._to_subscribe = set(self._watched)
            self._to_unsubscribe = set()
            tasks = {
                asyncio.create_task(self._receive(pubsub)),
                asyncio.create_task(self._manage_subscriptions(pubsub)),
            }
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # its error (a lost connection) ends this attempt
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _receive(self, pubsub: PubSub) -> None:
        prefix = CHANGED_PREFIX.encode()
        async for message in pubsub.listen():
            raise_if_cancelling()
            kind = message["type"]
            if kind not in ("message", "subscribe") or not message["channel"].startswith(prefix):
                continue  # a pong, an unsubscription, the hello channel
            if kind == "message" and message["data"] == self._node_bytes:
                continue  # our own write: our remote count did not change
            channel = message["channel"][len(prefix) :].decode()
            if channel in self._watched:
                self._dirty.add(channel)
                self._wake.set()

    async def _manage_subscriptions(self, pubsub: PubSub) -> None:
        # Commands only: their confirmations come through `_receive`, which alone reads.
        while True:
            self._subscriptions_changed.clear()
            wanted = [channel for channel in self._to_subscribe if channel in self._watched]
            unwanted = [channel for channel in self._to_unsubscribe if channel not in self._watched]
            self._to_subscribe, self._to_unsubscribe = set(), set()
            for start in range(0, len(wanted), BATCH):
                await pubsub.subscribe(*(CHANGED_PREFIX + c for c in wanted[start : start + BATCH]))
            for start in range(0, len(unwanted), BATCH):
                chunk = unwanted[start : start + BATCH]
                await pubsub.unsubscribe(*(CHANGED_PREFIX + c for c in chunk))
            await self._subscriptions_changed.wait()
