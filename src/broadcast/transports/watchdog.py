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
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from litestar.types import Receive, Send
from prometheus_client import Counter

from broadcast.background import BackgroundTask

logger = logging.getLogger(__name__)


class ClientTooSlow(Exception):
    """A write to a client blocked too long (it stopped reading), or it went over its budget."""


class WatchedConnection:
    """One connection's ASGI ``send`` and ``receive``, watched for writes that never finish."""

    def __init__(self, send: Send, receive: Receive, disconnect: dict[str, Any]) -> None:
        self._send = send
        self._receive = receive
        self._disconnect = disconnect
        self.since: float | None = None
        """When the write in progress started (``None``: no write in progress)."""
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
        """Cut the connection off: cancel a blocked write, end a pending receive."""
        self.expired = True
        blocked = self._writer if self.since is not None else None
        for task in (blocked, self._receiving):
            if task is not None:
                task.cancel()


WEBSOCKET_GONE = {"type": "websocket.disconnect", "code": 1006}
HTTP_GONE = {"type": "http.disconnect"}


class SendWatchdog:
    """Expires connections whose write has blocked longer than ``timeout``."""

    def __init__(self, timeout: float, evicted: Counter) -> None:
        self.timeout = timeout
        self._evicted = evicted
        self._watched: set[WatchedConnection] = set()
        self._task = BackgroundTask("send-watchdog")

    def watch(self, send: Send, receive: Receive, disconnect: dict[str, Any]) -> WatchedConnection:
        connection = WatchedConnection(send, receive, disconnect)
        self._watched.add(connection)
        return connection

    def forget(self, connection: WatchedConnection) -> None:
        self._watched.discard(connection)

    def sweep(self) -> int:
        """Expire every connection stuck in a write; how many."""
        now = time.monotonic()
        stuck = [c for c in self._watched if c.since is not None and now - c.since > self.timeout]
        for connection in stuck:
            self._watched.discard(connection)
            connection.expire()
        return len(stuck)

    def start(self) -> None:
        self._task.start(self._run())

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 4))
            if expired := self.sweep():
                logger.info("cut off %d client(s): a write to each blocked too long", expired)
                self._evicted.labels("send timeout").inc(expired)
