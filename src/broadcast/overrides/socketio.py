"""python-socketio, adapted (pinned to python-socketio 5.x internals; each change says why).

The transport (``socketio.py``) uses ``GuardedServer`` instead of the stock server: it tells
handlers whether an acknowledgement was asked for, refuses client events named like its own,
replays after CONNECT, lets the transport admit or refuse each Engine.IO session from its
handshake, closes sessions that never connect, and closes the connection of a client that sends
what is not Socket.IO, with one log line (``docs/socketio-conformance.md``). Its Engine.IO server
is ``overrides/engineio.py``'s ``EngineIOServer``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import engineio
import socketio
from socketio import packet as sio_packet

from broadcast.overrides.check import signatures
from broadcast.overrides.engineio import EngineIOServer

logger = logging.getLogger(__name__)

NAMESPACE = "/"

ack_requested: contextvars.ContextVar[bool] = contextvars.ContextVar("ack_requested")

NAMESPACE_DISCONNECT = "client namespace disconnect"
"""The client left its namespace on purpose (its Socket.IO ``41``; Node's name). python-socketio
calls it ``client disconnect``, as it calls an Engine.IO CLOSE packet (a polling client's
``engine.close()``, a cut transport): connection state recovery must tell the two apart."""

_reused_sid: contextvars.ContextVar[str | None] = contextvars.ContextVar("reused_sid", default=None)
"""The sid a recovering client gets back, for ``EngineIOServer.generate_id`` (python-socketio
names a new sid with it, in ``BaseManager.pre_connect``), in that CONNECT's task only."""


class _SidReusingEngineIO(EngineIOServer):
    def generate_id(self) -> str:
        sid = _reused_sid.get()
        if sid is None:
            return str(super().generate_id())
        _reused_sid.set(None)  # one use
        return sid


# Handlers python-socketio keeps for itself: a client event with one of these names would
# otherwise reach them (a fake "connect" or "disconnect" skewing the count).
_SERVER_ONLY_EVENTS = frozenset({"connect", "disconnect"})
RESERVED_EVENT = "\x00reserved"
"""Stands in for a server-only event name, so the catch-all handler refuses it."""


# ---------------------------------------------------------------------------- Socket.IO server

MAX_ATTACHMENTS = 10
"""Binary attachments one packet may announce (socket.io-parser's default ``maxAttachments``):
each is held until the packet is complete."""


@dataclass(frozen=True)
class Refusal:
    """Why an Engine.IO session is refused: at once (HTTP 403, ``{"code": 4, "message"}``), or
    ``at_connect``: its Socket.IO CONNECT gets ``connect_error`` with the message, and the
    session closes (a client is then told why)."""

    message: str
    at_connect: bool = False


def packet_problem(pkt: Any) -> str | None:
    """What is wrong with a decoded Socket.IO packet from a client (``None``: nothing), as
    socket.io-parser checks payloads."""
    kind, data = pkt.packet_type, pkt.data
    if kind == sio_packet.CONNECT:
        return None if data is None or isinstance(data, dict) else "CONNECT payload not an object"
    if kind == sio_packet.DISCONNECT:
        return None if data is None else "DISCONNECT with a payload"
    if kind in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
        if not isinstance(data, list) or not data:
            return "event payload not a non-empty array"
        name = data[0]
        if not isinstance(name, str | int) or isinstance(name, bool):
            return "event name not a string"
    elif kind in (sio_packet.ACK, sio_packet.BINARY_ACK):
        if not isinstance(data, list):
            return "ack payload not an array"
    else:
        return f"unexpected packet type {kind}"
    binary = kind in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK)
    if binary and not 1 <= pkt.attachment_count <= MAX_ATTACHMENTS:
        return f"binary packet with {pkt.attachment_count} attachments"
    return None


class GuardedServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server with these changes (pinned to python-socketio 5.x internals):

    - handlers learn whether the client asked for an acknowledgement (python-socketio hides the
      ack id), so a refusal reaches the client exactly once: the ack, else an ``error`` event;
    - a client event named like a server-only handler never reaches that handler;
    - a CONNECT that arrives on an Engine.IO session that timed out while the connect handler
      ran leaves at once (python-socketio would mark the dead session connected for good);
    - ``on_connected`` runs once the CONNECT packet is queued, so what a client missed is
      replayed after it (python-socketio has no such hook);
    - every client's outgoing queue counts its bytes (``CountingQueue``);
    - ``admit`` sees every Engine.IO session open (python-socketio only shows CONNECTs, so a
      session that never connects escapes any limit), ``on_session_closed`` its end;
    - a session that joins no namespace within ``connect_timeout`` is closed (Socket.IO's
      ``connectTimeout``; python-socketio keeps it until the client goes);
    - a packet that is not valid Socket.IO closes its session, with one log line
      (python-socketio logs a traceback and keeps the connection);
    - a CONNECT to a namespace nobody serves gets ``{"message": "Invalid namespace"}`` (the
      official client reads ``message``; python-socketio sends a bare string);
    - connection state recovery (Socket.IO 4.6+): a CONNECT with a private session id
      (``pid``) may get its old sid back (``claim_sid``; python-socketio makes a new one every
      time), the CONNECT ack carries the pid (``private_id``; python-socketio's is hard-coded
      ``{"sid"}``), and the client's own disconnect is ``NAMESPACE_DISCONNECT``, not the
      ``client disconnect`` of a cut transport.
    """

    on_connected: Any = None
    claim_sid: Callable[[str, dict[str, Any]], Awaitable[str | None]] | None = None
    """The sid a recovering client gets back (``None``: a new one), given its Engine.IO session
    and its CONNECT payload; called for a CONNECT with a ``pid``."""
    private_id: Callable[[str], str | None] | None = None
    """The pid the CONNECT ack of a sid carries (``None``: none)."""
    admit: Callable[[str, dict[str, Any]], Refusal | None] | None = None
    on_session_closed: Callable[[str], None] | None = None
    on_invalid_packet: Callable[[str], None] | None = None

    def __init__(self, *args: Any, connect_timeout: float = 45.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connect_timeout = connect_timeout
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self._refusals: dict[str, str] = {}
        self._closing: set[asyncio.Future[None]] = set()

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return _SidReusingEngineIO

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        if (
            pkt.packet_type == sio_packet.CONNECT
            and isinstance(pkt.data, dict)
            and self.private_id is not None
        ):
            pid = self.private_id(pkt.data.get("sid", ""))
            if pid is not None:
                pkt.data = {**pkt.data, "pid": pid}  # 40{"sid","pid"}, as socket.io's
        await super()._send_packet(eio_sid, pkt)

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        await super()._handle_eio_connect(eio_sid, environ)
        refusal = self.admit(eio_sid, environ) if self.admit is not None else None
        if refusal is not None and not refusal.at_connect:
            self.environ.pop(eio_sid, None)
            return refusal.message  # python-engineio refuses the handshake (403)
        if refusal is not None:
            self._refusals[eio_sid] = refusal.message
        loop = asyncio.get_running_loop()
        self._deadlines[eio_sid] = loop.call_later(
            self.connect_timeout, self._connect_timed_out, eio_sid
        )
        return None

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        deadline = self._deadlines.pop(eio_sid, None)
        if deadline is not None:
            deadline.cancel()
        self._refusals.pop(eio_sid, None)
        try:
            await super()._handle_eio_disconnect(eio_sid, reason)
        finally:
            if self.on_session_closed is not None:
                self.on_session_closed(eio_sid)

    def _connect_timed_out(self, eio_sid: str) -> None:
        self._deadlines.pop(eio_sid, None)
        logger.info(
            "closing Engine.IO session %s: no Socket.IO CONNECT within %g s",
            eio_sid,
            self.connect_timeout,
        )
        closing = asyncio.ensure_future(self.eio.disconnect(eio_sid))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        problem = self._invalid(eio_sid, data)
        if problem is None:
            if isinstance(data, str) and data[:1] == "1" and eio_sid not in self._binary_packet:
                pkt = self.packet_class(encoded_packet=data)
                await self._handle_disconnect(eio_sid, pkt.namespace, NAMESPACE_DISCONNECT)
                return
            await super()._handle_eio_message(eio_sid, data)
            return
        logger.info("closing Engine.IO session %s: invalid Socket.IO packet (%s)", eio_sid, problem)
        if self.on_invalid_packet is not None:
            self.on_invalid_packet(eio_sid)
        self._binary_packet.pop(eio_sid, None)
        await self.eio.disconnect(eio_sid)

    def _invalid(self, eio_sid: str, data: Any) -> str | None:
        if eio_sid in self._binary_packet:
            return None if isinstance(data, bytes) else "text where an attachment was due"
        if not isinstance(data, str):
            return "binary data without a binary packet"
        try:
            pkt = self.packet_class(encoded_packet=data)
        except Exception as exc:  # python-socketio's decoder raises whatever it meets
            return f"undecodable: {type(exc).__name__}"
        problem = packet_problem(pkt)
        binary = pkt.packet_type in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK)
        joined = self.manager.sid_from_eio_sid(eio_sid, pkt.namespace or NAMESPACE)
        if problem is None and binary and not joined:
            problem = "binary packet outside a namespace"
        return problem

    async def _handle_event_internal(
        self, server: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: Any
    ) -> None:
        ack_requested.set(id is not None)
        if data and data[0] in _SERVER_ONLY_EVENTS:
            data = [RESERVED_EVENT, data[0]]
        await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        namespace = namespace or NAMESPACE
        refusal = self._refusals.get(eio_sid)
        if refusal is not None or not self._serves(namespace):
            message = refusal if refusal is not None else "Invalid namespace"
            await self._send_packet(
                eio_sid,
                self.packet_class(
                    sio_packet.CONNECT_ERROR, data={"message": message}, namespace=namespace
                ),
            )
            if refusal is not None:
                await self.eio.disconnect(eio_sid)
            return
        sid = None
        if self.claim_sid is not None and isinstance(data, dict) and "pid" in data:
            sid = await self.claim_sid(eio_sid, data)
        token = _reused_sid.set(sid)
        try:
            await super()._handle_connect(eio_sid, namespace, data)
        finally:
            _reused_sid.reset(token)
        socket = self.eio.sockets.get(eio_sid)
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is not None and (socket is None or socket.closed):
            await self._handle_disconnect(eio_sid, namespace, self.reason.TRANSPORT_CLOSE)
        elif sid is not None:
            deadline = self._deadlines.pop(eio_sid, None)
            if deadline is not None:
                deadline.cancel()
            if self.on_connected is not None:
                await self.on_connected(sid)

    def _serves(self, namespace: str) -> bool:
        """python-socketio's own test of a namespace it accepts CONNECTs for."""
        return bool(
            namespace in self.handlers
            or namespace in self.namespace_handlers
            or self.namespaces == "*"
            or namespace in self.namespaces
        )


