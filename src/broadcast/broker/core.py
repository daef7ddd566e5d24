"""The broker: a backend that crosses processes, feeding the hub that fans out in this one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence

from broadcast.broker.base import EVERYONE, Backend, BrokerUnavailable, History, topic
from broadcast.broker.hub import ALL, EventSize, Hub, Overflow, Subscriber
from broadcast.events import Event, EventId
from broadcast.eviction import SHUTTING_DOWN, Evicted
from broadcast.metrics import Metrics
from broadcast.supervisor import Supervisor

logger = logging.getLogger(__name__)


class Broker:
    def __init__(self, backend: Backend, metrics: Metrics | None = None) -> None:
        self.backend = backend
        self.hub = Hub(listening=[EVERYONE])
        self.metrics = metrics or Metrics()
        # Announcements made from synchronous code (joins, leaves) wait here and are published
        # in order by one task, so a client's "joined" never overtakes its "left".
        self._outbox: deque[tuple[str, Event]] = deque()
        self._outbox_ready = asyncio.Event()
        self._supervisor: Supervisor | None = None
        self._outbox_sent = asyncio.Event()
        """Set while every announcement queued has been published (or given up on)."""
        self._outbox_sent.set()

    async def start(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        await self.backend.start(self._received, supervisor)
        supervisor.start("broker-outbox", self._send_outbox)

    async def flush(self, within: float) -> int:
        """Wait until the announcements queued so far are published, ``within`` seconds at
        most (a node that is going away: ``stop`` drops what is left); how many were not."""
        if self._supervisor is not None and self._supervisor.running("broker-outbox"):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox_sent.wait(), within)
        return len(self._outbox)

    async def stop(self, reason: Evicted = SHUTTING_DOWN) -> None:
        self.hub.close_all(reason)
        if self._supervisor is not None:
            await self._supervisor.cancel("broker-outbox")
        await self.backend.stop()

    def _received(self, channel: str, event: Event) -> None:
        self.metrics.received.inc()
        self.hub.dispatch(channel, event)

    async def publish(self, event: Event) -> str:
        """Deliver ``event`` to every subscriber of its channel (``event.channel``; ``None``:
        everyone) on every process; its id."""
        return await self.backend.publish(topic(event.channel), event)

    async def history(self, after: EventId | None, channels: Sequence[str | None]) -> History:
        """The events of any of ``channels`` (``None``: those to everyone) after position
        ``after`` that are still held, in id order (one id sequence spans every channel)."""
        return await self.backend.history([topic(channel) for channel in channels], after)

    def publish_soon(self, event: Event) -> None:
        """``publish`` from code that cannot wait; events go out in the order given."""
        self._outbox.append((topic(event.channel), event))
        self._outbox_sent.clear()
        self._outbox_ready.set()

    def publish_local(self, event: Event) -> None:
        """Deliver ``event`` to this process's subscribers only (state each node computes
        itself, such as ``user count``)."""
        self.hub.dispatch(topic(event.channel), event)

    def subscribe(
        self,
        max_backlog: int,
        overflow: Overflow = Overflow.CLOSE,
        channels: Sequence[str | None] | None = None,
        max_bytes: int | None = None,
        size: EventSize | None = None,
    ) -> Subscriber:
        """A subscriber of the events of ``channels`` (``None`` among them: those to everyone),
        or, without ``channels``, of every channel this node listens to (``listen``)."""
        topics = ALL if channels is None else [topic(channel) for channel in channels]
        return self.hub.subscribe(topics, max_backlog, overflow, max_bytes, size)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.hub.unsubscribe(subscriber)

    async def listen(self, channel: str) -> None:
        """This node has subscribers of ``channel`` now: receive its events (the transports'
        pumps get them from here on). Returns once the backend will deliver them: an event
        published afterwards reaches this node. Calls made together go to Redis as one command
        (gather them)."""
        self.hub.listening.add(topic(channel))
        await self.backend.listen(topic(channel))

    async def unlisten(self, channel: str) -> None:
        """This node's last subscriber of ``channel`` left: its events need not come here."""
        self.hub.listening.discard(topic(channel))
        await self.backend.unlisten(topic(channel))

    async def _send_outbox(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                channel, event = self._outbox.popleft()
                try:
                    await self.backend.publish(channel, event)
                except BrokerUnavailable as exc:
                    # The other nodes cannot hear it now; this node's clients still do.
                    logger.warning("%r reached this node only: %s", event.name, exc)
                    self.hub.dispatch(channel, event)
                except Exception:
                    logger.exception("could not publish %r", event.name)
            self._outbox_sent.set()
