"""Socket.IO's connection state recovery (socket.io 4.6+), as the official client expects it.

With ``BROADCAST_SOCKETIO_RECOVERY`` on, every client gets a private session id (``pid``) in its
CONNECT ack and every event with an id carries it as a last argument (the offset; our ids, so
SSE ``Last-Event-ID`` and Socket.IO offsets name the same positions). A client whose transport
was cut comes back with ``40{"pid", "offset", ...}``; when its session was kept (an abnormal
close, within ``BROADCAST_SOCKETIO_RECOVERY_MAX_DISCONNECTION_MS``), every event it missed is
still held and it comes back as the same client (its credentials, checked again, name the same
user and still grant its private channels), it gets its old sid back, its name and channels
(with the grants of the token it came back with), the missed events of its channels in order,
then the CONNECT ack with the same sid and pid (``socket.recovered``). Otherwise a fresh
session. Sessions live in ``recovery.py``'s store (in process, or Redis with a TTL, so another
node can restore them).

Counts: a client that drops leaves the count at once and joins again when it recovers, as any
reconnecting client: a closed tab must not stay "online" for the recovery window, and each node
counts only its own connections (no cross-node hand-over). Observers see the count dip.

The order of a recovery, so that no event is lost or doubled: ``claim`` (before python-socketio
names the sid) takes the session once and reads what was missed (the probe: when some of it is
no longer held, no recovery); the connect handler then registers the client (its live events
held back, ``pending``), joins the count and its channels, reads again from where the probe
ended, writes the missed events, then the held live events not among them, then returns, and the
CONNECT ack follows.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engineio import packet as eio_packet

from broadcast.channels import Grant
from broadcast.events import parse_event_id
from broadcast.identity import Who
from broadcast.overrides.engineio_wire import Frame
from broadcast.overrides.socketio import NAMESPACE, GuardedServer
from broadcast.recovery import PID, KeptSession, SessionStore, new_pid
from broadcast.replay import Missed, ReplayFilter, missed_since
from broadcast.session import Sessions
from broadcast.transports.socketio_writer import SocketIOClient, Writer

logger = logging.getLogger(__name__)

REPLACED = "replaced by its recovery"
"""The reason a session still open here is closed when its client comes back with its pid (its
link died unnoticed: a dropped TCP connection)."""


@dataclass
class Restoring:
    """A claimed session, between ``claim`` and the connect handler."""

    session: KeptSession
    offset: str
    probe: Missed
    grant: Grant
    """What the token it came back with grants (it may have been renewed meanwhile)."""


class Recovery:
    def __init__(
        self,
        server: GuardedServer,
        sessions: Sessions,
        store: SessionStore,
        writer: Writer,
        budget: int,
        metrics: Any,
        clients: Mapping[str, SocketIOClient],
    ) -> None:
        self._server = server
        self._clients = clients
        """The transport's connected clients, by sid."""
        self._sessions = sessions
        self._store = store
        self._writer = writer
        self._budget = budget
        self._outcomes = metrics
        self.restoring: dict[str, Restoring] = {}
        """Claimed sessions by Engine.IO sid, until their connect handler runs."""
        self.live: dict[str, str] = {}
        """This node's connected clients' sids, by pid."""
        reason = server.reason
        self.recoverable = frozenset(
            {
                reason.TRANSPORT_CLOSE,
                reason.TRANSPORT_ERROR,
                reason.PING_TIMEOUT,
                reason.CLIENT_DISCONNECT,  # an Engine.IO CLOSE packet (the client's own 41
                # is NAMESPACE_DISCONNECT, not kept)
                "server shutting down",
                REPLACED,
            }
        )

    def _outcome(self, result: str) -> None:
        self._outcomes.labels(result).inc()

    async def claim(self, eio_sid: str, data: dict[str, Any]) -> str | None:
        """The sid a client coming back with ``data`` (its CONNECT payload) gets back; ``None``:
        a fresh session."""
        pid, offset = data.get("pid"), data.get("offset")
        if not isinstance(pid, str) or not PID.fullmatch(pid):
            self._outcome("malformed")
            return None
        if not isinstance(offset, str) or parse_event_id(offset) is None:
            self._outcome("offset")
            return None
        who = self._sessions.verified(data.get("username"), data.get("token"))
        if who is None or not await self._take_over(pid, who):
            self._outcome("identity")
            return None
        session = await self._store.take(pid)
        if session is None:
            self._outcome("no_session")
            return None
        if self._server.manager.eio_sid_from_sid(session.sid, NAMESPACE) is not None:
            self._outcome("live")  # never two connections under one sid
            return None
        if not self._same_client(session.username, session.channels, who):
            self._outcome("identity")
            return None
        probe = await missed_since(
            self._sessions.broker, offset, self._budget, list(session.channels)
        )
        if probe.gap is not None:
            self._outcome("offset")  # not all held: a fresh session
            return None
        self.restoring[eio_sid] = Restoring(session, offset, probe, who.grant)
        return session.sid

    def _same_client(self, username: str | None, channels: Iterable[str], who: Who) -> bool:
        """Whether a client coming back as ``who`` is the one that was ``username`` in
        ``channels``: the same name, and a token that still grants each of its private channels
        (a renewed token may grant more, or other channels; one that no longer grants what it
        holds gets a fresh session, and subscribes again as any newcomer)."""
        policy = self._sessions.policy
        return who.username == username and all(
            who.grant.allows(name) for name in channels if policy.is_private(name)
        )

    async def _take_over(self, pid: str, who: Who) -> bool:
        """Close the connection still open here under ``pid`` (its link died unnoticed), so
        that its session is kept for the claim; false, leaving it open, when ``who`` is not its
        client."""
        sid = self.live.get(pid)
        if sid is None:
            return True
        client = self._clients.get(sid)
        if client is None:
            # Not a client here (any more): nothing of its to close, and nobody to compare
            # ``who`` with, so nothing is closed on the word of a pid alone.
            del self.live[pid]
            return True
        if not self._same_client(client.username, client.channels, who):
            return False
        eio_sid = self._server.manager.eio_sid_from_sid(sid, NAMESPACE)
        socket = self._server.eio.sockets.get(eio_sid) if eio_sid is not None else None
        if socket is None or socket.closed:
            return True
        with contextlib.suppress(Exception):
            await socket.close(wait=False, abort=True, reason=REPLACED)
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
            socket.queue.put_nowait(None)
        return True

    def client(self, restoring: Restoring, eio_sid: str, address: str, rate: Any) -> Any:
        """The client of a restored session (admitted when it first connected)."""
        session = restoring.session
        client = SocketIOClient(eio_sid, address, session.username, restoring.offset, 0, rate)
        client.grant = restoring.grant
        client.pid = session.pid
        return client

    async def replay(self, client: SocketIOClient, restoring: Restoring) -> None:
        """Write what a restored client missed, then the live events held back meanwhile (those
        not among them), before its CONNECT ack."""
        probe = restoring.probe
        since = str(probe.replayed_to) if probe.replayed_to is not None else restoring.offset
        more = await missed_since(self._sessions.broker, since, self._budget, list(client.channels))
        eio_sid = client.eio_sid
        if more.gap is not None:  # trimmed in the meantime: not a recovery after all
            client.pid = new_pid()
            self._outcome("lost")
            await self._writer.deliver(eio_sid, Frame(more.gap.socketio_text))
            events = more.events
        else:
            self._outcome("recovered")
            events = [*probe.events, *more.events]
        client.replay = ReplayFilter(Missed(more.gap, events, more.replayed_to))
        try:
            for event in events:
                await self._writer.deliver(eio_sid, Frame(event.socketio_text_with_id))
            while client.pending:
                held, client.pending = client.pending, []
                for event in client.replay.fresh(held):
                    await self._writer.deliver(eio_sid, Frame(event.socketio_text_with_id))
        finally:
            client.pending = None  # live from here: the pump sends to it directly

    def connected(self, client: SocketIOClient, sid: str) -> None:
        if client.pid is not None:
            self.live[client.pid] = sid

    def left(self, client: SocketIOClient, sid: str, reason: Any, channels: list[str]) -> None:
        """Keep the session of a client that left abnormally (not on purpose, not evicted)."""
        if client.pid is None:
            return
        if self.live.get(client.pid) == sid:
            del self.live[client.pid]
        if reason in self.recoverable and client.evicted is None:
            self._store.keep(
                KeptSession.of(sid, client.pid, client.username, client.grant, channels)
            )

    def keep_all(self, clients: dict[str, SocketIOClient]) -> None:
        """The node is going away: keep the session of every client still here (their
        connections were ended from under the app), so they recover on another node."""
        for sid, client in clients.items():
            if client.pid is not None and client.evicted is None:
                self._store.keep(
                    KeptSession.of(sid, client.pid, client.username, client.grant, client.channels)
                )

    def forget(self, eio_sid: str) -> None:
        self.restoring.pop(eio_sid, None)
