"""Prometheus metrics (prometheus_client), on a registry of this app's own (no global state).

Counters are bumped where things happen (presence, hub, transports, publish API); gauges that
describe current state are read at scrape time from their owners, so they can never drift.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "RECOVERY_RESULTS", "Metrics"]

RECOVERY_RESULTS = ("recovered", "no_session", "offset", "malformed", "live", "identity", "lost")
"""How a Socket.IO recovery attempt ended: ``recovered``; or refused (a fresh session) because
no session was kept under the pid (unknown, expired, already taken, store unavailable), the
offset is no longer held (or over the replay budget), the pid or offset is malformed, the sid is
still live, the client came back as someone else (another name, or a token that no longer
grants one of its private channels: ``identity``), or the missed events went while the client
was being registered (``lost``)."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.connections = Gauge(
            "broadcast_connections",
            "Clients connected to this node, by transport",
            ["transport"],
            registry=registry,
        )
        self.users = Gauge(
            "broadcast_users",
            "Users connected to every node (what `user count` carries)",
            registry=registry,
        )
        self.joins = Counter(
            "broadcast_joins",
            "Clients that connected, by transport",
            ["transport"],
            registry=registry,
        )
        self.leaves = Counter(
            "broadcast_leaves",
            "Clients that disconnected, by transport",
            ["transport"],
            registry=registry,
        )
        self.published = Counter(
            "broadcast_events_published",
            "Events published from this node (HTTP publish, chat)",
            ["source"],
            registry=registry,
        )
        self.received = Counter(
            "broadcast_events_received",
            "Events this node received from the broker, each fanned out to its clients",
            registry=registry,
        )
        self.delivered = Counter(
            "broadcast_frames_delivered",
            "Event frames queued to clients, by transport",
            ["transport"],
            registry=registry,
        )
        self.replayed = Counter(
            "broadcast_events_replayed",
            "Events replayed to clients that reconnected with the last id they saw",
            registry=registry,
        )
        self.evicted = Counter(
            "broadcast_clients_evicted",
            "Clients disconnected by the server, by reason",
            ["reason"],
            registry=registry,
        )
        self.refused = Counter(
            "broadcast_client_events_refused",
            "Client events and connections refused, by kind",
            ["kind"],
            registry=registry,
        )
        self.broker_up = Gauge(
            "broadcast_broker_up",
            "1 when the broker can deliver (the backend and presence reachable), else 0",
            registry=registry,
        )
        self.task_crashes = Counter(
            "broadcast_task_crashes",
            "Long-lived tasks (fan-out pumps, keep-alive, watchdog, broker loops) that crashed, "
            "each logged with its traceback and restarted, by task",
            ["task"],
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "broadcast_publish_seconds",
            "Time to hand a published event to the broker",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.publish_requests = Counter(
            "broadcast_publish_requests",
            "POST /publish requests answered, by how they were read: early (a plain keep-alive "
            "HTTP/1.1 request, answered from the server's reads, before h11) or asgi",
            ["via"],
            registry=registry,
        )
        self.publish_early = self.publish_requests.labels("early")
        self.publish_asgi = self.publish_requests.labels("asgi")
        self.recoveries = Counter(
            "broadcast_socketio_recoveries",
            "Socket.IO clients that asked to recover their session (a pid and an offset), by "
            "result",
            ["result"],
            registry=registry,
        )
        for result in RECOVERY_RESULTS:
            self.recoveries.labels(result)  # every result present from the start, at 0
        self.recovery_sessions = Gauge(
            "broadcast_socketio_recovery_sessions",
            "Socket.IO sessions this node kept for recovery, neither recovered nor expired yet "
            "(Redis: one recovered on another node counts until its window ends)",
            registry=registry,
        )

        self.fanout_seconds = Histogram(
            "broadcast_fanout_seconds",
            "From an event reaching a transport's fan-out until it was written to every client "
            "of that transport, or queued for those written by their own task (per batch, for "
            "its oldest event), by transport",
            ["transport"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0),
            registry=registry,
        )  # fmt: skip

    def watch(
        self,
        connections: Callable[[str], int],
        transports: tuple[str, ...],
        users: Callable[[], int],
        broker_up: Callable[[], bool],
    ) -> None:
        """Read the current state from its owners at each scrape."""
        for transport in transports:
            self.connections.labels(transport).set_function(_bind(connections, transport))
        self.users.set_function(users)
        self.broker_up.set_function(lambda: 1.0 if broker_up() else 0.0)

    def watch_recovery(self, sessions: Callable[[], int]) -> None:
        """Read the number of kept sessions (``SessionStore.kept``) at each scrape."""
        self.recovery_sessions.set_function(lambda: float(sessions()))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _bind(read: Callable[[str], int], transport: str) -> Callable[[], float]:
    return lambda: float(read(transport))
