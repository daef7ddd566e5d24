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

import asyncio
import contextlib
import logging
from dataclasses import dataclass
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
from broadcast.identity import Identity
from broadcast.limits import AddressLimit
from broadcast.presence import Presence
from broadcast.replay import Missed, missed_since, replay_budget
from broadcast.settings import Settings
from broadcast.transports.direct import PUMP_BACKLOG, SLICE, Passes, socket_of
from broadcast.transports.engineio_server import CONNECTION, Frame, decodable
from broadcast.transports.socketio_rooms import IndexedManager
from broadcast.transports.socketio_server import (
    NAMESPACE,
    RESERVED_EVENT,
    GuardedServer,
    Refusal,
    ack_requested,
)
from broadcast.transports.watchdog import WEBSOCKET_GONE, SendWatchdog
from broadcast.users import RateLimit, Refused, parse_chat_message

logger = logging.getLogger(__name__)

TRANSPORT = "socketio"


@dataclass
class _Client:
    username: str | None
    rate_limit: RateLimit
    address: str
    resume_from: str | None = None
    """The id this client asked to resume from (``""``: ids only, nothing to replay)."""
    pending: list[Event] | None = None
    """Live events held back while what it missed is replayed (``None``: not replaying)."""
    replayed_up_to: Missed | None = None
    """After a replay: live events up to this id were replayed from the history (which can
    be ahead of the live stream), so the pump skips them; cleared past it."""
    position: int = 0
    """The index of the next event the pump owes it (``EventLog``): from its connect on."""

    def fresh(self, events: list[tuple[Event, Frame]]) -> list[Frame]:
        """The frames of ``events`` this client has not already had from its replay."""
        skip_to = self.replayed_up_to
        if skip_to is None:
            return [frame for _, frame in events]
        frames = []
        for event, frame in events:
            if event.id is not None and skip_to is not None:
                if skip_to.is_replayed(event):
                    continue
                skip_to = self.replayed_up_to = None
            frames.append(frame)
        return frames


