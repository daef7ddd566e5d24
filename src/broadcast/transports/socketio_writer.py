"""Socket.IO's wire: how a span of events reaches one client (its WebSocket frames written
straight to its socket, framed once for every client owed the same events, or its Engine.IO
packets queued for python-engineio's writer), and how a client over its byte budget is told
and let go. The transport (``socketio.py``) keeps the server glue.

Slow clients: every client's Engine.IO queue counts the bytes it holds; one over
``BROADCAST_CLIENT_BUFFER_BYTES`` is told why (an ``error`` event), disconnected, and counted as
gone at once.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from engineio import packet as eio_packet

from broadcast.events import ERROR, Event
from broadcast.eviction import Evicted
from broadcast.fanout import Span
from broadcast.metrics import Metrics
from broadcast.overrides.engineio_wire import Frame, direct_connection
from broadcast.overrides.socketio import GuardedServer
from broadcast.session import Client
from broadcast.users import RateLimit

TRANSPORT = "socketio"


class SocketIOClient(Client):
    """A Socket.IO client: its Engine.IO session, its chat allowance, and the live events held
    back while what it missed is replayed."""

    __slots__ = ("eio_sid", "pending", "pid", "rate_limit")

    def __init__(
        self,
        eio_sid: str,
        address: str,
        username: str | None,
        resume_from: str | None,
        position: int,
        rate_limit: RateLimit,
    ) -> None:
        super().__init__(TRANSPORT, address, username, resume_from, position)
        self.eio_sid = eio_sid
        self.rate_limit = rate_limit
        self.pending: list[Event] | None = [] if resume_from else None
        """Live events held back while what it missed is replayed (``None``: not replaying)."""
        self.pid: str | None = None
        """Its private session id, with connection state recovery on (``socketio_recovery.py``)."""


class Writer:
    def __init__(self, server: GuardedServer, budget: int, metrics: Metrics) -> None:
        self._server = server
        self._budget = budget
        self._metrics = metrics
        self._too_slow: list[str] = []
        """Clients found over their budget during a pass (evicted after it)."""

    def send(self, client: SocketIOClient, span: Span) -> int | Awaitable[int]:
        """Send one client the events of ``span``, but for those its replay already sent; how
        many (awaitable when they go through its Engine.IO queue).

        A websocket client whose Engine.IO queue is idle (nothing on its way through ASGI) gets
        their WebSocket frames written straight to its socket, framed once for every client owed
        the same events (``overrides/hypercorn.py``): the hot path, with nothing to await. Any
        other gets the packets on its Engine.IO queue, for its writer."""
        if client.pending is not None:  # replaying: these go out after
            client.pending.extend(span.events)
            return 0
        eio_sid = client.eio_sid
        eio = self._server.eio
        socket = eio.sockets.get(eio_sid)
        if socket is None or socket.closed:
            return 0
        if client.replay is not None and not client.replay.done:
            frames = _frames(client.replay.fresh(span.events), client.resume_from is not None)
            data = None
        else:
            frames, data = span.encoded(
                WITH_IDS if client.resume_from is not None else PLAIN,
                _encode_with_ids if client.resume_from is not None else _encode_plain,
            )
        if not frames:
            return 0
        connection = direct_connection(eio.websockets, socket)
        if connection is not None:
            if connection.write(data if data is not None else _websocket(frames), self._budget):
                self._too_slow.append(eio_sid)
            return len(frames)
        return self._queue(eio_sid, socket, frames)

    async def _queue(self, eio_sid: str, socket: Any, frames: list[Frame]) -> int:
        """The packets on the client's Engine.IO queue, for its writer (during an upgrade, on
        polling, or behind what its writer has yet to send)."""
        for frame in frames:
            await self._put(socket, frame)
        if socket.queue.bytes > self._budget and socket.queue.qsize() > 1:
            self._too_slow.append(eio_sid)
        return len(frames)

    async def evict_too_slow(self) -> None:
        for eio_sid in self._too_slow:
            await self._evict(eio_sid)
        self._too_slow.clear()

    @staticmethod
    async def _put(socket: Any, frame: eio_packet.Packet) -> None:
        if socket.upgrading:  # python-engineio holds packets back during the upgrade
            await socket.send(frame)
        else:  # the hot path: python-engineio's send() only adds a ping check and a log call
            socket.queue.put_nowait(frame)

    async def deliver(self, eio_sid: str, frame: eio_packet.Packet) -> None:
        socket = self._server.eio.sockets.get(eio_sid)
        if socket is not None and not socket.closed:
            await self._put(socket, frame)

    async def _evict(self, eio_sid: str) -> None:
        """Disconnect a client whose queue is over its byte budget: drop what it has queued,
        tell it why, and close; python-socketio's disconnect handler takes it out of the count."""
        socket = self._server.eio.sockets.get(eio_sid)
        if socket is None or socket.closed:
            return
        reason = Evicted.over_budget(self._budget)
        socket.queue.clear()
        self._metrics.evicted.labels(reason.kind.value).inc()
        notice = Event(ERROR, {"event": None, "error": f"disconnected: {reason}"})
        await self._put(socket, Frame(notice.socketio_text))
        await socket.close(wait=False, abort=False, reason=str(reason))
        if socket.upgraded:  # a websocket: end its writer after the close packet
            socket.queue.put_nowait(None)


PLAIN = "plain"
WITH_IDS = "with ids"


def _frames(events: list[Event], with_ids: bool) -> list[Frame]:
    """Engine.IO packets for ``events``: plain for classic clients, with ids for those that
    resume (the id as a last argument)."""
    if with_ids:
        return [Frame(event.socketio_text_with_id) for event in events]
    return [Frame(event.socketio_text) for event in events]


def _encode_plain(events: list[Event]) -> tuple[list[Frame], bytes]:
    frames = _frames(events, False)
    return frames, _websocket(frames)


def _encode_with_ids(events: list[Event]) -> tuple[list[Frame], bytes]:
    frames = _frames(events, True)
    return frames, _websocket(frames)


def _websocket(frames: list[Frame]) -> bytes:
    return b"".join(frame.websocket for frame in frames)
