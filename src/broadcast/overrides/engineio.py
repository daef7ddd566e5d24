"""python-engineio, adapted (pinned to python-engineio 4.x internals; each change says why).

``EngineIOServer`` never hangs a request on a long-polling client's goodbye, lists the websocket
connection of each session (for the pump's direct writes), and follows the protocol where
python-engineio does not (the official test suite, ``tests/protocol-suite/``, and
``docs/socketio-conformance.md``): refusals carry Engine.IO's error bodies, a client's CLOSE
packet ends its session at once, a second websocket for a session is closed. Every client gets
an outgoing queue that counts its bytes (``engineio_wire.py``: the queue, the ``Frame``s the
pump sends, the protocol's error bodies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import parse_qs

import engineio
from engineio import packet as eio_packet
from engineio.async_drivers import asgi as engineio_asgi
from engineio.async_socket import AsyncSocket

from broadcast.overrides.check import signatures
from broadcast.overrides.engineio_ping import PingSweep, intercepted
from broadcast.overrides.engineio_wire import (
    BAD_REQUEST,
    FORBIDDEN,
    CountingQueue,
    code_of,
    error_response,
    refusal_of,
    respond,
)
from broadcast.watchdog import WatchedConnection

logger = logging.getLogger(__name__)

UPGRADE_SETTLES_WITHIN = 0.1
"""Seconds a long-polling GET that comes during its session's upgrade waits for the upgrade to
end (the reference server holds it too: its upgrade check runs every 100 ms)."""

CONNECTION = "broadcast.connection"
"""The scope key under which a websocket's ``WatchedConnection`` reaches python-engineio."""


# ---------------------------------------------------------------------------- Engine.IO server


class _WebSocket(engineio_asgi.WebSocket):  # type: ignore[misc]
    """python-engineio's ASGI websocket, which also lists its session's connection in
    ``EngineIOServer.websockets`` while it runs, and tells the server when its session's upgrade
    may have moved on (after each frame it reads, and at its end)."""

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        self._server = server
        self._session = getattr(handler, "__self__", None)  # the socket this websocket serves

    async def __call__(self, environ: dict[str, Any]) -> Any:
        session = self._session
        connection = environ.get("asgi.scope", {}).get(CONNECTION)
        websockets: dict[str, WatchedConnection] = self._server.websockets
        if session is None or not isinstance(connection, WatchedConnection):
            return await super().__call__(environ)
        websockets[session.sid] = connection
        try:
            return await super().__call__(environ)
        finally:
            self._upgrade_moved()
            if websockets.get(session.sid) is connection:
                del websockets[session.sid]

    async def wait(self) -> Any:
        try:
            return await super().wait()
        finally:
            self._upgrade_moved()

    def _upgrade_moved(self) -> None:
        # Soon, not now: python-engineio updates the upgrade's state right after this returns.
        if self._session is not None and self._session.sid in self._server.upgrade_watchers:
            asyncio.get_running_loop().call_soon(self._server.upgrade_moved, self._session.sid)


