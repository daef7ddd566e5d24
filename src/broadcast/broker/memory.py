"""The in-process backend: the default, with nothing to set up.

Publishing is a direct call to ``deliver``: there is only one process to reach. Ids are a
counter: decimal strings that order the events. Presence has no other node to hear from.
"""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import logging
import os
import tempfile
import time
from collections import deque
from pathlib import Path

from broadcast.broker.base import DeliverCallback, History, RemoteTotalCallback
from broadcast.events import Event

logger = logging.getLogger(__name__)


class MemoryBackend:
    unavailable_reason: str | None = None

    def __init__(self, history_size: int = 1000, history_seconds: float = 300) -> None:
        self._deliver: DeliverCallback | None = None
        self._ids = itertools.count(1)
        self._last_id = 0
        self._history: dict[str, deque[tuple[int, float, Event]]] = {}
        self._history_size = history_size
        self._history_seconds = history_seconds
        self._sibling_lock: int | None = None

    async def start(self, deliver: DeliverCallback) -> None:
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
        number = next(self._ids)
        self._last_id = number
        event = dataclasses.replace(event, id=str(number))
        kept = self._history.setdefault(channel, deque(maxlen=self._history_size))
        kept.append((number, time.monotonic(), event))
        self._deliver(channel, event)
        return str(number)

    async def history(self, channel: str, after: int) -> History:
        kept = self._history.get(channel, deque())
        oldest_allowed = time.monotonic() - self._history_seconds
        while kept and kept[0][1] < oldest_allowed:
            kept.popleft()
        events = [event for number, _, event in kept if number > after]
        # Ids are one counter: nothing is missing when the first event held is the very next
        # id, or when nothing was published since.
        complete = int(events[0].id or 0) == after + 1 if events else self._last_id <= after
        return History(events, complete, str(kept[0][0]) if kept else None, self._last_id)


class MemoryPresence:
    unavailable_reason: str | None = None

    async def start(self, on_remote_total: RemoteTotalCallback) -> None:
        pass

    def local_changed(self, local_count: int) -> None:
        pass

    async def stop(self) -> None:
        pass
