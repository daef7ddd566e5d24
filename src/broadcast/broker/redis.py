"""The Redis backend (redis-py's asyncio API): events and presence shared by every node.

Deliberate choices:
- One cross-node path. A publish is one Lua call that takes the next id (the channel's epoch and
  ``HINCRBY`` of its offset), keeps the event in the channel's history stream (bounded by count
  and bytes) and ``PUBLISH``es ``"<id> <json>"``; every node, the publisher included, receives
  it once from its subscription and delivers it to its own clients. Nobody delivers directly,
  so nothing arrives twice. (python-socketio's own Redis manager is not used beside it.)
- Presence: each node writes its count under its own key with a TTL, refreshed by a heartbeat,
  and lists itself in a set; the total is the sum over the keys that still exist. A node killed
  without a goodbye simply stops refreshing, and its key expires. A change is announced on a
  channel so the other nodes re-read at once rather than at their next heartbeat.
- Outages are reported, not hidden: redis-py's own retries are off, each loop catches the
  connection error, says why in ``unavailable_reason`` (``/readyz``), and reconnects with a
  capped exponential backoff. On reconnection a node re-registers its count and re-reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from broadcast.broker.base import (
    BrokerUnavailable,
    DeliverCallback,
    History,
    RemoteTotalCallback,
    complete_after,
)
from broadcast.events import Event, EventId, new_epoch
from broadcast.supervisor import Supervisor

logger = logging.getLogger(__name__)

PREFIX = "broadcast:"
EVENT_CHANNEL_PREFIX = PREFIX + "events:"
STREAM_PREFIX = PREFIX + "stream:"
HISTORY_PREFIX = PREFIX + "replay:"
"""(Not ``history:``, where nodes of a version with bare counter ids keep theirs: during a rolling
upgrade the two never write to one stream, whose entry ids would then go backwards.)"""
NODES_KEY = PREFIX + "presence:nodes"
NODE_KEY_PREFIX = PREFIX + "presence:node:"
PRESENCE_CHANNEL = PREFIX + "presence:changed"

# KEYS[1]: the channel's state, one hash: its epoch, its last offset, the bytes its history
# holds; KEYS[2]: the channel; KEYS[3]: its history stream. ARGV[1]: the event as JSON,
# ARGV[2]: how many events the history keeps, ARGV[3]: how many bytes of events, ARGV[4]: now
# (ms), ARGV[5]: a fresh epoch, taken when the channel has none.
# Epoch and offset live in one key, so whatever loses one (FLUSHALL, a failover to an empty
# replica, an eviction) loses both, and the next publish starts a new epoch; the history of the
# old one goes with it, so the two are never mixed. The stream entry's id is the offset, so
# history reads by offset; ``s`` is the size counted for the entry.
_PUBLISH = """
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[5]) == 1 then
  redis.call('HSET', KEYS[1], 'offset', 0, 'bytes', 0)
  redis.call('DEL', KEYS[3])
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = string.format('%d', redis.call('HINCRBY', KEYS[1], 'offset', 1))
local size = string.len(ARGV[1])
redis.call('XADD', KEYS[3], offset .. '-0', 'e', ARGV[1], 't', ARGV[4], 's', size)
local count = redis.call('XLEN', KEYS[3])
local bytes = size
if count == 1 then
  redis.call('HSET', KEYS[1], 'bytes', size)  -- the stream alone was lost: count afresh
else
  bytes = redis.call('HINCRBY', KEYS[1], 'bytes', size)
end
local max_count, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
while count > max_count or bytes > max_bytes do
  local oldest = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)[1]
  if oldest == nil then break end
  local fields = oldest[2]
  for i = 1, #fields, 2 do
    if fields[i] == 's' then bytes = redis.call('HINCRBY', KEYS[1], 'bytes', -fields[i + 1]) end
  end
  redis.call('XDEL', KEYS[3], oldest[1])
  count = count - 1
end
local id = epoch .. ':' .. offset
redis.call('PUBLISH', KEYS[2], id .. ' ' .. ARGV[1])
return id
"""

# Errors that mean "Redis is not reachable now": retried, reported, never fatal.
CONNECTION_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


# TCP keepalive probes after 5 s idle, every 2 s, 3 failures: a connection whose peer vanished
# (a lost machine, a NAT that dropped it) fails within about 11 s, even an idle subscription.
_KEEPALIVE = {
    option: value
    for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 5),
        (getattr(socket, "TCP_KEEPINTVL", None), 2),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
    )
    if option is not None
}


def connect(url: str) -> aioredis.Redis:
    """A client whose failures surface (no silent retries), whose commands time out, and whose
    connections are probed by TCP keepalive, so a dead connection is noticed."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        socket_keepalive=True,
        socket_keepalive_options=_KEEPALIVE,
        health_check_interval=5,
        retry=Retry(NoBackoff(), 0),
    )
    return client


def node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Backoff:
    """Capped exponential backoff: 0.1 s doubling up to ``cap``."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.delay = 0.1

    def reset(self) -> None:
        self.delay = 0.1

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)


class _Health:
    """The state of one connection loop, logged on every change."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.reason: str | None = "connecting to redis"

    def ok(self) -> None:
        if self.reason is not None:
            logger.info("%s: connected to redis", self.what)
        self.reason = None

    def lost(self, exc: BaseException) -> None:
        reason = f"redis unreachable: {exc or type(exc).__name__}"
        if reason != self.reason:
            logger.warning("%s: %s; reconnecting", self.what, reason)
        self.reason = reason


