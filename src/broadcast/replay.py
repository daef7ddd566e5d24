"""What a reconnecting client missed, for either transport.

A client resumes from the last id it saw (SSE: ``Last-Event-ID``; Socket.IO: ``lastEventId`` in
its connect ``auth``). It gets the events after that id still held in the broker's history,
oldest first, preceded by a ``gap`` notice when some of them are no longer held. An id that is
not a position of the stream now (from another epoch: before a restart of an in-process server,
before Redis lost its data; an offset not given yet; anything malformed) gets the ``gap`` notice
and no events: offsets of two epochs say nothing about each other. The transports subscribe
before asking, so live events that arrive meanwhile wait in their queue; ``Missed.is_replayed``
tells them which of those were already replayed: the one place live ids are compared. One
replay sends at most half the client's buffer (``replay_budget``): the newest events, after a
``gap``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from broadcast.broker import Broker, BrokerUnavailable, History
from broadcast.events import GAP, Event, EventId, parse_event_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Missed:
    gap: Event | None
    """The ``gap`` notice to send first, if any: ``{lastEventId, oldestEventId}``."""
    events: list[Event]
    """The missed events still held, oldest first."""
    replayed_to: EventId | None
    """Live events of this epoch up to this offset were replayed (or predate the client's id);
    ``None``: none was (every live event is new to the client)."""

    def is_replayed(self, event: Event) -> bool:
        """Whether the live ``event`` already reached the client through the replay."""
        if event.id is None or self.replayed_to is None:
            return False
        position = parse_event_id(event.id)
        return (
            position is not None
            and position.epoch == self.replayed_to.epoch
            and position.offset <= self.replayed_to.offset
        )


class ReplayFilter:
    """The one place that skips the live events a resuming client already had from its replay
    (the history can be ahead of the live stream), until the first it had not: from there on,
    every live event is new to it (``done``)."""

    __slots__ = ("done", "missed")

    def __init__(self, missed: Missed) -> None:
        self.missed = missed
        self.done = missed.replayed_to is None

    def fresh(self, events: list[Event]) -> list[Event]:
        """The events of ``events`` the client has not had."""
        if self.done:
            return events
        kept = [event for event in events if not self.missed.is_replayed(event)]
        # Ids order a stream's events: once one is new, every later one is too.
        self.done = any(event.id is not None for event in kept)
        return kept


def replay_budget(client_buffer_bytes: int) -> int:
    """The bytes of events one replay may send: half a client's buffer, so that live events have
    room while it drains (a client over its buffer is disconnected as too slow)."""
    return client_buffer_bytes // 2


def _size(event: Event) -> int:
    """About the bytes ``event`` takes on either wire (its JSON, name, id and framing)."""
    return len(event.json_data) + len(event.name) + len(event.id or "") + 32


async def missed_since(
    broker: Broker, resume_from: str, max_bytes: int, channels: list[str]
) -> Missed:
    """What a client of ``channels`` (and of the events to everyone) resuming from
    ``resume_from`` missed: at most ``max_bytes`` of events (the newest; a ``gap`` for the ones
    before them)."""
    after = parse_event_id(resume_from)
    try:
        history = await broker.history(after, [None, *channels])
    except BrokerUnavailable as exc:
        logger.info("cannot replay to a reconnecting client: %s", exc)
        history = History([], False, None)
    events, complete, oldest = history.events, history.complete, history.oldest_id
    total = 0
    for index in range(len(events) - 1, -1, -1):
        total += _size(events[index])
        if total > max_bytes:
            # More than the client could hold at once: it would be disconnected as too slow
            # before it read them, and come back for the same again.
            events, complete = events[index + 1 :], False
            oldest = events[0].id if events else oldest
            break
    gap = None
    if not complete:
        # A malformed id is not echoed back (it may be 10,000 characters of anything).
        last = resume_from if after is not None else None
        gap = Event(GAP, {"lastEventId": last, "oldestEventId": oldest})
    broker.metrics.replayed.inc(len(events))
    if events:
        replayed_to = parse_event_id(events[-1].id or "")
    else:  # the client's own position, when it is one of this stream's
        replayed_to = after if history.complete else None
    return Missed(gap, events, replayed_to)
