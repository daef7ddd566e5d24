"""The fan-out pass, one for both transports: a pump takes events from its hub subscriber,
visits its clients, and hands each the span of events it is owed, encoded once for every client
owed the same span. Each transport keeps only its wire format: how a span becomes bytes on its
clients' sockets (``deliver``).

Why passes: a pass over thousands of clients takes tens of ms, and events keep coming meanwhile.
The pump returns to the event loop every so often (publishes get in: ``cadence.py``) and adds
what came to its log as it goes (``EventLog``), so the clients it has not reached yet get those
events in the same write; an event then waits at most one pass, and each client gets one write
per pass however many events arrived.

Channels: a pass visits only the clients owed something. When every event waiting is of some
channels, that is their members (``ChannelMembers``), not every client: a publish to a channel of
10 costs 10 visits however many clients the node holds. Each client gets the events of its own
channels and those to everyone, in order; clients owed the same events share one encoding.

A client the pump cannot keep up with is evicted with a typed reason (``eviction.py``).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Collection, Iterable
from itertools import chain, islice
from time import monotonic as clock
from typing import Any, Generic, Protocol, TypeVar

from broadcast.broker.hub import Subscriber, SubscriberClosed
from broadcast.cadence import EAGER_BREATH_SECONDS, SLICE, Cadence
from broadcast.events import Event
from broadcast.eviction import SHUTTING_DOWN, Evicted, Eviction

logger = logging.getLogger(__name__)

T = TypeVar("T")
X = TypeVar("X")

PUMP_BACKLOG = 100_000
"""The events a transport's pump may have waiting. A pump drains its queue without ever waiting on
a client, so this bound is only reached if the event loop itself is starved; dropping the oldest
then is better than stopping them all."""


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
    ``SLICE`` clients (or sooner: ``cadence.py``) and sending each what the log owes it, then
    ``end()``."""

    def __init__(self, subscriber: Subscriber, encode: Callable[[list[Event]], list[T]]) -> None:
        self.subscriber = subscriber
        self.log: EventLog[T] = EventLog()
        self._encode = encode
        self._behind = False  # clients the last pass had already reached when events joined it
        self._since = 0.0  # when the oldest event not yet sent to every client was queued
        self._joined_since = 0.0
        self._first_joined = 0  # the index of the first event that joined the pass under way
        self.cadence = Cadence()

    async def start(self) -> None:
        """Wait for events, unless the last pass left clients behind; raises
        ``SubscriberClosed`` when the subscriber is closed."""
        subscriber = self.subscriber
        batch = subscriber.take() if self._behind else await subscriber.next_batch()
        if batch:
            self.cadence.came(clock(), batch)
            self._since = self._since if self._behind else subscriber.batch_since
            self.log.add(subscriber.offered - len(batch), self._encode(batch))
        self._behind, self._joined_since = False, 0.0
        self._first_joined = self.log.head

    async def breathe(self) -> None:
        """Return to the event loop, so publishes get in; their events join this pass."""
        await asyncio.sleep(0)
        subscriber = self.subscriber
        more = subscriber.take()
        if more:
            self.cadence.came(clock(), more)
            self._joined_since = self._joined_since or subscriber.batch_since
            self.log.add(subscriber.offered - len(more), self._encode(more))
            self._behind = True

    def end(self) -> float:
        """End a pass; how long its oldest event waited until every client had it (s).

        The pass visited every client owed the events it started with, so those are forgotten;
        those that joined it are kept for the next pass (some clients were visited before they
        came). A client a pass did not visit may hold an older position: the log starts later,
        and nothing before its start was owed to it."""
        waited = clock() - self._since
        self._since = self._joined_since
        self.log.trim(self._first_joined)
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
    def channels(self) -> Collection[str]:
        """The channels it subscribes to (besides the events to everyone)."""

    @property
    def gone(self) -> bool:
        """It left, or was evicted: the pump skips it."""


R = TypeVar("R", bound=Recipient)


class ChannelMembers(Generic[R]):
    """A transport's clients by channel (insertion-ordered: a dict as an ordered set)."""

    def __init__(self) -> None:
        self._channels: dict[str, dict[R, None]] = {}

    def join(self, client: R, channel: str) -> None:
        self._channels.setdefault(channel, {})[client] = None

    def leave(self, client: R, channel: str) -> None:
        members = self._channels.get(channel)
        if members is not None:
            members.pop(client, None)
            if not members:
                del self._channels[channel]

    def leave_all(self, client: R) -> None:
        for channel in client.channels:
            self.leave(client, channel)

    def of(self, channel: str) -> Collection[R]:
        return self._channels.get(channel) or ()


_NONE: frozenset[str] = frozenset()


