"""Socket.IO (python-socketio, protocol v5) mounted at ``/socket.io/``.

python-socketio keeps its own per-client Engine.IO queues and writer tasks, so the whole
transport is a single hub subscriber: one pump task takes each event, builds its Engine.IO packet
once, and queues that same packet on every connected client. (``AsyncServer.emit`` would create
one task per recipient per event.) Litestar strips the mount prefix, hence ``socketio_path=None``.

Client events are answered the Socket.IO way: with the acknowledgement when the client asked for
one (``{ok: true, id}`` or ``{ok: false, error}``), else a refusal comes as an ``error`` event
(``{event, error}``) to that client only.

Resuming: a client that passes ``lastEventId`` in its connect ``auth`` receives every published
event with its id as a last argument (``socket.on(name, (data, id) => ...)``, as Socket.IO's own
connection state recovery appends its offset); when that id is not empty, it first receives what
it missed since (``replay.py``). Everyone else gets exactly the classic ``socket.on(name, data)``.

Slow clients: every client's Engine.IO queue counts the bytes it holds; one over
``BROADCAST_CLIENT_BUFFER_BYTES`` is told why (an ``error`` event), disconnected, and counted
as gone at once. A websocket write that blocks longer than ``BROADCAST_SEND_TIMEOUT_SECONDS``
(the client stopped reading) is cancelled and the connection torn down.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import socketio
from engineio import packet as eio_packet
from litestar import asgi
from litestar.enums import ScopeType
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from broadcast.broker import Broker, BrokerUnavailable, Overflow, Subscriber, SubscriberClosed
from broadcast.drain import SHUTTING_DOWN, WEBSOCKET_GOODBYE
from broadcast.events import CHAT_MESSAGE, ERROR, Event
from broadcast.eviction import Evicted
from broadcast.fanout import PUMP_BACKLOG, Pump, Span
from broadcast.limits import AddressLimit
from broadcast.overrides import Overrides
from broadcast.overrides.engineio import CONNECTION, ClientFaults, Frame, decodable
from broadcast.overrides.socketio import (
    NAMESPACE,
    RESERVED_EVENT,
    GuardedServer,
    Refusal,
    ack_requested,
)
from broadcast.overrides.socketio_rooms import IndexedManager
from broadcast.session import Client, Sessions
from broadcast.settings import Settings
from broadcast.supervisor import Supervisor
from broadcast.transports.watchdog import WEBSOCKET_GONE, SendWatchdog
from broadcast.users import RateLimit, Refused, parse_chat_message

logger = logging.getLogger(__name__)

TRANSPORT = "socketio"


class _Client(Client):
    """A Socket.IO client: its Engine.IO session, its chat allowance, and the live events held
    back while what it missed is replayed."""

    __slots__ = ("eio_sid", "pending", "rate_limit")

    def __init__(
        self,
        eio_sid: str,
        address: str,
        username: str | None,
        resume_from: str | None,
        position: int,
        rate_limit: RateLimit,
    ) -> None:
        super().__init__(TRANSPORT, address, username, resume_from, position)
        self.eio_sid = eio_sid
        self.rate_limit = rate_limit
        self.pending: list[Event] | None = [] if resume_from else None
        """Live events held back while what it missed is replayed (``None``: not replaying)."""


class SocketIOTransport:
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
        self._settings = settings
        self._broker = broker
        self._sessions = sessions
        self._addresses = addresses
        origins = settings.cors_origins
        self.server = GuardedServer(
            async_mode="asgi",
            # None: same origin only (python-socketio compares Origin with Host).
            cors_allowed_origins="*" if "*" in origins else (list(origins) or None),
            transports=list(settings.socketio_transports),
            max_http_buffer_size=settings.max_frame_bytes,
            ping_interval=settings.socketio_ping_interval_ms / 1000,
            ping_timeout=settings.socketio_ping_timeout_ms / 1000,
            connect_timeout=settings.socketio_connect_timeout_ms / 1000,
            # Their errors (a bug) as our JSON log lines; their chatter and warnings (about a
            # client's fault, each a line: a flood under attack) stay out.
            logger=_library_logger("socketio"),
            engineio_logger=_library_logger("engineio"),
            # A disconnect in O(1), not O(clients) (``overrides/socketio_rooms.py``).
            client_manager=IndexedManager() if overrides.indexed_rooms else None,
        )
        self.server.admit = self._admit
        self.server.on_session_closed = self._on_session_closed
        self.server.on_invalid_packet = self._on_invalid_packet
        self.server.on("connect", self._on_connect)
        self.server.on("disconnect", self._on_disconnect)
        self.server.on(CHAT_MESSAGE, self._on_chat_message)
        self.server.on("*", self._on_unknown_event)
        self.server.on_connected = self._on_connected
        self._asgi_app = socketio.ASGIApp(self.server, socketio_path=None)
        self._clients: dict[str, _Client] = {}
        self._eio_sessions: dict[str, tuple[str, bool]] = {}
        """Every open Engine.IO session: its address, and whether it counts against the
        address's limit (else it is refused at its CONNECT)."""
        self._refusing: set[str] = set()
        """Addresses with a session open to be told, at its CONNECT, that they are over."""
        self._buffer_bytes = settings.client_buffer_bytes
        self._watchdog = watchdog
        self._metrics = broker.metrics
        self._delivered = broker.metrics.delivered.labels(TRANSPORT)
        self._fanout_seconds = broker.metrics.fanout_seconds.labels(TRANSPORT)
        self._supervisor: Supervisor | None = None
        self._subscriber: Subscriber | None = None
        self._too_slow: list[str] = []
        """Clients found over their budget during a pass (evicted after it)."""

    def route_handler(self) -> ASGIRouteHandler:
        asgi_app = self._asgi_app
        watchdog = self._watchdog
        metrics = self._metrics
        find_socket = self._find_socket

        # opt: the server, for tests that add handlers to it (tests/protocol_app.py).
        @asgi("/socket.io", is_mount=True, copy_scope=True, opt={"socketio_server": self.server})
        async def socketio_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.WEBSOCKET:
                await asgi_app(scope, receive, send)
                return
            connection = watchdog.watch(
                send, receive, WEBSOCKET_GONE, find_socket(scope), WEBSOCKET_GOODBYE
            )
            scope[CONNECTION] = connection  # type: ignore[literal-required]  # for the pump

            async def receive_decodable() -> Any:
                # python-engineio decodes a frame outside its error handling: one it cannot
                # decode would end its reader without closing the session (a ghost user until
                # the ping timeout). Such a frame ends the connection here instead.
                message = await connection.receive()
                if message["type"] == "websocket.receive" and not decodable(message):
                    logger.info("closing a websocket: it sent a frame that is not Engine.IO")
                    metrics.refused.labels("frame").inc()
                    return WEBSOCKET_GONE
                return message

            try:
                await asgi_app(scope, receive_decodable, connection.send)
            finally:
                watchdog.forget(connection)

        return socketio_endpoint

    async def start(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        # One subscriber for the transport's life: a pump that crashed and was restarted takes
        # up where it was (the clients' positions count this subscriber's events).
        subscriber = self._subscriber = self._broker.subscribe(PUMP_BACKLOG, Overflow.DROP_OLDEST)
        supervisor.start("socketio-pump", lambda: self._run_pump(subscriber))

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.cancel("socketio-pump")
        if self._subscriber is not None:
            self._broker.unsubscribe(self._subscriber)
            self._subscriber = None

    async def close_all(self) -> int:
        """End every client's Engine.IO session as a transport close, so that every client
        reconnects (elsewhere: ``broadcast serve`` has stopped listening). No Engine.IO close
        packet: python-socketio's client takes one as a deliberate disconnect and never
        reconnects. A no-op packet answers a pending long-poll (the next poll finds the node
        gone); a websocket closes once its queue is sent. hypercorn waits for those writes.
        Returns how many sessions it closed."""
        sockets = [s for s in self.server.eio.sockets.values() if not self._ended(s)]
        for socket in sockets:
            with contextlib.suppress(Exception):
                await socket.close(wait=False, abort=True, reason=SHUTTING_DOWN)
                socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
                socket.queue.put_nowait(None)  # ends the writer (websocket) or the next poll
        return len(sockets)

    def _ended(self, socket: Any) -> bool:
        """A session closed, or whose websocket the drain ended from under the app (left as
        it is: its end would unwind through python-engineio and hypercorn)."""
        if socket.closed:
            return True
        connection = self.server.eio.websockets.get(socket.sid)
        return bool(
            connection is not None
            and connection.said_goodbye
            and socket.upgraded
            and not socket.upgrading
        )

    # ------------------------------------------------------------------ connections

    def _admit(self, eio_sid: str, environ: dict[str, Any]) -> Refusal | None:
        """Count an Engine.IO session against its address's limit from its opening on, so
        that sessions that never send CONNECT are counted too. Over the limit, one session at a
        time is let in to be told why at its CONNECT (``connect_error``); any other is refused
        at once (403)."""
        address = _address(environ)
        if self._addresses.allows(address):
            self._addresses.opened(address)
            self._eio_sessions[eio_sid] = (address, True)
            return None
        self._metrics.refused.labels("connect").inc()
        refusal = self._addresses.refusal(address)
        if address in self._refusing:
            return Refusal(refusal)
        self._refusing.add(address)
        self._eio_sessions[eio_sid] = (address, False)
        return Refusal(refusal, at_connect=True)

    def _on_session_closed(self, eio_sid: str) -> None:
        session = self._eio_sessions.pop(eio_sid, None)
        if session is None:
            return
        address, counted = session
        if counted:
            self._addresses.closed(address)
        else:
            self._refusing.discard(address)

    def _on_invalid_packet(self, eio_sid: str) -> None:
        self._metrics.refused.labels("packet").inc()

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        auth = auth if isinstance(auth, dict) else {}
        address = _address(environ)
        try:
            username = self._sessions.identify(auth.get("username"), auth.get("token"))
        except Refused as refused:
            raise socketio.exceptions.ConnectionRefusedError(str(refused)) from None
        try:
            resume_from = _resume_from(auth)
        except Refused as refused:
            self._metrics.refused.labels("connect").inc()
            raise socketio.exceptions.ConnectionRefusedError(str(refused)) from None
        eio_sid = self._eio_sid(sid)
        client = self._clients[sid] = _Client(
            eio_sid,
            address,
            username,
            resume_from,
            self._subscriber.offered if self._subscriber is not None else 0,
            RateLimit(self._settings.chat_rate_per_second, self._settings.chat_burst),
        )
        if not self._sessions.join(client):
            # The announcement waits for the conflation window; tell the newcomer now. (When it
            # went out at once, it reaches this client too: python-socketio already lists it.)
            # This is sent before python-socketio acknowledges the connection: the official
            # clients hold events that arrive before the CONNECT packet and deliver them after it.
            count = Frame(self._sessions.count_event().socketio_text)
            await self._deliver(eio_sid, count)

    async def _on_connected(self, sid: str) -> None:
        """Replay what a resuming client missed, now that its CONNECT packet is queued, then
        the live events held back meanwhile (those not already replayed)."""
        client = self._clients.get(sid)
        if client is None or client.pending is None:
            return
        eio_sid = client.eio_sid
        try:
            missed = await self._sessions.resume(client)
            if missed is not None:
                if missed.gap is not None:
                    await self._deliver(eio_sid, Frame(missed.gap.socketio_text))
                for event in missed.events:
                    await self._deliver(eio_sid, Frame(event.socketio_text_with_id))
            while client.pending:
                held, client.pending = client.pending, []
                if client.replay is not None:
                    held = client.replay.fresh(held)
                for event in held:
                    await self._deliver(eio_sid, Frame(event.socketio_text_with_id))
        finally:
            client.pending = None  # live from here: the pump sends to it directly

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        client = self._clients.pop(sid, None)
        if client is None:
            return
        self._sessions.leave(client)
        # Why every client left: ordinary goodbyes (the client said so, or closed its
        # connection: a tab closed) at debug level, anything else (too slow, ping timeout, the
        # server's own disconnect) at info, so churn does not flood the log.
        ordinary = (
            self.server.reason.CLIENT_DISCONNECT,
            self.server.reason.TRANSPORT_CLOSE,
            SHUTTING_DOWN,  # one line for the whole drain (app.py)
        )
        level = logging.DEBUG if reason in ordinary else logging.INFO
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
        if event == RESERVED_EVENT:
            event = str(args[0])
            return await self._refuse(sid, event, f"event {event!r} is reserved for the server")
        return await self._refuse(sid, event, f"unknown event {event!r}")

    async def _refuse(self, sid: str, event: str, error: str) -> dict[str, Any] | None:
        self._metrics.refused.labels("client event").inc()
        if ack_requested.get(False):
            return {"ok": False, "error": error}
        await self.server.emit(ERROR, {"event": event, "error": error}, to=sid)
        return None

    # ------------------------------------------------------------------ fan-out

    async def _run_pump(self, subscriber: Subscriber) -> None:
        """The pump (``fanout.Pump``): events encoded once, the same packet queued, or the same
        bytes written, to every client; the clients found too slow are evicted after each
        pass."""
        pump = Pump(
            subscriber,
            self._clients.values,
            self._send,
            prepare=lambda event: event.socketio_text,
            delivered=self._delivered,
            fanout_seconds=self._fanout_seconds,
            after_pass=self._evict_too_slow,
        )
        with contextlib.suppress(SubscriberClosed):  # the transport is closing (shutdown)
            await pump.run()

    async def _send(self, client: _Client, span: Span) -> int:
        """Send one client the events of ``span``, but for those its replay already sent; how
        many.

        A websocket client whose Engine.IO queue is idle (nothing on its way through ASGI) gets
        their WebSocket frames written straight to its socket, framed once for every client owed
        the same events (``overrides/hypercorn.py``); any other gets the packets on its
        Engine.IO queue, for its writer."""
        if client.pending is not None:  # replaying: these go out after
            client.pending.extend(span.events)
            return 0
        eio_sid = client.eio_sid
        socket = self.server.eio.sockets.get(eio_sid)
        if socket is None or socket.closed:
            return 0
        key = "plain" if client.resume_from is None else "with ids"
        if client.replay is not None and not client.replay.done:
            frames = _frames(client.replay.fresh(span.events), key)
            shared = False
        else:
            frames = span.encoded(key, lambda events: _frames(events, key))
            shared = True
        if not frames:
            return 0
        budget = self._buffer_bytes
        queue = socket.queue
        connection = self.server.eio.websockets.get(eio_sid)
        if (
            connection is not None
            and queue.idle
            and socket.upgraded
            and not socket.upgrading
            and connection.writable
        ):
            if shared:
                data = span.encoded(key + " websocket", lambda _: _websocket(frames))
            else:
                data = _websocket(frames)
            if connection.write(data, budget):
                self._too_slow.append(eio_sid)
            return len(frames)
        for frame in frames:
            await self._put(socket, frame)
        if queue.bytes > budget and queue.qsize() > 1:
            self._too_slow.append(eio_sid)
        return len(frames)

    async def _evict_too_slow(self) -> None:
        for eio_sid in self._too_slow:
            await self._evict(eio_sid)
        self._too_slow.clear()

    @staticmethod
    async def _put(socket: Any, frame: eio_packet.Packet) -> None:
        if socket.upgrading:  # python-engineio holds packets back during the upgrade
            await socket.send(frame)
        else:  # the hot path: python-engineio's send() only adds a ping check and a log call
            socket.queue.put_nowait(frame)

    async def _deliver(self, eio_sid: str, frame: eio_packet.Packet) -> None:
        socket = self.server.eio.sockets.get(eio_sid)
        if socket is not None and not socket.closed:
            await self._put(socket, frame)

    async def _evict(self, eio_sid: str) -> None:
        """Disconnect a client whose queue is over its byte budget: drop what it has queued,
        tell it why, and close; python-socketio's disconnect handler takes it out of the count."""
        socket = self.server.eio.sockets.get(eio_sid)
        if socket is None or socket.closed:
            return
        reason = Evicted.over_budget(self._buffer_bytes)
        socket.queue.clear()
        self._metrics.evicted.labels(reason.kind.value).inc()
        notice = Event(ERROR, {"event": None, "error": f"disconnected: {reason}"})
        await self._put(socket, Frame(notice.socketio_text))
        await socket.close(wait=False, abort=False, reason=str(reason))
        if socket.upgraded:  # a websocket: end its writer after the close packet
            socket.queue.put_nowait(None)

    def _eio_sid(self, sid: str) -> str:
        eio_sid: str = self.server.manager.eio_sid_from_sid(sid, NAMESPACE)
        return eio_sid


def _frames(events: list[Event], key: str) -> list[Frame]:
    """Engine.IO packets for ``events``: ``plain`` for classic clients, ``with ids`` for those
    that resume (the id as a last argument)."""
    if key == "plain":
        return [Frame(event.socketio_text) for event in events]
    return [Frame(event.socketio_text_with_id) for event in events]


def _websocket(frames: list[Frame]) -> bytes:
    return b"".join(frame.websocket for frame in frames)


def _address(environ: dict[str, Any]) -> str:
    # python-engineio's ASGI environ says REMOTE_ADDR=127.0.0.1 for everyone: ask the scope.
    client = environ.get("asgi.scope", {}).get("client")
    return str(client[0]) if client else ""


def _library_logger(name: str) -> logging.Logger:
    """A logger for python-socketio or python-engineio under ours, for their errors only (at
    info they log every packet)."""
    library = logging.getLogger(f"{logging.getLogger(__name__).name}.{name}")
    library.setLevel(logging.ERROR)
    if not any(isinstance(f, ClientFaults) for f in library.filters):
        library.addFilter(ClientFaults())
    return library


def _resume_from(auth: dict[str, Any]) -> str | None:
    """The ``lastEventId`` a client resumes from: ``None`` when it did not ask for ids, ``""``
    when it wants ids but has nothing to resume from."""
    if "lastEventId" not in auth:
        return None
    value = auth["lastEventId"]
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Refused("lastEventId must be a string, the id of the last event received")
    text = str(value)
    if len(text) > 64 or "\n" in text:
        raise Refused("lastEventId is not an event id")
    return text
