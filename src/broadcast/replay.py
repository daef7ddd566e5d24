"""What a reconnecting client missed, for either transport.

A client resumes from the last id it saw (SSE: ``Last-Event-ID``; Socket.IO: ``lastEventId`` in
its connect ``auth``). It gets the events after that id still held in the broker's history,
oldest first, preceded by a ``gap`` notice when some of them are no longer held. An id that is
not a position of the stream now (from another epoch: before a restart of an in-process server,
before Redis lost its data; an offset not given yet; anything malformed) gets the ``gap`` notice
and no events: offsets of two epochs say nothing about each other. The transports subscribe
before asking, so live events that arrive meanwhile wait in their queue; ``Missed.is_replayed``
tells them which of those were already replayed: the one place live ids are compared.
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


async def missed_since(broker: Broker, resume_from: str) -> Missed:
    after = parse_event_id(resume_from)
    try:
        history = await broker.history(after)
    except BrokerUnavailable as exc:
        logger.info("cannot replay to a reconnecting client: %s", exc)
        history = History([], False, None)
    gap = None
    if not history.complete:
        # A malformed id is not echoed back (it may be 10,000 characters of anything).
        last = resume_from if after is not None else None
        gap = Event(GAP, {"lastEventId": last, "oldestEventId": history.oldest_id})
    events = history.events
    broker.metrics.replayed.inc(len(events))
    if events:
        replayed_to = parse_event_id(events[-1].id or "")
    else:  # the client's own position, when it is one of this stream's
        replayed_to = after if history.complete else None
    return Missed(gap, events, replayed_to)
