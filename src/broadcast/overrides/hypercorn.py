"""hypercorn, leaned on: finding a client's socket, for the fan-out's direct writes.

Why: an ASGI server handles each ``send`` on its own. Under hypercorn one message costs a trip
through the framework's send wrappers, hypercorn's stream, h11 or wsproto framing (and zlib for
every websocket message when the client negotiated permessage-deflate), a lock, a socket write
and a ``drain``: about 30 µs, paid per client per event. A fan-out that encodes an event once
can frame it once too (``transports/framing.py``), and hand the same bytes to every client's
transport: one buffered ``transport.write``, a few µs, which never waits on the client (or,
while the transport holds nothing unsent, a write to its descriptor: ``watchdog.raw_fd``).

What it relies on (hypercorn 0.18, pinned below 0.19): hypercorn's asyncio worker serving
HTTP/1.1, where the stream's ``send`` is bound to its ``H11Protocol``, whose ``send`` is bound to
the ``TCPServer`` that owns the asyncio ``StreamWriter``; and the server's own ``send``, which
the app keeps in the scope (``SERVER_SEND``) because the framework wraps it. ``check`` looks at
those classes when the app starts; anything else (HTTP/2, the trio worker, another ASGI server,
a hypercorn whose internals moved) finds no socket and keeps the ASGI path: the same behaviour,
only slower. ``tests/test_direct.py`` checks the socket is found under the pinned hypercorn.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from broadcast.watchdog import Socket

SERVER_SEND = "broadcast.server_send"
"""The scope key under which the app keeps the ASGI server's own ``send``."""


_SOCKET_METHODS = (
    "write",
    "is_closing",
    "get_write_buffer_size",
    "abort",
    "pause_reading",  # these two: the drain's goodbye (drain.py)
    "write_eof",
)


def socket_of(scope: Any) -> Socket | None:
    """The client's socket under hypercorn's asyncio worker over HTTP/1.1, else ``None``."""
    send = scope.get(SERVER_SEND)
    stream = getattr(send, "__self__", None)  # hypercorn's HTTPStream or WSStream
    protocol = getattr(getattr(stream, "send", None), "__self__", None)
    if type(protocol).__name__ != "H11Protocol":  # HTTP/2 frames its own streams
        return None
    server = getattr(getattr(protocol, "send", None), "__self__", None)  # hypercorn's TCPServer
    writer = getattr(server, "writer", None)
    if not isinstance(writer, asyncio.StreamWriter):
        return None
    transport: Any = writer.transport
    if all(hasattr(transport, name) for name in _SOCKET_METHODS):
        return transport  # type: ignore[no-any-return]
    return None


SocketFinder = Callable[[Any], "Socket | None"]
"""How the transports find a client's socket: ``socket_of``, or ``no_socket`` when off."""


def check() -> str | None:
    """Why direct writes cannot work with the hypercorn installed (``None``: they can)."""
    try:
        from hypercorn.asyncio.tcp_server import TCPServer
        from hypercorn.protocol.h11 import H11Protocol
        from hypercorn.protocol.http_stream import HTTPStream
        from hypercorn.protocol.ws_stream import WSStream
    except ImportError as exc:
        return f"hypercorn's asyncio worker or h11 protocol is not where expected ({exc})"
    # socket_of walks: the stream's app_send -> its send (H11Protocol.stream_send) -> the
    # protocol's send (TCPServer.protocol_send) -> the server's writer.
    constructors: tuple[tuple[type, str], ...] = ((TCPServer, "writer"), (H11Protocol, "send"))
    for owner, takes in constructors:
        if takes not in inspect.signature(owner).parameters:
            return f"hypercorn's {owner.__name__} no longer takes {takes!r}"
    coroutines: tuple[tuple[type, str], ...] = (
        (TCPServer, "protocol_send"),
        (H11Protocol, "stream_send"),
        (HTTPStream, "app_send"),
        (WSStream, "app_send"),
    )
    for owner, method in coroutines:
        if not inspect.iscoroutinefunction(getattr(owner, method, None)):
            return f"hypercorn's {owner.__name__}.{method} is not a coroutine method"
    return None


def no_socket(scope: Any) -> Socket | None:
    """The socket finder when direct writes are off: every client keeps the ASGI path."""
    return None