class EngineIOServer(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's server with these fixes (pinned to python-engineio 4.x internals), found
    by fuzzing (tests/test_fuzz.py) and by the protocol's test suite (tests/protocol-suite/):

    - disconnecting a long-polling client never waits for it to collect its CLOSE packet
      (python-engineio waits for a GET that may never come, and the POST that caused the
      disconnect is then never answered); disconnecting a websocket client closes its websocket
      (python-engineio sends the CLOSE packet and leaves the websocket open);
    - a POST to a session its client just closed is a 400, not a 500 (python-engineio's POST
      path lets the ``KeyError`` for a closed session escape);
    - a client's CLOSE packet ends its session at once: the websocket closes, a pending poll
      gets a NOOP (python-engineio leaves both until the ping timeout);
    - a request to a session whose ping timed out is refused, even when the periodic check has
      not come round to it yet;
    - a second websocket for a session that has one is closed at once (python-engineio accepts
      it and leaves it waiting forever for a probe);
    - a long-polling GET that comes during its session's upgrade waits for the upgrade to end
      (``_upgrade_settled``), so that one sent after it completed is refused as such;
    - refusals carry Engine.IO's error bodies, ``{"code", "message"}``, over HTTP and websocket
      alike; no transport, and methods other than GET, POST and OPTIONS, are 400;
    - the handshake states a ping interval under a second exactly (python-engineio truncates
      it to whole seconds);
    - a refused request is logged at info (python-engineio logs the client's fault as an error);

    and ``websockets``: the connection of each session on a websocket, by Engine.IO sid.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        drivers: dict[str, Any] = getattr(self, "_async")  # noqa: B009 (untyped in engineio)
        # A copy: it is module state.
        self._async = {**drivers, "websocket": _WebSocket, "make_response": respond}
        self.websockets: dict[str, WatchedConnection] = {}
        self._websocket_sids: set[str] = set()
        """Sessions with a websocket being opened or open (upgrades)."""
        self.upgrade_watchers: dict[str, asyncio.Event] = {}
        """Sessions whose upgrade a request waits on: set when the upgrade may have moved on."""
        self.pings: PingSweep | None = None
        """Every client's heartbeat in one task (``engineio_ping.py``); ``None``: python-engineio's
        own, a task per ping."""

    def start_background_task(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        if self.pings is not None and not args and not kwargs:
            target = intercepted(self.pings, target)
            if target is None:  # a ping, now the sweep's
                return None
        return super().start_background_task(target, *args, **kwargs)

    async def disconnect(self, sid: str | None = None) -> None:
        if sid is None:
            await super().disconnect()
            return
        socket = self.sockets.get(sid)
        if socket is not None and not socket.closed:
            await socket.close(wait=False, abort=False, reason=self.reason.SERVER_DISCONNECT)
            if socket.upgraded:  # a websocket: end its writer (and the websocket) after CLOSE
                socket.queue.put_nowait(None)
        self.sockets.pop(sid, None)

    async def handle_request(self, *args: Any, **kwargs: Any) -> Any:
        scope, receive, send = args[:3] if len(args) >= 3 else (None, None, None)
        if not isinstance(scope, dict):
            return await super().handle_request(*args, **kwargs)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        sid = query.get("sid", [""])[0]
        refusal = refusal_of(scope, query, self.transports)
        if refusal is None and scope["type"] == "websocket" and sid and self._has_websocket(sid):
            # As the reference server: accepted, then closed at once (the protocol's test suite
            # waits for a close, not a refused handshake).
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1008})
            return None
        if refusal is not None:
            if scope["type"] == "websocket":
                await receive()  # websocket.connect: ASGI wants it taken before an answer
            headers = [*refusal["headers"], *self._cors_headers(_cors_environ(scope))]
            environ = {"asgi.scope": scope, "asgi.send": send}
            await respond(refusal["status"], headers, refusal["response"], environ)
            return None
        socket = self.sockets.get(sid)
        if socket is not None and socket.upgrading and scope.get("method") == "GET":
            await self._upgrade_settled(sid, socket)
        if socket is not None and not socket.closed and not await socket.check_ping_timeout():
            del self.sockets[sid]  # its ping timed out: python-engineio answers "Invalid session"
        elif socket is not None and socket.closed and scope.get("method") == "POST":
            del self.sockets[sid]  # python-engineio then answers "Invalid session"
        if scope["type"] != "websocket" or not sid:
            try:
                return await super().handle_request(*args, **kwargs)
            except UnboundLocalError:
                # python-engineio's POST path leaves its answer unset when the session that a bad
                # packet made it disconnect is already gone (an invalid packet before it closed
                # the session): answer the 400 it meant to.
                bad = error_response(400, BAD_REQUEST, "Bad request")
                environ = {"asgi.scope": scope, "asgi.send": send}
                await respond(bad["status"], bad["headers"], bad["response"], environ)
                return None
        self._websocket_sids.add(sid)
        try:
            return await super().handle_request(*args, **kwargs)
        finally:
            self._websocket_sids.discard(sid)

    async def _upgrade_settled(self, sid: str, socket: Any) -> None:
        """Wait, briefly, for a session's upgrade to end.

        A client sends its last polling requests before it completes an upgrade, but they may
        arrive after frames of its websocket: answered at once, a GET would get a NOOP as if the
        session still polled; a moment later, a 400 as a session upgraded. A poll a client waits
        for before it completes its upgrade costs it ``UPGRADE_SETTLES_WITHIN`` at most."""
        moved = self.upgrade_watchers.setdefault(sid, asyncio.Event())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UPGRADE_SETTLES_WITHIN
        try:
            while socket.upgrading and (left := deadline - loop.time()) > 0:
                moved.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(moved.wait(), left)
        finally:
            self.upgrade_watchers.pop(sid, None)

    def upgrade_moved(self, sid: str) -> None:
        watcher = self.upgrade_watchers.get(sid)
        if watcher is not None:
            watcher.set()

    def _has_websocket(self, sid: str) -> bool:
        """Whether a session already has a websocket, open or being upgraded to."""
        socket = self.sockets.get(sid)
        upgrading = socket is not None and (socket.upgrading or socket.upgraded)
        return sid in self._websocket_sids or upgrading

    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "connect":  # the session is open, its OPEN packet queued and not yet sent
            self._state_ping_interval(args[0])
        result = await super()._trigger_event(event, *args, **kwargs)
        if event == "disconnect" and args[1:2] == (self.reason.CLIENT_DISCONNECT,):
            self._end_session(args[0])  # the client's own CLOSE packet
        return result

    def _state_ping_interval(self, sid: str) -> None:
        socket = self.sockets.get(sid)
        opening: Any = socket.queue.peek() if socket is not None else None
        data = getattr(opening, "data", None)
        if getattr(opening, "packet_type", None) == eio_packet.OPEN and isinstance(data, dict):
            interval = self.ping_interval + self.ping_interval_grace_period
            data["pingInterval"] = round(interval * 1000)

    def _end_session(self, sid: str) -> None:
        socket = self.sockets.get(sid)
        if socket is None:
            return
        if not socket.upgraded:  # the poll waiting now is answered, as the protocol says
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
        socket.queue.put_nowait(None)  # and nothing more: a websocket's writer closes it

    def _log_error_once(self, message: str, message_key: str) -> None:
        # A refused request is the client's fault, not the server's error.
        logger.info("refused an Engine.IO request: %s", message)

    def _bad_request(self, message: str | None = None) -> dict[str, Any]:
        message = message or "Bad request"
        return error_response(400, code_of(message), message)

    def _method_not_found(self) -> dict[str, Any]:
        return error_response(400, BAD_REQUEST, "Method not supported")

    def _unauthorized(self, message: Any = None) -> dict[str, Any]:
        return error_response(403, FORBIDDEN, str(message or "Forbidden"))

    def create_queue(self, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:  # not a client's outgoing queue
            return super().create_queue(*args, **kwargs)
        return CountingQueue()


def _cors_environ(scope: dict[str, Any]) -> dict[str, Any]:
    """What python-engineio's CORS headers need of a request's WSGI-style environ."""
    environ: dict[str, Any] = {"wsgi.url_scheme": scope.get("scheme", "http")}
    for name, value in scope.get("headers", []):
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        environ[key] = value.decode("latin-1")
    environ["REQUEST_METHOD"] = scope.get("method", "GET")
    return environ


def check() -> str | None:
    """Why ``EngineIOServer`` cannot work with the python-engineio installed (``None``: it can)."""
    server = engineio.AsyncServer(async_mode="asgi")
    drivers = getattr(server, "_async", None)
    if not isinstance(drivers, dict) or not {"websocket", "make_response"} <= drivers.keys():
        return "AsyncServer._async has no websocket and make_response drivers"
    return signatures(
        engineio.AsyncServer,
        {
            "disconnect": ["self", "sid"],
            "handle_request": ["self", "args", "kwargs"],
            "create_queue": ["self", "args", "kwargs"],
        },
        attributes=("sockets",),
        instance=server,
    ) or signatures(
        AsyncSocket,
        {
            "close": ["self", "wait", "abort", "reason"],
            "check_ping_timeout": ["self"],
            "send": ["self", "pkt"],
            "handle_post_request": ["self", "environ"],
        },
    )
