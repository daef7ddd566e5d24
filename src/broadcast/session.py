"""A client's life, whatever its transport: who it is (admission), its place in the count
(presence join and leave), what it missed (resume) and the one replay filter, and its place in
its transport's fan-out. Each transport makes its clients from ``Client`` and keeps only its wire
format and its server glue.

Order matters, and is the same on both transports: a client is admitted (its identity checked;
a refusal is counted and said), takes its position in the pump's stream, joins the count (so a
count announced at once includes it), then is replayed what it missed; the live events that
came meanwhile go through its ``ReplayFilter``, so each event reaches it once, in order.

Channels: a client subscribes to some (checked: names, its allowance, private channels' grants),
each counted in that channel's presence (``channel_presence.py``); this node listens to a channel
(receives its events) while it has a subscriber of it, and asks before the subscription is
acknowledged, so nothing published after the acknowledgement is missed.
"""

from __future__ import annotations

import asyncio
import logging

from broadcast.broker import Broker
from broadcast.channel_presence import ChannelPresence
from broadcast.channels import ChannelPolicy, Grant
from broadcast.errors import Refused
from broadcast.events import Event
from broadcast.eviction import Evicted
from broadcast.identity import Identity, Who
from broadcast.presence import Presence
from broadcast.replay import Missed, ReplayFilter, missed_since, replay_budget

logger = logging.getLogger(__name__)


