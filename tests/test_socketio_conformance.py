"""Socket.IO / Engine.IO conformance and hostile input, with raw websockets and HTTP against the
real server (docs/socketio-conformance.md): what the protocol's test suite found
(tests/test_protocol_suite.py), each pinned down here, with broadcast's own handlers."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import pytest

from tests.conftest import StartServer
from tests.support import ConnectRefused, Server, connect_sio, until

EIO = "/socket.io/?EIO=4"
CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)

PROMPTLY = 3.0
"""Seconds within which the server must act (it takes milliseconds; the defaults it replaces
take 45 s)."""


def ws_url(server: Server, query: str = "&transport=websocket") -> str:
    return f"{server.url.replace('http://', 'ws://')}{EIO}{query}"


async def next_text(ws: aiohttp.ClientWebSocketResponse, within: float = PROMPTLY) -> str | None:
    """The next text frame other than a PING; ``None`` when the websocket closes."""
    while True:
        message = await ws.receive(timeout=within)
        if message.type in CLOSED:
            return None
        if message.type == aiohttp.WSMsgType.TEXT and message.data != "2":
            return str(message.data)


async def closed_within(ws: aiohttp.ClientWebSocketResponse, within: float) -> bool:
    """Whether the server closes ``ws`` within ``within`` seconds (frames before are skipped)."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await ws.receive(timeout=left)
        except TimeoutError:
            return False
        if message.type in CLOSED:
            return True
    return False


@asynccontextmanager
async def raw_websocket(
    server: Server, query: str = "&transport=websocket", address: str | None = None
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    connector = aiohttp.TCPConnector(local_addr=(address, 0)) if address else None
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.ws_connect(ws_url(server, query), autoping=False) as ws,
    ):
        yield ws


