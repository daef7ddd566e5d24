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
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from litestar.types import Receive, Send
from prometheus_client import Counter

from broadcast.overrides.hypercorn import Socket

logger = logging.getLogger(__name__)

STALLED_BYTES = 64 * 1024
"""Unsent bytes above which a socket's buffer counts as stalled: asyncio's high-water mark, where
the server's own writes would start waiting on ``drain``."""


class ClientTooSlow(Exception):
    """A write to a client blocked too long (it stopped reading), or it went over its budget."""


class WatchedConnection:
    """One connection's ASGI ``send`` and ``receive``, watched for writes that never finish."""

    def __init__(
        self, send: Send, receive: Receive, disconnect: dict[str, Any], socket: Socket | None
    ) -> None:
        self._send = send
        self._receive = receive
        self._disconnect = disconnect
        self.socket = socket
        """The client's socket, for direct writes (``None``: only the ASGI path is available)."""
        self.since: float | None = None
        """When the write in progress started (``None``: no write in progress)."""
        self.stalled_since: float | None = None
        """When the socket's buffer went over ``STALLED_BYTES`` (after a direct write)."""
        self.expired = False
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

    @property
    def writable(self) -> bool:
        """A direct write is possible (there is a socket, open, and not cut off)."""
        socket = self.socket
        return socket is not None and not self.expired and not socket.is_closing()

    def write(self, data: bytes, budget: int) -> bool:
        """Write ``data`` to the socket directly (only when ``writable``); whether the socket
        now holds more than ``budget`` bytes unsent, some of it from before this write (one
        write larger than the budget still goes to a client that had taken everything)."""
        assert self.socket is not None
        self.socket.write(data)
        buffered = self.socket.get_write_buffer_size()
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

    def watch(
        self,
        send: Send,
        receive: Receive,
        disconnect: dict[str, Any],
        socket: Socket | None = None,
    ) -> WatchedConnection:
        connection = WatchedConnection(send, receive, disconnect, socket)
        self._watched.add(connection)
        return connection

    def forget(self, connection: WatchedConnection) -> None:
        self._watched.discard(connection)

    def sweep(self) -> int:
        """Expire every connection stuck in a write; how many."""
        now = time.monotonic()
        stuck = [c for c in self._watched if c.stuck(now, self.timeout)]
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