def check() -> str | None:
    """Why ``GuardedServer`` cannot work with the python-socketio installed (``None``: it can)."""
    return _check_signatures() or _check_sid_reuse()


def _check_sid_reuse() -> str | None:
    """python-socketio must name a new sid with ``eio.generate_id()`` (the recovery's way to give
    a client its old sid back): a behaviour, so it is tried, not read."""
    server = GuardedServer(async_mode="asgi")
    token = _reused_sid.set("probe-sid")
    try:
        sid = socketio.base_manager.BaseManager.pre_connect(server.manager, "probe-eio", NAMESPACE)
    except Exception as exc:  # anything: the internals changed
        return f"BaseManager.pre_connect failed: {exc!r}"
    finally:
        _reused_sid.reset(token)
    if sid != "probe-sid":
        return "BaseManager.pre_connect no longer names sids with eio.generate_id()"
    return None


def _check_signatures() -> str | None:
    return signatures(
        socketio.AsyncServer,
        {
            "_engineio_server_class": ["self"],
            "_handle_eio_connect": ["self", "eio_sid", "environ"],
            "_handle_eio_disconnect": ["self", "eio_sid", "reason"],
            "_handle_eio_message": ["self", "eio_sid", "data"],
            "_handle_event_internal": [
                "self",
                "server",
                "sid",
                "eio_sid",
                "data",
                "namespace",
                "id",
            ],
            "_handle_connect": ["self", "eio_sid", "namespace", "data"],
            "_handle_disconnect": ["self", "eio_sid", "namespace", "reason"],
            "_send_packet": ["self", "eio_sid", "pkt"],
        },
        attributes=("_binary_packet", "environ", "handlers", "namespace_handlers", "namespaces"),
        instance=socketio.AsyncServer(async_mode="asgi"),
    )
