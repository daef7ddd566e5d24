"""The composition root: ``create_app(settings)`` wires every part; hypercorn serves ``app``.

``app`` is built from the environment when this module is imported (hypercorn looks it up in the
module's namespace, so it cannot be lazy); tests and embedders call ``create_app`` instead.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from litestar import Litestar, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin
from litestar.response import File
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from broadcast import __version__, drain, logs
from broadcast.api import create_api_router
from broadcast.broker import Broker, create_backends, create_session_store
from broadcast.channel_presence import ChannelPresence
from broadcast.channels import ChannelPolicy
from broadcast.channels_api import create_channels_router
from broadcast.eviction import SHUTTING_DOWN
from broadcast.identity import Identity
from broadcast.limits import AddressLimit
from broadcast.memory_return import MemoryReturn
from broadcast.metrics import Metrics
from broadcast.overrides import OverrideMismatch
from broadcast.overrides import choose as choose_overrides
from broadcast.overrides.hypercorn import SERVER_SEND
from broadcast.presence import Presence
from broadcast.publish import create_publish_router, publish_tokens
from broadcast.publish_lean import LeanPublish
from broadcast.session import Sessions
from broadcast.settings import ConfigError, Settings, load_settings, redact_url
from broadcast.supervisor import Supervisor
from broadcast.transports.socketio import SocketIOTransport
from broadcast.transports.sse import SSETransport
from broadcast.watchdog import SendWatchdog

logger = logging.getLogger("broadcast")


def static_directory() -> Path:
    """The page's files: inside the package when installed from a wheel, else the checkout's."""
    packaged = Path(__file__).parent / "static"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "static"
    if checkout.is_dir():
        return checkout
    raise RuntimeError(f"static files not found in {packaged} or {checkout}")


SCHEMA_PAGE_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:"
)


def openapi_config() -> OpenAPIConfig:
    """``/schema``: Redoc, entirely from this server (offline deployments): its bundle is vendored
    in static/vendor/ (scripts/vendor), and nothing comes from a CDN (no Google fonts, no remote
    favicon). The schema itself: ``/schema/openapi.json``."""
    redoc = RedocRenderPlugin(
        path=["/", "/redoc"],
        js_url="/static/vendor/redoc.standalone.js",
        google_fonts=False,
        # The head's first tags. The bundle always loads its "API docs by Redocly" logo from
        # cdn.redoc.ly (hidden when that fails): the policy keeps the browser from asking.
        favicon="<link rel='icon' href='data:,'>" + f"<meta http-equiv='Content-Security-Policy' "
        f'content="{SCHEMA_PAGE_POLICY}">',
    )
    return OpenAPIConfig(title="broadcast", version=__version__, render_plugins=[redoc])


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """A bug: log it with its traceback, and answer the usual JSON error without details."""
    logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response(
        {"status_code": 500, "detail": "Internal Server Error"},
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


class BroadcastApp(Litestar):
    """Litestar, keeping the ASGI server's own ``send`` in each connection's scope: Litestar
    wraps it, and the fan-out finds the client's socket from the server's
    (``overrides/hypercorn.py``). Once draining, new streams and Socket.IO sessions are refused
    (``drain.py``). ``POST /publish`` is served below Litestar (``publish_lean.py``)."""

    gate = drain.Gate()  # create_app gives each app its own
    lean_publish: LeanPublish | None = None  # create_app sets it
    wire_publish = False
    """Whether ``lean_publish`` also answers from hypercorn's reads (``hypercorn_h11.py``)."""

    @property
    def wire_publisher(self) -> LeanPublish | None:
        return self.lean_publish if self.wire_publish else None

    def publishing(self, delta: int) -> None:
        if delta > 0:
            self.gate.entered()
        else:
            self.gate.left()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
            return
        if self.gate.refuses(scope):
            await drain.refuse(scope, send)
            return
        scope[SERVER_SEND] = send
        self.gate.entered()
        try:
            if self.lean_publish is not None and self.lean_publish.takes(scope):
                await self.lean_publish(scope, receive, send)
            else:
                await super().__call__(scope, receive, send)
        finally:
            # ``send`` is bound to hypercorn's stream, which holds this scope: left here, every
            # request ends as a reference cycle holding its body (a publish's whole event),
            # which the raised collector thresholds (``lifespan``) leave for a long time.
            scope.pop(SERVER_SEND, None)
            self.gate.left()