def _raise_if_cancelling() -> None:
    """Stop here if this task was asked to: redis-py swallows a cancellation that lands in the
    middle of a command (it cleans the connection up and carries on)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _until_cancelled(
    what: str, health: _Health, backoff: Backoff, attempt: Callable[[], Awaitable[None]]
) -> None:
    """Run ``attempt`` again and again: an outage is reported and retried, never fatal. (A bug,
    any other exception, goes to the supervisor, which logs, counts and restarts the loop.)"""
    while True:
        try:
            await attempt()
        except CONNECTION_ERRORS as exc:
            _raise_if_cancelling()  # a cancellation redis-py turned into a connection error
            health.lost(exc)
        await backoff.wait()


def _offset(entry_id: bytes) -> int:
    """The offset a history stream entry stands for: its id is ``<offset>-0``."""
    return int(entry_id.split(b"-")[0])


class RedisBackend:
    def __init__(
        self,
        url: str,
        reconnect_max_seconds: float,
        history_size: int = 1000,
        history_seconds: float = 300,
        history_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._redis = connect(url)
        self._history_size = history_size
        self._history_bytes = history_bytes
        self._history_ms = int(history_seconds * 1000)
        self._publish = self._redis.register_script(_PUBLISH)
        self._health = _Health("events")
        self._backoff = Backoff(reconnect_max_seconds)
        self._deliver: DeliverCallback | None = None
        self._supervisor: Supervisor | None = None

    @property
    def unavailable_reason(self) -> str | None:
        return self._health.reason

    async def start(self, deliver: DeliverCallback, supervisor: Supervisor) -> None:
        self._deliver = deliver
        self._supervisor = supervisor
        supervisor.start(
            "redis-events",
            lambda: _until_cancelled("events", self._health, self._backoff, self._listen),
        )

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.cancel("redis-events")
        with contextlib.suppress(*CONNECTION_ERRORS):
            await self._redis.aclose()

    async def publish(self, channel: str, event: Event) -> str:
        if self._health.reason is not None:
            raise BrokerUnavailable(self._health.reason)
        payload = orjson.dumps({"name": event.name, "data": event.data})
        try:
            event_id = await self._publish(
                keys=[
                    STREAM_PREFIX + channel,
                    EVENT_CHANNEL_PREFIX + channel,
                    HISTORY_PREFIX + channel,
                ],
                args=[
                    payload,
                    self._history_size,
                    self._history_bytes,
                    int(time.time() * 1000),
                    new_epoch(),
                ],
            )
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"redis unreachable: {exc}") from exc
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    async def history(self, channel: str, after: EventId | None) -> History:
        key = HISTORY_PREFIX + channel
        try:
            # One transaction: the state and the stream of the same epoch.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hmget(STREAM_PREFIX + channel, "epoch", "offset")
                pipe.xrange(key, "-", "+", count=1)
                if after is not None:
                    pipe.xrange(key, f"({after.offset}-0", "+")
                (epoch_bytes, last_bytes), first, *rest = await pipe.execute()
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"redis unreachable: {exc}") from exc
        epoch = epoch_bytes.decode() if epoch_bytes is not None else None
        last = int(last_bytes or 0)
        oldest = f"{epoch}:{_offset(first[0][0])}" if first and epoch else None
        if after is None or after.epoch != epoch or after.offset > last:
            return History([], False, oldest)  # not a position of this stream
        cutoff = time.time() * 1000 - self._history_ms
        events = []
        first_held = None
        for entry_id, fields in rest[0]:
            if float(fields[b"t"]) < cutoff:
                continue  # too old to replay: counts as missing
            offset = _offset(entry_id)
            first_held = offset if first_held is None else first_held
            body = orjson.loads(fields[b"e"])
            events.append(Event(body["name"], body.get("data"), str(EventId(epoch, offset))))
        return History(events, complete_after(first_held, after.offset, last), oldest)

    async def _listen(self) -> None:
        async with self._redis.pubsub() as pubsub:
            await pubsub.psubscribe(EVENT_CHANNEL_PREFIX + "*")
            self._health.ok()
            self._backoff.reset()
            async for message in pubsub.listen():
                _raise_if_cancelling()
                if message["type"] == "pmessage":
                    self._receive(message["channel"], message["data"])

    def _receive(self, channel: bytes, data: bytes) -> None:
        try:
            event_id, _, payload = data.partition(b" ")
            fields: dict[str, Any] = orjson.loads(payload)
            event = Event(fields["name"], fields.get("data"), event_id.decode())
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed message on %r", channel)
            return
        assert self._deliver is not None
        self._deliver(channel.decode().removeprefix(EVENT_CHANNEL_PREFIX), event)


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
        self._health = _Health("presence")
        self._listener_health = _Health("presence notifications")
        self._sync_backoff = Backoff(reconnect_max_seconds)
        self._listen_backoff = Backoff(reconnect_max_seconds)
        self._local = 0
        self._changed = True
        self._wake = asyncio.Event()
        self._remote: int | None = None
        self._on_remote_total: RemoteTotalCallback | None = None
        self._supervisor: Supervisor | None = None

    @property
    def unavailable_reason(self) -> str | None:
        return self._health.reason or self._listener_health.reason

    async def start(self, on_remote_total: RemoteTotalCallback, supervisor: Supervisor) -> None:
        self._on_remote_total = on_remote_total
        self._supervisor = supervisor
        supervisor.start(
            "redis-presence",
            lambda: _until_cancelled(
                "presence", self._health, self._sync_backoff, self._sync_forever
            ),
        )
        supervisor.start(
            "redis-presence-notifications",
            lambda: _until_cancelled(
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

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.cancel("redis-presence")
            await self._supervisor.cancel("redis-presence-notifications")
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
            _raise_if_cancelling()
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
            _raise_if_cancelling()
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
                _raise_if_cancelling()
                if message["type"] == "message" and message["data"] != self.node_id.encode():
                    self._wake.set()
