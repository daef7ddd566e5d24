"""Shutting down with clients that reconnect at once: ``broadcast serve`` stops listening first
(their reconnects are refused, so they go to another node), closes every connection, and exits
within a second with a clean log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import pytest
import socketio

from broadcast import drain
from broadcast.overrides.socketio_rooms import IndexedManager
from broadcast.transports.framing import http_chunk
from tests.conftest import StartServer
from tests.support import VENV_BIN, RedisServer, Server, connect_sio, until

CLIENTS = 150
"""Of each transport."""


def refused(exc: BaseException) -> bool:
    """Whether the connection was refused (nothing listening), as opposed to accepted and then
    reset or answered."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        if isinstance(seen, aiohttp.ClientConnectorError) and isinstance(
            seen.os_error, ConnectionRefusedError
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass
class Attempts:
    """What one reconnecting client's attempts came to after the server closed its connection."""

    closed: int = 0
    """Connections the server closed."""
    reasons: list[str] = field(default_factory=list)
    refused: int = 0
    accepted: list[str] = field(default_factory=list)
    """Attempts after a close that reached the server (an answer, a reset): each is a defect."""


async def sse_client(
    http: httpx.AsyncClient, server: Server, attempts: Attempts, opened: list[int], done: Any
) -> None:
    """An SSE client that reconnects as soon as its stream ends (EventSource with a zero
    ``retry``), and every 20 ms while it is refused, until ``done()`` (and at least once)."""
    while not (done() and attempts.refused):
        try:
            async with http.stream("GET", f"{server.url}/events") as response:
                if attempts.closed:
                    attempts.accepted.append(f"HTTP {response.status_code}")
                else:
                    opened.append(1)
                with contextlib.suppress(httpx.ReadError, httpx.RemoteProtocolError):
                    async for _ in response.aiter_bytes():
                        pass
            attempts.closed += 1
        except httpx.TransportError as exc:
            if not attempts.closed:
                raise
            if refused(exc):
                attempts.refused += 1
                await asyncio.sleep(0.02)
            else:
                attempts.accepted.append(repr(exc))


@dataclass
class SioReconnecting:
    client: socketio.AsyncClient
    session: aiohttp.ClientSession
    attempts: Attempts
    connects: int = 0


async def sio_client(server: Server, transport: str) -> SioReconnecting:
    """python-socketio's client with reconnection on (at once: no delay), recording how every
    HTTP request it makes after the server closed its connection went."""
    attempts = Attempts()

    async def on_request_end(_: Any, __: Any, params: aiohttp.TraceRequestEndParams) -> None:
        if attempts.closed and "sid=" not in params.url.query_string:
            attempts.accepted.append(f"HTTP {params.response.status}")

    async def on_request_exception(
        _: Any, __: Any, params: aiohttp.TraceRequestExceptionParams
    ) -> None:
        if not attempts.closed:
            return
        if refused(params.exception):
            attempts.refused += 1
        elif "sid=" not in params.url.query_string:
            attempts.accepted.append(repr(params.exception))

    tracing = aiohttp.TraceConfig()
    tracing.on_request_end.append(on_request_end)
    tracing.on_request_exception.append(on_request_exception)
    session = aiohttp.ClientSession(trace_configs=[tracing])
    client = socketio.AsyncClient(
        reconnection=True,
        reconnection_delay=0.001,
        reconnection_delay_max=0.02,
        randomization_factor=0,
        http_session=session,
    )
    record = SioReconnecting(client, session, attempts)

    @client.event  # type: ignore[untyped-decorator]
    async def connect() -> None:
        record.connects += 1

    @client.event  # type: ignore[untyped-decorator]
    async def disconnect(reason: str = "") -> None:
        attempts.closed += 1
        attempts.reasons.append(reason)

    await client.connect(server.url, transports=[transport], wait_timeout=10)
    return record


@contextlib.asynccontextmanager
async def sio_clients(server: Server) -> AsyncIterator[list[SioReconnecting]]:
    clients: list[SioReconnecting] = []
    try:
        for batch in range(0, CLIENTS, 50):
            transports = ["websocket", "polling"]
            clients += await asyncio.gather(
                *(
                    sio_client(server, transports[n % 2])
                    for n in range(batch, min(batch + 50, CLIENTS))
                )
            )
        yield clients
    finally:
        for record in clients:
            with contextlib.suppress(Exception):
                await record.client.shutdown()
            await record.session.close()


