"""Presence: who is connected to this node, and the conflated ``user count`` announcement.

Emitting ``user count`` once per join makes a burst of N joins cost O(N^2) frames (the classic
app's ``io.emit`` on every ``++currentUsers``). ``CountAnnouncer`` throttles instead: a change
after a quiet period is announced at once (leading edge); further changes within the window are
merged into one announcement of the latest number when the window ends (trailing edge). Since the
trailing announcement always reads the count at that moment, every client ends on the exact final
number. (A trailing count equal to the last one announced is still sent: someone who joined and
was told the count of its arrival may still be here, holding a number that has since changed.)
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from broadcast.broker import Broker, PresenceBackend
from broadcast.broker.base import RemoteChannelCallback
from broadcast.events import USER, USER_COUNT, Event
from broadcast.metrics import Metrics
from broadcast.supervisor import Supervisor

TRANSPORTS = ("socketio", "sse")


class CountAnnouncer:
    """Leading- and trailing-edge throttle of ``announce`` over a window of ``window()`` seconds
    (read at the start of each window, so it can follow the audience's size)."""

    def __init__(self, window: Callable[[], float], announce: Callable[[], None]) -> None:
        self.window = window
        self._announce = announce
        self._timer: asyncio.TimerHandle | None = None
        self._pending = False

    def changed(self) -> bool:
        """Note a change; true if it was announced at once, false if it waits for the window."""
        if self._timer is None and self.window() <= 0:
            self._announce()
            return True
        if self._timer is None:
            self._announce()
            self._start_window()
            return True
        self._pending = True
        return False

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = False

    def _start_window(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.window(), self._window_ended)

    def _window_ended(self) -> None:
        self._timer = None
        if self._pending:
            self._pending = False
            self._announce()
            self._start_window()


class Presence:
    """Counts this node's connections by transport, learns the other nodes' total from the
    presence backend, and keeps every client of this node told the sum."""

    def __init__(
        self,
        broker: Broker,
        backend: PresenceBackend,
        conflation_window: float,
        max_frames_per_second: int = 0,
        metrics: Metrics | None = None,
    ) -> None:
        self._broker = broker
        self._metrics = metrics or Metrics()
        self.backend = backend
        self.connections: dict[str, int] = dict.fromkeys(TRANSPORTS, 0)
        self._named: Counter[str] = Counter()
        """The connections of named users, by name (for ``everyone_left``)."""
        self._everyone_left = False
        self.remote_users = 0
        self._base_window = conflation_window
        self._max_frames_per_second = max_frames_per_second
        self._announcer = CountAnnouncer(self._window, self._announce)

    @property
    def local_users(self) -> int:
        return sum(self.connections.values())

    @property
    def user_count(self) -> int:
        """Users connected to every node (this one's exact; the others' as last reported)."""
        return self.local_users + self.remote_users

    async def start(self, supervisor: Supervisor, on_remote_channel: RemoteChannelCallback) -> None:
        """Share this node's counts; the other nodes' channel counts go to
        ``on_remote_channel`` (``channel_presence.ChannelPresence.remote_changed``)."""
        await self.backend.start(self._remote_total_changed, supervisor, on_remote_channel)

    def _window(self) -> float:
        # Every announcement is one frame per client of this node, so under a storm the window
        # widens with the audience: at most `max_frames_per_second` count frames per second in
        # all (a burst of 5,000 joins then costs each client a few frames, not one per 50 ms).
        if self._base_window <= 0 or self._max_frames_per_second <= 0:
            return self._base_window
        return max(self._base_window, self.local_users / self._max_frames_per_second)

    async def stop(self) -> None:
        self._announcer.close()
        await self.backend.stop()

    def _remote_total_changed(self, remote_users: int) -> None:
        self.remote_users = remote_users
        self._announcer.changed()

    def count_event(self) -> Event:
        """The current count, for a client that has just connected."""
        return Event(USER_COUNT, self.user_count)

    def join(self, transport: str, username: str | None = None) -> bool:
        """Count a new connection, announce a named user; true if the new count went out at once."""
        self.connections[transport] += 1
        self._metrics.joins.labels(transport).inc()
        self.backend.local_changed(self.local_users)
        announced = self._announcer.changed()
        if username is not None:
            self._named[username] += 1
            self._announce_user(username, connected=True)
        return announced

    def leave(self, transport: str, username: str | None = None) -> None:
        if self._everyone_left:
            return  # counted out already (a connection the drain waited for in vain)
        if self.connections[transport] <= 0:
            raise RuntimeError(f"leave without join on transport {transport!r}")
        self.connections[transport] -= 1
        self._metrics.leaves.labels(transport).inc()
        self.backend.local_changed(self.local_users)
        self._announcer.changed()
        if username is not None:
            self._named[username] -= 1
            if not self._named[username]:
                del self._named[username]
            self._announce_user(username, connected=False)

    def everyone_left(self) -> int:
        """This node is going away and its connections were ended without leaving one by one
        (``drain.py``): count everyone out at once, and announce every named user's leave, as
        each would have (with the count once they have all left); how many were announced."""
        self._everyone_left = True
        for transport in self.connections:
            self.connections[transport] = 0
        self.backend.local_changed(0)
        leaving = list(self._named.elements())
        self._named.clear()
        for username in leaving:
            self._announce_user(username, connected=False)
        return len(leaving)

    def _announce_user(self, username: str, connected: bool) -> None:
        data = {"username": username, "currentUsers": self.user_count, "connected": connected}
        self._broker.publish_soon(Event(USER, data))

    def _announce(self) -> None:
        self._broker.publish_local(Event(USER_COUNT, self.user_count))
