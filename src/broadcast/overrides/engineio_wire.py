"""What python-engineio's clients are sent and refused with, as broadcast adapts it: ``Frame``s
that know their size and their WebSocket framing, an outgoing queue per client that counts its
bytes (for the client's budget), the protocol's error bodies, and one log line (not a
traceback) for a long-polling POST a client got wrong. Pinned to python-engineio 4.x, as
``engineio.py``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from engineio import packet as eio_packet
from engineio.async_drivers import asgi as engineio_asgi

from broadcast.transports.framing import websocket_text


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


def direct_connection(websockets: Mapping[str, Any], socket: Any) -> Any:
    """The connection a packet for ``socket`` may be written to directly now (``None``: queue
    it for python-engineio's writer): its websocket, when nothing of the client's is on its way
    through the writer (its queue idle, so the order holds), no upgrade is under way, and the
    socket is open. The pump's events and the heartbeat's pings both ask here."""
    connection = websockets.get(socket.sid)
    if (
        connection is not None
        and socket.queue.idle
        and socket.upgraded
        and not socket.upgrading
        and connection.writable
    ):
        return connection
    return None


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

    def peek(self) -> Any:
        """The next packet, left in the queue (``None``: empty)."""
        return self._queue[0] if self.qsize() else None  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- Engine.IO errors

# Engine.IO's error codes (the reference server's ``Server.errors``), sent as
# ``{"code": N, "message": "..."}`` with every refused request, HTTP or websocket.
UNKNOWN_TRANSPORT, UNKNOWN_SID, BAD_HANDSHAKE_METHOD, BAD_REQUEST, FORBIDDEN = range(5)
UNSUPPORTED_PROTOCOL_VERSION = 5


def error_response(status: int, code: int, message: str) -> dict[str, Any]:
    """A refusal as python-engineio's response dicts: JSON ``{"code", "message"}``."""
    reason = "FORBIDDEN" if status == 403 else "BAD REQUEST"
    return {
        "status": f"{status} {reason}",
        "headers": [("Content-Type", "application/json")],
        "response": json.dumps({"code": code, "message": message}).encode(),
    }


def code_of(message: str) -> int:
    """The Engine.IO error code of one of python-engineio's bad-request messages."""
    if message.startswith("Invalid transport"):
        return UNKNOWN_TRANSPORT
    if message.startswith("Invalid session"):
        return UNKNOWN_SID
    if "unsupported version" in message:
        return UNSUPPORTED_PROTOCOL_VERSION
    return BAD_REQUEST


async def respond(status: str, headers: list[Any], payload: Any, environ: dict[str, Any]) -> None:
    """python-engineio's ASGI ``make_response``, except that a refused websocket gets its status
    and body as an HTTP response (the ASGI websocket denial extension, which hypercorn has)
    instead of a bare close, which the server turns into a 403 without a body."""
    scope = environ["asgi.scope"]
    extensions = scope.get("extensions") or {}
    if scope["type"] != "websocket" or status.startswith("200 "):
        await engineio_asgi.make_response(status, headers, payload, environ)
    elif "websocket.http.response" not in extensions:
        await environ["asgi.send"]({"type": "websocket.close"})
    else:
        send = environ["asgi.send"]
        encoded = [(name.encode(), value.encode()) for name, value in headers]
        await send(
            {
                "type": "websocket.http.response.start",
                "status": int(status.split(" ")[0]),
                "headers": encoded,
            }
        )
        body = payload if isinstance(payload, bytes) else str(payload or "").encode()
        await send({"type": "websocket.http.response.body", "body": body})


def refusal_of(scope: dict[str, Any], query: dict[str, list[str]], transports: Any) -> Any:
    """A request python-engineio would get wrong, refused as the protocol says (``None``: let
    python-engineio handle it): no ``transport`` (it assumes polling, even for a websocket),
    a method other than GET, POST and OPTIONS (405, where the protocol says 400), a handshake
    that is not a GET, a websocket that is not ``transport=websocket``."""
    transport = query.get("transport", [None])[0]
    has_sid = "sid" in query
    if transport not in transports:
        return error_response(400, UNKNOWN_TRANSPORT, "Invalid transport")
    if scope["type"] == "websocket":
        if transport != "websocket":
            return error_response(400, BAD_REQUEST, "Invalid websocket upgrade")
        return None
    method = scope.get("method")
    if method == "OPTIONS":
        return None
    if not has_sid and method != "GET":
        return error_response(400, BAD_HANDSHAKE_METHOD, "Bad handshake method")
    if method not in ("GET", "POST"):
        return error_response(400, BAD_REQUEST, f"Method {method} not supported")
    return None


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


class ClientFaults(logging.Filter):
    """python-engineio logs a long-polling POST it cannot decode (an unknown packet type, too
    many packets, JSON nested too deep) as an error with its traceback, then answers it: a
    client's fault, made one line at info here."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "post request handler error" and record.exc_info:
            error = record.exc_info[1]
            record.msg = "refused a long-polling POST it cannot decode: %s: %s"
            record.args = (type(error).__name__, str(error)[:200])
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True
