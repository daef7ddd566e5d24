"""How often a fan-out pump returns to the event loop during a pass: its cadence.

A publish takes a turn or two of the loop to be read and answered, each turn behind a slice of
every pump. Two loads want opposite cadences:

- **Publishes at their own pace** (many publishers, or one on a timer): a publish arriving
  during a pass waits for the slice under way, which costs little, while each return to the
  loop costs a turn of it (about 3 µs). Long slices (``BREATH_SECONDS``) are cheapest.
- **A publisher that waits for each answer before the next** (one request in flight): every
  publish waits behind the slices, so long slices set its rate, about one event per pass, and
  the fan-out never falls far enough behind for a client to be owed two events at once. With
  short slices (``EAGER_BREATH_SECONDS``), publishes get in as fast as they come, their events
  join the pass under way, and each client gets all it is owed in one write: back to back over
  5,000 clients in 50 channels, about 2.5 times the deliveries per second
  (docs/performance-log.md, "Channels, third pass").

So a pump takes short slices for ``EAGER_SECONDS`` after published events reach it: long enough
for a publisher waiting on the answer to send the next, short enough that publishes at their
own pace (500/s: one every 2 ms) leave it on long slices much of the time. The events the server
makes itself (``user count``, ``channel count``) do not count: a connection storm is not sped up
by short slices, and its passes, cut by time rather than by clients, kept about 1 KB more per
connection afterwards (docs/performance-log.md, "Channels, third pass").
"""

from __future__ import annotations

from collections.abc import Iterable

from broadcast.events import Event

SLICE = 16
"""Clients visited between two returns to the event loop (a write costs about 13 µs here, most
of it the kernel's loopback ``send``: about 0.2 ms)."""

EAGER_BREATH_SECONDS = 10e-6
"""Fan-out work between two returns to the event loop just after published events came: after
about every client written."""

EAGER_SECONDS = 0.001


class Cadence:
    __slots__ = ("_eager_until",)

    def __init__(self) -> None:
        self._eager_until = 0.0

    def came(self, now: float, events: Iterable[Event]) -> None:
        """``events`` reached the pump."""
        if any(event.id is not None for event in events):  # published, not made here
            self._eager_until = now + EAGER_SECONDS

    def eager(self, now: float) -> bool:
        """Whether to return to the loop after ``EAGER_BREATH_SECONDS`` of work rather than
        after ``SLICE`` clients."""
        return now < self._eager_until
