"""The in-process backend: the default, with nothing to set up.

Publishing is a direct call to ``deliver``: there is only one process to reach. Ids are
``<epoch>:<offset>``: an epoch made at start, a counter per channel. The history keeps each event's
data once, as JSON bytes, within a count, an age and a byte bound. Presence has no other node to
hear from.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import NamedTuple

import orjson

from broadcast.broker.base import (
    DeliverCallback,
    History,
    RemoteTotalCallback,
    channel_of,
    complete_after,
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
    """One channel's offsets and bounded history."""

    def __init__(self) -> None:
        self.last = 0
        self.kept: deque[_Kept] = deque()
        self.bytes = 0

    def evict_oldest(self) -> None:
        self.bytes -= self.kept.popleft().size


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
        self._streams: dict[str, _Stream] = {}
        self._history_size = history_size
        self._history_seconds = history_seconds
        self._history_bytes = history_bytes
        self._sibling_lock: int | None = None

    async def start(self, deliver: DeliverCallback, supervisor: Supervisor) -> None:
        self._deliver = deliver
        self._warn_if_a_sibling_worker_runs()

    async def stop(self) -> None:
        self._deliver = None
        if self._sibling_lock is not None:
            os.close(self._sibling_lock)
            self._sibling_lock = None

    def _warn_if_a_sibling_worker_runs(self) -> None:
        # hypercorn's workers are children of one parent: the first to start takes a lock named
        # after it; a second worker finds it taken, and says loudly that nothing is shared.
        path = Path(tempfile.gettempdir()) / f"broadcast-memory-{os.getppid()}.lock"
        descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
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

    async def publish(self, channel: str, event: Event) -> str:
        if self._deliver is None:
            raise RuntimeError("the memory backend is not started")
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = _Stream()
        stream.last += 1
        event_id = str(EventId(self.epoch, stream.last))
        event = dataclasses.replace(event, id=event_id)
        # The JSON as exact-size bytes: orjson.dumps's own result keeps its whole working buffer
        # (260 KB for a 30 KB document), and the transports encode from ``json_data`` anyway.
        kept = _Kept(stream.last, time.monotonic(), event.name, event.json_data.encode())
        stream.kept.append(kept)
        stream.bytes += kept.size
        self._trim(stream)
        self._deliver(channel, event)
        return event_id

    def _trim(self, stream: _Stream) -> None:
        """Within every bound: count, bytes (the newest event too, if it alone is over), age."""
        while len(stream.kept) > self._history_size or stream.bytes > self._history_bytes:
            stream.evict_oldest()
        oldest_allowed = time.monotonic() - self._history_seconds
        while stream.kept and stream.kept[0].time < oldest_allowed:
            stream.evict_oldest()

    async def history(self, channel: str, after: EventId | None) -> History:
        stream = self._streams.get(channel) or _Stream()
        self._trim(stream)
        oldest = str(EventId(self.epoch, stream.kept[0].offset)) if stream.kept else None
        if after is None or after.epoch != self.epoch or after.offset > stream.last:
            return History([], False, oldest)  # not a position of this stream
        held = [kept for kept in stream.kept if kept.offset > after.offset]
        # The data goes out as it is kept, never parsed again: replaying costs no more than
        # copying it.
        where = channel_of(channel)
        events = [
            Event(
                kept.name, orjson.Fragment(kept.data), str(EventId(self.epoch, kept.offset)), where
            )
            for kept in held
        ]
        first = held[0].offset if held else None
        complete = complete_after(first, after.offset, stream.last)
        return History(events, complete, oldest)


class MemoryPresence:
    unavailable_reason: str | None = None

    async def start(self, on_remote_total: RemoteTotalCallback, supervisor: Supervisor) -> None:
        pass

    def local_changed(self, local_count: int) -> None:
        pass

    def channel_changed(self, channel: str, local_count: int, users: object) -> None:
        pass  # TEMPORARY: the chpresence branch brings the real one

    def watch(self, channel: str) -> None:
        pass

    def unwatch(self, channel: str) -> None:
        pass

    async def stop(self) -> None:
        pass
