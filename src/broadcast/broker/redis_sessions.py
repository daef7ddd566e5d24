"""Socket.IO recovery sessions in Redis: whichever node the client comes back to can take it.

Each session is one key, ``broadcast:sio:session:<pid>``, its ``KeptSession`` JSON, with a TTL
of what is left of the recovery window (so it expires at the same moment wherever it waited).

Deliberate choices:
- ``keep`` never waits on Redis: it notes the session and wakes the writer task
  (``socketio-sessions``), which writes whatever accumulated, ``BATCH`` sessions per call of a
  script that ``SET``s each with ``PX``. A drain closes 5,000 clients in a row: 5,000 awaited
  round trips would cost about half of its one-second budget, one script call about 0.1 s. The
  script computes key names, as the rest of the Redis backend assumes one Redis (no Cluster).
- ``take`` is single use: ``GET`` and ``DEL`` in one ``MULTI`` (``GETDEL`` semantics on any
  Redis, as the Socket.IO Redis streams adapter does it). A pid still waiting to be written is
  taken from memory (and never written); one in a batch being written waits for that batch.
- Redis errors are never fatal and never reach a client: a batch that cannot be written is
  logged and dropped (its clients get fresh sessions), ``take`` answers ``None``. Each command
  is tried once more on a connection error, as a pooled connection left idle across a Redis
  restart fails on first use: a ``SET`` again is harmless, and a ``GET``+``DEL`` again at worst
  finds the key already deleted (never hands a session out twice).
- ``kept`` counts the sessions this node kept and did not see taken or expire: one taken on
  another node still counts here until its window ends (no node knows Redis' whole set cheaply).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError

from broadcast.broker.redis_link import (
    CONNECTION_ERRORS,
    PREFIX,
    Backoff,
    Health,
    connect,
    raise_if_cancelling,
    until_cancelled,
)
from broadcast.recovery import KeptSession
from broadcast.supervisor import Supervisor

logger = logging.getLogger(__name__)

KEY_PREFIX = PREFIX + "sio:session:"
BATCH = 1000
"""Sessions per pipeline: one write never holds Redis (or this loop) for long."""
MAX_UNWRITTEN = 100_000
"""Sessions waiting to be written at most (a long outage): beyond, new ones are dropped."""
TASK = "socketio-sessions"

KEEP = """
local prefix = ARGV[1]
for i = 2, #ARGV, 3 do
  redis.call('SET', prefix .. ARGV[i], ARGV[i + 1], 'PX', ARGV[i + 2])