class _Index:
    """The log's events by channel, each with its index, for one pass: which of them a client at
    some position, of some channels, is owed.

    One index serves every client of the pass, whatever its position (a client's events are
    cut from its channels' lists with a bisection), and grows as events join the pass. Built
    per position instead, a storm's pass (clients at hundreds of positions over a log of
    thousands of ``channel count`` events) copied the log once per position: O(log x
    positions) of time and of memory at its peak."""

    __slots__ = ("_ones", "channels", "everyone", "log", "upto")

    def __init__(self, log: EventLog[Event]) -> None:
        self.log = log
        self.upto = log.start
        self.everyone: list[tuple[int, Event]] = []
        """Those to everyone."""
        self.channels: dict[str, list[tuple[int, Event]]] = {}
        self._ones: dict[str, frozenset[str]] = {}

    def extend(self) -> int:
        """Take in the events that joined the log since; its head."""
        log = self.log
        head = log.head
        if self.upto < head:
            everyone, channels = self.everyone, self.channels
            for index in range(self.upto, head):
                event = log.items[index - log.start]
                if event.channel is None:
                    everyone.append((index, event))
                else:
                    channels.setdefault(event.channel, []).append((index, event))
            self.upto = head
        return head

    def owed(self, channels: Collection[str], position: int) -> frozenset[str]:
        """The channels among ``channels`` with events from ``position`` on (from the smaller
        side: a client has a few channels, a pass after a storm hundreds)."""
        mine = self.channels
        if len(channels) == 1:  # most clients: no set to build
            for channel in channels:
                events = mine.get(channel)
                if events and events[-1][0] >= position:
                    one = self._ones.get(channel)
                    if one is None:
                        one = self._ones[channel] = frozenset((channel,))
                    return one
            return _NONE
        if len(channels) <= len(mine):
            return frozenset(
                c for c in channels if (events := mine.get(c)) and events[-1][0] >= position
            )
        return frozenset(
            c for c, events in mine.items() if events[-1][0] >= position and c in channels
        )

    def events_of(self, owed: frozenset[str], position: int) -> list[Event]:
        """The events from ``position`` on to everyone and of the channels ``owed``, in
        order."""
        start = (position,)  # sorts before (position, event): indices are distinct
        lists = [
            (events, bisect_left(events, start)) for events in map(self.channels.__getitem__, owed)
        ]
        everyone = self.everyone
        if everyone and everyone[-1][0] >= position:
            lists.append((everyone, bisect_left(everyone, start)))
        if len(lists) == 1:
            events, first = lists[0]
            return [event for _, event in islice(events, first, None)]
        # Indices are distinct: the merge never compares two events.
        return [event for _, event in heapq.merge(*(islice(e, f, None) for e, f in lists))]


class Pump(Generic[R]):
    """One transport's fan-out. The transport gives its clients (``recipients``), how a span
    reaches one of them (``deliver``, returning how many events it sent), and what each event
    must be able to encode to (``prepare``: an event that cannot is dropped, logged, and never
    stops the fan-out)."""

    def __init__(
        self,
        subscriber: Subscriber,
        recipients: Callable[[], Iterable[R]],
        members: ChannelMembers[R],
        deliver: Callable[[R, Span], int | Awaitable[int]],
        prepare: Callable[[Event], object],
        delivered: Any,
        fanout_seconds: Any,
        after_pass: Callable[[], Any] | None = None,
    ) -> None:
        self.subscriber = subscriber
        self._recipients = recipients
        self._members = members
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

    def _visits(self, events: list[Event]) -> list[R]:
        """The clients owed some of ``events``: everyone, or the members of their channels."""
        channels: dict[str, None] = {}
        for event in events:
            if event.channel is None:
                return list(self._recipients())
            channels[event.channel] = None
        if len(channels) == 1:
            return list(self._members.of(next(iter(channels))))
        return list(dict.fromkeys(chain.from_iterable(map(self._members.of, channels))))

    async def run(self) -> None:
        """Pass over the clients whenever events come, until the subscriber is closed
        (``SubscriberClosed`` propagates: the transport ends its clients)."""
        passes = Passes(self.subscriber, self._encodable)
        log = passes.log
        while True:
            await passes.start()
            delivered = 0
            deliver = self._deliver
            index = _Index(log)
            # The spans of this pass, by start and end, then by the channels owed of them.
            spans: dict[tuple[int, int], dict[frozenset[str], Span]] = {}
            head = index.extend()
            start = log.start  # until the pass ends (the log is trimmed only then)
            # The last span handed out, and what it was for: clients visited one after another
            # (a channel's members) are mostly owed the very same span.
            last: tuple[int, int, frozenset[str]] | None = None
            span = None
            cadence = passes.cadence
            breathed = clock()
            eager = cadence.eager(breathed)
            visits = 0
            for recipient in self._visits(log.items):
                visits += 1
                if visits == SLICE or (eager and clock() - breathed > EAGER_BREATH_SECONDS):
                    visits = 0
                    await passes.breathe()
                    breathed = clock()
                    eager = cadence.eager(breathed)
                    head = index.extend()
                position = recipient.position
                if position < start:
                    position = start
                if position >= head or recipient.gone:
                    continue
                recipient.position = head
                owed = index.owed(recipient.channels, position)
                if last is None or last[0] != position or last[1] != head or last[2] is not owed:
                    by_owed = spans.get((position, head))
                    if by_owed is None:
                        by_owed = spans[(position, head)] = {}
                    span = by_owed.get(owed)
                    if span is None:
                        span = by_owed[owed] = Span(
                            (position, head), index.events_of(owed, position)
                        )
                    last = (position, head, owed)
                assert span is not None
                if not span.events:
                    continue
                sent = deliver(recipient, span)
                # A transport may have to wait to hand over (Socket.IO during an upgrade).
                delivered += sent if type(sent) is int else await sent  # type: ignore[misc]
            self._delivered.inc(delivered)
            self._fanout_seconds.observe(passes.end())
            if self._after_pass is not None:
                result = self._after_pass()
                if asyncio.iscoroutine(result):
                    await result


__all__ = [
    "PUMP_BACKLOG",
    "SHUTTING_DOWN",
    "ChannelMembers",
    "EventLog",
    "Evicted",
    "Eviction",
    "Passes",
    "Pump",
    "Recipient",
    "Span",
    "SubscriberClosed",
]