@pytest.mark.timeout(120)
async def test_sigterm_stops_accepting_then_drains_clients_that_reconnect(
    start_server: StartServer,
) -> None:
    server = start_server(command=[str(VENV_BIN / "broadcast"), "serve"])
    exited: list[float] = []

    def done() -> bool:
        if server.process.poll() is None:
            return False
        if not exited:
            exited.append(time.monotonic())
        return True

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30), limits=limits) as http,
        sio_clients(server) as sio,
    ):
        sse = [Attempts() for _ in range(CLIENTS)]
        opened: list[int] = []
        loops = [asyncio.create_task(sse_client(http, server, a, opened, done)) for a in sse]
        await until(lambda: len(opened) == CLIENTS, 30, "every SSE stream to open")
        await until(lambda: server.user_count() == 2 * CLIENTS, 30, "every client counted")

        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        await until(done, 10, "the server to exit")
        took = exited[0] - signalled
        await asyncio.gather(*loops)
        # Checked below: a client that never retries fails there, with the others' defects.
        with contextlib.suppress(AssertionError):
            await until(lambda: all(r.attempts.refused for r in sio), 10, "every client to retry")

    log = server.log()
    everyone = sse + [r.attempts for r in sio]
    assert [a.accepted for a in everyone if a.accepted] == [], (
        "a reconnect during the drain was accepted instead of refused"
    )
    assert all(a.closed == 1 for a in everyone), "the server closed every client's connection"
    transport_error = socketio.AsyncClient.reason.TRANSPORT_ERROR
    assert all(r.attempts.reasons == [transport_error] for r in sio), (
        "a transport close, which the client reconnects from (not a deliberate disconnect)"
    )
    assert all(r.connects == 1 for r in sio), "no Socket.IO client got back in"
    assert all(a.refused for a in everyone), "every client tried to reconnect and was refused"
    assert server.process.returncode == 0
    assert "Traceback" not in log, log
    assert "Exception in callback" not in log, log
    assert took < 1, f"the server took {took:.2f} s from SIGTERM to exit"


async def read_to_the_end(response: httpx.Response) -> tuple[bytes, str | None]:
    """The whole body, and how it ended (``None``: as HTTP says, the final chunk)."""
    body = b""
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
    except httpx.TransportError as exc:
        return body, repr(exc)
    return body, None


@pytest.mark.timeout(60)
async def test_a_draining_node_ends_each_connection_properly_and_its_users_leave_everywhere(
    start_server: StartServer, redis: RedisServer
) -> None:
    """Each connection ends as its protocol says (a websocket with a close frame saying the
    server goes away, an SSE stream with a retry hint and its body's end: the last chunk, or
    over HTTP/1.0 the connection's close), and the other nodes
    hear every named user leave and see the count drop at once."""
    settings = {"BROADCAST_BROKER_URL": redis.url, "BROADCAST_PRESENCE_TTL_SECONDS": "30"}
    one = start_server(settings, command=[str(VENV_BIN / "broadcast"), "serve"])
    two = start_server(settings)
    watcher = await connect_sio(two.url, ["websocket"])
    named = await connect_sio(one.url, ["websocket"], auth={"username": "bob"})
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30)) as http,
        aiohttp.ClientSession() as session,
        http.stream("GET", f"{one.url}/events", params={"username": "ann"}) as stream,
        session.ws_connect(f"{one.url}/socket.io/?EIO=4&transport=websocket") as websocket,
    ):
        assert stream.status_code == 200
        opening = await websocket.receive_str()
        assert opening.startswith("0"), opening
        await websocket.send_str("40" + json.dumps({"username": "cat"}))
        while not (await websocket.receive_str()).startswith("40"):  # the count may come first
            pass
        host, port = one.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /events HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"chunked" not in head.lower(), "HTTP/1.0: the body is not chunked"
        await until(lambda: watcher.last_count == 5, 10, "one count of 5 on both nodes")

        one.process.send_signal(signal.SIGTERM)
        body, ending = await read_to_the_end(stream)
        old_body = await asyncio.wait_for(reader.read(), 10)  # until the server's FIN
        writer.close()
        closing = await websocket.receive()
        while closing.type == aiohttp.WSMsgType.TEXT:  # events sent before
            closing = await websocket.receive()
        await until(lambda: one.process.poll() is not None, 10, "node one to exit")

    assert ending is None, f"the stream's body ended as HTTP says, not cut: {ending}"
    assert body.endswith(b"retry: 2000\n\n: server shutting down\n\n"), body[-80:]
    assert old_body.endswith(b"retry: 2000\n\n: server shutting down\n\n"), "HTTP/1.0: no chunks"
    assert closing.type == aiohttp.WSMsgType.CLOSE
    assert (closing.data, closing.extra) == (1001, "server shutting down"), "going away"
    await until(lambda: watcher.last_count == 1, 10, "node one's share to go at once")
    assert two.user_count() == 1

    def left() -> list[str]:
        return sorted(
            d["username"] for e, d in watcher.events if e == "user" and not d["connected"]
        )

    await until(lambda: len(left()) >= 3, 10, "every named user's leave")
    assert left() == ["ann", "bob", "cat"]
    assert one.process.returncode == 0
    log = one.log()
    assert "Traceback" not in log, log
    assert "Exception in callback" not in log, log
    assert named.client.connected is False


