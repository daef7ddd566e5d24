"""The Redis backend (redis-py's asyncio API): events shared by every node.

Deliberate choices:
- One cross-node path. A publish is one Lua call that takes the next id (the deployment's one
  sequence: its epoch and ``HINCRBY`` of its offset), keeps the event in its topic's history
  stream (bounded by count, bytes and age, per topic) and ``PUBLISH``es ``"<id> <json>"`` on the
  topic's channel; every node that listens to the topic, the publisher included, receives it
  once from its subscription and delivers it to its own clients. Nobody delivers directly, so
  nothing arrives twice. (python-socketio's own Redis manager is not used beside it.)
- A node subscribes to exactly the topics its clients use (``redis_topics.py``).
- Outages are reported, not hidden (``redis_link.py``). Presence is ``redis_presence.py``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson

from broadcast.broker.base import (
    BrokerUnavailable,
    DeliverCallback,
    History,
    channel_of,
    held_in_full,
    merge_by_offset,
)
from broadcast.broker.redis_link import (
    CONNECTION_ERRORS,
    PREFIX,
    Backoff,
    Health,
    connect,
    until_cancelled,
)
from broadcast.broker.redis_topics import EVENT_CHANNEL_PREFIX, TopicSubscription
from broadcast.events import Event, EventId, new_epoch
from broadcast.supervisor import Supervisor

logger = logging.getLogger(__name__)

SEQUENCE_KEY = PREFIX + "sequence"
TOPIC_PREFIX = PREFIX + "topic:"
LOG_PREFIX = PREFIX + "log:"
"""(New names, not ``stream:`` and ``replay:``, where nodes of the version with an offset per
channel keep theirs: during a rolling upgrade the two never write to one stream, whose entry ids
would then go backwards.)"""
TOPICS_KEY = PREFIX + "topics"
"""Every topic by the time of its last publish: the quiet ones' bookkeeping is forgotten."""

