"""Server-Sent Events at ``GET /events`` (sse-starlette).

A stream starts as a hub subscriber of its own with a bounded queue: it opens with a ``retry:``
hint and the current ``user count`` (then, when it resumes, what it missed). After that first
chunk, a stream whose socket the app can reach (``overrides/hypercorn.py``: hypercorn,
HTTP/1.x) is handed over to the transport's pump, one hub subscriber for all of them, as
Socket.IO's: each batch of
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
from typing import Annotated, Any
from urllib.parse import urlsplit

from litestar import Request, get
from litestar.exceptions import (
    ClientException,
    PermissionDeniedException,
    TooManyRequestsException,
)
from litestar.handlers import HTTPRouteHandler
from litestar.params import QueryParameter
from sse_starlette import EventSourceResponse, ServerSentEvent

from broadcast.broker import Broker, Overflow, Subscriber, SubscriberClosed
from broadcast.channels import parse_channel_list
from broadcast.drain import sse_goodbye
from broadcast.errors import NotGranted, Refused
from broadcast.events import Event
from broadcast.eviction import SHUTTING_DOWN, Evicted, Eviction
from broadcast.fanout import PUMP_BACKLOG, ChannelMembers, Pump, Span
from broadcast.limits import AddressLimit
from broadcast.overrides import Overrides
from broadcast.overrides.sse_starlette import WatchedResponse
from broadcast.session import Client, Sessions
from broadcast.settings import Settings
from broadcast.supervisor import Supervisor
from broadcast.transports.framing import body_framing, http_chunk
from broadcast.watchdog import (
    SendWatchdog,
    WatchedConnection,
)

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


KEEP_ALIVE_SLICE = 16
"""Keep-alive comments written between two returns to the event loop."""


class _Stream(Client):
    """An SSE client. Once handed over to the pump (``_push``), it is written by the pump, not
    by a task of its own, and ``position`` counts the pump's events."""

    __slots__ = ("closed", "connection", "framing")

    def __init__(self, address: str, username: str | None, resume_from: str | None) -> None:
        super().__init__(TRANSPORT, address, username, resume_from)
        self.connection: WatchedConnection | None = None
        self.framing: Callable[[bytes], bytes] = http_chunk
        self.closed: asyncio.Future[Evicted] = asyncio.get_running_loop().create_future()
        """Why the stream ends, once it does (server shutdown, too slow)."""

    @property
    def gone(self) -> bool:
        return self.closed.done()

    def end(self, reason: Evicted) -> None:
        self.evicted = reason
        if not self.closed.done():
            self.closed.set_result(reason)