async def open_session(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """Read the Engine.IO handshake: the OPEN packet's data."""
    opening = await next_text(ws)
    assert opening is not None
    assert opening.startswith("0"), opening
    handshake: dict[str, Any] = json.loads(opening[1:])
    return handshake


async def connected(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Open the Engine.IO session and join the main namespace."""
    await open_session(ws)
    await ws.send_str("40")
    while (packet := await next_text(ws)) is not None and not packet.startswith("40"):
        pass
    assert packet is not None, "closed before the CONNECT was acknowledged"


async def raw_http_upgrade(server: Server, query: str) -> tuple[int, str]:
    """A websocket handshake by hand: the status and the body of the server's answer."""
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"GET {EIO}{query} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROMPTLY)).decode()
    status = int(head.split(" ")[1])
    length = re.search(r"(?im)^content-length: *(\d+)", head)
    body = b""
    if length:
        body = await reader.readexactly(int(length.group(1)))
    elif re.search(r"(?im)^transfer-encoding: *chunked", head):
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += (await reader.readexactly(size + 2))[:-2]
    writer.close()
    return status, body.decode()


# ---------------------------------------------------------------------------- never connecting


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_session_that_never_connects_is_closed(
    start_server: StartServer, transport: str
) -> None:
    server = start_server({"BROADCAST_SOCKETIO_CONNECT_TIMEOUT_MS": "500"})
    if transport == "websocket":
        async with raw_websocket(server) as ws:
            await open_session(ws)
            assert await closed_within(ws, PROMPTLY), "the silent websocket is still open"
        return
    async with httpx.AsyncClient(timeout=PROMPTLY) as http:
        opening = await http.get(f"{server.url}{EIO}&transport=polling")
        sid = json.loads(opening.text[1:])["sid"]
        poll = await http.get(f"{server.url}{EIO}&transport=polling&sid={sid}")
        assert poll.text == "1", "the pending poll should get the CLOSE packet"
        late = await http.get(f"{server.url}{EIO}&transport=polling&sid={sid}")
        assert late.status_code == 400
    assert "no Socket.IO CONNECT within 0.5 s" in server.log()


async def test_a_connected_client_outlives_the_connect_timeout(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_SOCKETIO_CONNECT_TIMEOUT_MS": "300"})
    async with raw_websocket(server) as ws:
        await connected(ws)
        assert not await closed_within(ws, 1.0), "a connected client was closed"


async def test_sessions_that_never_connect_count_against_the_address_limit(
    start_server: StartServer,
) -> None:
    server = start_server(
        {
            "BROADCAST_MAX_CONNECTIONS_PER_ADDRESS": "2",
            "BROADCAST_SOCKETIO_CONNECT_TIMEOUT_MS": "2000",
        }
    )
    async with raw_websocket(server) as first, raw_websocket(server) as second:
        await open_session(first)
        await open_session(second)  # two silent sessions: the address's limit
        # One more is let in to be told why at its CONNECT, then closed.
        async with raw_websocket(server) as third:
            await open_session(third)
            # While it is open, any other is refused at the handshake.
            status, body = await raw_http_upgrade(server, "&transport=websocket")
            assert status == 403
            assert json.loads(body)["code"] == 4
            assert "too many connections from 127.0.0.1" in json.loads(body)["message"]
            async with httpx.AsyncClient(timeout=PROMPTLY) as http:
                polling = await http.get(f"{server.url}{EIO}&transport=polling")
            assert polling.status_code == 403
            await third.send_str("40")
            refusal = await next_text(third)
            assert refusal is not None
            assert refusal.startswith("44{"), refusal
            assert "too many connections from 127.0.0.1" in json.loads(refusal[2:])["message"]
            assert await closed_within(third, PROMPTLY)
        # Another address is not affected.
        async with raw_websocket(server, address="127.0.0.2") as other:
            await connected(other)
        # The silent ones are closed at the connect timeout, which gives their slots back.
        assert await closed_within(first, 5)
        assert await closed_within(second, 5)
    client = await connect_sio(server.url, ["websocket"])
    await until(lambda: client.last_count == 1, 5, "a new client within the limit")


async def test_over_the_limit_a_client_still_gets_a_connect_error(
    start_server: StartServer,
) -> None:
    server = start_server({"BROADCAST_MAX_CONNECTIONS_PER_ADDRESS": "1"})
    first = await connect_sio(server.url, ["polling"])
    await until(lambda: first.last_count == 1, 5, "the first client")
    for transports in (["websocket"], ["polling"]):
        with pytest.raises(ConnectRefused, match=re.escape("too many connections from 127.0.0.1")):
            await connect_sio(server.url, transports)
    assert server.user_count() == 1


# ---------------------------------------------------------------------------- invalid packets


@pytest.mark.parametrize(
    "packet", ["4abc", "42{}", '42abc["message-with-ack",1]', '42"chat message"', "45-[]", "49"]
)
async def test_an_invalid_packet_closes_the_connection_with_one_log_line(
    start_server: StartServer, packet: str
) -> None:
    server = start_server()
    async with raw_websocket(server) as ws:
        await connected(ws)
        await until(lambda: server.user_count() == 1, 5, "the client counted")
        await ws.send_str(packet)
        assert await closed_within(ws, PROMPTLY), f"still open after {packet!r}"
    await until(lambda: server.user_count() == 0, 5, "the client to leave the count")
    await until(lambda: "invalid Socket.IO packet" in server.log(), 5, "the log line")
    log = server.log()
    assert "Traceback" not in log, log
    assert "handler error" not in log, log
    lines = [line for line in log.splitlines() if "invalid Socket.IO packet" in line]
    assert len(lines) == 1, lines
    assert json.loads(lines[0])["level"] == "info"


async def test_an_invalid_packet_before_connecting_closes_the_connection(
    start_server: StartServer,
) -> None:
    server = start_server()
    async with raw_websocket(server) as ws:
        await open_session(ws)
        await ws.send_str("4abc")
        assert await closed_within(ws, PROMPTLY)
    assert "Traceback" not in server.log()


# ---------------------------------------------------------------------------- the client's CLOSE


async def test_a_websocket_close_packet_closes_at_once(server: Server) -> None:
    async with raw_websocket(server) as ws:
        await connected(ws)
        await until(lambda: server.user_count() == 1, 5, "the client counted")
        await ws.send_str("1")
        assert await closed_within(ws, PROMPTLY), "still open after the client's CLOSE"
    await until(lambda: server.user_count() == 0, PROMPTLY, "the client to leave")


async def test_a_polling_close_packet_answers_the_pending_poll(server: Server) -> None:
    async with httpx.AsyncClient(timeout=PROMPTLY) as http:
        opening = await http.get(f"{server.url}{EIO}&transport=polling")
        url = f"{server.url}{EIO}&transport=polling&sid={json.loads(opening.text[1:])['sid']}"
        pending = asyncio.ensure_future(http.get(url))
        await asyncio.sleep(0)  # the GET goes out first (its answer is awaited below)
        assert (await http.post(url, content=b"1")).status_code == 200
        poll = await pending
        assert (poll.status_code, poll.text) == (200, "6")
        assert (await http.get(url)).status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        b"4\x1e5",  # a message, then an upgrade packet on a polling session (found by fuzzing)
        b"-1",  # no such packet type
        b"4" + b"\x1e4" * 20,  # more packets than python-engineio takes in one payload
        b"4" + b"[" * 5000,  # JSON nested past Python's recursion limit
    ],
)
async def test_a_polling_post_it_cannot_decode_gets_a_4xx_and_one_log_line(
    server: Server, body: bytes
) -> None:
    async with httpx.AsyncClient(timeout=PROMPTLY) as http:
        opening = await http.get(f"{server.url}{EIO}&transport=polling")
        url = f"{server.url}{EIO}&transport=polling&sid={json.loads(opening.text[1:])['sid']}"
        await http.post(url, content=b'40{"username":"mallory"}')
        response = await http.post(url, content=body)
        assert response.status_code < 500, response.text
        assert (await http.get(f"{server.url}/healthz")).status_code == 200
    log = server.log()
    assert "Traceback" not in log
    assert "Internal Server Error" not in log


# ---------------------------------------------------------------------------- upgrades


async def test_a_second_websocket_during_an_upgrade_is_closed(server: Server) -> None:
    async with httpx.AsyncClient(timeout=PROMPTLY) as http:
        opening = await http.get(f"{server.url}{EIO}&transport=polling")
    sid = json.loads(opening.text[1:])["sid"]
    query = f"&transport=websocket&sid={sid}"
    async with raw_websocket(server, query) as upgrading:
        await upgrading.send_str("2probe")
        assert await next_text(upgrading) == "3probe"
        async with raw_websocket(server, query) as second:
            assert await closed_within(second, PROMPTLY), "the second websocket is still open"
        await upgrading.send_str("5")  # the first one carries on
        await upgrading.send_str("40")
        while (packet := await next_text(upgrading)) is not None and not packet.startswith("40"):
            pass
        assert packet is not None


async def test_a_poll_during_an_upgrade_is_answered_and_the_upgrade_completes(
    server: Server,
) -> None:
    """A client's last poll, which it waits for before it completes its upgrade, is answered
    (after the short wait for the upgrade to end), and the upgrade then completes."""
    async with httpx.AsyncClient(timeout=PROMPTLY) as http:
        opening = await http.get(f"{server.url}{EIO}&transport=polling")
        sid = json.loads(opening.text[1:])["sid"]
        async with raw_websocket(server, f"&transport=websocket&sid={sid}") as ws:
            await ws.send_str("2probe")
            assert await next_text(ws) == "3probe"
            poll = await http.get(f"{server.url}{EIO}&transport=polling&sid={sid}")
            assert (poll.status_code, poll.text) == (200, "6")
            await ws.send_str("5")
            await ws.send_str("40")
            while (packet := await next_text(ws)) is not None and not packet.startswith("40"):
                pass
            assert packet is not None
            late = await http.get(f"{server.url}{EIO}&transport=polling&sid={sid}")
            assert late.status_code == 400


# ---------------------------------------------------------------------------- namespaces


async def test_an_unknown_namespace_is_refused_with_a_message(server: Server) -> None:
    async with raw_websocket(server) as ws:
        await open_session(ws)
        await ws.send_str("40/random,")
        assert await next_text(ws) == '44/random,{"message":"Invalid namespace"}'


# ---------------------------------------------------------------------------- Engine.IO errors


async def test_engine_io_refusals_carry_the_protocols_error_bodies(server: Server) -> None:
    async with httpx.AsyncClient(timeout=PROMPTLY) as http:
        no_transport = await http.get(f"{server.url}{EIO}")
        assert no_transport.status_code == 400
        assert no_transport.json() == {"code": 0, "message": "Invalid transport"}
        put = await http.put(f"{server.url}{EIO}&transport=polling")
        assert put.status_code == 400
        assert put.json() == {"code": 2, "message": "Bad handshake method"}
        unknown = await http.get(f"{server.url}{EIO}&transport=polling&sid=nope")
        assert unknown.status_code == 400
        assert unknown.json()["code"] == 1
        version = await http.get(f"{server.url}/socket.io/?EIO=3&transport=polling")
        assert version.status_code == 400
        assert version.json()["code"] == 5
    # A refused websocket: the same bodies, not a bare 403.
    status, body = await raw_http_upgrade(server, "")
    assert (status, json.loads(body)) == (400, {"code": 0, "message": "Invalid transport"})
    status, body = await raw_http_upgrade(server, "&transport=websocket&sid=nope")
    assert status == 400
    assert json.loads(body)["code"] == 1


async def test_a_websocket_from_a_refused_origin_gets_a_body(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(ws_url(server), headers={"Origin": "http://evil.example"})
    assert refused.value.status == 400


async def test_the_ping_settings_reach_the_handshake(start_server: StartServer) -> None:
    server = start_server(
        {"BROADCAST_SOCKETIO_PING_INTERVAL_MS": "300", "BROADCAST_SOCKETIO_PING_TIMEOUT_MS": "200"}
    )
    async with raw_websocket(server) as ws:
        handshake = await open_session(ws)
        assert (handshake["pingInterval"], handshake["pingTimeout"]) == (300, 200)
        started = time.monotonic()
        ping = await ws.receive(timeout=PROMPTLY)
        assert ping.data == "2"
        assert time.monotonic() - started < 1.5
