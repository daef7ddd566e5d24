"""Server-Sent Events at ``GET /events`` (sse-starlette).

A stream starts as a hub subscriber of its own with a bounded queue: it opens with a ``retry:``
hint and the current ``user count`` (then, when it resumes, what it missed). After that first
chunk, a stream whose socket the app can reach (``direct.py``: hypercorn, HTTP/1.x) is handed
over to the transport's pump, one hub subscriber for all of them, as Socket.IO's: each batch of
events is framed once and the same bytes are written to every such socket, with no task woken
per client; a socket that holds more than ``BROADCAST_CLIENT_BUFFER_BYTES`` unsent is too slow
and is cut off. Other streams (HTTP/2) keep their subscriber, wait for their events and write
everything queued in one chunk through ASGI.

sse-starlette notices a client that went away (``http.disconnect``) and cancels the stream,
whose ``finally`` takes the client out of the count. Its own shutdown
detection only hooks uvicorn; hypercorn cancels open streams after its graceful timeout (the
``finally`` runs then too), and only then runs the lifespan shutdown.

Other origins may read the stream only when ``BROADCAST_CORS_ORIGINS`` lists them; a request from
an origin that is not allowed is refused (403) rather than streamed to a page that cannot read it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import anyio
from litestar import Request, get
from litestar.exceptions import (
    ClientException,
    PermissionDeniedException,
    TooManyRequestsException,
)
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter
from sse_starlette import EventSourceResponse, ServerSentEvent

from broadcast.background import BackgroundTask
from broadcast.broker import Broker, Overflow, Subscriber, SubscriberClosed
from broadcast.drain import SHUTTING_DOWN, sse_goodbye
from broadcast.events import Event
from broadcast.identity import Identity
from broadcast.limits import AddressLimit
from broadcast.presence import Presence
from broadcast.replay import Missed, missed_since, replay_budget
from broadcast.settings import Settings
from broadcast.transports.direct import (
    PUMP_BACKLOG,
    SLICE,
    Passes,
    body_framing,
    http_chunk,
    socket_of,
)
from broadcast.transports.watchdog import (
    HTTP_GONE,
    ClientTooSlow,
    SendWatchdog,
    WatchedConnection,
)
from broadcast.users import Refused

logger = logging.getLogger(__name__)

TRANSPORT = "sse"


def _frame_size(event: Event) -> int:
    return len(event.sse_frame)


@dataclass(frozen=True, eq=False)
class _Comment(Event):
    """An SSE comment (a keep-alive): queued like an event, never one."""

    @cached_property
    def sse_frame(self) -> bytes:
        return f": {self.data}\n\n".encode()


KEEP_ALIVE = _Comment("", "ping")


def _fresh(batch: list[Event], missed: Missed | None) -> tuple[list[Event], Missed | None]:
    """The events of ``batch`` not already replayed, and what is left to filter with."""
    if missed is None:
        return batch, None
    batch = [e for e in batch if not missed.is_replayed(e)]
    if any(e.id is not None for e in batch):
        missed = None  # past the replay: no more filtering
    return batch, missed


class _PushedStream:
    """A stream written by the transport's pump (``SSETransport._pump``), not its own task."""

    __slots__ = ("closed", "connection", "framing", "missed", "pos")

    def __init__(
        self,
        connection: WatchedConnection,
        framing: Callable[[bytes], bytes],
        missed: Missed | None,
        pos: int,
    ) -> None:
        self.connection = connection
        self.framing = framing
        self.missed = missed
        self.pos = pos
        """The index of the next event the pump owes this stream (``Subscriber.offered``
        numbering); those before it reached the stream through its own subscriber."""
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        """Why the stream ends, once it does (server shutdown, too slow)."""

    def end(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)