# KEYS[1]: the sequence, one hash: its epoch, its last offset, the highest offset of a forgotten
# topic; KEYS[2]: the topic's bookkeeping, one hash: the epoch it belongs to, the bytes its
# history holds, the highest offset it evicted, its newest offset; KEYS[3]: the topic's history
# stream; KEYS[4]: the topic's pub/sub channel; KEYS[5]: every topic by its last publish (ms).
# ARGV[1]: the event as JSON, ARGV[2]: how many events a topic keeps, ARGV[3]: how many bytes of
# events, ARGV[4]: now (ms), ARGV[5]: a fresh epoch, taken when the sequence has none, ARGV[6]:
# the oldest time kept (ms), ARGV[7]: how long a stream outlives its newest event (ms), ARGV[8]:
# the topic, ARGV[9] and ARGV[10]: the prefixes of a topic's bookkeeping and stream keys.
# Epoch and offset live in one key, so whatever loses one (FLUSHALL, a failover to an empty
# replica, an eviction) loses both, and the next publish starts a new epoch. A topic whose
# bookkeeping is of another epoch (or lost) loses its history at its next publish, so two
# epochs are never mixed. A quiet topic's stream expires once all it holds is too old; its
# bookkeeping goes a little later, at a publish (a few topics each time, oldest first, as the
# in-process backend forgets its quiet topics), and its newest offset becomes the sequence's
# ``forgotten``: what a topic without bookkeeping may have evicted, so a resume from before it
# is told it missed something, and a topic (re)created starts with it as evicted. A topic whose
# stream alone went (so expired, or lost) marks all before as evicted at its next publish. The
# stream entry's id is the offset (increasing within a topic, with gaps: the other topics'), so
# history reads by offset; ``s`` is the size counted for the entry.
_PUBLISH = """
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[5]) == 1 then
  redis.call('HSET', KEYS[1], 'offset', 0)
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local forgotten = redis.call('HGET', KEYS[1], 'forgotten') or '0'
if redis.call('HGET', KEYS[2], 'epoch') ~= epoch then
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'bytes', 0, 'evicted', forgotten)
end
local size = string.len(ARGV[1])
redis.call('XADD', KEYS[3], string.format('%d-0', offset), 'e', ARGV[1], 't', ARGV[4], 's', size)
redis.call('PEXPIRE', KEYS[3], ARGV[7])
redis.call('HSET', KEYS[2], 'last', string.format('%d', offset))
local count = redis.call('XLEN', KEYS[3])
local bytes = size
if count == 1 then
  if (tonumber(redis.call('HGET', KEYS[2], 'bytes')) or 0) > 0 then
    redis.call('HSET', KEYS[2], 'evicted', string.format('%d', offset - 1))
  end
  redis.call('HSET', KEYS[2], 'bytes', size)
else
  bytes = redis.call('HINCRBY', KEYS[2], 'bytes', size)
end
local max_count, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
local oldest_allowed = tonumber(ARGV[6])
local evicted = nil
while true do
  local oldest = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)[1]
  if oldest == nil then break end
  local fields = oldest[2]  -- e, <json>, t, <ms>, s, <size>: as XADD wrote them
  if count <= max_count and bytes <= max_bytes and tonumber(fields[4]) >= oldest_allowed then
    break
  end
  bytes = bytes - tonumber(fields[6])
  redis.call('XDEL', KEYS[3], oldest[1])
  count = count - 1
  evicted = oldest[1]
end
if evicted then
  redis.call('HSET', KEYS[2], 'bytes', bytes, 'evicted', string.match(evicted, '^%d+'))
end
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[8])
local quiet_before = string.format('(%d', tonumber(ARGV[4]) - tonumber(ARGV[7]))
local quiet = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', quiet_before, 'LIMIT', 0, 8)
for _, name in ipairs(quiet) do
  local kept = redis.call('HMGET', ARGV[9] .. name, 'epoch', 'last')
  if kept[1] == epoch and kept[2] and tonumber(kept[2]) > tonumber(forgotten) then
    forgotten = kept[2]
    redis.call('HSET', KEYS[1], 'forgotten', forgotten)
  end
  redis.call('DEL', ARGV[9] .. name, ARGV[10] .. name)
  redis.call('ZREM', KEYS[5], name)
end
local id = epoch .. ':' .. string.format('%d', offset)
redis.call('PUBLISH', KEYS[4], id .. ' ' .. ARGV[1])
return id
"""


STREAM_EXPIRY_MARGIN_MS = 5000
"""A stream expires this long after its newest event is too old to replay (the nodes' clocks,
which date the events, and Redis's, which expires them, may differ a little)."""


