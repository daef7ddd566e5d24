"""The contracts between the core and its backends, as small protocols (Centrifugo's split).

A ``Backend`` moves published events between processes and hands every event, its own included,
to the ``deliver`` callback exactly once; it never sees clients. A ``PresenceBackend`` shares
this node's connection count with the other nodes and reports the sum of theirs. The hub
(``hub.py``) does the in-process fan-out to subscribers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from broadcast.events import Event, EventId
from broadcast.supervisor import Supervisor

EVERYONE = "global"
"""The topic of events to everyone."""
CHANNEL_TOPIC_PREFIX = "channel:"
"""A channel's topic is its name behind this prefix, so that no channel name is ``EVERYONE``."""


def topic(channel: str | None) -> str:
    """The topic backends and the hub know ``channel`` by (``None``: everyone)."""
    return EVERYONE if channel is None else CHANNEL_TOPIC_PREFIX + channel


def channel_of(topic: str) -> str | None:
    """The channel of ``topic`` (``None``: everyone); the inverse of ``topic``."""
    return None if topic == EVERYONE else topic.removeprefix(CHANNEL_TOPIC_PREFIX)


DeliverCallback = Callable[[str, Event], None]
"""Called with ``(channel, event)`` for every event published on any node."""

RemoteTotalCallback = Callable[[int], None]
"""Called with the number of users connected to the other live nodes whenever it changes."""


class BrokerUnavailable(Exception):
    """The backend cannot take events now (its server is unreachable); ``str()`` says why."""


@dataclass(frozen=True)
class History:
    """What a backend still holds of a channel after a given position."""

    events: list[Event]
    """The events after that position, oldest first; none when the position is not one of this
    stream's (another epoch, an offset not given yet, or no position at all)."""
    complete: bool
    """False when some events after that position are no longer held (too old, too many or too
    large since), or when the position is not one of this stream's."""
    oldest_id: str | None
    """The oldest event still held (``None`` when none is)."""


class Backend(Protocol):
    """Moves published events between every process that shares it."""

    @property
    def unavailable_reason(self) -> str | None:
        """Why events cannot be published or received now; ``None`` when all is well."""

    async def start(self, deliver: DeliverCallback, supervisor: Supervisor) -> None:
        """Connect (or keep trying in the background, in tasks ``supervisor`` owns) and hand
        received events to ``deliver``."""

    async def stop(self) -> None:
        """Disconnect; no event is delivered afterwards."""

    async def publish(self, channel: str, event: Event) -> str:
        """Give ``event`` its id, send it to every process (this one included) on ``channel``,
        keep it in the channel's bounded history, and return the id; ``BrokerUnavailable`` when
        it cannot. Ids are ``EventId`` strings, ``<epoch>:<offset>``: offsets count a channel's
        events from 1 within one epoch, and a channel whose state is lost (a restart, Redis
        losing its data) starts a new epoch."""

    async def history(self, channel: str, after: EventId | None) -> History:
        """The events of ``channel`` after position ``after`` still held (``None``: a position
        that is not one of this stream's); ``BrokerUnavailable`` when the backend cannot be
        asked now."""


class PresenceBackend(Protocol):
    """Shares this node's user count; reports the total of the other live nodes."""

    @property
    def unavailable_reason(self) -> str | None:
        """Why the other nodes' counts are not known now; ``None`` when all is well."""

    async def start(self, on_remote_total: RemoteTotalCallback, supervisor: Supervisor) -> None:
        """Register this node and start reporting the other nodes' total."""

    def local_changed(self, local_count: int) -> None:
        """This node's count is now ``local_count`` (never blocks; shared soon after)."""

    def channel_changed(self, channel: str, local_count: int, users: object) -> None: ...

    def watch(self, channel: str) -> None: ...

    def unwatch(self, channel: str) -> None: ...

    async def stop(self) -> None:
        """Remove this node's share at once (a clean shutdown)."""


def complete_after(first_held: int | None, after: int, last: int) -> bool:
    """Offsets count every event of an epoch: nothing after offset ``after`` is missing when the
    first event held after it is the very next one (``first_held``, ``None`` when none is held
    after it), or when nothing was published since (``last``: the newest offset given)."""
    return first_held == after + 1 if first_held is not None else last <= after
