"""Shutting down: once the node drains, a new SSE or Socket.IO request is refused with ``503``
and ``Connection: close``, and the connections open end at once (``goodbye``).

``broadcast serve`` stops listening before it drains (``cli.py``), so new TCP connections are
refused by the kernel; this covers what still reaches the app: a request on a keep-alive
connection (python-socketio's client reuses its HTTP pool to reconnect), or on a connection
accepted just before the listener closed and read only now. Without it such a client would get
a fresh stream from a node that is going away, and the node would wait for it; a request for a
Socket.IO session (a poll, a POST) finds it closed anyway, and is answered without python-engineio
logging an error for it.

Ending thousands of connections the usual way (each stream's or websocket's end travelling
through sse-starlette or python-engineio, Litestar and hypercorn, then each task unwinding)
costs about 0.25 ms of CPU per connection: over a second at 5,000. So every connection whose
socket the app can reach (``overrides/hypercorn.py``) and whose head has gone out is ended from
under the stack instead: its last bytes (``goodbye``) go straight to its socket, followed by a
FIN, with the socket's reading paused, so that the app never hears of the end and nothing
unwinds. The process exits soon after (``cli.py``), the kernel closing the sockets. Only the
others (long-polling Socket.IO, HTTP/2, a stream not yet handed to the pump) are closed the
usual way, and the node waits for those (``Gate.settled``). A client that had stopped reading,
whose socket still holds unsent bytes, loses them and its goodbye: the connection just drops
when the process exits. Those ended from under the app never leave one by one:
``Presence.everyone_left`` counts them out and announces the named users' leaves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from broadcast.transports.framing import http_chunk

SHUTTING_DOWN = "server shutting down"
RECHECK_SECONDS = 0.1
"""How often the drain looks again for connections to close while it waits for those it closed
the usual way."""
LEAVES_SENT_WITHIN = 0.5
"""Seconds the drain waits for named users' leave announcements to reach the other nodes (one
at a time, about 0.2 ms each with Redis: some 2,500 of them; those left are dropped, and the
exit stays within a second)."""

SESSIONS_KEPT_WITHIN = 0.3
"""Seconds the drain waits for the Socket.IO sessions it keeps for recovery to reach Redis (one
script call per 1,000: 5,000 in about 0.1 s)."""
REFUSAL = json.dumps({"status_code": 503, "detail": SHUTTING_DOWN}).encode()
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(REFUSAL)).encode()),
    (b"connection", b"close"),
    (b"retry-after", b"0"),  # at once, to another node (this one no longer listens)
]


GOING_AWAY = 1001
"""The WebSocket close code of a server going away (RFC 6455 7.4.1): a client reconnects."""


def websocket_goodbye(code: int = GOING_AWAY, reason: str = SHUTTING_DOWN) -> bytes:
    """A server's WebSocket close frame (RFC 6455 5.5.1: unmasked, never compressed)."""
    payload = code.to_bytes(2, "big") + reason.encode()[:123]
    return bytes((0x88, len(payload))) + payload


WEBSOCKET_GOODBYE = websocket_goodbye()


def sse_goodbye(retry_frame: bytes, framing: Callable[[bytes], bytes]) -> bytes:
    """The end of an SSE stream written straight to its socket: the ``retry:`` hint and a
    comment saying why, then, over HTTP/1.1 (chunked), the body's last chunk (RFC 9112 7.1)
    as h11 would end it. Over HTTP/1.0 the connection's close ends the body."""
    last = framing(retry_frame + f": {SHUTTING_DOWN}\n\n".encode())
    return last + http_chunk(b"") if framing is http_chunk else last


class Gate:
    """Open while serving; closed for good once the node drains. It also counts the requests
    in progress (every one but the lifespan), so the drain can wait for those it closed the
    usual way."""

    def __init__(self) -> None:
        self.draining = False
        self.open = 0
        """Requests in progress: an SSE stream or a websocket is one for its whole life."""
        self._settled: tuple[asyncio.Event, Callable[[], int]] | None = None

    def refuses(self, scope: dict[str, Any]) -> bool:
        return self.draining and realtime(scope)

    def entered(self) -> None:
        self.open += 1

    def left(self) -> None:
        self.open -= 1
        if self._settled is not None:
            event, remaining = self._settled
            if self.open <= remaining():
                event.set()

    async def settled(self, remaining: Callable[[], int], within: float) -> bool:
        """Wait until at most ``remaining()`` requests are in progress (those ended from under
        the app, which never return), for ``within`` seconds at most; whether they were."""
        if self.open <= remaining():
            return True
        event = asyncio.Event()
        self._settled = (event, remaining)
        try:
            await asyncio.wait_for(event.wait(), within)
            return True
        except TimeoutError:
            return False
        finally:
            self._settled = None


def realtime(scope: dict[str, Any]) -> bool:
    """An SSE or Socket.IO request (those a drain closes)."""
    if scope["type"] not in ("http", "websocket"):
        return False
    path: str = scope.get("path", "")
    return path == "/events" or path == "/socket.io" or path.startswith("/socket.io/")


async def refuse(scope: dict[str, Any], send: Any) -> None:
    """Answer ``503`` (a websocket: the same through the ASGI denial response when the server
    supports it, else a close before accepting, which the server turns into a 403)."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 503, "headers": HEADERS})
        await send({"type": "http.response.body", "body": REFUSAL})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": 503, "headers": HEADERS})
        await send({"type": "websocket.http.response.body", "body": REFUSAL})
    else:
        await send({"type": "websocket.close", "code": 1013})  # try again later