class SocketIOTransport:
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
        self._broker = broker
        self._presence = presence
        self._identity = identity
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
            client_manager=IndexedManager(),  # a disconnect in O(1), not O(clients)
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
        self._sessions: dict[str, tuple[str, bool]] = {}
        """Every open Engine.IO session: its address, and whether it counts against the
        address's limit (else it is refused at its CONNECT)."""
        self._refusing: set[str] = set()
        """Addresses with a session open to be told, at its CONNECT, that they are over."""
        self._buffer_bytes = settings.client_buffer_bytes
        self._watchdog = watchdog
        self._metrics = broker.metrics
        self._delivered = broker.metrics.delivered.labels(TRANSPORT)
        self._fanout_seconds = broker.metrics.fanout_seconds.labels(TRANSPORT)
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriber: Subscriber | None = None
        self._owed = _Owed((-1, -1), [])
        """The events last sent, by their span of indexes (most clients in a pass are owed the
        same)."""
        self._too_slow: list[str] = []
        """Clients found over their budget during a pass (evicted after it)."""

    def route_handler(self) -> ASGIRouteHandler:
        asgi_app = self._asgi_app
        watchdog = self._watchdog
        metrics = self._metrics

        # opt: the server, for tests that add handlers to it (tests/protocol_app.py).
        @asgi("/socket.io", is_mount=True, copy_scope=True, opt={"socketio_server": self.server})
        async def socketio_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.WEBSOCKET:
                await asgi_app(scope, receive, send)
                return
            connection = watchdog.watch(
                send, receive, WEBSOCKET_GONE, socket_of(scope), WEBSOCKET_GOODBYE
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

    async def start(self) -> None:
        subscriber = self._subscriber = self._broker.subscribe(PUMP_BACKLOG, Overflow.DROP_OLDEST)
        self._tasks = [asyncio.create_task(self._pump(subscriber), name="socketio-pump")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

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
            self._sessions[eio_sid] = (address, True)
            return None
        self._metrics.refused.labels("connect").inc()
        refusal = self._addresses.refusal(address)
        if address in self._refusing:
            return Refusal(refusal)
        self._refusing.add(address)
        self._sessions[eio_sid] = (address, False)
        return Refusal(refusal, at_connect=True)

    def _on_session_closed(self, eio_sid: str) -> None:
        session = self._sessions.pop(eio_sid, None)
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
            username = self._identity.username(auth.get("username"), auth.get("token"))
            resume_from = _resume_from(auth)
        except Refused as refused:
            self._metrics.refused.labels("connect").inc()
            raise socketio.exceptions.ConnectionRefusedError(str(refused)) from None
        client = self._clients[sid] = _Client(
            username,
            RateLimit(self._settings.chat_rate_per_second, self._settings.chat_burst),
            address,
            resume_from,
            position=self._subscriber.offered if self._subscriber is not None else 0,
        )
        if resume_from:
            client.pending = []  # until on_connected has replayed what it missed
        if not self._presence.join(TRANSPORT, username):
            # The announcement waits for the conflation window; tell the newcomer now. (When it
            # went out at once, it reaches this client too: python-socketio already lists it.)
            # This is sent before python-socketio acknowledges the connection: the official
            # clients hold events that arrive before the CONNECT packet and deliver them after it.
            count = Frame(self._presence.count_event().socketio_text)
            await self._deliver(self._eio_sid(sid), count)

    async def _on_connected(self, sid: str) -> None:
        """Replay what a resuming client missed, now that its CONNECT packet is queued, then
        the live events held back meanwhile (those not already replayed)."""
        client = self._clients.get(sid)
        if client is None or client.pending is None or not client.resume_from:
            return
        eio_sid = self._eio_sid(sid)
        try:
            budget = replay_budget(self._buffer_bytes)
            missed = await missed_since(self._broker, client.resume_from, budget)
            if missed.gap is not None:
                await self._deliver(eio_sid, Frame(missed.gap.socketio_text))
            for event in missed.events:
                await self._deliver(eio_sid, Frame(event.socketio_text_with_id))
            client.replayed_up_to = missed
            while client.pending:
                held, client.pending = client.pending, []
                for frame in client.fresh([(e, Frame(e.socketio_text_with_id)) for e in held]):
                    await self._deliver(eio_sid, frame)
        finally:
            client.pending = None  # live from here: the pump sends to it directly

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        client = self._clients.pop(sid, None)
        if client is None:
            return
        self._presence.leave(TRANSPORT, client.username)
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

    async def _pump(self, subscriber: Subscriber) -> None:
        """Events encoded once, the same packet queued, or the same bytes written, to every
        client, returning to the event loop every ``SLICE`` clients; events that come meanwhile
        join the pass (``EventLog``)."""
        passes = Passes(subscriber, lambda events: [_Entry(event) for event in events])
        log = passes.log
        try:
            while True:
                await passes.start()
                delivered = 0
                participants = list(self.server.manager.get_participants(NAMESPACE, None))
                for number, (sid, eio_sid) in enumerate(participants, 1):
                    if not number % SLICE:
                        await passes.breathe()
                    client = self._clients.get(sid)
                    if client is None or client.position >= log.head:
                        continue
                    span = (client.position, log.head)
                    client.position = log.head
                    if span != self._owed.span:  # most clients are owed the same events
                        self._owed = _Owed(span, log.since(span[0]))
                    delivered += await self._send(client, eio_sid, self._owed)
                self._delivered.inc(delivered)
                positions = (client.position for client in self._clients.values())
                self._fanout_seconds.observe(passes.end(positions))
                for eio_sid in self._too_slow:
                    await self._evict(eio_sid)
                self._too_slow.clear()
        except SubscriberClosed:
            pass
        finally:
            self._broker.unsubscribe(subscriber)

    async def _send(self, client: _Client, eio_sid: str, owed: _Owed) -> int:
        """Send one client the events it is owed, after what it was already sent; how many.

        A websocket client whose Engine.IO queue is idle (nothing on its way through ASGI) gets
        their WebSocket frames written straight to its socket, framed once for every client owed
        the same events (``direct.py``); any other gets the packets on its Engine.IO queue, for
        its writer."""
        if client.pending is not None:  # replaying: these go out after
            client.pending.extend(owed.events)
            return 0
        socket = self.server.eio.sockets.get(eio_sid)
        if socket is None or socket.closed:
            return 0
        if client.resume_from is None:
            frames = owed.frames
        else:
            frames = client.fresh([(entry.event, entry.with_ids) for entry in owed.entries])
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
            if frames is owed.frames:
                data = owed.websocket
            else:
                data = b"".join(frame.websocket for frame in frames)
            if connection.write(data, budget):
                self._too_slow.append(eio_sid)
            return len(frames)
        for frame in frames:
            await self._put(socket, frame)
        if queue.bytes > budget and queue.qsize() > 1:
            self._too_slow.append(eio_sid)
        return len(frames)

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
        reason = f"too slow: over {self._buffer_bytes} bytes waiting to be sent"
        socket.queue.clear()
        self._metrics.evicted.labels("too slow").inc()
        notice = Event(ERROR, {"event": None, "error": f"disconnected: {reason}"})
        await self._put(socket, Frame(notice.socketio_text))
        await socket.close(wait=False, abort=False, reason=reason)
        if socket.upgraded:  # a websocket: end its writer after the close packet
            socket.queue.put_nowait(None)

    def _eio_sid(self, sid: str) -> str:
        eio_sid: str = self.server.manager.eio_sid_from_sid(sid, NAMESPACE)
        return eio_sid


class _Owed:
    """The events of one span of the pump's log, ready for every client owed them: the
    packets for classic clients and, made when first needed, their WebSocket frames."""

    __slots__ = ("_websocket", "entries", "events", "frames", "span")

    def __init__(self, span: tuple[int, int], entries: list[_Entry]) -> None:
        self.span = span
        self.entries = [entry for entry in entries if entry.plain is not None]
        self.events = [entry.event for entry in self.entries]
        self.frames: list[Frame] = [entry.plain for entry in self.entries if entry.plain]
        self._websocket: bytes | None = None

    @property
    def websocket(self) -> bytes:
        if self._websocket is None:
            self._websocket = b"".join(frame.websocket for frame in self.frames)
        return self._websocket


class _Entry:
    """An event in the pump's log, with its packet for classic clients (``None``: it cannot be
    encoded, and is skipped) and, made when first needed, its packet with the id."""

    __slots__ = ("_with_ids", "event", "plain")

    def __init__(self, event: Event) -> None:
        self.event = event
        self._with_ids: Frame | None = None
        try:
            self.plain: Frame | None = Frame(event.socketio_text)
        except Exception:  # one bad event must never stop the fan-out
            logger.exception("dropped event %r: it cannot be encoded", event.name)
            self.plain = None

    @property
    def with_ids(self) -> Frame:
        if self._with_ids is None:
            self._with_ids = Frame(self.event.socketio_text_with_id)
        return self._with_ids


def _address(environ: dict[str, Any]) -> str:
    # python-engineio's ASGI environ says REMOTE_ADDR=127.0.0.1 for everyone: ask the scope.
    client = environ.get("asgi.scope", {}).get("client")
    return str(client[0]) if client else ""


def _library_logger(name: str) -> logging.Logger:
    """A logger for python-socketio or python-engineio under ours, for their errors only (at
    info they log every packet)."""
    library = logging.getLogger(f"{logging.getLogger(__name__).name}.{name}")
    library.setLevel(logging.ERROR)
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
