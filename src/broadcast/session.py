"""A client's life, whatever its transport: who it is (admission), its place in the count
(presence join and leave), what it missed (resume) and the one replay filter, and its place in
its transport's fan-out. Each transport makes its clients from ``Client`` and keeps only its wire
format and its server glue.

Order matters, and is the same on both transports: a client is admitted (its identity checked;
a refusal is counted and said), takes its position in the pump's stream, joins the count (so a
count announced at once includes it), then is replayed what it missed; the live events that
came meanwhile go through its ``ReplayFilter``, so each event reaches it once, in order.
"""

from __future__ import annotations

from broadcast.broker import Broker
from broadcast.errors import Refused
from broadcast.events import Event
from broadcast.eviction import Evicted
from broadcast.identity import Identity
from broadcast.presence import Presence
from broadcast.replay import Missed, ReplayFilter, missed_since, replay_budget


class Client:
    """One connected client (a Socket.IO session, an SSE stream), as every part sees it."""

    __slots__ = (
        "address",
        "evicted",
        "joined",
        "position",
        "replay",
        "resume_from",
        "transport",
        "username",
    )

    def __init__(
        self,
        transport: str,
        address: str,
        username: str | None,
        resume_from: str | None,
        position: int = 0,
    ) -> None:
        self.transport = transport
        self.address = address
        self.username = username
        """``None``: anonymous (counted, never announced)."""
        self.resume_from = resume_from
        """The id it resumes from: ``None`` when it did not ask for ids, ``""`` when it wants
        them (Socket.IO's last argument) with nothing to replay."""
        self.position = position
        """The index of the next event its transport's pump owes it (``fanout.EventLog``)."""
        self.replay: ReplayFilter | None = None
        """Skips the live events its replay already sent (``None``: nothing to skip)."""
        self.joined = False
        self.evicted: Evicted | None = None
        """Why the server cut it off, once it has."""

    @property
    def gone(self) -> bool:
        """It left or was cut off: the fan-out skips it."""
        return self.evicted is not None or not self.joined


class Sessions:
    """Admission, presence and resume for the clients of both transports."""

    def __init__(
        self, broker: Broker, presence: Presence, identity: Identity, buffer_bytes: int
    ) -> None:
        self._broker = broker
        self._presence = presence
        self._identity = identity
        self._replay_budget = replay_budget(buffer_bytes)
        self._refused = broker.metrics.refused.labels("connect")

    def identify(self, declared: object, token: object) -> str | None:
        """The client's username (``None``: anonymous), or ``Refused`` saying why, counted."""
        try:
            return self._identity.username(declared, token)
        except Refused:
            self._refused.inc()
            raise

    def join(self, client: Client) -> bool:
        """Count ``client`` in; true if the new count went out at once (it is then in its
        audience), false if it waits for the conflation window (tell the client yourself:
        ``count_event``)."""
        client.joined = True
        return self._presence.join(client.transport, client.username)

    def leave(self, client: Client) -> None:
        """Count ``client`` out (once, however often called)."""
        if client.joined:
            client.joined = False
            self._presence.leave(client.transport, client.username)

    def count_event(self) -> Event:
        return self._presence.count_event()

    async def resume(self, client: Client) -> Missed | None:
        """What ``client`` missed since its ``resume_from`` (``None``: nothing to replay); its
        replay filter is set for the live events that follow. An empty id resumes from an
        unknown position: a ``gap``, nothing replayed."""
        if client.resume_from is None:
            return None
        missed = await missed_since(self._broker, client.resume_from, self._replay_budget)
        client.replay = ReplayFilter(missed)
        return missed
