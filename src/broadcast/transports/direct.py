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
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from broadcast.broker import Subscriber
from broadcast.events import Event

T = TypeVar("T")

SERVER_SEND = "broadcast.server_send"
"""The scope key under which the app keeps the ASGI server's own ``send``."""

PUMP_BACKLOG = 100_000
"""The events a transport's pump may have waiting. A pump drains its queue without ever waiting on
a client, so this bound is only reached if the event loop itself is starved; dropping the oldest
then is better than stopping them all."""

SLICE = 16
"""Clients written to between two returns to the event loop. A write costs about 10 µs (most of
it the kernel's: a loopback ``send`` is about 8 µs here), so a pass over 5,000 clients is 50 ms;
returning to the loop often lets new publishes in meanwhile, and the pass takes their events
along (``EventLog``): the clients it has yet to reach get them in the same write."""


class EventLog(Generic[T]):
    """The events a pump still owes some of its clients, by index (the ``Subscriber.offered``
    numbering): each client holds a position, the index of the next event it is owed.

    Why: a pass over thousands of clients takes tens of ms, and events keep coming meanwhile.
    Rather than waiting for the pass to end, the pump adds them here as it goes (``add``), so
    the clients it has not reached yet get them in the same write, and only those it had
    already passed need another pass. An event then waits at most one pass, not two, and each
    client still gets one write per pass however many events arrived."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self.start = 0
        """The index of ``items[0]``."""

    @property
    def head(self) -> int:
        """The index of the next event to come."""
        return self.start + len(self.items)

    def add(self, first: int, items: list[T]) -> None:
        """Add ``items``, the first of which has index ``first`` (the log's ``head`` unless it
        is empty: a pump takes its subscriber's events in order)."""
        if not self.items:
            self.start = first
        self.items.extend(items)

    def since(self, position: int) -> list[T]:
        """The events from ``position`` on."""
        return self.items[max(0, position - self.start) :]

    def trim(self, keep_from: int) -> None:
        """Forget the events before ``keep_from`` (every client is past them)."""
        drop = min(len(self.items), keep_from - self.start)
        if drop > 0:
            del self.items[:drop]
            self.start += drop


class Socket(Protocol):
    """The part of an asyncio transport a direct write uses (uvloop's have it too)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...

    def abort(self) -> None: ...

    def pause_reading(self) -> None: ...

    def write_eof(self) -> None: ...


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


class Passes(Generic[T]):
    """A transport pump's passes over its clients: the events it takes from its subscriber,
    encoded (``encode``) into its log, and the timing of each pass.

    A pump runs ``await start()``, then visits its clients, calling ``await breathe()`` every
    ``SLICE`` of them and sending each what the log owes it, then ``end(positions)``."""

    def __init__(self, subscriber: Subscriber, encode: Callable[[list[Event]], list[T]]) -> None:
        self.subscriber = subscriber
        self.log: EventLog[T] = EventLog()
        self._encode = encode
        self._behind = False  # clients the last pass had already reached when events joined it
        self._since = 0.0  # when the oldest event not yet sent to every client was queued
        self._joined_since = 0.0

    async def start(self) -> None:
        """Wait for events, unless the last pass left clients behind; raises
        ``SubscriberClosed`` when the subscriber is closed."""
        subscriber = self.subscriber
        batch = subscriber.take() if self._behind else await subscriber.next_batch()
        if batch:
            self._since = self._since if self._behind else subscriber.batch_since
            self.log.add(subscriber.offered - len(batch), self._encode(batch))
        self._behind, self._joined_since = False, 0.0

    async def breathe(self) -> None:
        """Return to the event loop, so publishes get in; their events join this pass."""
        await asyncio.sleep(0)
        subscriber = self.subscriber
        more = subscriber.take()
        if more:
            self._joined_since = self._joined_since or subscriber.batch_since
            self.log.add(subscriber.offered - len(more), self._encode(more))
            self._behind = True

    def end(self, positions: Iterable[int]) -> float:
        """End a pass, given every client's position; how long its oldest event waited until
        every client had it (s)."""
        waited = time.monotonic() - self._since
        self._since = self._joined_since
        self.log.trim(min(positions, default=self.log.head))
        return waited