# ---------------------------------------------------------------------------- the gate (unit)


@pytest.mark.parametrize(
    ("kind", "path", "query", "refused"),
    [
        ("http", "/events", b"", True),
        ("http", "/socket.io/", b"EIO=4&transport=polling", True),
        ("http", "/socket.io/", b"EIO=4&transport=polling&sid=abc", True),
        ("websocket", "/socket.io/", b"EIO=4&transport=websocket", True),
        ("http", "/publish", b"", False),
        ("http", "/healthz", b"", False),
        ("http", "/events-archive", b"", False),
    ],
)
def test_a_draining_node_refuses_sse_and_socketio_requests_only(
    kind: str, path: str, query: bytes, refused: bool
) -> None:
    gate = drain.Gate()
    scope = {"type": kind, "path": path, "query_string": query}
    assert not gate.refuses(scope), "nothing is refused while serving"
    gate.draining = True
    assert gate.refuses(scope) is refused


async def test_the_refusal_is_a_503_that_closes_the_connection() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await drain.refuse({"type": "http", "path": "/events"}, send)
    start, body = sent
    assert start["status"] == 503
    assert (b"connection", b"close") in start["headers"]
    assert json.loads(body["body"]) == {"status_code": 503, "detail": "server shutting down"}

    sent.clear()
    extensions: dict[str, Any] = {"websocket.http.response": {}}
    await drain.refuse({"type": "websocket", "extensions": extensions}, send)
    assert [m["type"] for m in sent] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
    ]
    assert sent[0]["status"] == 503

    sent.clear()
    await drain.refuse({"type": "websocket", "extensions": {}}, send)
    assert sent == [{"type": "websocket.close", "code": 1013}]


def test_the_indexed_manager_leaves_the_state_python_socketio_would() -> None:
    """Same operations on python-socketio's manager and ours: the same rooms and bookkeeping
    after every step (ours only finds a leaving client's rooms without scanning them all)."""
    ours, theirs = IndexedManager(), socketio.AsyncManager()
    sids = [f"s{n}" for n in range(6)]

    def both(operation: str, *args: Any) -> None:
        for manager in (ours, theirs):
            getattr(manager, operation)(*args)
        assert ours.rooms == theirs.rooms, operation
        assert ours.callbacks == theirs.callbacks
        assert ours.pending_connect == theirs.pending_connect
        assert ours.pending_disconnect == theirs.pending_disconnect

    for n, sid in enumerate(sids):
        namespace = "/" if n % 3 else "/chat"
        both("basic_enter_room", sid, namespace, None, f"e{n}")
        both("basic_enter_room", sid, namespace, sid, f"e{n}")
        both("basic_enter_room", sid, namespace, "everyone", f"e{n}")
    for manager in (ours, theirs):
        manager.callbacks["s1"] = {0: 1}
        manager.pending_connect["/"] = ["s1", "s2"]
        manager.pending_disconnect["/"] = ["s4"]
    both("basic_leave_room", "s2", "/", "everyone")
    for sid in ("s1", "s2", "s4", "s0"):
        both("basic_disconnect", sid, "/chat" if sid == "s0" else "/")
    both("basic_disconnect", "nobody", "/")
    both("basic_disconnect", "s5", "/nowhere")
    assert sorted(ours.get_rooms("s5", "/")) == ["everyone", "s5"]


def test_the_goodbyes_are_a_going_away_close_frame_and_an_sse_stream_s_end() -> None:
    frame = drain.WEBSOCKET_GOODBYE
    assert frame[0] == 0x88, "FIN, opcode close, no RSV bit (never compressed)"
    assert frame[1] == len(frame) - 2, "unmasked (a server's), the length of its payload"
    assert int.from_bytes(frame[2:4], "big") == 1001
    assert frame[4:] == b"server shutting down"

    retry = b"retry: 2000\n\n"
    last = retry + b": server shutting down\n\n"
    assert drain.sse_goodbye(retry, http_chunk) == http_chunk(last) + b"0\r\n\r\n"
    assert drain.sse_goodbye(retry, bytes) == last, "HTTP/1.0: the connection's close ends it"


async def test_the_gate_waits_until_only_the_requests_ended_from_under_the_app_are_open() -> None:
    gate = drain.Gate()
    for _ in range(5):
        gate.entered()
    ended = [2]
    assert await gate.settled(lambda: ended[0], 0.05) is False, "3 others still open"
    waiting = asyncio.create_task(gate.settled(lambda: ended[0], 10))
    gate.left()
    gate.left()
    await asyncio.sleep(0)
    assert not waiting.done()
    ended[0] = 1  # one ended from under the app returned after all
    gate.left()
    await asyncio.sleep(0)
    assert not waiting.done(), "one of the others is still open"
    gate.left()
    assert await asyncio.wait_for(waiting, 5) is True
    assert gate.open == 1
