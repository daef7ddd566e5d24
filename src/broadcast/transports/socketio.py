"""Socket.IO (python-socketio, protocol v5) mounted at ``/socket.io/``.

python-socketio keeps its own per-client Engine.IO queues and writer tasks, so the whole
transport is a single hub subscriber: one pump task takes each event, builds its Engine.IO packet
once, and queues that same packet on every connected client. (``AsyncServer.emit`` would create
one task per recipient per event.) Litestar strips the mount prefix, hence ``socketio_path=None``.

Client events are answered the Socket.IO way: with the acknowledgement when the client asked for
one (``{ok: true, id}`` or ``{ok: false, error}``), else a refusal comes as an ``error`` event
(``{event, error}``) to that client only.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from dataclasses import dataclass
from typing import Any

import socketio
from engineio import packet as eio_packet
from litestar import asgi
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from broadcast.broker import Broker, BrokerUnavailable, Overflow, Subscriber, SubscriberClosed
from broadcast.events import CHAT_MESSAGE, ERROR, Event
from broadcast.identity import Identity
from broadcast.limits import AddressLimit
from broadcast.presence import Presence
from broadcast.settings import Settings
from broadcast.users import RateLimit, Refused, parse_chat_message

logger = logging.getLogger(__name__)

TRANSPORT = "socketio"
NAMESPACE = "/"
# The pump drains its queue without ever waiting on a client, so this bound is only reached if
# the event loop itself is starved; dropping the oldest then is better than stopping them all.
PUMP_BACKLOG = 100_000

_ack_requested: contextvars.ContextVar[bool] = contextvars.ContextVar("ack_requested")


# Handlers python-socketio keeps for itself: a client event with one of these names would
# otherwise reach them (a fake "connect" or "disconnect" skewing the count).
_SERVER_ONLY_EVENTS = frozenset({"connect", "disconnect"})
_RESERVED_EVENT = "\x00reserved"
"""Stands in for a server-only event name, so the catch-all handler refuses it."""


class _GuardedServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server with three guards (pinned to python-socketio 5.x internals):

    - handlers learn whether the client asked for an acknowledgement (python-socketio hides the
      ack id), so a refusal reaches the client exactly once: the ack, else an ``error`` event;
    - a client event named like a server-only handler never reaches that handler;
    - a CONNECT that arrives on an Engine.IO session that timed out while the connect handler
      ran leaves at once (python-socketio would mark the dead session connected for good).
    """

    async def _handle_event_internal(
        self, server: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: Any
    ) -> None:
        _ack_requested.set(id is not None)
        if data and data[0] in _SERVER_ONLY_EVENTS:
            data = [_RESERVED_EVENT, data[0]]
        await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await super()._handle_connect(eio_sid, namespace, data)
        namespace = namespace or NAMESPACE
        socket = self.eio.sockets.get(eio_sid)
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is not None and (socket is None or socket.closed):
            await self._handle_disconnect(eio_sid, namespace, self.reason.TRANSPORT_CLOSE)


@dataclass
class _Client:
    username: str | None
    rate_limit: RateLimit
    address: str


