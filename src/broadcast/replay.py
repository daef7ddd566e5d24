"""What a reconnecting client missed, for either transport.

A client resumes from the last id it saw (SSE: ``Last-Event-ID``; Socket.IO: ``lastEventId`` in
its connect ``auth``). It gets the events after that id still held in the broker's history,
oldest first, preceded by a ``gap`` notice when some of them are no longer held, or when the id
is unknown here (not a number, or from before a restart of an in-process broker). The
transports subscribe before asking, so live events that arrive meanwhile wait in their queue;
``Missed.last_id`` tells them which of those were already replayed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from broadcast.broker import Broker, BrokerUnavailable, History
from broadcast.events import GAP, Event

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Missed:
    gap: Event | None
    """The ``gap`` notice to send first, if any: ``{lastEventId, oldestEventId}``."""
    events: list[Event]
    """The missed events still held, oldest first."""
    last_id: int
    """Live events with an id up to this one were replayed (or predate the client's id)."""

    def is_replayed(self, event: Event) -> bool:
        return event.id is not None and int(event.id) <= self.last_id


async def missed_since(broker: Broker, resume_from: str) -> Missed:
    after = int(resume_from) if resume_from.isdigit() else -1
    try:
        history = await broker.history(max(after, 0))
    except BrokerUnavailable as exc:
        logger.info("cannot replay to a reconnecting client: %s", exc)
        history = History([], False, None, 0)
    if after > history.last_id:
        after = -1  # an id from before a restart (of an in-process broker): unknown here
    gap = None
    if after < 0 or not history.complete:
        gap = Event(GAP, {"lastEventId": resume_from, "oldestEventId": history.oldest_id})
    events = history.events if after >= 0 else []
    broker.metrics.replayed.inc(len(events))
    last_id = int(events[-1].id or 0) if events else max(after, 0)
    return Missed(gap, events, last_id)
