"""python-socketio and python-engineio, adapted (pinned to python-socketio 5.x and
python-engineio 4.x internals; each change says why).

The transport (``socketio.py``) uses these instead of the stock classes: a server that tells
handlers whether an acknowledgement was asked for, refuses client events named like its own,
replays after CONNECT, and gives every client an outgoing queue that counts its bytes; an
Engine.IO server that never hangs a request on a long-polling client's goodbye and lists the
websocket connection of each session (for the pump's direct writes); and the frames the pump
sends, which know their size and their WebSocket framing.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from typing import Any
from urllib.parse import parse_qs

import engineio
import socketio
from engineio import packet as eio_packet
from engineio.async_drivers import asgi as engineio_asgi

from broadcast.transports.direct import websocket_text
from broadcast.transports.watchdog import WatchedConnection

NAMESPACE = "/"

ack_requested: contextvars.ContextVar[bool] = contextvars.ContextVar("ack_requested")


# Handlers python-socketio keeps for itself: a client event with one of these names would
# otherwise reach them (a fake "connect" or "disconnect" skewing the count).
_SERVER_ONLY_EVENTS = frozenset({"connect", "disconnect"})
RESERVED_EVENT = "\x00reserved"
"""Stands in for a server-only event name, so the catch-all handler refuses it."""

CONNECTION = "broadcast.connection"
"""The scope key under which a websocket's ``WatchedConnection`` reaches python-engineio."""


class Frame(eio_packet.Packet):  # type: ignore[misc]
    """An Engine.IO MESSAGE packet that knows its size in bytes (for the client's buffer) and
    its WebSocket frame (for direct writes: the same bytes for every client)."""

    def __init__(self, text: str) -> None:
        super().__init__(eio_packet.MESSAGE, text)
        self.size = len(text.encode())
        self._websocket: bytes | None = None

    @property
    def websocket(self) -> bytes:
        if self._websocket is None:
            self._websocket = websocket_text(self.encode().encode())
        return self._websocket


def packet_size(pkt: Any) -> int:
    size = getattr(pkt, "size", None)
    if isinstance(size, int):
        return size
    data = getattr(pkt, "data", None)
    return len(data) if isinstance(data, str | bytes) else 1


