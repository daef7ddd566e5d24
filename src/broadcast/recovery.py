"""Socket.IO connection state recovery: the sessions kept for clients whose link died, so that
the official client can come back with the same ``sid``, identity and channels (issue 14).

A session is kept under its private id (``pid``), the credential the client presents on its
next CONNECT, for the recovery window (``BROADCAST_SOCKETIO_RECOVERY_MAX_DISCONNECTION_MS``), and
handed out at most once. Two stores: ``MemorySessions`` here (one process; the sessions die with
it, so after a restart every client gets a fresh session) and ``RedisSessions``
(``broker/redis_sessions.py``: any node can take what another kept). ``create_session_store`` in
``broker/__init__.py`` picks one by the broker URL.

Deliberate choices:
- A pid is 128 random bits (``secrets.token_urlsafe(16)``), checked against ``PID`` before any
  lookup, so a hostile CONNECT never reaches a store with junk. Pids are never logged.
- A kept session is JSON with a version (``{"v": 1, ...}``): a session written by another
  version of the server, or anything else found under the key, decodes to ``None`` (a fresh
  session for that client), never to an exception.
- The grant is kept as its entries (names and patterns): ``Grant.of`` rebuilds the same grant,
  so a recovered client is admitted to exactly what its token granted, without the token.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from broadcast.channels import Grant
from broadcast.supervisor import Supervisor

__all__ = [
    "PID",
    "VERSION",
    "KeptSession",
    "MemorySessions",
    "SessionStore",
    "new_pid",
]

PID = re.compile(r"[A-Za-z0-9_-]{22}")
"""What ``new_pid`` makes (16 bytes, base64url, unpadded); anything else is refused unread."""

VERSION = 1
"""The layout of an encoded ``KeptSession``; bumped whenever it changes."""


def new_pid() -> str:
    return secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class KeptSession:
    """What a recovery restores: the ``sid``, who the client is, what its token granted, and the
    channels it was subscribed to. The pid is the key it is kept under (not in the encoding)."""

    sid: str
    pid: str
    username: str | None
    grant_entries: tuple[str, ...]
    """The grant's names and patterns (``Grant.of`` takes them back)."""
    channels: tuple[str, ...]

    @classmethod
    def of(
        cls, sid: str, pid: str, username: str | None, grant: Grant, channels: Iterable[str]
    ) -> KeptSession:
        """The session of a client that has ``grant`` and is subscribed to ``channels``."""
        return cls(sid, pid, username, (*sorted(grant.names), *grant.patterns), tuple(channels))

    def grant(self) -> Grant:
        """The grant the client had (``Grant.NONE`` when it had none)."""
        return Grant.of(self.grant_entries)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": VERSION,
                "sid": self.sid,
                "user": self.username,
                "grant": self.grant_entries,
                "channels": self.channels,
            }
        )

    @classmethod
    def decode(cls, pid: str, raw: bytes | str) -> KeptSession | None:
        """The session ``encode`` wrote, or ``None`` for anything else (not JSON, another
        version, wrong types): the client then gets a fresh session."""
        try:
            value: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(value, dict) or value.get("v") != VERSION:
            return None
        sid, username = value.get("sid"), value.get("user")
        grant, channels = _strings(value.get("grant")), _strings(value.get("channels"))
        if not (isinstance(sid, str) and sid) or grant is None or channels is None:
            return None
        if username is not None and not isinstance(username, str):
            return None
        return cls(sid, pid, username, grant, channels)


def _strings(value: object) -> tuple[str, ...] | None:
    """``value`` when it is a list of strings (as a tuple), else ``None``."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None


class SessionStore(Protocol):
    """Where sessions wait for their client to come back."""

    async def start(self, supervisor: Supervisor) -> None:
        """Start the store's tasks, if any (owned by ``supervisor``)."""

    async def stop(self) -> None:
        """Stop them; sessions not yet written are lost (``flush`` first to keep them)."""

    def keep(self, session: KeptSession) -> None:
        """Keep ``session`` for the recovery window. Never blocks and never raises (a drain
        keeps thousands in a row): a session that cannot be kept is logged and dropped, and its
        client gets a fresh session."""

    async def take(self, pid: str) -> KeptSession | None:
        """The session kept under ``pid``, at most once; ``None`` when unknown, expired,
        already taken, or the store is unavailable."""

    async def flush(self, within: float) -> int:
        """Wait at most ``within`` seconds for the sessions kept so far to be written; the
        number still unwritten then (0: all kept)."""

    @property
    def kept(self) -> int:
        """Sessions this node kept that were neither taken (here) nor expired."""


class MemorySessions:
    """Sessions in this process: a dict, and one timer per session that removes it exactly at
    the end of the window (so the ``broadcast_socketio_recovery_sessions`` gauge is exact)."""

    def __init__(self, window_seconds: float) -> None:
        self._window = window_seconds
        self._sessions: dict[str, tuple[KeptSession, asyncio.TimerHandle]] = {}

    async def start(self, supervisor: Supervisor) -> None:
        """Nothing to run: the timers are the loop's."""

    async def stop(self) -> None:
        for _, timer in self._sessions.values():
            timer.cancel()
        self._sessions.clear()

    def keep(self, session: KeptSession) -> None:
        self._forget(session.pid)
        timer = asyncio.get_running_loop().call_later(self._window, self._forget, session.pid)
        self._sessions[session.pid] = (session, timer)

    async def take(self, pid: str) -> KeptSession | None:
        kept = self._sessions.pop(pid, None)
        if kept is None:
            return None
        session, timer = kept
        timer.cancel()
        return session

    async def flush(self, within: float) -> int:
        return 0  # nothing is ever waiting to be written

    @property
    def kept(self) -> int:
        return len(self._sessions)

    def _forget(self, pid: str) -> None:
        kept = self._sessions.pop(pid, None)
        if kept is not None:
            kept[1].cancel()