def _offset(entry_id: bytes) -> int:
    """The offset a history stream entry stands for: its id is ``<offset>-0``."""
    return int(entry_id.split(b"-")[0])


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


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
        # Subscribing to 100,000 topics brings 100,000 confirmations: redis-py's Python parser
        # reads RESP 2's in about 60% of the time of RESP 3's (pushes take a detour there).
        self._topics = TopicSubscription(
            connect(url, protocol=2), self._health, self._backoff, self._receive
        )

    @property
    def unavailable_reason(self) -> str | None:
        return self._health.reason

    async def start(self, deliver: DeliverCallback, supervisor: Supervisor) -> None:
        self._deliver = deliver
        self._supervisor = supervisor
        supervisor.start(
            "redis-events",
            lambda: until_cancelled("events", self._health, self._backoff, self._topics.run),
        )

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.cancel("redis-events")
        for close in (self._redis.aclose, self._topics.close):
            with contextlib.suppress(*CONNECTION_ERRORS):
                await close()

    async def publish(self, topic: str, event: Event) -> str:
        if self._health.reason is not None:
            raise BrokerUnavailable(self._health.reason)
        payload = orjson.dumps({"name": event.name, "data": event.data})
        now = int(time.time() * 1000)
        try:
            event_id = await self._publish(
                keys=[
                    SEQUENCE_KEY,
                    TOPIC_PREFIX + topic,
                    LOG_PREFIX + topic,
                    EVENT_CHANNEL_PREFIX + topic,
                    TOPICS_KEY,
                ],
                args=[
                    payload,
                    self._history_size,
                    self._history_bytes,
                    now,
                    new_epoch(),
                    now - self._history_ms,
                    self._history_ms + STREAM_EXPIRY_MARGIN_MS,
                    topic,
                    TOPIC_PREFIX,
                    LOG_PREFIX,
                ],
            )
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"redis unreachable: {exc}") from exc
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    async def history(self, topics: Sequence[str], after: EventId | None) -> History:
        topics = list(dict.fromkeys(topics))
        try:
            # One transaction: the sequence and the histories of the same moment.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hmget(SEQUENCE_KEY, "epoch", "offset", "forgotten")
                for topic in topics:
                    pipe.hmget(TOPIC_PREFIX + topic, "epoch", "evicted", "last")
                    pipe.xrange(LOG_PREFIX + topic, "-", "+", count=1)
                    if after is not None:
                        pipe.xrange(LOG_PREFIX + topic, f"({after.offset}-0", "+")
                (epoch_bytes, last_bytes, forgotten_bytes), *replies = await pipe.execute()
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"redis unreachable: {exc}") from exc
        epoch = _text(epoch_bytes)
        valid = after is not None and after.epoch == epoch and after.offset <= int(last_bytes or 0)
        complete = valid
        cutoff = time.time() * 1000 - self._history_ms
        per_reply = 2 if after is None else 3
        oldest: int | None = None
        per_topic: list[list[tuple[int, Event]]] = []
        for index, topic in enumerate(topics):
            (topic_epoch, evicted, topic_last), head, *newer = replies[
                index * per_reply : (index + 1) * per_reply
            ]
            if epoch is None or _text(topic_epoch) != epoch:
                # Nothing published to it in this epoch (what it holds is older), or since it
                # was forgotten: what it had is missing if forgotten after the position.
                if after is not None:
                    complete = complete and held_in_full(after.offset, [int(forgotten_bytes or 0)])
                continue
            first = _offset(head[0][0]) if head and float(head[0][1][b"t"]) >= cutoff else None
            events = []
            for entry_id, fields in newer[0] if newer else ():
                if float(fields[b"t"]) < cutoff:
                    complete = False  # too old to replay: counts as missing
                    continue
                offset = _offset(entry_id)
                first = offset if first is None else first
                body = orjson.loads(fields[b"e"])
                event = Event(
                    body["name"], body.get("data"), f"{epoch}:{offset}", channel_of(topic)
                )
                events.append((offset, event))
            oldest = first if oldest is None or (first is not None and first < oldest) else oldest
            if after is not None:
                # Nothing evicted after the position, and its newest event still there if it
                # is after it (else the stream went: expired, or lost).
                newest = _offset(newer[0][-1][0]) if newer and newer[0] else None
                last = int(topic_last or 0)
                complete = (
                    complete
                    and held_in_full(after.offset, [int(evicted or 0)])
                    and (last <= after.offset or newest == last)
                )
            per_topic.append(events)
        oldest_id = f"{epoch}:{oldest}" if oldest is not None else None
        if not valid:
            return History([], False, oldest_id)  # not a position of this sequence
        return History(merge_by_offset(per_topic), complete, oldest_id)

    async def listen(self, topic: str) -> None:
        await self._topics.listen(topic)

    async def unlisten(self, topic: str) -> None:
        await self._topics.unlisten(topic)

    def _receive(self, topic: str, data: bytes) -> None:
        try:
            event_id, _, payload = data.partition(b" ")
            fields: dict[str, Any] = orjson.loads(payload)
            event = Event(fields["name"], fields.get("data"), event_id.decode(), channel_of(topic))
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed message on %r", topic)
            return
        assert self._deliver is not None
        self._deliver(topic, event)
