"""In-process fan-out: subscribers with bounded queues.

Deliberate choices:
- ``dispatch`` is synchronous and never blocks: it appends to each subscriber's queue and wakes
  its consumer, so one slow consumer cannot delay the others.
- A full queue does not grow (encode/broadcaster's unbounded queue grows without limit behind a
  frozen client): by default the subscriber is closed with a reason and its transport disconnects
  the client, as Centrifugo does. A transport-wide subscriber that must never be closed can ask
  to drop its oldest events instead (Litestar's ``dropleft``).
- Consumers take everything queued at once (``next_batch``), so a burst costs one write per
  client, not one per event.
- A subscriber listens to a few topics (an SSE stream of its own: everyone's events and its
  channels'), or to every topic this node listens to (a transport's pump: ``ALL``). A topic
  nobody on this node listens to is dropped here at the cost of one set lookup, so a publish to
  a channel without subscribers here wakes nobody.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from enum import Enum

from broadcast.events import Event
from broadcast.eviction import Evicted, Eviction


class Overflow(Enum):
    CLOSE = "close"
    DROP_OLDEST = "drop_oldest"


class SubscriberClosed(Exception):
    """The subscriber was closed; ``reason`` says why (slow consumer, shutdown)."""

    def __init__(self, reason: Evicted) -> None:
        super().__init__(str(reason))
        self.reason = reason


EventSize = Callable[[Event], int]
"""The bytes an event costs its consumer (the size of its encoding on that consumer's wire)."""


ALL: tuple[str, ...] = ()
"""Subscribe to every topic this node listens to (``Hub.listening``)."""


class Subscriber:
    """A bounded queue of events for one consumer (one SSE client, or one whole transport).

    Bounded in events (``max_backlog``) and, with ``max_bytes``, in bytes as ``size`` measures
    them; a single event larger than ``max_bytes`` is still taken when nothing else is queued.
    """

    def __init__(
        self,
        topics: Sequence[str],
        max_backlog: int,
        overflow: Overflow,
        max_bytes: int | None = None,
        size: EventSize | None = None,
    ) -> None:
        if max_bytes is not None and size is None:
            raise ValueError("max_bytes needs size, the function that measures an event")
        self.topics = tuple(topics)
        """The topics it receives (``ALL``: every topic listened to)."""
        self.max_backlog = max_backlog
        self.overflow = overflow
        self.max_bytes = max_bytes
        self._size = size
        # A list, not a deque: an empty deque allocates a 64-slot block (about 0.5 KB per idle
        # SSE client), and taking the whole backlog is then a swap, not a copy. Dropping the
        # oldest (a full DROP_OLDEST queue, which only a starved loop reaches) shifts the list.
        self.backlog: list[Event] = []
        self.backlog_bytes = 0
        self.dropped = 0
        self.closed_reason: Evicted | None = None
        self.on_close: Callable[[Evicted], None] | None = None
        """Called with the reason when the subscriber is closed (its consumer may be blocked
        elsewhere and learn it only later)."""
        self.waiting_since: float | None = None
        """When the oldest event now queued was queued (``time.monotonic()``)."""
        self.batch_since = 0.0
        """``waiting_since`` of the batch last taken: how long its oldest event waited."""
        self.offered = 0
        """How many events were ever queued: the index the next one will have (a consumer that
        takes a batch knows where it starts in the stream)."""
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, event: Event) -> None:
        """Queue ``event`` without blocking; apply the overflow policy when the queue is full."""
        if self.closed_reason is not None:
            return
        if len(self.backlog) >= self.max_backlog:
            if self.overflow is Overflow.CLOSE:
                self.close(
                    Evicted(Eviction.TOO_SLOW, f"{self.max_backlog} events waiting to be sent")
                )
                return
            self._drop_oldest()
        if self.max_bytes is not None and self._size is not None:
            size = self._size(event)
            while self.backlog and self.backlog_bytes + size > self.max_bytes:
                if self.overflow is Overflow.CLOSE:
                    self.close(Evicted.over_budget(self.max_bytes))
                    return
                self._drop_oldest()
            self.backlog_bytes += size
        if not self.backlog:
            self.waiting_since = time.monotonic()
        self.backlog.append(event)
        self.offered += 1
        self._wake()

    def _drop_oldest(self) -> None:
        dropped = self.backlog.pop(0)
        if self._size is not None and self.max_bytes is not None:
            self.backlog_bytes -= self._size(dropped)
        self.dropped += 1

    def close(self, reason: Evicted) -> None:
        """Stop this subscriber: its consumer gets ``SubscriberClosed(reason)`` at once."""
        if self.closed_reason is None:
            self.closed_reason = reason
            self.backlog.clear()
            self.backlog_bytes = 0
            self._wake()
            if self.on_close is not None:
                self.on_close(reason)

    async def next_batch(self) -> list[Event]:
        """Wait for at least one event and return every event queued, oldest first."""
        while not self.backlog:
            if self.closed_reason is not None:
                raise SubscriberClosed(self.closed_reason)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.take()

    def take(self) -> list[Event]:
        """Every event queued, oldest first, without waiting (maybe none)."""
        if self.closed_reason is not None:
            raise SubscriberClosed(self.closed_reason)
        batch, self.backlog = self.backlog, []
        self.backlog_bytes = 0
        self.batch_since, self.waiting_since = self.waiting_since or 0.0, None
        return batch

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Hub:
    """The subscribers of this process, by topic."""

    def __init__(self, listening: Sequence[str] = ()) -> None:
        self._topics: dict[str, set[Subscriber]] = {}
        self._everything: set[Subscriber] = set()
        self.listening: set[str] = set(listening)
        """The topics ``ALL`` subscribers receive (those with subscribers on this node)."""

    def subscribe(
        self,
        topics: str | Sequence[str],
        max_backlog: int,
        overflow: Overflow = Overflow.CLOSE,
        max_bytes: int | None = None,
        size: EventSize | None = None,
    ) -> Subscriber:
        """A subscriber of ``topics`` (one, several, or ``ALL``)."""
        topics = (topics,) if isinstance(topics, str) else topics
        subscriber = Subscriber(topics, max_backlog, overflow, max_bytes, size)
        if not subscriber.topics:
            self._everything.add(subscriber)
        for topic in subscriber.topics:
            self._topics.setdefault(topic, set()).add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._everything.discard(subscriber)
        for topic in subscriber.topics:
            subscribers = self._topics.get(topic)
            if subscribers is not None:
                subscribers.discard(subscriber)
                if not subscribers:
                    del self._topics[topic]

    def dispatch(self, topic: str, event: Event) -> None:
        """Hand ``event`` to every subscriber of ``topic`` (never blocks)."""
        # offer() never unsubscribes, so the sets cannot change while we iterate.
        if topic in self.listening:
            for subscriber in self._everything:
                subscriber.offer(event)
        for subscriber in self._topics.get(topic, ()):
            subscriber.offer(event)

    def close_all(self, reason: Evicted) -> None:
        for subscriber in self._everything:
            subscriber.close(reason)
        for subscribers in self._topics.values():
            for subscriber in subscribers:
                subscriber.close(reason)
