"""Presence per channel: how many subscribe to each channel (on this node, and on the others as
the presence backend reports them), the conflated ``channel count`` announcements, and the named
users joining and leaving a channel.

Conflation, as for ``user count`` (``presence.py``): a change after a quiet period is announced
at once; the changes within the window that follows are merged, and announced when it ends, with
the numbers of that moment, so every subscriber ends on the exact count. One window for all the
channels (one timer, however many channels change): a storm over 500 channels costs each
subscriber a few frames, not one per newcomer of its channel.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from broadcast.broker import Broker, PresenceBackend
from broadcast.events import CHANNEL_COUNT, USER, Event
from broadcast.metrics import Metrics


class ChannelPresence:
    def __init__(
        self,
        broker: Broker,
        backend: PresenceBackend,
        conflation_window: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._broker = broker
        self.backend = backend
        self._metrics = metrics or Metrics()
        self._window = conflation_window
        self.local: dict[str, int] = {}
        """Subscribers on this node, by channel (channels with none are not listed)."""
        self.remote: dict[str, int] = {}
        """Subscribers on the other nodes, by channel, for the channels this node has."""
        self._named: dict[str, Counter[str]] = {}
        """Named users' subscriptions on this node, by channel then name."""
        self._pending: dict[str, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def count(self, channel: str) -> int:
        """The subscribers of ``channel`` on every node (this one's exact; the others' as last
        reported)."""
        return self.local.get(channel, 0) + self.remote.get(channel, 0)

    def count_event(self, channel: str) -> Event:
        """``channel count`` now, for the subscribers of ``channel``."""
        return Event(
            CHANNEL_COUNT, {"channel": channel, "count": self.count(channel)}, None, channel
        )

    def users(self, channel: str) -> list[str]:
        """The named users subscribed to ``channel`` on this node, sorted."""
        return sorted(self._named.get(channel, ()))

    def join(self, channel: str, username: str | None) -> tuple[bool, bool]:
        """Count a subscriber of ``channel`` in: (whether it is the channel's first on this node,
        whether the new count went out at once: otherwise tell the newcomer yourself)."""
        local = self.local.get(channel, 0) + 1
        self.local[channel] = local
        if local == 1:
            self.backend.watch(channel)
        if username is not None:
            named = self._named.setdefault(channel, Counter())
            named[username] += 1
        self._shared(channel)
        announced = self.changed(channel)
        if username is not None:
            self._announce_user(channel, username, connected=True)
        return local == 1, announced

    def leave(self, channel: str, username: str | None) -> bool:
        """Count a subscriber of ``channel`` out; whether it was the channel's last here."""
        local = self.local.get(channel, 0) - 1
        if local < 0:
            raise RuntimeError(f"leave without join on channel {channel!r}")
        if username is not None:
            named = self._named.get(channel)
            if named is not None:
                named[username] -= 1
                if named[username] <= 0:
                    del named[username]
                if not named:
                    del self._named[channel]
        if local:
            self.local[channel] = local
        else:
            del self.local[channel]
            self.backend.unwatch(channel)
        self._shared(channel)
        if local:
            self.changed(channel)
        else:  # nobody here to tell; the other nodes' count is asked afresh on the next join
            self.remote.pop(channel, None)
            self._pending.pop(channel, None)
        if username is not None:
            self._announce_user(channel, username, connected=False)
        return not local

    def everyone_left(self) -> None:
        """This node is going away (``presence.Presence.everyone_left``): every named user's
        subscriptions end; their leaves are announced to the channels' other subscribers."""
        named, self._named = self._named, {}
        for channel in list(self.local):
            self.local.pop(channel)
            self._shared(channel)
            for username in named.get(channel, Counter()).elements():
                self._announce_user(channel, username, connected=False)

    def remote_changed(self, channel: str, remote: int) -> None:
        """The presence backend reports ``remote`` subscribers of ``channel`` on other nodes."""
        if channel not in self.local:
            return  # nobody here to tell
        if self.remote.get(channel, 0) != remote:
            self.remote[channel] = remote
            self.changed(channel)

    def changed(self, channel: str) -> bool:
        """Note that ``channel``'s count changed; true if announced at once."""
        if self._timer is None:
            self._announce(channel)
            if self._window > 0:
                self._start_window()
            return True
        self._pending[channel] = None
        return False

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()

    def _start_window(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._window, self._window_ended)

    def _window_ended(self) -> None:
        self._timer = None
        if self._pending:
            pending, self._pending = self._pending, {}
            for channel in pending:
                if channel in self.local:
                    self._announce(channel)
            self._start_window()

    def _announce(self, channel: str) -> None:
        self._broker.publish_local(self.count_event(channel))

    def _shared(self, channel: str) -> None:
        self.backend.channel_changed(
            channel, self.local.get(channel, 0), self._named.get(channel, Counter())
        )

    def _announce_user(self, channel: str, username: str, connected: bool) -> None:
        data = {
            "username": username,
            "channel": channel,
            "count": self.count(channel),
            "connected": connected,
        }
        self._broker.publish_soon(Event(USER, data, None, channel))