class Client:
    """One connected client (a Socket.IO session, an SSE stream), as every part sees it."""

    __slots__ = (
        "address",
        "channels",
        "evicted",
        "grant",
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
        self.channels: dict[str, None] = {}
        """The channels it subscribes to, in the order it did (a dict: an ordered set)."""
        self.grant = Grant.NONE
        """The private channels its token lets it subscribe to."""

    @property
    def gone(self) -> bool:
        """It left or was cut off: the fan-out skips it."""
        return self.evicted is not None or not self.joined


UNLISTEN_AFTER_SECONDS = 1.0
"""A channel's last local subscriber gone, the node stops receiving its events after this: a
client that subscribes again at once (a page reload) keeps the listening."""

LISTEN_GRACE_SECONDS = 10.0
"""A channel listened to for a subscription that never came (its request failed) is let go
after this."""


class Sessions:
    """Admission, presence and resume for the clients of both transports."""

    def __init__(
        self,
        broker: Broker,
        presence: Presence,
        identity: Identity,
        buffer_bytes: int,
        channel_presence: ChannelPresence,
        policy: ChannelPolicy,
    ) -> None:
        self._broker = self.broker = broker
        self._presence = presence
        self.channel_presence = channel_presence
        self.policy = policy
        self._unlisten: set[str] = set()
        self._listened: dict[str, float] = {}
        """Channels listened to for a subscription not made yet: when (the loop's clock)."""
        self.unlisten_after = UNLISTEN_AFTER_SECONDS
        self.listen_grace = LISTEN_GRACE_SECONDS
        self._unlisten_tasks: set[asyncio.Task[None]] = set()
        self._identity = identity
        self._replay_budget = replay_budget(buffer_bytes)
        self._refused = broker.metrics.refused.labels("connect")

    def identify(self, declared: object, token: object) -> Who:
        """Who the client is (its username, ``None``: anonymous; the private channels its token
        grants), or ``Refused`` saying why, counted."""
        try:
            return self._identity.verify(declared, token)
        except Refused:
            self._refused.inc()
            raise

    def verified(self, declared: object, token: object) -> Who | None:
        """Who the client is, or ``None`` when its credentials are refused (not counted: the
        caller only compares, and the connection that follows is refused and counted)."""
        try:
            return self._identity.verify(declared, token)
        except Refused:
            return None

    def join(self, client: Client) -> bool:
        """Count ``client`` in; true if the new count went out at once (it is then in its
        audience), false if it waits for the conflation window (tell the client yourself:
        ``count_event``)."""
        client.joined = True
        return self._presence.join(client.transport, client.username)

    def leave(self, client: Client) -> None:
        """Count ``client`` out (once, however often called), of its channels too."""
        if client.joined:
            client.joined = False
            self.remove_channels(client, list(client.channels))
            self._presence.leave(client.transport, client.username)

    # ------------------------------------------------------------------ channels

    def check_channels(self, client: Client, names: list[str]) -> list[str]:
        """The channels of ``names`` ``client`` does not subscribe to yet, once it may (within
        its allowance, private ones granted); ``Refused`` saying why not, counted."""
        try:
            return self.policy.subscribe(client.channels.keys(), names, client.grant)
        except Refused:
            self._broker.metrics.refused.labels("subscribe").inc()
            raise

    async def listen(self, names: list[str]) -> None:
        """Receive the events of ``names`` on this node before a subscription to them is
        acknowledged (the backend asks for all of them at once)."""
        new = [name for name in names if name not in self.channel_presence.local]
        self._unlisten.difference_update(new)
        await asyncio.gather(*(self._broker.listen(name) for name in new))
        # Checked again later: a request that fails between here and its subscription (the
        # client gone meanwhile) must not leave the node listening for nobody.
        now = asyncio.get_running_loop().time()
        for name in new:
            self._listened[name] = now
            self._unlisten_soon(name)

    def add_channels(self, client: Client, names: list[str]) -> list[str]:
        """Subscribe ``client`` to ``names`` (checked, listened to); the channels whose new
        count did not go out at once (tell the client yourself: ``channel_count_event``)."""
        untold = []
        for name in names:
            if name in client.channels:
                continue
            client.channels[name] = None
            self._listened.pop(name, None)
            _, announced = self.channel_presence.join(name, client.username)
            if not announced:
                untold.append(name)
        return untold

    def remove_channels(self, client: Client, names: list[str]) -> list[str]:
        """Unsubscribe ``client`` from ``names``; those it was subscribed to."""
        removed = []
        for name in names:
            if client.channels.pop(name, 0) is None:
                removed.append(name)
                if self.channel_presence.leave(name, client.username):
                    self._unlisten_soon(name)
        return removed

    def channel_count_event(self, channel: str) -> Event:
        return self.channel_presence.count_event(channel)

    def _unlisten_soon(self, name: str) -> None:
        # Not at once: a client that resubscribes right away (a page reload) keeps the
        # listening, and leaves are synchronous (a disconnect) while unlistening is not.
        if not self._unlisten:
            asyncio.get_running_loop().call_later(self.unlisten_after, self._unlisten_idle)
        self._unlisten.add(name)

    def _unlisten_idle(self) -> None:
        now = asyncio.get_running_loop().time()
        idle, later = [], []
        for name in self._unlisten:
            if name in self.channel_presence.local:
                continue
            listened = self._listened.get(name)
            if listened is not None and now - listened < self.listen_grace:
                later.append(name)  # its subscription may still come
                continue
            self._listened.pop(name, None)
            idle.append(name)
        self._unlisten.clear()
        for name in later:
            self._unlisten_soon(name)
        if idle:
            task = asyncio.get_running_loop().create_task(self._unlisten_all(idle))
            self._unlisten_tasks.add(task)
            task.add_done_callback(self._unlisten_tasks.discard)

    async def _unlisten_all(self, names: list[str]) -> None:
        for name in names:
            if name in self.channel_presence.local:
                continue  # subscribed to again meanwhile
            try:
                await self._broker.unlisten(name)
            except Exception:  # never fatal: its events keep coming, and are dropped here
                logger.exception("could not stop listening to channel %r", name)

    def count_event(self) -> Event:
        return self._presence.count_event()

    async def resume(self, client: Client) -> Missed | None:
        """What ``client`` missed since its ``resume_from`` (``None``: nothing to replay); its
        replay filter is set for the live events that follow. An empty id resumes from an
        unknown position: a ``gap``, nothing replayed."""
        if client.resume_from is None:
            return None
        missed = await missed_since(
            self._broker, client.resume_from, self._replay_budget, list(client.channels)
        )
        client.replay = ReplayFilter(missed)
        return missed
