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

from broadcast.events import Event

DeliverCallback = Callable[[str, Event], None]
"""Called with ``(channel, event)`` for every event published on any node."""

RemoteTotalCallback = Callable[[int], None]
"""Called with the number of users connected to the other live nodes whenever it changes."""


class BrokerUnavailable(Exception):
    """The backend cannot take events now (its server is unreachable); ``str()`` says why."""


@dataclass(frozen=True)
class History:
    """What a backend still holds of a channel after a given id."""

    events: list[Event]
    """The events after that id, oldest first."""
    complete: bool
    """False when some events after that id are no longer held (too old, or too many since)."""
    oldest_id: str | None
    """The oldest event still held (``None`` when none is)."""
    last_id: int
    """The newest id given so far (an ``after`` beyond it comes from before a restart)."""


class Backend(Protocol):
    """Moves published events between every process that shares it."""

    @property
    def unavailable_reason(self) -> str | None:
        """Why events cannot be published or received now; ``None`` when all is well."""

    async def start(self, deliver: DeliverCallback) -> None:
        """Connect (or keep trying in the background) and hand received events to ``deliver``."""

    async def stop(self) -> None:
        """Disconnect; no event is delivered afterwards."""

    async def publish(self, channel: str, event: Event) -> str:
        """Give ``event`` its id, send it to every process (this one included) on ``channel``,
        keep it in the channel's bounded history, and return the id; ``BrokerUnavailable`` when
        it cannot. Ids are increasing integers (as strings) that order a channel's events."""

    async def history(self, channel: str, after: int) -> History:
        """The events of ``channel`` after id ``after`` still held; ``BrokerUnavailable`` when
        the backend cannot be asked now."""


class PresenceBackend(Protocol):
    """Shares this node's user count; reports the total of the other live nodes."""

    @property
    def unavailable_reason(self) -> str | None:
        """Why the other nodes' counts are not known now; ``None`` when all is well."""

    async def start(self, on_remote_total: RemoteTotalCallback) -> None:
        """Register this node and start reporting the other nodes' total."""

    def local_changed(self, local_count: int) -> None:
        """This node's count is now ``local_count`` (never blocks; shared soon after)."""

    async def stop(self) -> None:
        """Remove this node's share at once (a clean shutdown)."""
