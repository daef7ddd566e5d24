"""The server the Socket.IO protocol's test suite runs against (``tests/test_protocol_suite.py``):
``create_app`` with the suite's settings, and on its Socket.IO server the handlers the suite's
README prescribes, in place of broadcast's own (test-only: never in the production app).

- ``/`` and ``/custom``: every connection is sent ``auth`` with its CONNECT payload;
- ``/``: ``message`` is echoed back as ``message-back``, ``message-with-ack`` acknowledged with
  its own arguments.

Served by ``hypercorn tests.protocol_app:app``; broadcast's settings come from the environment,
with the suite's timings (ping interval 300 ms, timeout 200 ms, connect timeout 1 s) unless set.
"""

from __future__ import annotations

import os
from typing import Any

from litestar import Litestar

from broadcast.app import create_app
from broadcast.overrides.socketio import GuardedServer
from broadcast.settings import load_settings

SUITE_SETTINGS = {
    "BROADCAST_SOCKETIO_PING_INTERVAL_MS": "300",
    "BROADCAST_SOCKETIO_PING_TIMEOUT_MS": "200",
    "BROADCAST_SOCKETIO_CONNECT_TIMEOUT_MS": "1000",
}


def install_echo_handlers(server: GuardedServer) -> None:
    pending_auth: dict[str, tuple[str, Any]] = {}
    """Connections accepted, by sid: their namespace and CONNECT payload, for ``auth``."""

    def connect(namespace: str) -> Any:
        async def on_connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
            pending_auth[sid] = (namespace, auth if auth is not None else {})

        return on_connect

    async def on_connected(sid: str) -> None:
        # After the CONNECT packet (the suite reads it first), as the reference server's
        # "connection" listener.
        namespace, auth = pending_auth.pop(sid, (None, None))
        if namespace is not None:
            await server.emit("auth", auth, to=sid, namespace=namespace)

    async def on_message(sid: str, *args: Any) -> None:
        await server.emit("message-back", args, to=sid)

    async def on_message_with_ack(sid: str, *args: Any) -> tuple[Any, ...]:
        return args  # python-socketio acknowledges with a tuple's items as the arguments

    async def on_disconnect(sid: str, reason: Any = None) -> None:
        pending_auth.pop(sid, None)

    for namespace in ("/", "/custom"):
        server.on("connect", connect(namespace), namespace=namespace)
        server.on("disconnect", on_disconnect, namespace=namespace)
    server.on("message", on_message)
    server.on("message-with-ack", on_message_with_ack)
    server.on_connected = on_connected


def create_protocol_app() -> Litestar:
    for name, value in SUITE_SETTINGS.items():
        os.environ.setdefault(name, value)
    app = create_app(load_settings())
    install_echo_handlers(socketio_server(app))
    return app


def socketio_server(app: Litestar) -> GuardedServer:
    """The Socket.IO server of ``app``: its route handler carries it (``opt``)."""
    for route in app.routes:
        handler = getattr(route, "route_handler", None)  # a mounted ASGI app's route
        server = handler.opt.get("socketio_server") if handler is not None else None
        if isinstance(server, GuardedServer):
            return server
    raise RuntimeError("the app has no Socket.IO route")


app = create_protocol_app()