class SocketIOTransport:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        presence: Presence,
        identity: Identity,
        addresses: AddressLimit,
    ) -> None:
        self._settings = settings
        self._broker = broker
        self._presence = presence
        self._identity = identity
        self._addresses = addresses
        origins = settings.cors_origins
        self.server = _GuardedServer(
            async_mode="asgi",
            # None: same origin only (python-socketio compares Origin with Host).
            cors_allowed_origins="*" if "*" in origins else (list(origins) or None),
            transports=list(settings.socketio_transports),
            max_http_buffer_size=settings.max_frame_bytes,
            logger=False,
            engineio_logger=False,
        )
        self.server.on("connect", self._on_connect)
        self.server.on("disconnect", self._on_disconnect)
        self.server.on(CHAT_MESSAGE, self._on_chat_message)
        self.server.on("*", self._on_unknown_event)
        self._asgi_app = socketio.ASGIApp(self.server, socketio_path=None)
        self._clients: dict[str, _Client] = {}
        self._metrics = broker.metrics
        self._delivered = broker.metrics.delivered.labels(TRANSPORT)
        self._pump_task: asyncio.Task[None] | None = None

    def route_handler(self) -> ASGIRouteHandler:
        asgi_app = self._asgi_app

        @asgi("/socket.io", is_mount=True, copy_scope=True)
        async def socketio_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
            await asgi_app(scope, receive, send)

        return socketio_endpoint

    async def start(self) -> None:
        subscriber = self._broker.subscribe(PUMP_BACKLOG, Overflow.DROP_OLDEST)
        self._pump_task = asyncio.create_task(self._pump(subscriber), name="socketio-pump")

    async def stop(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
            self._pump_task = None

    async def close_all(self) -> None:
        """Close every client's Engine.IO session: clients see a transport close and reconnect
        (a Socket.IO-level disconnect would tell the official client not to)."""
        for eio_sid in list(self.server.eio.sockets):
            with contextlib.suppress(Exception):
                await self.server.eio.disconnect(eio_sid)

    # ------------------------------------------------------------------ connections

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        auth = auth if isinstance(auth, dict) else {}
        # python-engineio's ASGI environ says REMOTE_ADDR=127.0.0.1 for everyone: ask the scope.
        client = environ.get("asgi.scope", {}).get("client")
        address = str(client[0]) if client else ""
        try:
            if not self._addresses.allows(address):
                raise Refused(self._addresses.refusal(address))
            username = self._identity.username(auth.get("username"), auth.get("token"))
        except Refused as refused:
            self._metrics.refused.labels("connect").inc()
            raise socketio.exceptions.ConnectionRefusedError(str(refused)) from None
        self._addresses.opened(address)
        self._clients[sid] = _Client(
            username,
            RateLimit(self._settings.chat_rate_per_second, self._settings.chat_burst),
            address,
        )
        if not self._presence.join(TRANSPORT, username):
            # The announcement waits for the conflation window; tell the newcomer now. (When it
            # went out at once, it reaches this client too: python-socketio already lists it.)
            # This is sent before python-socketio acknowledges the connection: the official
            # clients hold events that arrive before the CONNECT packet and deliver them after it.
            await self._send(self._eio_sid(sid), self._packet(self._presence.count_event()))

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        client = self._clients.pop(sid, None)
        if client is None:
            return
        self._addresses.closed(client.address)
        self._presence.leave(TRANSPORT, client.username)
        # Why every client left; the ordinary goodbye at debug level, anything else at info.
        level = logging.DEBUG if reason == self.server.reason.CLIENT_DISCONNECT else logging.INFO
        logger.log(level, "Socket.IO client %s (%s) left: %s", sid, client.address, reason)
        if reason == self.server.reason.CLIENT_DISCONNECT:
            self._release_pending_poll(sid)

    def _release_pending_poll(self, sid: str) -> None:
        # A long-polling client that says goodbye still has a GET waiting on the server, and
        # python-engineio only answers it at the next ping (up to 25 s), so a client that waits
        # for it (python-socketio's does) hangs that long. Answer it now with a NOOP, as the
        # Node server does.
        socket = self.server.eio.sockets.get(self._eio_sid(sid))
        if socket is not None and not socket.upgraded:
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))

    # ------------------------------------------------------------------ client events

    async def _on_chat_message(self, sid: str, *args: Any) -> dict[str, Any] | None:
        client = self._clients.get(sid)
        if client is None:  # disconnected while the event was queued
            return None
        try:
            if client.username is None:
                raise Refused("choose a username to chat")
            if len(args) != 1:
                raise Refused("send one chat message, a string")
            message = parse_chat_message(args[0], self._settings.chat_max_length)
            client.rate_limit.take()
        except Refused as refused:
            return await self._refuse(sid, CHAT_MESSAGE, str(refused))
        try:
            event_id = await self._broker.publish(
                Event(CHAT_MESSAGE, {"username": client.username, "message": message})
            )
        except BrokerUnavailable:
            return await self._refuse(sid, CHAT_MESSAGE, "chat is unavailable for a moment")
        self._metrics.published.labels("chat").inc()
        return {"ok": True, "id": event_id}

    async def _on_unknown_event(self, event: str, sid: str, *args: Any) -> dict[str, Any] | None:
        if event == _RESERVED_EVENT:
            event = str(args[0])
            return await self._refuse(sid, event, f"event {event!r} is reserved for the server")
        return await self._refuse(sid, event, f"unknown event {event!r}")

    async def _refuse(self, sid: str, event: str, error: str) -> dict[str, Any] | None:
        self._metrics.refused.labels("client event").inc()
        if _ack_requested.get(False):
            return {"ok": False, "error": error}
        await self.server.emit(ERROR, {"event": event, "error": error}, to=sid)
        return None

    # ------------------------------------------------------------------ fan-out

    async def _pump(self, subscriber: Subscriber) -> None:
        try:
            while True:
                batch = await subscriber.next_batch()
                packets = []
                for event in batch:
                    try:
                        packets.append(self._packet(event))
                    except Exception:  # one bad event must never stop the fan-out
                        logger.exception("dropped event %r: it cannot be encoded", event.name)
                recipients = 0
                for _sid, eio_sid in self.server.manager.get_participants(NAMESPACE, None):
                    recipients += 1
                    for pkt in packets:
                        await self._send(eio_sid, pkt)
                self._delivered.inc(recipients * len(packets))
        except SubscriberClosed:
            pass
        finally:
            self._broker.unsubscribe(subscriber)

    def _eio_sid(self, sid: str) -> str:
        eio_sid: str = self.server.manager.eio_sid_from_sid(sid, NAMESPACE)
        return eio_sid

    @staticmethod
    def _packet(event: Event) -> eio_packet.Packet:
        return eio_packet.Packet(eio_packet.MESSAGE, event.socketio_text)

    async def _send(self, eio_sid: str, pkt: eio_packet.Packet) -> None:
        await self.server.eio.send_packet(eio_sid, pkt)
