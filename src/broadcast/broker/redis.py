"""The Redis backend (redis-py's asyncio API): events shared by every node.

Deliberate choices:
- One cross-node path. A publish is one Lua call that takes the next id (the channel's epoch and
  ``HINCRBY`` of its offset), keeps the event in the channel's history stream (bounded by count
  and bytes) and ``PUBLISH``es ``"<id> <json>"``; every node, the publisher included, receives
  it once from its subscription and delivers it to its own clients. Nobody delivers directly,
  so nothing arrives twice. (python-socketio's own Redis manager is not used beside it.)
- Outages are reported, not hidden (``redis_link.py``). Presence is ``redis_presence.py``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import orjson

from broadcast.broker.base import (
    BrokerUnavailable,
    DeliverCallback,
    History,
    channel_of,
    complete_after,
)
from broadcast.broker.redis_link import (
    CONNECTION_ERRORS,
    PREFIX,
    Backoff,
    Health,
    connect,
    raise_if_cancelling,
    until_cancelled,
)
from broadcast.events import Event, EventId, new_epoch
from broadcast.supervisor import Supervisor

logger = logging.getLogger(__name__)

EVENT_CHANNEL_PREFIX = PREFIX + "events:"
STREAM_PREFIX = PREFIX + "stream:"
HISTORY_PREFIX = PREFIX + "replay:"
"""(Not ``history:``, where nodes of a version with bare counter ids keep theirs: during a rolling
upgrade the two never write to one stream, whose entry ids would then go backwards.)"""

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
        self._health = Health("events")
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
            lambda: until_cancelled("events", self._health, self._backoff, self._listen),
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
        where = channel_of(channel)
        events = []
        first_held = None
        for entry_id, fields in rest[0]:
            if float(fields[b"t"]) < cutoff:
                continue  # too old to replay: counts as missing
            offset = _offset(entry_id)
            first_held = offset if first_held is None else first_held
            body = orjson.loads(fields[b"e"])
            events.append(Event(body["name"], body.get("data"), str(EventId(epoch, offset)), where))
        return History(events, complete_after(first_held, after.offset, last), oldest)

    async def _listen(self) -> None:
        async with self._redis.pubsub() as pubsub:
            await pubsub.psubscribe(EVENT_CHANNEL_PREFIX + "*")
            self._health.ok()
            self._backoff.reset()
            async for message in pubsub.listen():
                raise_if_cancelling()
                if message["type"] == "pmessage":
                    self._receive(message["channel"], message["data"])

    def _receive(self, channel: bytes, data: bytes) -> None:
        topic = channel.decode().removeprefix(EVENT_CHANNEL_PREFIX)
        try:
            event_id, _, payload = data.partition(b" ")
            fields: dict[str, Any] = orjson.loads(payload)
            event = Event(fields["name"], fields.get("data"), event_id.decode(), channel_of(topic))
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed message on %r", channel)
            return
        assert self._deliver is not None
        self._deliver(topic, event)
