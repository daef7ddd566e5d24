"""The bytes of a fan-out write, framed once for every client: a WebSocket text frame, an
HTTP/1.1 chunk, or a bare HTTP/1.0 body, exactly as hypercorn's h11 and wsproto would frame them.
Where they go: straight to each client's socket when it can be reached
(``overrides/hypercorn.py``), else through ASGI.

The transports decide when a direct write is safe: only when nothing they sent through ASGI is
still on its way, so bytes never overtake each other, and never after the connection closed.
Writes never block: the transport buffers what the client has not read yet, and a client whose
buffer grows past ``BROADCAST_CLIENT_BUFFER_BYTES`` is disconnected as too slow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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
