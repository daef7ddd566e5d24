"""Redis channel presence: every channel's subscribers and named users, shared by every node.

The layout (all under ``broadcast:channels:``), each piece sized for one question:
- ``count:<channel>``, a hash node -> that node's subscribers: a channel's total and a watched
  channel's remote count cost O(nodes), never O(channels). ``users:<channel>``, a hash node ->
  the JSON list of its named users there, read only by ``channel()``.
- ``active``, a sorted set (all scores 0) of the channels with a share on some node: listing is
  ``ZRANGEBYLEX`` from a cursor. A channel is in it exactly while its ``count:`` hash exists.
- ``watchers:<channel>``, the nodes that watch it (have local subscribers); ``watching:<node>``
  and ``node:<node>``, the channels a node watches and has a share in (what to remove when it
  goes); ``alive:<node>``, a key with the node's TTL, refreshed by its heartbeat; ``nodes``.
- ``notify:<node>``, a pub/sub channel per node: each write sends every *other* node that watches
  a channel whose count it changed one message listing those channels.

Deliberate choices:
- One notification channel per node, not one per channel: a node holding 100,000 channels makes
  no 100,000 subscriptions, and hears neither of its own changes nor of channels it does not
  watch. A storm over 500 channels costs a watcher one message per write, not 500.
- Notifications carry no numbers: a watcher marks the channels dirty and re-reads them from
  Redis (batched). A read always sees the truth, and any later write notifies again, so the
  count is exact at rest whatever the order messages and replies arrive in. A channel is read
  after its watch is registered, and all are read again whenever the subscription (re)starts.
- Batched: ``channel_changed``, ``watch`` and ``unwatch`` only note the channel; one loop writes
  what was noted at most every ``flush_seconds`` (leading edge: the first change after a quiet
  spell goes at once), 500 channels per Lua call, then re-reads the dirty watched channels the
  same way. A pass makes a bounded number of calls, so a backlog of 100,000 channels never
  delays the heartbeat or the reads for long.
- Every write refreshes ``alive:`` (``SET ... GET``): finding it gone means this node was taken
  for dead (a stall or an outage past the TTL, or Redis lost its data) and maybe removed, so it
  writes all its shares and watches again (as after every reconnection). Reads count only nodes
  whose ``alive:`` exists, so a dead node drops out of every total at its TTL; at their next
  heartbeat the live nodes remove its shares (in bounded steps) and notify the watchers.
  ``stop()`` removes this node's shares at once.
- Named users: a node's sorted list is written only when it differs from the last written
  (compared by hash), so anonymous churn never rewrites a big list.
- The scripts are ``redis_channels_lua.py``. They compute key names, as the rest of the Redis
  backend assumes one Redis (not a Redis Cluster). ``SET ... GET`` needs Redis 6.2 or later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from broadcast.broker import redis_channels_lua as lua
from broadcast.broker.base import BrokerUnavailable, RemoteChannelCallback
from broadcast.broker.redis_link import (
    CONNECTION_ERRORS,
    Backoff,
    Health,
    raise_if_cancelling,
    until_cancelled,
)
from broadcast.supervisor import Supervisor

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.01
"""At most one pass (writes, then reads) per this many seconds while changes keep coming."""
BATCH = 500
"""Channels per Lua call (writes, reads), so no call blocks Redis for long."""
CALLS_PER_PASS = 4
"""Write calls, and read calls, per pass at most: the rest waits for the next pass."""
DROP_BUDGET = 1000
"""Channels of a departed node removed per Lua call."""
SCAN = 200
"""Active channel names looked at per Lua call when listing."""


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
        self._ttl_ms = ttl_ms
        self._heartbeat = heartbeat_seconds
        self._flush_seconds = flush_seconds
        self._write_script = client.register_script(lua.WRITE)
        self._reap_script = client.register_script(lua.REAP)
        self._leave_script = client.register_script(lua.LEAVE)
        self._totals_script = client.register_script(lua.TOTALS)
        self._channel_script = client.register_script(lua.CHANNEL)
        self._page_script = client.register_script(lua.PAGE)
        self._health = Health("channel presence")
        self._listener_health = Health("channel presence notifications")
        self._sync_backoff = Backoff(reconnect_max_seconds)
        self._listen_backoff = Backoff(reconnect_max_seconds)
        self._on_remote_channel: RemoteChannelCallback | None = None
        self._supervisor: Supervisor | None = None
        self._wake = asyncio.Event()
        # This node's shares as last told (what is written again after a reconnection).
        self._counts: dict[str, int] = {}
        self._users: dict[str, Mapping[str, int]] = {}
        self._users_written: dict[str, int] = {}
        """The hash of the JSON list last written, per channel with named users."""
        self._pending: set[str] = set()
        """Channels whose share changed since it was last written."""
        self._full: set[str] = set()
        """Channels whose named users must be written in full (or deleted), whatever was last
        written: after a reconnection Redis may hold anything."""
        self._watched: dict[str, int] = {}
        """The channels watched, with the remote count last reported."""
        self._watch_ops: dict[str, bool] = {}
        """Watches (True) and unwatches (False) not written yet."""
        self._dirty: set[str] = set()
        """Watched channels to read again."""
        self._reap_more = False
        self._registered = False
        """Whether a write went through already (``alive:`` is then expected to exist)."""

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
        if channel not in self._watched:
            self._watched[channel] = 0
            self._watch_ops[channel] = True  # read once written (`_write`): nothing is missed
            self._wake.set()

    def unwatch(self, channel: str) -> None:
        if self._watched.pop(channel, None) is not None:
            self._watch_ops[channel] = False
            self._dirty.discard(channel)
            self._wake.set()

    async def channels(self, prefix: str, after: str | None, limit: int) -> list[tuple[str, int]]:
        # Channel names are ASCII: every name with the prefix sorts before prefix + b"\xff".
        low = b"[" + prefix.encode() if prefix else b"-"
        if after is not None and after >= prefix:
            low = b"(" + after.encode()
        high = b"[" + prefix.encode() + b"\xff" if prefix else b"+"
        page: list[tuple[str, int]] = []
        while len(page) < limit:
            wanted = limit - len(page)
            last, more, *pairs = await self._ask(self._page_script, low, high, SCAN, wanted)
            for index in range(0, len(pairs), 2):
                page.append((pairs[index].decode(), int(pairs[index + 1])))
            if more != b"1":
                break
            low = b"(" + last
        return page[:limit]

    async def channel(self, channel: str) -> tuple[int, list[str]]:
        total, *lists = await self._ask(self._channel_script, channel)
        names: set[str] = set()
        for encoded in lists:
            names.update(orjson.loads(encoded))
        return int(total), sorted(names)

    async def _ask(self, script: AsyncScript, *args: str | int | bytes) -> Any:
        """Run a read-only script, once more if the connection fails: a pooled connection left
        idle across a Redis restart fails on its first use, and the retry takes a fresh one."""
        try:
            try:
                return await script(args=args)
            except CONNECTION_ERRORS:
                return await script(args=args)
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"redis unreachable: {exc}") from exc

    async def _sync_forever(self) -> None:
        # One pass: write what changed, refresh this node's TTL and remove departed nodes at each
        # heartbeat, re-read the dirty watched channels. Then wait for more, but at most one pass
        # per `flush_seconds`. A (re)connection first notes everything again: Redis may have lost
        # it, or a write may have failed halfway.
        self._share_all()
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
            await self._read()
            self._health.ok()
            self._sync_backoff.reset()
            raise_if_cancelling()
            if self._pending or self._watch_ops or self._dirty or self._reap_more:
                self._wake.set()  # more than one pass's worth
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_heartbeat - loop.time()))
            await asyncio.sleep(max(0.0, started + self._flush_seconds - loop.time()))

    def _share_all(self) -> None:
        """Note every share and watch for writing again (the named users in full)."""
        self._pending.update(self._counts)
        self._full.update(self._counts)
        self._users_written.clear()
        self._watch_ops.update(dict.fromkeys(self._watched, True))

    async def _write(self, heartbeat: bool) -> None:
        # What was noted by now, in as few calls as it takes (up to a bound); what comes while
        # they run waits for the next pass, batched with whatever else comes.
        noted = len(self._pending) + len(self._watch_ops)
        calls = min(CALLS_PER_PASS, -(-noted // BATCH))
        for _ in range(max(calls, 1) if heartbeat else calls):
            shares = [self._pending.pop() for _ in range(min(BATCH, len(self._pending)))]
            room = min(BATCH - len(shares), len(self._watch_ops))
            ops = [self._watch_ops.popitem() for _ in range(room)]
            encoded_shares = orjson.dumps(
                [
                    (channel, self._counts.get(channel, 0), self._users_arg(channel))
                    for channel in shares
                ]
            )
            encoded_ops = orjson.dumps([(channel, int(watch)) for channel, watch in ops])
            try:
                fresh = await self._write_script(
                    args=[self._node, self._ttl_ms, encoded_shares, encoded_ops]
                )
            except BaseException:
                self._pending.update(shares)
                for channel, watch in ops:
                    self._watch_ops.setdefault(channel, watch)
                raise
            self._dirty.update(channel for channel, watch in ops if watch)
            if fresh == 1:
                if self._registered:
                    logger.warning(
                        "channel presence: this node's shares were gone from redis (taken for "
                        "dead after a stall or an outage, or redis lost its data); sharing again"
                    )
                self._share_all()
            self._registered = True

    def _users_arg(self, channel: str) -> str:
        """The share's named users as the write script takes them: their JSON list, '' for none,
        '=' for as last written (most changes are anonymous: nothing to send, or to delete)."""
        users = self._users.get(channel) if channel in self._counts else None
        full = channel in self._full
        if full:
            self._full.discard(channel)
        names = sorted(name for name, connections in users.items() if connections) if users else []
        if not names:
            if self._users_written.pop(channel, None) is None and not full:
                return "="
            return ""
        encoded = orjson.dumps(names).decode()
        digest = hash(encoded)
        if self._users_written.get(channel) == digest and not full:
            return "="
        # Noted before the write succeeds: a failed write is followed by `_share_all`.
        self._users_written[channel] = digest
        return encoded

    async def _read(self) -> None:
        for _ in range(min(CALLS_PER_PASS, -(-len(self._dirty) // BATCH))):
            chunk = [self._dirty.pop() for _ in range(min(BATCH, len(self._dirty)))]
            chunk = [channel for channel in chunk if channel in self._watched]
            if not chunk:
                continue
            try:
                reply = await self._totals_script(args=[self._node, orjson.dumps(chunk)])
                remotes = orjson.loads(reply)
            except BaseException:
                self._dirty.update(chunk)
                raise
            for channel, remote in zip(chunk, remotes, strict=True):
                if channel in self._watched and self._watched[channel] != remote:
                    self._watched[channel] = remote
                    assert self._on_remote_channel is not None
                    self._on_remote_channel(channel, remote)

    async def _listen(self) -> None:
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(lua.NOTIFY_PREFIX + self._node)
            self._listener_health.ok()
            self._listen_backoff.reset()
            async for message in pubsub.listen():
                raise_if_cancelling()
                if message["type"] == "subscribe":
                    # (Re)subscribed: what was announced meanwhile is unknown, so read it all.
                    self._dirty.update(self._watched)
                elif message["type"] == "message":
                    watched = self._watched
                    changed = message["data"].decode().split("\n")
                    self._dirty.update(channel for channel in changed if channel in watched)
                self._wake.set()
