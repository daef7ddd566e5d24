"""The contracts between the core and its backends, as small protocols (Centrifugo's split).

A ``Backend`` moves published events between processes and hands every event, its own included,
to the ``deliver`` callback exactly once; it never sees clients. A ``PresenceBackend`` shares
this node's connection count and per-channel subscribers with the other nodes and reports the
sums of theirs. The hub
(``hub.py``) does the in-process fan-out to subscribers.

Positions: one id sequence per deployment, retention per topic. A client reads several topics at
once (everyone's and its channels') and resumes with one last id, so every publish, whatever its
topic, takes the next offset of one sequence (one epoch: per process in memory, shared in Redis),
and ids of different topics compare. Each topic keeps its own bounded history, so a busy channel
never pushes a quiet one's events out; a topic remembers the highest offset it evicted, which
says whether it still holds everything after a position (its offsets are not consecutive).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
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

RemoteChannelCallback = Callable[[str, int], None]
"""Called with ``(channel, subscribers on the other live nodes)`` whenever that number changes,
for the channels this node watches."""


class BrokerUnavailable(Exception):
    """The backend cannot take events now (its server is unreachable); ``str()`` says why."""


@dataclass(frozen=True)
class History:
    """What a backend still holds of some topics after a given position."""

    events: list[Event]
    """The events of those topics after that position, merged in offset order; none when the
    position is not one of this sequence's (another epoch, an offset not given yet, or no
    position at all)."""
    complete: bool
    """False when some events of those topics after that position are no longer held (too old,
    too many or too large since), or when the position is not one of this sequence's."""
    oldest_id: str | None
    """The oldest event still held among those topics (``None`` when none is)."""


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

    async def publish(self, topic: str, event: Event) -> str:
        """Give ``event`` its id, send it on ``topic`` to every process that listens to it (this
        one included), keep it in the topic's bounded history, and return the id;
        ``BrokerUnavailable`` when it cannot. Ids are ``EventId`` strings, ``<epoch>:<offset>``:
        offsets count every event of every topic from 1 within one epoch (one sequence), and a
        sequence whose state is lost (a restart, Redis losing its data) starts a new epoch."""

    async def history(self, topics: Sequence[str], after: EventId | None) -> History:
        """The events of any of ``topics`` after position ``after`` still held, in offset order
        (``None``: a position that is not one of this sequence's); ``BrokerUnavailable`` when
        the backend cannot be asked now."""

    async def listen(self, topic: str) -> None:
        """Receive ``topic``'s events from now on (``EVERYONE``'s always are); returns once they
        will be delivered, or at once while disconnected (reconnecting listens again)."""

    async def unlisten(self, topic: str) -> None:
        """Stop receiving ``topic``'s events (some already under way may still arrive)."""


class PresenceBackend(Protocol):
    """Shares this node's user count and per-channel subscribers; reports the other nodes'."""

    @property
    def unavailable_reason(self) -> str | None:
        """Why the other nodes' counts are not known now; ``None`` when all is well."""

    async def start(
        self,
        on_remote_total: RemoteTotalCallback,
        supervisor: Supervisor,
        on_remote_channel: RemoteChannelCallback,
    ) -> None:
        """Register this node and start reporting the other nodes' total, and the other nodes'
        subscribers of every watched channel."""

    def local_changed(self, local_count: int) -> None:
        """This node's count is now ``local_count`` (never blocks; shared soon after)."""

    def channel_changed(self, channel: str, local_count: int, users: Mapping[str, int]) -> None:
        """This node now has ``local_count`` subscribers of ``channel``, of whom ``users`` are
        named (username -> connections). Never blocks; shared soon after, batched (a storm over
        500 channels costs a handful of round trips, not one per change). ``local_count`` 0
        removes this node's share. ``users`` is read when it is shared, not copied at once: pass
        the caller's own live mapping or a fresh one, never one reused for something else."""

    def watch(self, channel: str) -> None:
        """This node has local subscribers of ``channel``: report its remote count through
        ``on_remote_channel``. The count starts at 0 when watched: it is reported when it
        differs from 0, and then whenever it changes. Watching a watched channel does nothing."""

    def unwatch(self, channel: str) -> None:
        """This node no longer has local subscribers of ``channel``: stop reporting it."""

    async def channels(self, prefix: str, after: str | None, limit: int) -> list[tuple[str, int]]:
        """Active channels (count > 0 on any live node) whose names start with ``prefix``,
        sorted by name, strictly after ``after`` (cursor pagination), at most ``limit``, with
        their total counts; ``BrokerUnavailable`` when they cannot be asked now."""

    async def channel(self, channel: str) -> tuple[int, list[str]]:
        """A channel's total subscribers over all live nodes and the sorted named users present
        (``(0, [])`` for a channel nobody uses); ``BrokerUnavailable`` when it cannot be asked
        now."""

    async def stop(self) -> None:
        """Remove this node's shares (its count, its channels) at once (a clean shutdown)."""


def held_in_full(after: int, highest_evicted: Iterable[int]) -> bool:
    """Whether topics still hold every event they had after offset ``after``: a history evicts
    oldest first, so it does when the highest offset it ever evicted is not after ``after``.
    (Offsets count every topic's events: "the first held is ``after + 1``" says nothing.)"""
    return all(evicted <= after for evicted in highest_evicted)


def merge_by_offset(per_topic: Iterable[list[tuple[int, Event]]]) -> list[Event]:
    """The events of several topics' histories (each oldest first) in one offset order."""
    return [event for _, event in heapq.merge(*per_topic, key=lambda held: held[0])]