end
return #ARGV
"""
"""``SET <prefix><pid> <session> PX <ms>`` for each (pid, session, ms) of ARGV after the prefix.
One script call rather than a pipeline of ``SET``s: redis-py packs and parses 5,000 commands in
about 0.3 s, one command with 15,000 arguments in under 0.1 s (a drain has 0.3 s for this)."""

T = TypeVar("T")


@dataclass(slots=True)
class _Unwritten:
    session: KeptSession
    expires: float
    """``time.monotonic()`` at which the window ends."""


class RedisSessions:
    def __init__(self, url: str, window_ms: int, reconnect_max_seconds: float) -> None:
        self._redis = connect(url)
        self._keep_script = self._redis.register_script(KEEP)
        self._window = window_ms / 1000
        self._unwritten: dict[str, _Unwritten] = {}
        self._writing: set[str] = set()
        self._written = asyncio.Event()
        """Set when the batch being written is done (written or dropped); one per batch."""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._local: dict[str, float] = {}
        """pid -> end of its window, for the sessions kept here (in the order of those ends)."""
        self._health = Health("socket.io sessions")
        self._backoff = Backoff(reconnect_max_seconds)
        self._supervisor: Supervisor | None = None
        self._full = False

    async def start(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        supervisor.start(
            TASK, lambda: until_cancelled(TASK, self._health, self._backoff, self._write_forever)
        )

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.cancel(TASK)
            self._supervisor = None
        lost = len(self._unwritten) + len(self._writing)
        if lost:
            logger.warning("%d socket.io sessions not written at shutdown: not recoverable", lost)
        self._unwritten.clear()
        with contextlib.suppress(*CONNECTION_ERRORS):
            await self._redis.aclose()

    def keep(self, session: KeptSession) -> None:
        if len(self._unwritten) >= MAX_UNWRITTEN:
            if not self._full:  # once per spell, not once per session
                logger.warning(
                    "%d socket.io sessions waiting for redis: further ones dropped until some "
                    "are written",
                    MAX_UNWRITTEN,
                )
                self._full = True
            return
        self._prune()
        expires = time.monotonic() + self._window
        self._unwritten.pop(session.pid, None)  # kept again: its window starts again
        self._unwritten[session.pid] = _Unwritten(session, expires)
        self._local.pop(session.pid, None)
        self._local[session.pid] = expires
        self._idle.clear()
        self._wake.set()

    async def take(self, pid: str) -> KeptSession | None:
        self._local.pop(pid, None)
        unwritten = self._unwritten.pop(pid, None)
        if unwritten is not None:  # never written: nobody else can have it
            return unwritten.session if unwritten.expires > time.monotonic() else None
        if pid in self._writing:
            await self._written.wait()
        key = KEY_PREFIX + pid

        async def get_and_delete() -> list[bytes | int | None]:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(key)
                pipe.delete(key)
                result: list[bytes | int | None] = await pipe.execute()
                return result

        try:
            raw, _ = await _twice(get_and_delete)
        except CONNECTION_ERRORS as exc:
            raise_if_cancelling()
            logger.warning("socket.io session not recovered: redis unreachable: %s", exc)
            return None
        if not isinstance(raw, bytes):
            return None
        return KeptSession.decode(pid, raw)

    async def flush(self, within: float) -> int:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within)
        return len(self._unwritten) + len(self._writing)

    @property
    def kept(self) -> int:
        self._prune()
        return len(self._local)

    def _prune(self) -> None:
        """Forget the sessions whose window ended (the oldest first: the dict is in that order,
        as every window is as long)."""
        now = time.monotonic()
        local = self._local
        while local:
            pid = next(iter(local))
            if local[pid] > now:
                return
            del local[pid]

    async def _write_forever(self) -> None:
        while True:
            while self._unwritten:
                await self._write_batch()
                self._health.ok()
                self._backoff.reset()
            self._idle.set()
            self._wake.clear()
            await self._wake.wait()
            raise_if_cancelling()

    async def _write_batch(self) -> None:
        now = time.monotonic()
        batch: list[tuple[str, bytes, int]] = []
        while self._unwritten and len(batch) < BATCH:
            pid = next(iter(self._unwritten))
            unwritten = self._unwritten.pop(pid)
            left_ms = int((unwritten.expires - now) * 1000)
            if left_ms > 0:  # else its window ended while Redis was away
                batch.append((pid, unwritten.session.encode(), left_ms))
        self._full = False
        if not batch:
            return
        self._writing = {pid for pid, _, _ in batch}
        self._written = asyncio.Event()

        args: list[str | bytes | int] = [KEY_PREFIX]
        for pid, value, left_ms in batch:
            args += (pid, value, left_ms)

        async def write() -> None:
            await self._keep_script(args=args)

        try:
            await _twice(write)
        except CONNECTION_ERRORS:
            raise_if_cancelling()
            logger.warning(
                "%d socket.io sessions dropped: redis unreachable (their clients will get fresh "
                "sessions)",
                len(batch),
            )
            for pid, _, _ in batch:
                self._local.pop(pid, None)
            raise  # reported and retried by until_cancelled
        finally:
            self._writing = set()
            self._written.set()
            if not self._unwritten:
                self._idle.set()


async def _twice(attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()``, once more if the connection fails (a stale pooled connection); not after a
    timeout, which would only double the wait."""
    try:
        return await attempt()
    except (RedisConnectionError, ConnectionError):
        raise_if_cancelling()
        return await attempt()
