"""The in-process backend: the default, with nothing to set up.

Publishing is a direct call to ``deliver``: there is only one process to reach, so ``listen``
has nothing to do (the hub drops topics nobody here subscribes to). Ids are ``<epoch>:<offset>``:
an epoch made at start, one counter for every topic. Each topic's history keeps each event's data
once, as JSON bytes, within a count, an age and a byte bound of its own. Presence has no other
node to hear from.

A topic's history outlives its last event by up to the age bound; then it is forgotten (so that
a million one-off channels do not stay in memory), and the highest offset any forgotten topic
reached stands for what every topic without a history may have evicted: a client resuming from
before it gets a ``gap`` (every event up to it is too old anyway).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import fcntl
import itertools
import logging
import os
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import orjson

from broadcast.broker.base import (
    DeliverCallback,
    History,
    RemoteChannelCallback,
    RemoteTotalCallback,
    channel_of,
    held_in_full,
    merge_by_offset,
)
from broadcast.events import Event, EventId, new_epoch
from broadcast.supervisor import Supervisor

logger = logging.getLogger(__name__)


class _Kept(NamedTuple):
    """One event of the history, compactly: its data as JSON bytes, once. (Not the ``Event``,
    whose cached encodings would double or triple its size.)"""

    offset: int
    time: float
    name: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data) + len(self.name) + ENTRY_OVERHEAD


ENTRY_OVERHEAD = 220
"""Bytes counted per event kept, beyond its name and data: the entry, its numbers, the bytes
object's header, the deque's slot (about 215 on 64-bit CPython)."""


class _Stream:
    """One topic's bounded history."""

    __slots__ = ("bytes", "evicted", "kept", "last", "last_time")

    def __init__(self) -> None:
        self.kept: deque[_Kept] = deque()
        self.bytes = 0
        self.evicted = 0
        """The highest offset evicted (0: none)."""
        self.last = 0
        """The offset of the topic's newest event, and when it was published."""
        self.last_time = 0.0

    def evict_oldest(self) -> None:
        oldest = self.kept.popleft()
        self.bytes -= oldest.size
        self.evicted = oldest.offset


