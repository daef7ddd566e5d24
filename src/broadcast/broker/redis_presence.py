"""Redis presence: every node's user count, shared.

Each node writes its count under its own key with a TTL, refreshed by a heartbeat, and lists
itself in a set; the total is the sum over the keys that still exist. A node killed without a
goodbye simply stops refreshing, and its key expires. A change is announced on a channel so the
other nodes re-read at once rather than at their next heartbeat. On reconnection a node
re-registers its count and re-reads. Channel presence (per-channel counts and named users) is
``redis_channels.py``, on the same client, with the same TTL and heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from broadcast.broker.base import RemoteChannelCallback, RemoteTotalCallback
from broadcast.broker.redis_channels import RedisChannels
from broadcast.broker.redis_link import (
    CONNECTION_ERRORS,
    PREFIX,
    Backoff,
    Health,
    connect,
    node_id,
    raise_if_cancelling,
    until_cancelled,
)
from broadcast.supervisor import Supervisor

logger = logging.getLogger(__name__)

NODES_KEY = PREFIX + "presence:nodes"
NODE_KEY_PREFIX = PREFIX + "presence:node:"
PRESENCE_CHANNEL = PREFIX + "presence:changed"


class RedisPresence:
    def __init__(
        self,
        url: str,
        ttl_seconds: float,
        heartbeat_seconds: float,
        reconnect_max_seconds: float,
    ) -> None:
        self._redis = connect(url)
        self.node_id = node_id()
        self._node_key = NODE_KEY_PREFIX + self.node_id
        self._ttl_ms = int(ttl_seconds * 1000)
        self._heartbeat = heartbeat_seconds
        self._health = Health("presence")
        self._listener_health = Health("presence notifications")
        self._sync_backoff = Backoff(reconnect_max_seconds)
        self._listen_backoff = Backoff(reconnect_max_seconds)
        self._local = 0
        self._changed = True
        self._wake = asyncio.Event()
        self._remote: int | None = None
        self._on_remote_total: RemoteTotalCallback | None = None
        self._supervisor: Supervisor | None = None
        self._channels = RedisChannels(
            self._redis, self.node_id, self._ttl_ms, heartbeat_seconds, reconnect_max_seconds
        )

    @property
    def unavailable_reason(self) -> str | None:
        return (
            self._health.reason or self._listener_health.reason or self._channels.unavailable_reason
        )

    async def start(
        self,
        on_remote_total: RemoteTotalCallback,
        supervisor: Supervisor,
        on_remote_channel: RemoteChannelCallback,
    ) -> None:
        self._on_remote_total = on_remote_total
        self._supervisor = supervisor
        await self._channels.start(on_remote_channel, supervisor)
        supervisor.start(
            "redis-presence",
            lambda: until_cancelled(
                "presence", self._health, self._sync_backoff, self._sync_forever
            ),
        )
        supervisor.start(
            "redis-presence-notifications",
            lambda: until_cancelled(
                "presence notifications",
                self._listener_health,
                self._listen_backoff,
                self._listen,
            ),
        )

    def local_changed(self, local_count: int) -> None:
        self._local = local_count
        self._changed = True
        self._wake.set()

    def channel_changed(self, channel: str, local_count: int, users: Mapping[str, int]) -> None:
        self._channels.channel_changed(channel, local_count, users)

    def watch(self, channel: str) -> None:
        self._channels.watch(channel)

    def unwatch(self, channel: str) -> None:
        self._channels.unwatch(channel)

    async def channels(self, prefix: str, after: str | None, limit: int) -> list[tuple[str, int]]:
        return await self._channels.channels(prefix, after, limit)

    async def channel(self, channel: str) -> tuple[int, list[str]]:
        return await self._channels.channel(channel)

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.cancel("redis-presence")
            await self._supervisor.cancel("redis-presence-notifications")
        await self._channels.stop()
        with contextlib.suppress(*CONNECTION_ERRORS):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._node_key)
                pipe.srem(NODES_KEY, self.node_id)
                pipe.publish(PRESENCE_CHANNEL, self.node_id)
                await pipe.execute()
        with contextlib.suppress(*CONNECTION_ERRORS):
            await self._redis.aclose()

    async def _sync_forever(self) -> None:
        # Every heartbeat, and whenever this node's count changes or another node announces a
        # change: write our count (refreshing its TTL), then read everyone else's.
        self._changed = True  # (re-)register after every (re)connection
        while True:
            raise_if_cancelling()
            changed, self._changed = self._changed, False
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._node_key, self._local, px=self._ttl_ms)
                pipe.sadd(NODES_KEY, self.node_id)
                if changed:
                    pipe.publish(PRESENCE_CHANNEL, self.node_id)
                await pipe.execute()
            await self._read_remote_total()
            self._health.ok()
            self._sync_backoff.reset()
            raise_if_cancelling()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._heartbeat)
            self._wake.clear()

    async def _read_remote_total(self) -> None:
        members = await self._redis.smembers(NODES_KEY)
        nodes = [n.decode() if isinstance(n, bytes) else n for n in members]
        others = [n for n in nodes if n != self.node_id]
        counts = await self._redis.mget([NODE_KEY_PREFIX + n for n in others]) if others else []
        gone = [n for n, count in zip(others, counts, strict=True) if count is None]
        if gone:  # expired: their nodes stopped refreshing (crashed or cut off)
            await self._redis.srem(NODES_KEY, *gone)
        remote = sum(int(count) for count in counts if count is not None)
        if remote != self._remote:
            self._remote = remote
            assert self._on_remote_total is not None
            self._on_remote_total(remote)

    async def _listen(self) -> None:
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(PRESENCE_CHANNEL)
            self._listener_health.ok()
            self._listen_backoff.reset()
            self._wake.set()  # whatever was announced while we were away: read now
            async for message in pubsub.listen():
                raise_if_cancelling()
                if message["type"] == "message" and message["data"] != self.node_id.encode():
                    self._wake.set()
