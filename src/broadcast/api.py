"""Plain HTTP routes: stats, liveness and readiness."""

from __future__ import annotations

from dataclasses import dataclass

from litestar import MediaType, Response, Router, get
from litestar.openapi.datastructures import ResponseSpec

from broadcast.broker import Broker
from broadcast.channel_presence import ChannelPresence
from broadcast.metrics import CONTENT_TYPE_LATEST
from broadcast.presence import TRANSPORTS, Presence
from broadcast.supervisor import Supervisor


@dataclass(frozen=True)
class Connections:
    socketio: int
    sse: int


@dataclass(frozen=True)
class Stats:
    user_count: int
    """Users connected to every node, over every transport (what ``user count`` carries)."""
    local_users: int
    """Users connected to this node."""
    connections: Connections
    """This node's connections per transport."""
    channels: dict[str, int]
    """Subscribers of the channels this node has subscribers of, over every node, by name
    (the first ``STATS_CHANNELS`` by name; ``GET /channels`` lists them all)."""


STATS_CHANNELS = 1000


@dataclass(frozen=True)
class Health:
    status: str


@dataclass(frozen=True)
class Readiness:
    status: str
    """``ready`` or ``unavailable``."""
    broker: str
    """The broker URL's scheme (``memory``, ``redis``)."""
    reasons: list[str]
    """Why not ready (empty when ready)."""


def create_api_router(
    broker: Broker,
    presence: Presence,
    channels: ChannelPresence,
    supervisor: Supervisor,
    broker_scheme: str,
) -> Router:
    @get(
        "/stats",
        summary="Connected users, connections per transport, subscribers per channel",
        tags=["operations"],
    )
    async def stats() -> Stats:
        names = sorted(channels.local)[:STATS_CHANNELS]
        return Stats(
            user_count=presence.user_count,
            local_users=presence.local_users,
            connections=Connections(**presence.connections),
            channels={name: channels.count(name) for name in names},
        )

    @get("/healthz", summary="200 while the process serves", tags=["operations"])
    async def healthz() -> Health:
        return Health(status="ok")

    @get(
        "/readyz",
        summary="200 when the broker can deliver; 503 and why not otherwise",
        tags=["operations"],
        responses={503: ResponseSpec(Readiness, description="Not ready, with the reasons")},
    )
    async def readyz() -> Response[Readiness]:
        why = reasons()
        return Response(
            Readiness(status="unavailable" if why else "ready", broker=broker_scheme, reasons=why),
            status_code=503 if why else 200,
        )

    def reasons() -> list[str]:
        backends = (broker.backend.unavailable_reason, presence.backend.unavailable_reason)
        # A crashed task (a fan-out pump, say) is not ready until it has been restarted.
        return [reason for reason in backends if reason is not None] + list(
            supervisor.down.values()
        )

    broker.metrics.watch(
        connections=presence.connections.__getitem__,
        transports=TRANSPORTS,
        users=lambda: presence.user_count,
        broker_up=lambda: not reasons(),
    )

    @get(
        "/metrics",
        summary="Prometheus metrics",
        tags=["operations"],
        media_type=MediaType.TEXT,
    )
    async def metrics() -> Response[bytes]:
        return Response(broker.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return Router(path="/", route_handlers=[stats, healthz, readyz, metrics])