class MemoryBackend:
    unavailable_reason: str | None = None

    def __init__(
        self,
        history_size: int = 1000,
        history_seconds: float = 300,
        history_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._deliver: DeliverCallback | None = None
        # This process's streams die with it: a new process is a new epoch, so an id from
        # before a restart is never mistaken for one of the new events.
        self.epoch = new_epoch()
        self._last = 0
        """The offset of the newest event, whatever its topic."""
        # By last publish, oldest first: the front is the next to be forgotten.
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._forgotten = 0
        """The highest offset of a forgotten topic: what a topic without a history may have
        evicted."""
        self._history_size = history_size
        self._history_seconds = history_seconds
        self._history_bytes = history_bytes
        self._sibling_lock: int | None = None
        self._sibling_lock_path: Path | None = None

    async def start(self, deliver: DeliverCallback, supervisor: Supervisor) -> None:
        self._deliver = deliver
        self._warn_if_a_sibling_worker_runs()

    async def stop(self) -> None:
        self._deliver = None
        if self._sibling_lock is not None:
            os.close(self._sibling_lock)
            self._sibling_lock = None
        if self._sibling_lock_path is not None:
            # Not left behind: the next server whose parent gets this PID starts clean.
            with contextlib.suppress(OSError):
                self._sibling_lock_path.unlink()
            self._sibling_lock_path = None

    def _warn_if_a_sibling_worker_runs(self) -> None:
        # hypercorn's workers are children of one parent: the first to start takes a lock named
        # after it; a second worker finds it taken, and says loudly that nothing is shared.
        # Named after the user too: another user's file (a PID reused) is not ours to open.
        name = f"broadcast-memory-{os.getuid()}-{os.getppid()}.lock"
        path = Path(tempfile.gettempdir()) / name
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:  # only a warning is at stake: never fail the start for it
            logger.warning("cannot check for another worker using memory:// (%s)", exc)
            return
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            logger.error(
                "another worker of this server uses the in-process (memory://) broker too: each "
                "worker has its own user count and its own clients, and long-polling breaks "
                "without sticky sessions. Run one worker, or set BROADCAST_BROKER_URL=redis://..."
            )
            return
        self._sibling_lock = descriptor
        self._sibling_lock_path = path

    async def listen(self, topic: str) -> None:
        pass

    async def unlisten(self, topic: str) -> None:
        pass

    async def publish(self, topic: str, event: Event) -> str:
        if self._deliver is None:
            raise RuntimeError("the memory backend is not started")
        stream = self._streams.get(topic)
        if stream is None:
            stream = self._streams[topic] = _Stream()
            stream.evicted = self._forgotten
        else:
            self._streams.move_to_end(topic)
        self._last += 1
        now = time.monotonic()
        stream.last, stream.last_time = self._last, now
        event_id = str(EventId(self.epoch, self._last))
        event = dataclasses.replace(event, id=event_id)
        # The JSON as exact-size bytes: orjson.dumps's own result keeps its whole working buffer
        # (260 KB for a 30 KB document), and the transports encode from ``json_data`` anyway.
        kept = _Kept(self._last, now, event.name, event.json_data.encode())
        stream.kept.append(kept)
        stream.bytes += kept.size
        self._trim(stream)
        self._forget_quiet_topics(now)
        self._deliver(topic, event)
        return event_id

    def _trim(self, stream: _Stream) -> None:
        """Within every bound: count, bytes (the newest event too, if it alone is over), age."""
        while len(stream.kept) > self._history_size or stream.bytes > self._history_bytes:
            stream.evict_oldest()
        oldest_allowed = time.monotonic() - self._history_seconds
        while stream.kept and stream.kept[0].time < oldest_allowed:
            stream.evict_oldest()

    def _forget_quiet_topics(self, now: float) -> None:
        """Drop the histories whose every event is too old (amortised O(1) a publish)."""
        oldest_allowed = now - self._history_seconds
        while self._streams:
            topic, stream = next(iter(self._streams.items()))
            if stream.last_time >= oldest_allowed:
                return
            self._forgotten = max(self._forgotten, stream.last)
            del self._streams[topic]

    async def history(self, topics: Sequence[str], after: EventId | None) -> History:
        streams: list[tuple[str, _Stream | None]] = [
            (topic, self._streams.get(topic)) for topic in dict.fromkeys(topics)
        ]
        held = [stream for _, stream in streams if stream is not None]
        for stream in held:
            self._trim(stream)
        firsts = [stream.kept[0].offset for stream in held if stream.kept]
        oldest = str(EventId(self.epoch, min(firsts))) if firsts else None
        if after is None or after.epoch != self.epoch or after.offset > self._last:
            return History([], False, oldest)  # not a position of this sequence
        evicted = [self._forgotten if stream is None else stream.evicted for _, stream in streams]
        # The data goes out as it is kept, never parsed again: replaying costs no more than
        # copying it.
        per_topic = [
            [(kept.offset, self._event(kept, channel_of(topic))) for kept in newer]
            for topic, stream in streams
            if stream is not None and (newer := _after(stream.kept, after.offset))
        ]
        return History(merge_by_offset(per_topic), held_in_full(after.offset, evicted), oldest)

    def _event(self, kept: _Kept, channel: str | None) -> Event:
        return Event(
            kept.name, orjson.Fragment(kept.data), str(EventId(self.epoch, kept.offset)), channel
        )


def _after(kept: deque[_Kept], offset: int) -> list[_Kept]:
    """The events of ``kept`` after ``offset``, oldest first (read from the newest end: a
    resuming client usually missed few)."""
    newer = list(itertools.takewhile(lambda held: held.offset > offset, reversed(kept)))
    newer.reverse()
    return newer


class MemoryPresence:
    """One node alone: its channels are all there is. ``on_remote_channel`` is never called: no
    other node has subscribers, and a watched channel's remote count starts at 0 (the contract),
    so it never changes."""

    unavailable_reason: str | None = None

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._users: dict[str, Mapping[str, int]] = {}
        """The named users of the channels that have some (read when asked, as the contract
        allows: no copy per change, which would cost O(users) on every join)."""
        self._sorted: list[str] | None = None
        """The active channels' names, sorted; rebuilt when asked after a channel came or went
        (a listing is rare, a join is not: no sorted insert per new channel)."""

    async def start(
        self,
        on_remote_total: RemoteTotalCallback,
        supervisor: Supervisor,
        on_remote_channel: RemoteChannelCallback,
    ) -> None:
        pass

    def local_changed(self, local_count: int) -> None:
        pass

    def channel_changed(self, channel: str, local_count: int, users: Mapping[str, int]) -> None:
        if local_count > 0:
            if channel not in self._counts:
                self._sorted = None
            self._counts[channel] = local_count
            if users:
                self._users[channel] = users
            else:
                self._users.pop(channel, None)
        elif self._counts.pop(channel, None) is not None:
            self._users.pop(channel, None)
            self._sorted = None

    def watch(self, channel: str) -> None:
        pass

    def unwatch(self, channel: str) -> None:
        pass

    async def channels(self, prefix: str, after: str | None, limit: int) -> list[tuple[str, int]]:
        if self._sorted is None:
            self._sorted = sorted(self._counts)
        names = self._sorted
        start = bisect.bisect_left(names, prefix)
        if after is not None and after >= prefix:
            start = bisect.bisect_right(names, after)
        page: list[tuple[str, int]] = []
        for index in range(start, len(names)):
            name = names[index]
            if len(page) >= limit or not name.startswith(prefix):
                break
            page.append((name, self._counts[name]))
        return page

    async def channel(self, channel: str) -> tuple[int, list[str]]:
        users = self._users.get(channel, {})
        return self._counts.get(channel, 0), sorted(name for name, n in users.items() if n > 0)

    async def stop(self) -> None:
        self._counts.clear()
        self._users.clear()
        self._sorted = None