def create_app(settings: Settings) -> BroadcastApp:
    logs.configure(settings.log_level, settings.log_format)
    metrics = Metrics()
    backend, presence_backend = create_backends(settings)
    broker = Broker(backend, metrics)
    presence = Presence(
        broker,
        presence_backend,
        settings.count_conflation_ms / 1000,
        settings.count_max_frames_per_second,
        metrics,
    )
    identity = Identity(settings.jwt_secret, settings.identity_required)
    addresses = AddressLimit(settings.max_connections_per_address)
    watchdog = SendWatchdog(settings.send_timeout_seconds, metrics.evicted)
    channel_presence = ChannelPresence(
        broker, presence_backend, settings.count_conflation_ms / 1000, metrics
    )
    policy = ChannelPolicy(settings.private_channels, settings.max_channels_per_connection)
    sessions = Sessions(
        broker, presence, identity, settings.client_buffer_bytes, channel_presence, policy
    )
    overrides = choose_overrides(settings.overrides)
    store = create_session_store(settings) if settings.socketio_recovery else None
    socketio_transport = SocketIOTransport(
        settings, broker, sessions, addresses, watchdog, overrides, store
    )
    if store is not None:
        metrics.watch_recovery(lambda: store.kept)
        if settings.socketio_recovery_max_disconnection_ms > settings.history_seconds * 1000:
            logger.warning(
                "BROADCAST_SOCKETIO_RECOVERY_MAX_DISCONNECTION_MS is longer than "
                "BROADCAST_HISTORY_SECONDS: recoveries after the history's end will fail"
            )
    sse_transport = SSETransport(settings, broker, sessions, addresses, watchdog, overrides)
    tokens = publish_tokens(settings)
    static = static_directory()
    # Collects the cycles departed connections left (see the collector thresholds below) and
    # hands freed memory back to the OS once the audience has shrunk.
    memory = MemoryReturn.for_this_platform(lambda: presence.local_users)

    # Every long-lived task of the app: a crash is logged, counted, shown in /readyz, and the
    # task restarted (``supervisor.py``).
    supervisor = Supervisor(on_crash=lambda task: metrics.task_crashes.labels(task).inc())

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await broker.start(supervisor)
        if store is not None:
            await store.start(supervisor)
        await presence.start(supervisor, channel_presence.remote_changed)
        await socketio_transport.start(supervisor)
        await sse_transport.start(supervisor)
        supervisor.start("send-watchdog", watchdog.run)
        # Fan-out allocates many short-lived objects per delivery; CPython's default collector
        # thresholds (700) then run a collection every few hundred deliveries, mostly over
        # long-lived state. Freeze what startup made and collect the young generation less often.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        supervisor.start("memory-return", memory.run)
        logger.info("broadcast %s serving; broker %s", __version__, redact_url(settings.broker_url))
        try:
            yield
        finally:
            await stop()

    stopped = False

    async def stop() -> None:
        """Stop every part, once: at the lifespan's shutdown, or at the end of the drain,
        whichever comes first."""
        nonlocal stopped
        if stopped:
            return
        stopped = True
        await supervisor.cancel("memory-return")
        await supervisor.cancel("send-watchdog")
        await sse_transport.stop()
        await socketio_transport.stop()
        channel_presence.close()
        if store is not None:
            await store.stop()
        await presence.stop()
        await broker.stop()
        await supervisor.stop()  # anything left

    gate = drain.Gate()

    async def drain_now(within: float) -> None:
        """Refuse new streams and sessions, close every connection now, telling clients to come
        back, and stop (``broadcast serve`` calls this on SIGTERM once it has stopped listening,
        then exits the process at once: the connections ended from under the app never
        return, and would hold hypercorn's graceful wait).

        Every connection that can be is ended from under the app (``drain.py``), all at once:
        the others the usual way, waited for ``within`` seconds at most. Then everyone still
        counted here leaves at once (named users' leaves announced, and sent to the other nodes,
        ``LEAVES_SENT_WITHIN`` seconds at most), and the parts stop (with Redis, this node's
        share of the count is removed)."""
        gate.draining = True

        async def close() -> tuple[int, int, int]:
            ended = watchdog.say_goodbye()
            streams = sse_transport.close_own_streams(SHUTTING_DOWN)
            return ended, streams, await socketio_transport.close_all()

        closed = await close()
        logger.info(
            "closing %d connections at once, %d SSE streams and %d Socket.IO sessions the usual "
            "way",
            *closed,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            wait = min(drain.RECHECK_SECONDS, deadline - loop.time())
            if await gate.settled(lambda: watchdog.ended_from_under, wait):
                break
            if loop.time() >= deadline:
                left = gate.open - watchdog.ended_from_under
                logger.warning("%d requests still open after %.1f s: cut off", left, within)
                break
            # A request that passed the gate just before it closed may have opened a stream or
            # a session since.
            if any(late := await close()):
                logger.info(
                    "closing %d more connections at once, %d SSE streams and %d Socket.IO "
                    "sessions the usual way (opened as the drain began)",
                    *late,
                )
        socketio_transport.keep_sessions()
        if store is not None and (unkept := await store.flush(drain.SESSIONS_KEPT_WITHIN)):
            logger.warning("%d Socket.IO sessions not kept for recovery: no time left", unkept)
        channel_presence.everyone_left()
        if presence.everyone_left() and (unsent := await broker.flush(drain.LEAVES_SENT_WITHIN)):
            logger.warning(
                "%d named users' leaves not announced to the other nodes: no time left", unsent
            )
        await stop()

    @get("/", media_type=MediaType.HTML, include_in_schema=False)
    async def index() -> File:
        return File(static / "index.html", content_disposition_type="inline")

    app = BroadcastApp(
        route_handlers=[
            index,
            create_static_files_router(path="/static", directories=[static]),
            create_api_router(
                broker, presence, channel_presence, supervisor, urlsplit(settings.broker_url).scheme
            ),
            create_publish_router(settings, broker, tokens),
            create_channels_router(presence_backend, tokens),
            sse_transport.route_handler(),
            socketio_transport.route_handler(),
        ],
        lifespan=[lifespan],
        openapi_config=openapi_config(),
        # Litestar's default logging config adds a root handler, which prints every hypercorn
        # line twice; unexpected errors are logged by `internal_error` instead.
        logging_config=LoggingConfig(configure_root_logger=False),
        exception_handlers={HTTP_500_INTERNAL_SERVER_ERROR: internal_error},
        state=State({"drain": drain_now}),
    )
    app.gate = gate
    app.lean_publish = LeanPublish(broker, tokens, settings.publish_max_bytes, metrics)
    app.wire_publish = overrides.wire_publish
    return app


def app_from_environment() -> BroadcastApp:
    """The app configured from ``BROADCAST_*`` variables; a bad value exits with its message."""
    try:
        return create_app(load_settings())
    except (ConfigError, OverrideMismatch) as exc:
        raise SystemExit(f"broadcast: {exc}") from None


app = app_from_environment()
