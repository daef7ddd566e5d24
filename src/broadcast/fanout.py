"""The fan-out pass, one for both transports: a pump takes events from its hub subscriber,
visits its clients, and hands each the span of events it is owed, encoded once for every client
owed the same span. Each transport keeps only its wire format: how a span becomes bytes on its
clients' sockets (``deliver``).

Why passes: a pass over thousands of clients takes tens of ms, and events keep coming meanwhile.
The pump returns to the event loop every ``SLICE`` clients (publishes get in) and adds what came
to its log as it goes (``EventLog``), so the clients it has not reached yet get those events in
the same write; an event then waits at most one pass, and each client gets one write per pass
however many events arrived.

A client the pump cannot keep up with is evicted with a typed reason (``eviction.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from broadcast.broker.hub import Subscriber, SubscriberClosed
from broadcast.events import Event
from broadcast.eviction import SHUTTING_DOWN, Evicted, Eviction

logger = logging.getLogger(__name__)

T = TypeVar("T")
X = TypeVar("X")

PUMP_BACKLOG = 100_000
"""The events a transport's pump may have waiting. A pump drains its queue without ever waiting on
a client, so this bound is only reached if the event loop itself is starved; dropping the oldest
then is better than stopping them all."""

SLICE = 16
"""Clients written to between two returns to the event loop. A write costs about 10 µs (most of
it the kernel's: a loopback ``send`` is about 8 µs here), so a pass over 5,000 clients is 50 ms;
returning to the loop often lets new publishes in meanwhile, and the pass takes their events
along (``EventLog``): the clients it has yet to reach get them in the same write."""


class EventLog(Generic[T]):
    """The events a pump still owes some of its clients, by index (the ``Subscriber.offered``
    numbering): each client holds a position, the index of the next event it is owed."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self.start = 0
        """The index of ``items[0]``."""

    @property
    def head(self) -> int:
        """The index of the next event to come."""
        return self.start + len(self.items)

    def add(self, first: int, items: list[T]) -> None:
        """Add ``items``, the first of which has index ``first`` (the log's ``head`` unless it
        is empty: a pump takes its subscriber's events in order)."""
        if not self.items:
            self.start = first
        self.items.extend(items)

    def since(self, position: int) -> list[T]:
        """The events from ``position`` on."""
        return self.items[max(0, position - self.start) :]

    def trim(self, keep_from: int) -> None:
        """Forget the events before ``keep_from`` (every client is past them)."""
        drop = min(len(self.items), keep_from - self.start)
        if drop > 0:
            del self.items[:drop]
            self.start += drop


class Passes(Generic[T]):
    """A pump's passes over its clients: the events it takes from its subscriber, encoded
    (``encode``) into its log, and the timing of each pass.

    A pump runs ``await start()``, then visits its clients, calling ``await breathe()`` every
    ``SLICE`` of them and sending each what the log owes it, then ``end(positions)``."""

    def __init__(self, subscriber: Subscriber, encode: Callable[[list[Event]], list[T]]) -> None:
        self.subscriber = subscriber
        self.log: EventLog[T] = EventLog()
        self._encode = encode
        self._behind = False  # clients the last pass had already reached when events joined it
        self._since = 0.0  # when the oldest event not yet sent to every client was queued
        self._joined_since = 0.0

    async def start(self) -> None:
        """Wait for events, unless the last pass left clients behind; raises
        ``SubscriberClosed`` when the subscriber is closed."""
        subscriber = self.subscriber
        batch = subscriber.take() if self._behind else await subscriber.next_batch()
        if batch:
            self._since = self._since if self._behind else subscriber.batch_since
            self.log.add(subscriber.offered - len(batch), self._encode(batch))
        self._behind, self._joined_since = False, 0.0

    async def breathe(self) -> None:
        """Return to the event loop, so publishes get in; their events join this pass."""
        await asyncio.sleep(0)
        subscriber = self.subscriber
        more = subscriber.take()
        if more:
            self._joined_since = self._joined_since or subscriber.batch_since
            self.log.add(subscriber.offered - len(more), self._encode(more))
            self._behind = True

    def end(self, positions: Iterable[int]) -> float:
        """End a pass, given every client's position; how long its oldest event waited until
        every client had it (s)."""
        waited = time.monotonic() - self._since
        self._since = self._joined_since
        self.log.trim(min(positions, default=self.log.head))
        return waited


class Span:
    """The events from one position of the log to its head, with their encodings made once for
    every client owed the same span (most clients of a pass are)."""

    __slots__ = ("_encoded", "bounds", "events")

    def __init__(self, bounds: tuple[int, int], events: list[Event]) -> None:
        self.bounds = bounds
        self.events = events
        self._encoded: dict[str, Any] = {}

    def encoded(self, key: str, encode: Callable[[list[Event]], X]) -> X:
        """``encode(events)``, made once per ``key`` for this span."""
        try:
            value: X = self._encoded[key]
        except KeyError:
            value = self._encoded[key] = encode(self.events)
        return value


class Recipient(Protocol):
    """A client as the pump sees it."""

    position: int
    """The index of the next event the pump owes it."""

    @property
    def gone(self) -> bool:
        """It left, or was evicted: the pump skips it."""


R = TypeVar("R", bound=Recipient)


class Pump(Generic[R]):
    """One transport's fan-out. The transport gives its clients (``recipients``), how a span
    reaches one of them (``deliver``, returning how many events it sent), and what each event
    must be able to encode to (``prepare``: an event that cannot is dropped, logged, and never
    stops the fan-out)."""

    def __init__(
        self,
        subscriber: Subscriber,
        recipients: Callable[[], Iterable[R]],
        deliver: Callable[[R, Span], int | Awaitable[int]],
        prepare: Callable[[Event], object],
        delivered: Any,
        fanout_seconds: Any,
        after_pass: Callable[[], Any] | None = None,
    ) -> None:
        self.subscriber = subscriber
        self._recipients = recipients
        self._deliver = deliver
        self._prepare = prepare
        self._delivered = delivered
        self._fanout_seconds = fanout_seconds
        self._after_pass = after_pass

    def _encodable(self, events: list[Event]) -> list[Event]:
        kept = []
        for event in events:
            try:
                self._prepare(event)
            except Exception:  # one bad event must never stop the fan-out
                logger.exception("dropped event %r: it cannot be encoded", event.name)
                continue
            kept.append(event)
        return kept

    async def run(self) -> None:
        """Pass over the clients whenever events come, until the subscriber is closed
        (``SubscriberClosed`` propagates: the transport ends its clients)."""
        passes = Passes(self.subscriber, self._encodable)
        log = passes.log
        while True:
            await passes.start()
            delivered = 0
            span = Span((-1, -1), [])
            for number, recipient in enumerate(list(self._recipients()), 1):
                if not number % SLICE:
                    await passes.breathe()
                position, head = recipient.position, log.head
                if position >= head or recipient.gone:
                    continue
                recipient.position = head
                if span.bounds != (position, head):
                    span = Span((position, head), log.since(position))
                sent = self._deliver(recipient, span)
                # A transport may have to wait to hand over (Socket.IO during an upgrade).
                delivered += sent if isinstance(sent, int) else await sent
            self._delivered.inc(delivered)
            owed = (r.position for r in self._recipients() if not r.gone)
            self._fanout_seconds.observe(passes.end(owed))
            if self._after_pass is not None:
                result = self._after_pass()
                if asyncio.iscoroutine(result):
                    await result


__all__ = [
    "PUMP_BACKLOG",
    "SHUTTING_DOWN",
    "SLICE",
    "EventLog",
    "Evicted",
    "Eviction",
    "Passes",
    "Pump",
    "Recipient",
    "Span",
    "SubscriberClosed",
]