class CountingQueue(asyncio.Queue[Any]):
    """An Engine.IO client's outgoing queue that knows how many bytes it holds.

    Its ``get`` returns a future rather than a coroutine: python-engineio's writer awaits
    ``wait_for(queue.get(), timeout)`` once per wake-up, and ``wait_for`` wraps a coroutine in a
    new Task each time (a future it takes as is), a cost paid per client per event in fan-out.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self._waiting: deque[asyncio.Future[Any]] = deque()

    def get(self) -> asyncio.Future[Any]:  # type: ignore[override]
        waiter = asyncio.get_running_loop().create_future()
        if self.empty():
            self._waiting.append(waiter)
        else:
            waiter.set_result(self.get_nowait())
        return waiter

    def put_nowait(self, item: Any) -> None:
        super().put_nowait(item)
        while self._waiting and not self.empty():
            waiter = self._waiting.popleft()
            if not waiter.done():  # not given up on (a timed-out or cancelled poll)
                waiter.set_result(self.get_nowait())

    def _put(self, item: Any) -> None:
        if item is not None:
            self.bytes += packet_size(item)
        super()._put(item)

    def _get(self) -> Any:
        item = super()._get()
        if item is not None:
            self.bytes -= packet_size(item)
        return item

    @property
    def idle(self) -> bool:
        """Its writer is waiting for packets: everything queued before has been sent (the
        writer takes the next packets only once it has written the previous ones)."""
        return bool(self._waiting) and not self._waiting[-1].done()

    def clear(self) -> None:
        """Drop everything queued (the client is being disconnected)."""
        while not self.empty():
            self.get_nowait()
            self.task_done()


class _WebSocket(engineio_asgi.WebSocket):  # type: ignore[misc]
    """python-engineio's ASGI websocket, which also lists its session's connection in
    ``EngineIOServer.websockets`` while it runs."""

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        self._server = server

    async def __call__(self, environ: dict[str, Any]) -> Any:
        session = getattr(self.handler, "__self__", None)  # the socket this websocket serves
        connection = environ.get("asgi.scope", {}).get(CONNECTION)
        websockets: dict[str, WatchedConnection] = self._server.websockets
        if session is None or not isinstance(connection, WatchedConnection):
            return await super().__call__(environ)
        websockets[session.sid] = connection
        try:
            return await super().__call__(environ)
        finally:
            if websockets.get(session.sid) is connection:
                del websockets[session.sid]


class EngineIOServer(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's server with two fixes (pinned to python-engineio 4.x internals), found
    by fuzzing (tests/test_fuzz.py):

    - disconnecting a long-polling client never waits for it to collect its CLOSE packet
      (python-engineio waits for a GET that may never come, and the POST that caused the
      disconnect is then never answered);
    - a POST to a session its client just closed is a 400, not a 500 (python-engineio's POST
      path lets the ``KeyError`` for a closed session escape);

    and ``websockets``: the connection of each session on a websocket, by Engine.IO sid.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        drivers: dict[str, Any] = getattr(self, "_async")  # noqa: B009 (untyped in engineio)
        self._async = {**drivers, "websocket": _WebSocket}  # a copy: it is module state
        self.websockets: dict[str, WatchedConnection] = {}

    async def disconnect(self, sid: str | None = None) -> None:
        if sid is None:
            await super().disconnect()
            return
        socket = self.sockets.get(sid)
        if socket is not None and not socket.closed:
            await socket.close(wait=False, abort=False, reason=self.reason.SERVER_DISCONNECT)
        self.sockets.pop(sid, None)

    async def handle_request(self, *args: Any, **kwargs: Any) -> Any:
        scope = args[0] if args else None
        if isinstance(scope, dict) and scope.get("method") == "POST":
            sid = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("sid", [""])[0]
            socket = self.sockets.get(sid)
            if socket is not None and socket.closed:
                del self.sockets[sid]  # python-engineio then answers "Invalid session"
        return await super().handle_request(*args, **kwargs)

    def create_queue(self, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:  # not a client's outgoing queue
            return super().create_queue(*args, **kwargs)
        return CountingQueue()


class GuardedServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server with these changes (pinned to python-socketio 5.x internals):

    - handlers learn whether the client asked for an acknowledgement (python-socketio hides the
      ack id), so a refusal reaches the client exactly once: the ack, else an ``error`` event;
    - a client event named like a server-only handler never reaches that handler;
    - a CONNECT that arrives on an Engine.IO session that timed out while the connect handler
      ran leaves at once (python-socketio would mark the dead session connected for good);
    - ``on_connected`` runs once the CONNECT packet is queued, so what a client missed is
      replayed after it (python-socketio has no such hook);
    - every client's outgoing queue counts its bytes (``CountingQueue``).
    """

    on_connected: Any = None

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return EngineIOServer

    async def _handle_event_internal(
        self, server: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: Any
    ) -> None:
        ack_requested.set(id is not None)
        if data and data[0] in _SERVER_ONLY_EVENTS:
            data = [RESERVED_EVENT, data[0]]
        await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await super()._handle_connect(eio_sid, namespace, data)
        namespace = namespace or NAMESPACE
        socket = self.eio.sockets.get(eio_sid)
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is not None and (socket is None or socket.closed):
            await self._handle_disconnect(eio_sid, namespace, self.reason.TRANSPORT_CLOSE)
        elif sid is not None and self.on_connected is not None:
            await self.on_connected(sid)


def decodable(message: Any) -> bool:
    data = message.get("bytes")
    if data is None:
        data = message.get("text")
    if data is None:
        return False
    try:
        eio_packet.Packet(encoded_packet=data)
    except Exception:
        return False
    return True