class _WatchedEventSourceResponse(EventSourceResponse):
    """sse-starlette's response with its writes timed by the send watchdog (one sweep for all
    streams) instead of its own timer per write; ``connection`` is set once it runs."""

    def __init__(self, watchdog: SendWatchdog, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watchdog = watchdog
        self.connection: WatchedConnection | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # sse-starlette's own __call__ runs three tasks per stream besides the ping: the
        # stream, the disconnect listener, and a listener for uvicorn's exit signal, which
        # never fires under hypercorn (the app drains its streams itself). This runs the first
        # two, on sse-starlette's own methods: one task less per idle client.
        connection = self.connection = self._watchdog.watch(
            send, receive, HTTP_GONE, socket_of(scope)
        )
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await self._stream_response(connection.send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self._listen_for_disconnect(connection.receive)
                group.cancel_scope.cancel()
        except* ClientTooSlow:
            pass  # cut off by the watchdog or over its budget; the stream's finally ran
        finally:
            self._watchdog.forget(connection)

    async def _send_with_timeout(self, send: Any, message: Any) -> None:
        await send(message)  # the watchdog times it


class SSETransport:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        presence: Presence,
        identity: Identity,
        addresses: AddressLimit,
        watchdog: SendWatchdog,
    ) -> None:
        self._settings = settings
        self._watchdog = watchdog
        self._broker = broker
        self._presence = presence
        self._identity = identity
        self._addresses = addresses
        self._retry_frame = ServerSentEvent(retry=settings.sse_retry_ms, sep="\n").encode()
        framings: list[Callable[[bytes], bytes]] = [http_chunk, bytes]
        self._goodbyes = {framing: sse_goodbye(self._retry_frame, framing) for framing in framings}
        """A stream's end written straight to its socket by the drain, by body framing."""
        self._delivered = broker.metrics.delivered.labels(TRANSPORT)
        self._fanout_seconds = broker.metrics.fanout_seconds.labels(TRANSPORT)
        self._streams: set[Subscriber] = set()
        self._keep_alive = BackgroundTask("sse-keep-alive")
        self._pushed: dict[_PushedStream, None] = {}
        """The streams the pump writes to, in the order they joined (a dict: an ordered set)."""
        self._pump_subscriber: Subscriber | None = None
        self._pump = BackgroundTask("sse-pump")

    @property
    def streams(self) -> int:
        """Streams open: those the pump writes to and those with a subscriber of their own."""
        return len(self._pushed) + len(self._streams)

    async def start(self) -> None:
        self._pump_subscriber = self._broker.subscribe(PUMP_BACKLOG, Overflow.DROP_OLDEST)
        self._pump.start(self._write_to_pushed(self._pump_subscriber))
        self._keep_alive.start(self._send_keep_alives())

    def close_own_streams(self, reason: str) -> int:
        """End the streams the pump does not write to, the usual way (the drain ends the
        others from under the app); how many (not counting those closed before)."""
        open_streams = [s for s in self._streams if s.closed_reason is None]
        for subscriber in open_streams:
            subscriber.close(reason)
        return len(open_streams)

    async def stop(self) -> None:
        await self._keep_alive.stop()
        await self._pump.stop()
        if self._pump_subscriber is not None:
            self._broker.unsubscribe(self._pump_subscriber)
            self._pump_subscriber = None

    async def _send_keep_alives(self) -> None:
        # One loop for every stream, rather than sse-starlette's ping task in each (a task per
        # idle client is memory). A write to a client that went away fails, which ends it.
        while True:
            await asyncio.sleep(self._settings.sse_ping_seconds)
            for subscriber in list(self._streams):
                subscriber.offer(KEEP_ALIVE)
            for number, stream in enumerate(list(self._pushed), 1):
                if not number % SLICE:
                    await asyncio.sleep(0)
                self._write(stream, stream.framing(KEEP_ALIVE.sse_frame))

    def route_handler(self) -> HTTPRouteHandler:
        @get(
            "/events",
            media_type="text/event-stream",  # for the schema: the response sets its own
            response_description="The stream: `retry:`, the `user count`, then every event as "
            "`event:`, `id:` and `data:` (JSON)",
            summary="Subscribe to every event as Server-Sent Events",
            description="`user count` first, then every event. `username` names the client "
            "(announced to everyone with the `user` event); without it the client is anonymous. "
            "With BROADCAST_JWT_SECRET set, `token` (an HS256 JWT) gives the name instead.",
            tags=["events"],
        )
        async def events(
            request: Request[Any, Any, Any],
            username: str | None = None,
            token: str | None = None,
            last_event_id: str | None = Parameter(query="lastEventId", default=None),
        ) -> EventSourceResponse:
            headers = {
                # Proxies must not buffer or cache a live stream (nginx reads X-Accel-Buffering).
                "X-Accel-Buffering": "no",
                "Cache-Control": "no-store",
                **self._cors_headers(request),
            }
            address = request.client.host if request.client else ""
            if not self._addresses.allows(address):
                # Checked here, counted while the stream runs (below): a request that never
                # streams can never hold a slot.
                self._broker.metrics.refused.labels("connect").inc()
                raise TooManyRequestsException(detail=self._addresses.refusal(address))
            try:
                name = self._identity.username(username, token)
            except Refused as refused:
                self._broker.metrics.refused.labels("connect").inc()
                raise ClientException(detail=str(refused)) from None
            # EventSource sends Last-Event-ID by itself when it reconnects; the query parameter
            # is for clients that cannot set headers.
            resume_from = request.headers.get("last-event-id") or last_event_id
            framing = body_framing(request.scope)
            response: _WatchedEventSourceResponse
            response = _WatchedEventSourceResponse(
                self._watchdog,
                # A client that stops reading blocks the write once its TCP buffers are full;
                # the watchdog cuts it off then, and the stream's `finally` takes it out.
                self._stream(name, resume_from, address, lambda: response.connection, framing),
                ping=0,  # the transport's one keep-alive loop does it (`_send_keep_alives`)
                sep="\n",
                headers=headers,
            )
            return response

        return events

    def _cors_headers(self, request: Request[Any, Any, Any]) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin is None or urlsplit(origin).netloc == request.headers.get("host"):
            return {}
        allowed = self._settings.cors_origins
        if "*" in allowed:
            return {"Access-Control-Allow-Origin": "*"}
        if origin in allowed:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        raise PermissionDeniedException(
            detail=f"origin {origin!r} is not allowed; see BROADCAST_CORS_ORIGINS"
        )

    async def _stream(
        self,
        username: str | None,
        resume_from: str | None,
        address: str,
        connection: Callable[[], WatchedConnection | None],
        framing: Callable[[bytes], bytes] | None,
    ) -> AsyncIterator[bytes]:
        # Subscribe first, join second, with no await between: when the join is announced at
        # once, this client is in the audience; when it waits for the conflation window, the
        # first frame tells this client the count.
        subscriber = self._broker.subscribe(
            self._settings.subscriber_backlog,
            max_bytes=self._settings.client_buffer_bytes,
            size=_frame_size,
        )

        def on_close(reason: str) -> None:
            self._broker.metrics.evicted.labels(reason.split(":")[0]).inc()
            watched = connection()
            if watched is not None and watched.since is not None:
                watched.expire()  # blocked in a write: it would never see the close

        subscriber.on_close = on_close
        self._streams.add(subscriber)
        self._addresses.opened(address)
        try:
            announced = self._presence.join(TRANSPORT, username)
            first = self._retry_frame
            if not announced:
                first += self._presence.count_event().sse_frame
            missed = None
            if resume_from is not None:
                # Live events queue up in the subscriber meanwhile; those already replayed are
                # skipped below, so each event arrives once, in order.
                budget = replay_budget(self._settings.client_buffer_bytes)
                missed = await missed_since(self._broker, resume_from, budget)
                if missed.gap is not None:
                    first += missed.gap.sse_frame
                first += b"".join(event.sse_frame for event in missed.events)
            yield first  # through ASGI: the response's head goes out before it
            watched = connection()
            if framing is not None and watched is not None and watched.writable:
                reason = await self._push(subscriber, watched, framing, missed)
            else:  # no socket to write to: wait for events, write them through ASGI
                while True:
                    try:
                        batch = await subscriber.next_batch()
                    except SubscriberClosed as closed:
                        reason = closed.reason
                        break
                    batch, missed = _fresh(batch, missed)
                    self._delivered.inc(len(batch) - batch.count(KEEP_ALIVE))
                    yield b"".join(event.sse_frame for event in batch)
            # One line for the whole drain (app.py), not one per stream.
            level = logging.DEBUG if reason == SHUTTING_DOWN else logging.INFO
            logger.log(level, "closing an SSE stream: %s", reason)
            # EventSource reconnects after `retry` ms when a stream ends.
            yield self._retry_frame + f": {reason}\n\n".encode()
        except BaseException as exc:
            # The client went away (sse-starlette cancels the stream) or stopped reading (the
            # send timed out and the stream is closed).
            logger.debug("SSE client left: %s", type(exc).__name__)
            raise
        finally:
            self._broker.unsubscribe(subscriber)
            self._streams.discard(subscriber)
            self._addresses.closed(address)
            self._presence.leave(TRANSPORT, username)

    async def _push(
        self,
        subscriber: Subscriber,
        connection: WatchedConnection,
        framing: Callable[[bytes], bytes],
        missed: Missed | None,
    ) -> str:
        """Hand the stream over to the pump until it ends; why it ended.

        Without an await, so nothing is dispatched meanwhile: what the stream's own subscriber
        holds goes out now, and from the pump's next event on, the pump writes to it."""
        pump = self._pump_subscriber
        if pump is None:
            return "server shutting down"
        if pump.closed_reason is not None:
            return pump.closed_reason
        try:
            batch = subscriber.take()
        except SubscriberClosed as closed:
            return closed.reason
        batch, missed = _fresh(batch, missed)
        self._broker.unsubscribe(subscriber)
        self._streams.discard(subscriber)
        stream = _PushedStream(connection, framing, missed, pump.offered)
        self._pushed[stream] = None
        connection.goodbye = self._goodbyes.get(framing)  # the head is out
        try:
            if batch:
                self._write(stream, framing(b"".join(event.sse_frame for event in batch)))
                self._delivered.inc(len(batch) - batch.count(KEEP_ALIVE))
            return await stream.closed
        finally:
            connection.goodbye = None  # ended the usual way: the stream writes its own end
            self._pushed.pop(stream, None)

    def _write(self, stream: _PushedStream, data: bytes) -> None:
        connection = stream.connection
        if not connection.writable:
            return  # a client gone: its disconnect ends the stream
        budget = self._settings.client_buffer_bytes
        if connection.write(data, budget):
            reason = f"too slow: over {budget} bytes waiting to be sent"
            self._broker.metrics.evicted.labels("too slow").inc()
            stream.end(reason)
            connection.expire()  # not reading: drop its socket now, not after a timeout

    async def _write_to_pushed(self, subscriber: Subscriber) -> None:
        """The pump: events framed once, the same bytes written to every pushed stream's socket,
        returning to the event loop every ``SLICE`` streams; events that come meanwhile join
        the pass (``EventLog``)."""
        passes: Passes[Event] = Passes(subscriber, lambda events: events)
        log = passes.log
        try:
            while True:
                await passes.start()
                delivered = 0
                # Most streams are owed the same events: frame them once per (from, to).
                framed: tuple[int, int, bytes, bytes] = (-1, -1, b"", b"")
                for number, stream in enumerate(list(self._pushed), 1):
                    if not number % SLICE:
                        await passes.breathe()
                    position, head = stream.pos, log.head
                    if position >= head or stream.closed.done():
                        continue
                    stream.pos = head
                    if stream.missed is not None:  # replayed: skip what the replay sent
                        events, stream.missed = _fresh(log.since(position), stream.missed)
                        if events:
                            self._write(stream, stream.framing(_frames(events)))
                            delivered += len(events)
                        continue
                    if framed[:2] != (position, head):
                        body = _frames(log.since(position))
                        framed = (position, head, http_chunk(body), body)
                    self._write(stream, framed[2] if stream.framing is http_chunk else framed[3])
                    delivered += head - position
                self._delivered.inc(delivered)
                owed = (stream.pos for stream in self._pushed if not stream.closed.done())
                self._fanout_seconds.observe(passes.end(owed))
        except SubscriberClosed as closed:
            evicted = self._broker.metrics.evicted.labels(closed.reason.split(":")[0])
            for stream in list(self._pushed):
                evicted.inc()
                stream.end(closed.reason)


def _frames(events: list[Event]) -> bytes:
    return b"".join(event.sse_frame for event in events)