class SSETransport:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        sessions: Sessions,
        addresses: AddressLimit,
        watchdog: SendWatchdog,
        overrides: Overrides,
    ) -> None:
        self._find_socket = overrides.find_socket
        self._response_class = overrides.sse_response
        self._settings = settings
        self._watchdog = watchdog
        self._broker = broker
        self._sessions = sessions
        self._addresses = addresses
        self._retry_frame = ServerSentEvent(retry=settings.sse_retry_ms, sep="\n").encode()
        framings: list[Callable[[bytes], bytes]] = [http_chunk, bytes]
        self._goodbyes = {framing: sse_goodbye(self._retry_frame, framing) for framing in framings}
        """A stream's end written straight to its socket by the drain, by body framing."""
        self._delivered = broker.metrics.delivered.labels(TRANSPORT)
        self._fanout_seconds = broker.metrics.fanout_seconds.labels(TRANSPORT)
        self._streams: set[Subscriber] = set()
        self._pushed: dict[_Stream, None] = {}
        """The streams the pump writes to, in the order they joined (a dict: an ordered set)."""
        self._members: ChannelMembers[_Stream] = ChannelMembers()
        """The streams the pump writes to, by channel."""
        self._pump_subscriber: Subscriber | None = None
        self._supervisor: Supervisor | None = None

    @property
    def streams(self) -> int:
        """Streams open: those the pump writes to and those with a subscriber of their own."""
        return len(self._pushed) + len(self._streams)

    async def start(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        # One subscriber for the transport's life: a pump that crashed and was restarted takes
        # up where it was (the streams' positions count this subscriber's events).
        subscriber = self._pump_subscriber = self._broker.subscribe(
            PUMP_BACKLOG, Overflow.DROP_OLDEST
        )
        supervisor.start("sse-pump", lambda: self._run_pump(subscriber))
        supervisor.start("sse-keep-alive", self._send_keep_alives)

    def close_own_streams(self, reason: Evicted) -> int:
        """End the streams the pump does not write to, the usual way (the drain ends the
        others from under the app); how many (not counting those closed before)."""
        open_streams = [s for s in self._streams if s.closed_reason is None]
        for subscriber in open_streams:
            subscriber.close(reason)
        return len(open_streams)

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.cancel("sse-keep-alive")
            await self._supervisor.cancel("sse-pump")
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
                if not number % KEEP_ALIVE_SLICE:
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
            last_event_id: Annotated[str | None, QueryParameter(name="lastEventId")] = None,
            channel: Annotated[
                list[str] | None,
                QueryParameter(
                    description="Channels to subscribe to for the life of the stream (repeat "
                    "it for several): their events and `channel count` come besides the events "
                    "to everyone."
                ),
            ] = None,
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
                who = self._sessions.identify(username, token)
            except Refused as refused:
                raise ClientException(detail=str(refused)) from None
            # EventSource sends Last-Event-ID by itself when it reconnects; the query parameter
            # is for clients that cannot set headers.
            resume_from = request.headers.get("last-event-id") or last_event_id
            stream = _Stream(address, who.username, resume_from)
            stream.grant = who.grant
            try:
                names = parse_channel_list(channel or [], self._sessions.policy.max_per_connection)
                channels = self._sessions.check_channels(stream, names)
                await self._sessions.listen(channels)
            except NotGranted as refused:
                raise PermissionDeniedException(detail=str(refused)) from None
            except Refused as refused:
                raise ClientException(detail=str(refused)) from None
            framing = body_framing(request.scope)
            response: WatchedResponse
            response = self._response_class(
                self._watchdog,
                self._find_socket,
                # A client that stops reading blocks the write once its TCP buffers are full;
                # the watchdog cuts it off then, and the stream's `finally` takes it out.
                self._stream(stream, channels, lambda: response.connection, framing),
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
        stream: _Stream,
        channels: list[str],
        connection: Callable[[], WatchedConnection | None],
        framing: Callable[[bytes], bytes] | None,
    ) -> AsyncIterator[bytes]:
        # Subscribe first, join second, with no await between: when the join is announced at
        # once, this client is in the audience; when it waits for the conflation window, the
        # first frame tells this client the count.
        subscriber = self._broker.subscribe(
            self._settings.subscriber_backlog,
            channels=[None, *channels],
            max_bytes=self._settings.client_buffer_bytes,
            size=_frame_size,
        )

        def on_close(reason: Evicted) -> None:
            self._broker.metrics.evicted.labels(reason.kind.value).inc()
            watched = connection()
            if watched is not None and watched.since is not None:
                watched.expire()  # blocked in a write: it would never see the close

        subscriber.on_close = on_close
        self._streams.add(subscriber)
        self._addresses.opened(stream.address)
        try:
            first = self._retry_frame
            if not self._sessions.join(stream):
                first += self._sessions.count_event().sse_frame
            for name in self._sessions.add_channels(stream, channels):
                first += self._sessions.channel_count_event(name).sse_frame
            # Live events queue up in the subscriber meanwhile; those already replayed are
            # skipped (the stream's replay filter), so each event arrives once, in order.
            missed = await self._sessions.resume(stream)
            if missed is not None:
                if missed.gap is not None:
                    first += missed.gap.sse_frame
                first += b"".join(event.sse_frame for event in missed.events)
            yield first  # through ASGI: the response's head goes out before it
            watched = connection()
            if framing is not None and watched is not None and watched.writable:
                reason = await self._push(stream, subscriber, watched, framing)
            else:  # no socket to write to: wait for events, write them through ASGI
                while True:
                    try:
                        batch = await subscriber.next_batch()
                    except SubscriberClosed as closed:
                        reason = closed.reason
                        break
                    if stream.replay is not None:
                        batch = stream.replay.fresh(batch)
                    self._delivered.inc(len(batch) - batch.count(KEEP_ALIVE))
                    yield b"".join(event.sse_frame for event in batch)
            # One line for the whole drain (app.py), not one per stream.
            level = logging.DEBUG if reason.kind is Eviction.SHUTDOWN else logging.INFO
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
            self._addresses.closed(stream.address)
            self._sessions.leave(stream)

    async def _push(
        self,
        stream: _Stream,
        subscriber: Subscriber,
        connection: WatchedConnection,
        framing: Callable[[bytes], bytes],
    ) -> Evicted:
        """Hand the stream over to the pump until it ends; why it ended.

        Without an await, so nothing is dispatched meanwhile: what the stream's own subscriber
        holds goes out now, and from the pump's next event on, the pump writes to it."""
        pump = self._pump_subscriber
        if pump is None:
            return SHUTTING_DOWN
        if pump.closed_reason is not None:
            return pump.closed_reason
        try:
            batch = subscriber.take()
        except SubscriberClosed as closed:
            return closed.reason
        if stream.replay is not None:
            batch = stream.replay.fresh(batch)
        self._broker.unsubscribe(subscriber)
        self._streams.discard(subscriber)
        stream.connection, stream.framing, stream.position = connection, framing, pump.offered
        self._pushed[stream] = None
        for channel in stream.channels:
            self._members.join(stream, channel)
        connection.goodbye = self._goodbyes.get(framing)  # the head is out
        try:
            if batch:
                self._write(stream, framing(b"".join(event.sse_frame for event in batch)))
                self._delivered.inc(len(batch) - batch.count(KEEP_ALIVE))
            return await stream.closed
        finally:
            connection.goodbye = None  # ended the usual way: the stream writes its own end
            self._pushed.pop(stream, None)
            self._members.leave_all(stream)

    def _write(self, stream: _Stream, data: bytes) -> None:
        connection = stream.connection
        if connection is None or not connection.writable:
            return  # a client gone: its disconnect ends the stream
        budget = self._settings.client_buffer_bytes
        if connection.write(data, budget):
            reason = Evicted.over_budget(budget)
            self._broker.metrics.evicted.labels(reason.kind.value).inc()
            stream.end(reason)
            connection.expire()  # not reading: drop its socket now, not after a timeout

    def _deliver(self, stream: _Stream, span: Span) -> int:
        """Write the events of ``span`` to one pushed stream: framed once for every stream owed
        the same span, but for a stream still skipping what its replay sent."""
        if stream.replay is not None and not stream.replay.done:
            events = stream.replay.fresh(span.events)
            if events:
                self._write(stream, stream.framing(_frames(events)))
            return len(events)
        chunked = stream.framing is http_chunk
        self._write(stream, span.encoded("sse-chunked", _chunked) if chunked else _sse(span))
        return len(span.events)

    async def _run_pump(self, subscriber: Subscriber) -> None:
        """The pump (``fanout.Pump``): events framed once, the same bytes written to every
        pushed stream's socket; when the subscriber closes (shutdown), every stream ends."""
        pump = Pump(
            subscriber,
            lambda: self._pushed,
            self._members,
            self._deliver,
            prepare=lambda event: event.sse_frame,
            delivered=self._delivered,
            fanout_seconds=self._fanout_seconds,
        )
        try:
            await pump.run()
        except SubscriberClosed as closed:
            evicted = self._broker.metrics.evicted.labels(closed.reason.kind.value)
            for stream in list(self._pushed):
                evicted.inc()
                stream.end(closed.reason)


def _frames(events: list[Event]) -> bytes:
    return b"".join(event.sse_frame for event in events)


def _chunked(events: list[Event]) -> bytes:
    return http_chunk(_frames(events))


def _sse(span: Span) -> bytes:
    return span.encoded("sse", _frames)
