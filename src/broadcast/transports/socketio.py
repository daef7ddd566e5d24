"""Socket.IO (python-socketio, protocol v5) mounted at ``/socket.io/``: the server glue.

python-socketio keeps its own per-client Engine.IO queues and writer tasks, so the whole
transport is a single hub subscriber: one pump (``fanout.Pump``) takes each event, builds its
Engine.IO packet once, and writes or queues the same bytes for every connected client
(``socketio_writer.py``; ``AsyncServer.emit`` would create one task per recipient per event).
Litestar strips the mount prefix, hence ``socketio_path=None``. Client events:
``socketio_events.py``; each client's life (admission, count, resume): ``session.py``.

Resuming: a client that passes ``lastEventId`` in its connect ``auth`` receives every published
event with its id as a last argument (``socket.on(name, (data, id) => ...)``, as Socket.IO's own
connection state recovery appends its offset); when that id is not empty, it first receives what
it missed since (``replay.py``). Everyone else gets exactly the classic ``socket.on(name, data)``.

Slow clients: one over ``BROADCAST_CLIENT_BUFFER_BYTES`` is told why and let go
(``socketio_writer.py``); a websocket write that blocks longer than
``BROADCAST_SEND_TIMEOUT_SECONDS`` (the client stopped reading) is cancelled and the connection
torn down (``watchdog.py``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any
from urllib.parse import parse_qs

import socketio
from engineio import packet as eio_packet
from litestar import asgi
from litestar.enums import ScopeType
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from broadcast.broker import Broker, Overflow, Subscriber, SubscriberClosed
from broadcast.channels import parse_channel_list
from broadcast.drain import SHUTTING_DOWN, WEBSOCKET_GOODBYE
from broadcast.errors import Refused
from broadcast.events import CHAT_MESSAGE
from broadcast.fanout import PUMP_BACKLOG, ChannelMembers, Pump
from broadcast.limits import AddressLimit, SessionAdmission
from broadcast.overrides import Overrides
from broadcast.overrides.engineio import CONNECTION
from broadcast.overrides.engineio_ping import PingSweep
from broadcast.overrides.engineio_wire import ClientFaults, Frame, decodable
from broadcast.overrides.socketio import (
    NAMESPACE,
    NAMESPACE_DISCONNECT,
    GuardedServer,
    Refusal,
)
from broadcast.overrides.socketio_rooms import IndexedManager
from broadcast.recovery import SessionStore, new_pid
from broadcast.replay import replay_budget
from broadcast.session import Sessions
from broadcast.settings import Settings
from broadcast.supervisor import Supervisor
from broadcast.transports.socketio_events import ClientEvents
from broadcast.transports.socketio_recovery import Recovery
from broadcast.transports.socketio_writer import TRANSPORT, SocketIOClient, Writer
from broadcast.users import RateLimit
from broadcast.watchdog import WEBSOCKET_GONE, SendWatchdog

logger = logging.getLogger(__name__)


class SocketIOTransport:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        sessions: Sessions,
        addresses: AddressLimit,
        watchdog: SendWatchdog,
        overrides: Overrides,
        store: SessionStore | None = None,
    ) -> None:
        self._find_socket = overrides.find_socket
        self._settings = settings
        self._broker = broker
        self._sessions = sessions
        self._addresses = addresses
        origins = settings.cors_origins
        self._clients: dict[str, SocketIOClient] = {}
        self._members: ChannelMembers[SocketIOClient] = ChannelMembers()
        self._admission = SessionAdmission(addresses)
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
        if overrides.swept_pings:  # every client's heartbeat in one task
            self.server.eio.pings = PingSweep(self.server.eio)
        self.server.admit = self._admit
        self.server.on_session_closed = self._session_closed
        self.server.on_invalid_packet = self._on_invalid_packet
        self.server.on("connect", self._on_connect)
        self.server.on("disconnect", self._on_disconnect)
        events = ClientEvents(
            self.server,
            broker,
            settings.chat_max_length,
            self._clients,
            sessions,
            self._subscribe,
            self._unsubscribe,
        )
        self.server.on(CHAT_MESSAGE, events.chat_message)
        self.server.on("subscribe", events.subscribe)
        self.server.on("unsubscribe", events.unsubscribe)
        self.server.on("*", events.unknown_event)
        self.server.on_connected = self._on_connected
        self._asgi_app = socketio.ASGIApp(self.server, socketio_path=None)
        self._buffer_bytes = settings.client_buffer_bytes
        self._watchdog = watchdog
        self._metrics = broker.metrics
        self._delivered = broker.metrics.delivered.labels(TRANSPORT)
        self._fanout_seconds = broker.metrics.fanout_seconds.labels(TRANSPORT)
        self._supervisor: Supervisor | None = None
        self._subscriber: Subscriber | None = None
        self._writer = Writer(self.server, settings.client_buffer_bytes, broker.metrics)
        self._recovery: Recovery | None = None
        if store is not None:  # BROADCAST_SOCKETIO_RECOVERY
            recovery = self._recovery = Recovery(
                self.server,
                sessions,
                store,
                self._writer,
                replay_budget(settings.client_buffer_bytes),
                broker.metrics.recoveries,
                self._clients,
            )
            self.server.claim_sid = recovery.claim
            self.server.private_id = self._private_id

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
        pings = self.server.eio.pings
        if pings is not None:  # every client's heartbeat (``overrides/engineio_ping.py``)
            supervisor.start("socketio-heartbeat", pings.run)

    async def stop(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.cancel("socketio-heartbeat")
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
        """Count an Engine.IO session against its address's limit from its handshake on
        (``limits.SessionAdmission``): over it, refused at once (403) or at its CONNECT."""
        refused = self._admission.admit(eio_sid, _address(environ))
        if refused is None:
            return None
        self._metrics.refused.labels("connect").inc()
        message, at_connect = refused
        return Refusal(message, at_connect=at_connect)

    def _session_closed(self, eio_sid: str) -> None:
        self._admission.closed(eio_sid)
        if self._recovery is not None:
            self._recovery.forget(eio_sid)

    def _private_id(self, sid: str) -> str | None:
        client = self._clients.get(sid)
        return client.pid if client is not None else None

    def keep_sessions(self) -> None:
        """The node is going away: keep every remaining client's session for its recovery
        elsewhere (no-op without recovery)."""
        if self._recovery is not None:
            self._recovery.keep_all(self._clients)

    def _on_invalid_packet(self, eio_sid: str) -> None:
        self._metrics.refused.labels("packet").inc()

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        auth = auth if isinstance(auth, dict) else {}
        address = _address(environ)
        try:
            who = self._sessions.identify(auth.get("username"), auth.get("token"))
        except Refused as refused:
            raise socketio.exceptions.ConnectionRefusedError(str(refused)) from None
        eio_sid = self._eio_sid(sid)
        recovery = self._recovery
        restoring = recovery.restoring.pop(eio_sid, None) if recovery is not None else None
        rate = RateLimit(self._settings.chat_rate_per_second, self._settings.chat_burst)
        try:
            if restoring is not None and recovery is not None:
                client = recovery.client(restoring, eio_sid, address, rate)
                channels = list(restoring.session.channels)
            else:
                client = SocketIOClient(eio_sid, address, who.username, _resume_from(auth), 0, rate)
                client.grant = who.grant
                if recovery is not None:
                    client.pid = new_pid()
                    if client.resume_from is None:
                        client.resume_from = ""  # every event with its id: the offset
                asked = _channels(auth, environ, self._sessions)
                channels = self._sessions.check_channels(client, asked)
            await self._sessions.listen(channels)
        except Refused as refused:
            self._metrics.refused.labels("connect").inc()
            raise socketio.exceptions.ConnectionRefusedError(str(refused)) from None
        # Its position from here: what is published from now on is owed to it.
        client.position = self._subscriber.offered if self._subscriber is not None else 0
        self._clients[sid] = client
        if not self._sessions.join(client):
            # The announcement waits for the conflation window; tell the newcomer now. (When it
            # went out at once, it reaches this client too: python-socketio already lists it.)
            # This is sent before python-socketio acknowledges the connection: the official
            # clients hold events that arrive before the CONNECT packet and deliver them after it.
            count = Frame(self._sessions.count_event().socketio_text)
            await self._writer.deliver(eio_sid, count)
        await self._subscribe(client, channels)
        if recovery is not None:
            recovery.connected(client, sid)
            if restoring is not None:
                await recovery.replay(client, restoring)

    async def _subscribe(self, client: SocketIOClient, channels: list[str]) -> None:
        """Subscribe ``client`` to ``channels`` (checked, listened to): its channels' counts
        reach it, directly when their announcement waits for the conflation window."""
        for channel in channels:
            self._members.join(client, channel)
        for channel in self._sessions.add_channels(client, channels):
            count = self._sessions.channel_count_event(channel)
            await self._writer.deliver(client.eio_sid, Frame(count.socketio_text))

    def _unsubscribe(self, client: SocketIOClient, channels: list[str]) -> None:
        for channel in self._sessions.remove_channels(client, channels):
            self._members.leave(client, channel)

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
                    await self._writer.deliver(eio_sid, Frame(missed.gap.socketio_text))
                for event in missed.events:
                    await self._writer.deliver(eio_sid, Frame(event.socketio_text_with_id))
            while client.pending:
                held, client.pending = client.pending, []
                if client.replay is not None:
                    held = client.replay.fresh(held)
                for event in held:
                    await self._writer.deliver(eio_sid, Frame(event.socketio_text_with_id))
        finally:
            client.pending = None  # live from here: the pump sends to it directly

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        client = self._clients.pop(sid, None)
        if client is None:
            return
        self._members.leave_all(client)
        channels = list(client.channels)
        self._sessions.leave(client)
        if self._recovery is not None:
            self._recovery.left(client, sid, reason, channels)
        # Why every client left: ordinary goodbyes (the client said so, or closed its
        # connection: a tab closed) at debug level, anything else (too slow, ping timeout, the
        # server's own disconnect) at info, so churn does not flood the log.
        ordinary = (
            self.server.reason.CLIENT_DISCONNECT,
            NAMESPACE_DISCONNECT,
            self.server.reason.TRANSPORT_CLOSE,
            SHUTTING_DOWN,  # one line for the whole drain (app.py)
        )
        level = logging.DEBUG if reason in ordinary else logging.INFO
        logger.log(level, "Socket.IO client %s (%s) left: %s", sid, client.address, reason)
        if reason in (self.server.reason.CLIENT_DISCONNECT, NAMESPACE_DISCONNECT):
            self._release_pending_poll(sid)

    def _release_pending_poll(self, sid: str) -> None:
        # A long-polling client that says goodbye still has a GET waiting on the server, and
        # python-engineio only answers it at the next ping (up to 25 s), so a client that waits
        # for it (python-socketio's does) hangs that long. Answer it now with a NOOP, as the
        # Node server does.
        socket = self.server.eio.sockets.get(self._eio_sid(sid))
        if socket is not None and not socket.upgraded:
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))

    # ------------------------------------------------------------------ fan-out

    async def _run_pump(self, subscriber: Subscriber) -> None:
        """The pump (``fanout.Pump``): events encoded once, the same packet queued, or the same
        bytes written, to every client; the clients found too slow are evicted after each
        pass."""
        pump = Pump(
            subscriber,
            self._clients.values,
            self._members,
            self._writer.send,
            prepare=lambda event: event.socketio_text,
            delivered=self._delivered,
            fanout_seconds=self._fanout_seconds,
            after_pass=self._writer.evict_too_slow,
        )
        with contextlib.suppress(SubscriberClosed):  # the transport is closing (shutdown)
            await pump.run()

    def _eio_sid(self, sid: str) -> str:
        eio_sid: str = self.server.manager.eio_sid_from_sid(sid, NAMESPACE)
        return eio_sid


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


def _channels(auth: dict[str, Any], environ: dict[str, Any], sessions: Sessions) -> list[str]:
    """The channels a client subscribes to at connect: ``auth.channels``, else ``?channel=`` on
    the handshake URL (for clients that cannot send ``auth``); ``Refused`` when invalid."""
    raw = auth.get("channels")
    if raw is None:
        raw = parse_qs(environ.get("QUERY_STRING", "")).get("channel")
        if raw is None:
            return []
    return parse_channel_list(raw, sessions.policy.max_per_connection)


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
