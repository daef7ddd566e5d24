"""Writes that never finish: the send watchdog shared by both transports.

A client that stops reading (a frozen tab, a stalled proxy) fills its TCP buffers, and then the
server's write to it blocks for good: hypercorn awaits the socket's drain with no deadline. Each
connection's ASGI ``send`` is wrapped (``WatchedConnection``) to note when a write started; one
sweep a second (``SendWatchdog``) expires connections whose write has blocked longer than
``BROADCAST_SEND_TIMEOUT_SECONDS``. Expiring cancels the blocked write, which then raises
``ClientTooSlow`` in the transport's writer, and makes the connection's next ``receive`` report
it gone, so each transport tears the client down its usual way. A transport may also expire a
connection itself (a client over its byte budget whose write is blocked).

One sweep for every connection costs two attribute writes per send on the fan-out's hot path,
where a timer per write (``asyncio.timeout``, anyio's ``move_on_after``) costs a timer handle.

A fan-out that writes to the client's socket directly (``overrides/hypercorn.py``) never
blocks; the same
deadline then applies to the socket's buffer: a connection whose socket has held more than
``STALLED_BYTES`` unsent for longer than the timeout is expired too. Expiring aborts the socket,
so a client cut off does not keep its buffers (and the TCP connection) on the server.

The watchdog also knows every connection with a socket, for the drain (``drain.py``): each one
whose transport has given it its ``goodbye`` bytes is ended from under the app at once
(``SendWatchdog.say_goodbye``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Protocol

from litestar.types import Receive, Send
from prometheus_client import Counter

logger = logging.getLogger(__name__)


class Socket(Protocol):
    """The part of an asyncio transport a direct write uses (uvloop's have it too)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...

    def abort(self) -> None: ...

    def pause_reading(self) -> None: ...

    def write_eof(self) -> None: ...


_PLAIN_TRANSPORTS = frozenset(
    {("asyncio.selector_events", "_SelectorSocketTransport"), ("uvloop.loop", "TCPTransport")}
)
"""The event loops' plain TCP transports, whose socket carries exactly the bytes written."""


def raw_fd(socket: Any) -> int | None:
    """The file descriptor under ``socket`` when it is a plain TCP transport of asyncio's or
    uvloop's (never TLS: its socket carries records, not the bytes written), for writes that
    skip the transport while it holds nothing unsent; ``None`` for any other."""
    kind = type(socket)
    if (kind.__module__, kind.__name__) not in _PLAIN_TRANSPORTS:
        return None
    if socket.get_extra_info("sslcontext") is not None:
        return None
    try:
        fd = socket.get_extra_info("socket").fileno()
    except (AttributeError, OSError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


STALLED_BYTES = 64 * 1024
"""Unsent bytes above which a socket's buffer counts as stalled: asyncio's high-water mark, where
the server's own writes would start waiting on ``drain``."""


class ClientTooSlow(Exception):
    """A write to a client blocked too long (it stopped reading), or it went over its budget."""


class WatchedConnection:
    """One connection's ASGI ``send`` and ``receive``, watched for writes that never finish."""

    def __init__(
        self,
        send: Send,
        receive: Receive,
        disconnect: dict[str, Any],
        socket: Socket | None,
        goodbye_once_accepted: bytes | None = None,
    ) -> None:
        self._send = send
        self._receive = receive
        self._disconnect = disconnect
        self.socket = socket
        """The client's socket, for direct writes (``None``: only the ASGI path is available)."""
        self._fd = raw_fd(socket) if socket is not None else None
        self.since: float | None = None
        """When the write in progress started (``None``: no write in progress)."""
        self.stalled_since: float | None = None
        """When the socket's buffer went over ``STALLED_BYTES`` (after a direct write)."""
        self.expired = False
        self.goodbye: bytes | None = None
        """What ends this connection when written straight to its socket (``say_goodbye``),
        set once everything sent through ASGI before it has gone out: the head of an SSE
        stream, a websocket's handshake."""
        self._goodbye_once_accepted = goodbye_once_accepted
        self.said_goodbye = False
        self._writer: asyncio.Task[Any] | None = None
        self._receiving: asyncio.Future[Any] | None = None

    async def send(self, message: Any) -> None:
        if self.expired:  # cut off: the blocked write raised; nothing more goes out
            return
        self.since = time.monotonic()
        self._writer = asyncio.current_task()
        try:
            await self._send(message)
        except asyncio.CancelledError:
            if self.expired and self._writer is not None:
                self._writer.uncancel()
                raise ClientTooSlow("a write blocked: the client stopped reading") from None
            raise
        finally:
            self.since = None
        if self._goodbye_once_accepted is not None and message["type"] == "websocket.accept":
            # hypercorn has written the handshake's response to the socket.
            self.goodbye, self._goodbye_once_accepted = self._goodbye_once_accepted, None

    @property
    def writable(self) -> bool:
        """A direct write is possible (there is a socket, open, and not cut off)."""
        socket = self.socket
        return socket is not None and not self.expired and not socket.is_closing()

    def write(self, data: bytes, budget: int) -> bool:
        """Write ``data`` to the socket directly (only when ``writable``); whether the socket
        now holds more than ``budget`` bytes unsent, some of it from before this write (one
        write larger than the budget still goes to a client that had taken everything).

        While the transport holds nothing unsent, the bytes go to its file descriptor, as the
        transport would send them itself but for its own cost (about 2 µs of a delivery's 20:
        docs/performance-log.md, "Channels, second pass"); what the kernel does
        not take (a full buffer, an error) goes to the transport, which keeps it, or meets the
        error and closes. ``writable`` (not closing) is checked by the caller in the same step,
        so the descriptor is still this connection's."""
        socket = self.socket
        assert socket is not None
        fd = self._fd
        if fd is not None and not socket.get_write_buffer_size():
            try:
                sent = os.write(fd, data)
            except OSError:  # full (EAGAIN), or the client gone: the transport's to handle
                sent = 0
            if sent == len(data):  # the usual case: all gone, nothing held
                self.stalled_since = None
                return False
            socket.write(data[sent:] if sent else data)
        else:
            socket.write(data)
        buffered = socket.get_write_buffer_size()
        if buffered <= STALLED_BYTES:
            self.stalled_since = None
            return False
        if self.stalled_since is None:
            self.stalled_since = time.monotonic()
        return buffered > budget and buffered > len(data)

    def stuck(self, now: float, timeout: float) -> bool:
        """A write has blocked, or the socket's buffer has been stalled, longer than
        ``timeout``."""
        if self.since is not None and now - self.since > timeout:
            return True
        if self.stalled_since is not None and self.socket is not None:
            if self.socket.get_write_buffer_size() <= STALLED_BYTES:
                self.stalled_since = None  # the client caught up since the last write
            elif now - self.stalled_since > timeout:
                return True
        return False

    async def receive(self) -> Any:
        if self.expired:
            return self._disconnect
        self._receiving = asyncio.ensure_future(self._receive())
        try:
            return await self._receiving
        except asyncio.CancelledError:
            if self.expired and self._receiving.cancelled():
                return self._disconnect
            raise
        finally:
            self._receiving = None

    def say_goodbye(self) -> bool:
        """End the connection from under the app (only once its ``goodbye`` is set): write the
        goodbye to the socket, then a FIN after it, and stop reading the socket, so the app
        never hears the client's close and never unwinds. Nothing more goes out, through ASGI
        or directly (it counts as expired). Whether it was ended so.

        The process must exit soon after: the connection's request never returns, and the
        client's close is never read (the kernel closes the socket when the process exits)."""
        socket, goodbye = self.socket, self.goodbye
        if goodbye is None or socket is None or self.expired or socket.is_closing():
            return False
        self.expired = self.said_goodbye = True
        try:
            socket.pause_reading()
            socket.write(goodbye)  # into the kernel's buffer at once, unless the client stalled
            socket.write_eof()  # a FIN once the buffer is sent
        except (OSError, RuntimeError):
            socket.abort()  # gone meanwhile: the app hears it, and unwinds this one
        return True

    def expire(self) -> None:
        """Cut the connection off: cancel a blocked write, end a pending receive, and drop the
        socket with whatever it still holds (the client is not reading it)."""
        self.expired = True
        blocked = self._writer if self.since is not None else None
        for task in (blocked, self._receiving):
            if task is not None:
                task.cancel()
        if self.socket is not None:
            self.socket.abort()


WEBSOCKET_GONE = {"type": "websocket.disconnect", "code": 1006}
HTTP_GONE = {"type": "http.disconnect"}


class SendWatchdog:
    """Expires connections whose write has blocked longer than ``timeout``."""

    def __init__(self, timeout: float, evicted: Counter) -> None:
        self.timeout = timeout
        self._evicted = evicted
        self._watched: set[WatchedConnection] = set()
        self._said_goodbye: set[WatchedConnection] = set()

    def watch(
        self,
        send: Send,
        receive: Receive,
        disconnect: dict[str, Any],
        socket: Socket | None = None,
        goodbye_once_accepted: bytes | None = None,
    ) -> WatchedConnection:
        """Watch a connection; ``goodbye_once_accepted``: a websocket's goodbye, set once its
        handshake has gone out."""
        connection = WatchedConnection(send, receive, disconnect, socket, goodbye_once_accepted)
        self._watched.add(connection)
        return connection

    def forget(self, connection: WatchedConnection) -> None:
        self._watched.discard(connection)
        self._said_goodbye.discard(connection)

    def say_goodbye(self) -> int:
        """End every connection that has its goodbye from under the app (``WatchedConnection.
        say_goodbye``); how many. (The sweep never sees them again.)"""
        ended = [c for c in self._watched if c.say_goodbye()]
        self._watched.difference_update(ended)
        self._said_goodbye.update(ended)
        return len(ended)

    @property
    def ended_from_under(self) -> int:
        """Connections ended by ``say_goodbye`` whose request has not returned (they never do,
        but for one that was already on its way out)."""
        return len(self._said_goodbye)

    def sweep(self) -> int:
        """Expire every connection stuck in a write; how many."""
        now = time.monotonic()
        timeout = self.timeout
        # Most connections are neither in a write nor stalled: skip them without a call.
        stuck = [
            c
            for c in self._watched
            if (c.since is not None or c.stalled_since is not None) and c.stuck(now, timeout)
        ]
        for connection in stuck:
            self._watched.discard(connection)
            connection.expire()
        return len(stuck)

    async def run(self) -> None:
        """Sweep until cancelled (a supervised task: ``app.py``)."""
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 4))
            if expired := self.sweep():
                logger.info("cut off %d client(s): a write to each blocked too long", expired)
                self._evicted.labels("send timeout").inc(expired)
