"""Which topics this node receives from Redis: ``SUBSCRIBE`` of exactly those its clients use.

Deliberate choices:
- A node subscribes to exactly the topics its clients use (not a pattern), so a publish to a
  channel nobody here follows costs this node nothing. The set of listened topics outlives the
  connection: each new one subscribes to them all before the node reports itself healthy.
- Batched: the topics asked for while a command is on its way go out together in the next one,
  so 100,000 channels cost a few commands, not 100,000 round trips. (Redis still confirms each
  channel: with redis-py's Python parser about 55 us apiece; hiredis, if installed, a fifth.)
- ``listen`` returns once Redis has confirmed the subscription, so a client told it is
  subscribed misses nothing published afterwards; while disconnected it returns at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from broadcast.broker.base import EVERYONE
from broadcast.broker.redis_link import PREFIX, Backoff, Health, raise_if_cancelling

EVENT_CHANNEL_PREFIX = PREFIX + "events:"

MessageCallback = Callable[[str, bytes], None]
"""Called with ``(topic, data)`` for every message received."""


class TopicSubscription:
    """The topics this node listens to, and the one connection that receives them."""

    def __init__(
        self, client: aioredis.Redis, health: Health, backoff: Backoff, on_message: MessageCallback
    ) -> None:
        self._client = client
        self._health = health
        self._backoff = backoff
        self._on_message = on_message
        # The topics this node wants (kept across reconnections), and the state of
        # the live subscription while there is one.
        self._listened: set[str] = {EVERYONE}
        self._live: PubSub | None = None
        """The subscription, once every listened topic was asked of it (``None``: none)."""
        self._subscribed: set[str] = set()
        """Topics the live subscription has sent ``SUBSCRIBE`` for (and no ``UNSUBSCRIBE``)."""
        self._unconfirmed: dict[str, int] = {}
        """``SUBSCRIBE``s sent and not yet confirmed, by topic."""
        self._changed: set[str] = set()
        """Topics listened to or not since the last command sent."""
        self._changed_event = asyncio.Event()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        """``listen`` calls waiting for Redis to confirm their topic (one future each: a caller
        that gives up cancels its own wait only)."""

    async def close(self) -> None:
        await self._client.aclose()

    async def listen(self, topic: str) -> None:
        if topic not in self._listened:
            self._listened.add(topic)
            if self._live is None:
                return  # the next connection subscribes to every listened topic
            self._changed.add(topic)
            self._changed_event.set()
        elif topic not in self._waiters:
            return  # listened to, and confirmed (or to be subscribed by the next connection)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(topic, []).append(waiter)
        await waiter

    async def unlisten(self, topic: str) -> None:
        if topic == EVERYONE or topic not in self._listened:
            return
        self._listened.discard(topic)
        if self._live is not None:
            self._changed.add(topic)
            self._changed_event.set()

    def _confirmed(self, topic: str) -> None:
        """Release the ``listen`` calls of ``topic`` if nothing about it is still under way."""
        if topic in self._changed or topic in self._unconfirmed:
            return
        for waiter in self._waiters.pop(topic, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def run(self) -> None:
        """One connection's life: subscribe to every listened topic, then receive and keep the
        subscription in step with ``listen`` / ``unlisten`` until the connection fails."""
        async with self._client.pubsub() as pubsub:
            initial = list(self._listened)
            self._subscribed = set(initial)
            self._unconfirmed = dict.fromkeys(initial, 1)
            self._changed.clear()  # this subscription starts from the whole set
            self._live = pubsub
            try:
                await pubsub.subscribe(*map(_channel, initial))
                # Two tasks on one connection: redis-py's PubSub sends a command from any task
                # (the write is one call, and sent while subscribed it reads nothing back), the
                # confirmations come through the reader. Neither may reconnect (redis-py would
                # on its own, and then both would read): the first to fail ends both.
                reader = asyncio.create_task(self._read(pubsub, len(initial)))
                writer = asyncio.create_task(self._write(pubsub))
                try:
                    done, _ = await asyncio.wait(
                        (reader, writer), return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        task.result()
                finally:
                    reader.cancel()
                    writer.cancel()
                    await asyncio.gather(reader, writer, return_exceptions=True)
            finally:
                self._live = None
                self._subscribed.clear()
                self._unconfirmed.clear()
                self._changed.clear()
                # The next connection subscribes to every listened topic: nothing to wait for.
                waiters, self._waiters = self._waiters, {}
                for waiter in itertools.chain.from_iterable(waiters.values()):
                    if not waiter.done():
                        waiter.set_result(None)

    async def _read(self, pubsub: PubSub, initial: int) -> None:
        while True:
            _ensure_connected(pubsub)
            message = await pubsub.get_message(timeout=None)
            raise_if_cancelling()
            if message is None:
                continue  # a health check's answer
            kind = message["type"]
            if kind == "message":
                self._on_message(_topic(message["channel"]), message["data"])
            elif kind == "subscribe":
                topic = _topic(message["channel"])
                left = self._unconfirmed.get(topic, 0) - 1
                if left > 0:
                    self._unconfirmed[topic] = left
                else:
                    self._unconfirmed.pop(topic, None)
                    self._confirmed(topic)
                initial -= 1
                if initial == 0:  # every listened topic is subscribed again: healthy
                    self._health.ok()
                    self._backoff.reset()

    async def _write(self, pubsub: PubSub) -> None:
        """Send what ``listen`` / ``unlisten`` changed, all of it in one command each time."""
        while True:
            await self._changed_event.wait()
            self._changed_event.clear()
            changed, self._changed = self._changed, set()
            add = [t for t in changed if t in self._listened and t not in self._subscribed]
            remove = [t for t in changed if t not in self._listened and t in self._subscribed]
            self._subscribed.update(add)
            self._subscribed.difference_update(remove)
            for topic in add:
                self._unconfirmed[topic] = self._unconfirmed.get(topic, 0) + 1
            if remove:
                _ensure_connected(pubsub)
                await pubsub.unsubscribe(*map(_channel, remove))
            if add:
                _ensure_connected(pubsub)
                await pubsub.subscribe(*map(_channel, add))
            for topic in changed:
                self._confirmed(topic)  # those that need no confirmation (any more)


def _ensure_connected(pubsub: PubSub) -> None:
    """Fail rather than let redis-py reconnect by itself (it would, on the next command or
    read; called just before one, with no wait in between)."""
    if pubsub.connection is None or not pubsub.connection.is_connected:
        raise RedisConnectionError("the subscription's connection was lost")


def _channel(topic: str) -> bytes:
    """The pub/sub channel of ``topic`` (as redis-py reports channels: bytes)."""
    return (EVENT_CHANNEL_PREFIX + topic).encode()


def _topic(channel: bytes) -> str:
    return channel.decode().removeprefix(EVENT_CHANNEL_PREFIX)
