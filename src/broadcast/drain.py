"""Shutting down: once the node drains, a new SSE or Socket.IO request is refused with ``503``
and ``Connection: close``.

``broadcast serve`` stops listening before it drains (``cli.py``), so new TCP connections are
refused by the kernel; this covers what still reaches the app: a request on a keep-alive
connection (python-socketio's client reuses its HTTP pool to reconnect), or on a connection
accepted just before the listener closed and read only now. Without it such a client would get
a fresh stream from a node that is going away, and the node would wait for it; a request for a
Socket.IO session (a poll, a POST) finds it closed anyway, and is answered without python-engineio
logging an error for it.
"""

from __future__ import annotations

import json
from typing import Any

SHUTTING_DOWN = "server shutting down"
REFUSAL = json.dumps({"status_code": 503, "detail": SHUTTING_DOWN}).encode()
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(REFUSAL)).encode()),
    (b"connection", b"close"),
    (b"retry-after", b"0"),  # at once, to another node (this one no longer listens)
]


class Gate:
    """Open while serving; closed for good once the node drains."""

    def __init__(self) -> None:
        self.draining = False

    def refuses(self, scope: dict[str, Any]) -> bool:
        return self.draining and realtime(scope)


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
