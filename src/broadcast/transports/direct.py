"""Writing fan-out bytes straight to a client's socket.

Why: an ASGI server handles each ``send`` on its own. Under hypercorn one message costs a trip
through the framework's send wrappers, hypercorn's stream, h11 or wsproto framing (and zlib for
every websocket message when the client negotiated permessage-deflate), a lock, a socket write
and a ``drain``: about 30 µs, paid per client per event. A fan-out that encodes an event once
can frame it once too, and hand the same bytes to every client's transport: one buffered
``transport.write``, a few µs, which never waits on the client.

What it relies on: hypercorn's asyncio worker serving HTTP/1.1 (pinned to hypercorn 0.18's
internals: the stream's ``send`` is bound to its ``H11Protocol``, whose ``send`` is bound to
the ``TCPServer`` that owns the asyncio ``StreamWriter``), and the server's own ``send``, which
the app keeps in the scope (``SERVER_SEND``) because the framework wraps it. Anything else
(HTTP/2, the trio worker, another ASGI server) finds no socket and keeps the ASGI path, so
behaviour is the same either way, only slower; ``tests/test_direct.py`` checks the socket is
found, so a hypercorn upgrade that moves these internals fails loudly.

The transports decide when a direct write is safe: only when nothing they sent through ASGI is
still on its way, so bytes never overtake each other, and never after the connection closed.
Writes never block: the transport buffers what the client has not read yet, and a client whose
buffer grows past ``BROADCAST_CLIENT_BUFFER_BYTES`` is disconnected as too slow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

SERVER_SEND = "broadcast.server_send"
"""The scope key under which the app keeps the ASGI server's own ``send``."""


class Socket(Protocol):
    """The part of an asyncio transport a direct write uses (uvloop's have it too)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...

    def abort(self) -> None: ...


_SOCKET_METHODS = ("write", "is_closing", "get_write_buffer_size", "abort")


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
    if all(
        hasattr(transport, name)
        for name in ("write", "is_closing", "get_write_buffer_size", "abort")
    ):
        return transport  # type: ignore[no-any-return]
    return None


def websocket_text(payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame (RFC 6455 5.2; a server never masks).
    Never compressed: permessage-deflate lets a sender leave any message uncompressed (RFC 7692
    6), and an uncompressed message does not touch the compression context."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = b"\x81\x7e" + n.to_bytes(2, "big")
    else:
        head = b"\x81\x7f" + n.to_bytes(8, "big")
    return head + payload


def http_chunk(payload: bytes) -> bytes:
    """One chunk of an HTTP/1.1 chunked body (RFC 9112 7.1), as h11 would frame it."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def body_framing(scope: Any) -> Callable[[bytes], bytes] | None:
    """How h11 frames a streamed response body (no Content-Length) for this request: chunked
    for HTTP/1.1, the bare bytes for HTTP/1.0 (the connection's close ends the body)."""
    version = scope.get("http_version")
    if version == "1.1":
        return http_chunk
    if version == "1.0":
        return bytes
    return None
