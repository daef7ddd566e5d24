"""``POST /publish`` answered from hypercorn's reads, before h11 (``overrides/hypercorn_h11.py``).

The parser only decides whether to take a request; every request it leaves goes to h11 with the
same bytes. These tests check both sides over raw sockets against the real server: the plain
keep-alive publishes it takes (``broadcast_publish_requests_total{via="early"}``), the ones it
must leave (pipelined, split, HTTP/1.0, ``Connection: close``, odd headers), and that both paths
answer alike. With the overrides off (``TEST_OVERRIDES=off``) every publish takes the ASGI path.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from broadcast.overrides.hypercorn_h11 import parse
from tests.conftest import StartServer
from tests.support import (
    HYPERCORN,
    OVERRIDES_OFF,
    RedisServer,
    Server,
    SseClient,
    sse_session,
    until,
)

TOKEN = "wire-token-0123456789"
SETTINGS = {"BROADCAST_PUBLISH_TOKEN": TOKEN, "BROADCAST_PUBLISH_MAX_BYTES": "1024"}


def request(
    body: bytes | dict[str, Any],
    *,
    version: bytes = b"1.1",
    path: bytes = b"/publish",
    headers: list[bytes] | None = None,
    length: int | None = None,
) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [
        b"POST " + path + b" HTTP/" + version,
        b"Host: test",
        b"Content-Type: application/json",
        b"Authorization: Bearer " + TOKEN.encode(),
        b"Content-Length: %d" % (len(data) if length is None else length),
        *(headers or []),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + data


# The parser, alone.


def test_a_plain_publish_is_taken() -> None:
    taken = parse(request({"event": "e", "data": 1}))
    assert taken == ("/publish", f"Bearer {TOKEN}", "25", b'{"event": "e", "data": 1}')
    assert parse(request({"event": "e"}, path=b"/publish/")) is not None
    assert parse(request({"event": "e"}, headers=[b"Connection: Keep-Alive"])) is not None


@pytest.mark.parametrize(
    "data",
    [
        request({"event": "e"})[:-3],  # the body still coming
        request({"event": "e"}) + request({"event": "f"}),  # pipelined
        request({"event": "e"}, version=b"1.0"),
        request({"event": "e"}, path=b"/publish?x=1"),
        request({"event": "e"}, path=b"/publish/batch"),
        request({"event": "e"}, headers=[b"Connection: close"]),
        request({"event": "e"}, headers=[b"Connection: keep-alive, Upgrade", b"Upgrade: h2c"]),
        request({"event": "e"}, headers=[b"Expect: 100-continue"]),
        request({"event": "e"}, headers=[b"Transfer-Encoding: chunked"]),
        request({"event": "e"}, headers=[b"Content-Length: 16"]),  # twice
        request({"event": "e"}, headers=[b"Host: other"]),  # twice
        request({"event": "e"}, headers=[b"Authorization: Bearer other"]),  # twice
        request({"event": "e"}, headers=[b"X-Folded: a", b" b"]),  # an obsolete line fold
        request({"event": "e"}, headers=[b"Bad Name: x"]),
        request({"event": "e"}, headers=[b"X-Control: a\x01b"]),
        request({"event": "e"}, headers=[b"X-Lf: a\nX-Other: b"]),  # a bare LF
        request({"event": "e"}, length=-1).replace(b"Content-Length: -1", b"Content-Length: +16"),
        request({"event": "e"}).replace(b"Host: test\r\n", b""),
        request({"event": "e"}).replace(b"POST", b"post"),
        b"POST /publish HTTP/1.1\r\n" + b"X-Long: " + b"a" * 9000 + b"\r\n\r\n",
    ],
    ids=[
        "partial",
        "pipelined",
        "http-1.0",
        "query",
        "batch",
        "close",
        "upgrade",
        "expect",
        "chunked",
        "two-lengths",
        "two-hosts",
        "two-tokens",
        "line-fold",
        "bad-name",
        "control-char",
        "bare-lf",
        "signed-length",
        "no-host",
        "lower-method",
        "long-head",
    ],
)
def test_anything_else_is_left_to_h11(data: bytes) -> None:
    assert parse(data) is None


# Against the real server.


@pytest.fixture
def wire_server(start_server: StartServer) -> Server:
    return start_server(SETTINGS)


@pytest.fixture
async def listener(wire_server: Server) -> AsyncIterator[SseClient]:
    async with sse_session() as open_sse:
        yield await open_sse(wire_server.url)


class Connection:
    """One raw HTTP/1.1 connection: requests written as given, responses read one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: Server) -> Connection:
        host, port = server.url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        body = await self.reader.readexactly(int(headers["content-length"]))
        return int(status_line.split()[1]), headers, body

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 10) == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def publishes(server: Server) -> dict[str, float]:
    """``broadcast_publish_requests_total`` by ``via``."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    found = re.findall(r'^broadcast_publish_requests_total\{via="(\w+)"\} (\S+)$', text, re.M)
    return {via: float(value) for via, value in found}


def published(listener: SseClient) -> list[Any]:
    return [json.loads(e.data) for e in listener.events if e.event == "wire"]


async def test_keep_alive_publishes_are_answered_early_and_delivered_in_order(
    wire_server: Server, listener: SseClient
) -> None:
    connection = await Connection.open(wire_server)
    ids = []
    for seq in range(20):
        await connection.send(request({"event": "wire", "data": seq}))
        status, headers, body = await connection.response()
        assert status == 202, body
        assert headers["content-type"] == "application/json"
        assert "date" in headers
        assert headers["server"].startswith("hypercorn")
        ids.append(json.loads(body)["id"])
    assert len(set(ids)) == 20
    await until(lambda: len(published(listener)) == 20, 5, "20 events over SSE")
    assert published(listener) == list(range(20))
    await connection.close()
    counts = publishes(wire_server)
    if OVERRIDES_OFF:
        assert counts == {"early": 0, "asgi": 20}
    else:
        assert counts == {"early": 20, "asgi": 0}


async def test_requests_the_parser_leaves_are_answered_by_h11(
    wire_server: Server, listener: SseClient
) -> None:
    # Pipelined: two requests in one write, two answers in order.
    connection = await Connection.open(wire_server)
    await connection.send(
        request({"event": "wire", "data": 1}) + request({"event": "wire", "data": 2})
    )
    assert [(await connection.response())[0] for _ in range(2)] == [202, 202]
    # Split: the head, then (once it surely arrived alone: an answer came between) the body.
    first = request({"event": "wire", "data": 3})
    cut = first.index(b"\r\n\r\n") + 4
    await connection.send(first[:cut])
    probe = await Connection.open(wire_server)
    await probe.send(request({"event": "wire", "data": 4}))
    assert (await probe.response())[0] == 202
    await connection.send(first[cut:])
    assert (await connection.response())[0] == 202
    # The connection goes on, early again.
    await connection.send(request({"event": "wire", "data": 5}))
    assert (await connection.response())[0] == 202
    # Connection: close is honoured.
    await probe.send(request({"event": "wire", "data": 6}, headers=[b"Connection: close"]))
    status, headers, _ = await probe.response()
    assert status == 202
    assert headers["connection"] == "close"
    assert await probe.closed()
    await probe.close()
    await until(lambda: len(published(listener)) == 6, 5, "6 events over SSE")
    assert sorted(published(listener)) == [1, 2, 3, 4, 5, 6]
    await connection.close()
    counts = publishes(wire_server)
    assert counts["early"] + counts["asgi"] == 6
    if not OVERRIDES_OFF:
        assert counts["early"] >= 2  # the probe's first and the connection's last


REFUSALS = [
    pytest.param(request({"event": "x"}).replace(TOKEN.encode(), b"wrong-token"), 401, id="token"),
    pytest.param(request(b'{"event": '), 400, id="json"),
    pytest.param(request(b""), 400, id="empty"),
    pytest.param(request({"event": "x", "data": 1, "channel": 5}), 400, id="shape"),
    pytest.param(request({"event": "user count"}), 400, id="reserved"),
    pytest.param(request({"event": "x", "channel": "no spaces"}), 400, id="channel"),
    pytest.param(request(b'{"event": "\\ud800"}'), 400, id="lone-surrogate"),
    pytest.param(request({"event": "x", "data": "y" * 2000}), 413, id="too-large"),
]


@pytest.mark.parametrize(("data", "status"), REFUSALS)
async def test_both_paths_refuse_alike(
    wire_server: Server, listener: SseClient, data: bytes, status: int
) -> None:
    """The same request early and through h11 (HTTP/1.0, which the parser leaves): the same
    status and JSON body; nothing delivered; the early connection stays usable."""
    early = await Connection.open(wire_server)
    await early.send(data)
    early_status, early_headers, early_body = await early.response()
    asgi = await Connection.open(wire_server)
    await asgi.send(data.replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    asgi_status, asgi_headers, asgi_body = await asgi.response()
    assert early_status == asgi_status == status
    assert early_headers["content-type"] == asgi_headers["content-type"] == "application/json"
    assert json.loads(early_body) == json.loads(asgi_body)
    assert json.loads(early_body)["status_code"] == status
    await early.send(request({"event": "wire", "data": "after"}))
    assert (await early.response())[0] == 202
    await until(lambda: published(listener) == ["after"], 5, "only the good event")
    await early.close()
    await asgi.close()
    assert "Traceback" not in wire_server.log()


async def test_a_connection_publishing_now_and_then_outlives_the_keep_alive_timeout(
    start_server: StartServer,
) -> None:
    """hypercorn closes a connection idle for ``--keep-alive`` seconds; one that keeps
    publishing early (which never tells hypercorn a request started) must stay open, and one
    that stops must still be closed."""
    server = start_server(SETTINGS, [HYPERCORN, "--keep-alive", "2"])
    connection = await Connection.open(server)
    loop = asyncio.get_running_loop()
    started = loop.time()
    seq = 0
    while loop.time() - started < 5:  # the pace is the test's input, not a synchronisation
        await connection.send(request({"event": "wire", "data": seq}))
        assert (await connection.response())[0] == 202, f"closed after {seq} publishes"
        seq += 1
        await asyncio.sleep(0.5)
    idle_from = loop.time()
    assert await connection.closed()
    assert 0.9 < loop.time() - idle_from < 4
    await connection.close()


async def test_a_publish_answered_after_the_keep_alive_timeout_keeps_its_connection(
    start_server: StartServer, own_redis: RedisServer
) -> None:
    """A publish whose broker call outlasts ``--keep-alive`` (Redis stalled: the call waits
    for its socket timeout, 5 s) is still answered on its connection, which then goes on."""
    settings = {**SETTINGS, "BROADCAST_BROKER_URL": own_redis.url}
    server = start_server(settings, [HYPERCORN, "--keep-alive", "2"])
    await until(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, 10, "Redis up")
    connection = await Connection.open(server)
    await connection.send(request({"event": "wire", "data": 0}))
    status, _, body = await connection.response()
    assert status == 202, body
    assert own_redis.process is not None
    loop = asyncio.get_running_loop()
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        started = loop.time()
        await connection.send(request({"event": "wire", "data": 1}))
        status, _, body = await connection.response()
        waited = loop.time() - started
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    assert status == 503, body
    assert waited > 2, f"answered in {waited:.1f} s: Redis did not stall the publish"
    # Redis is back: the same connection publishes again once the server has seen it.
    deadline = loop.time() + 15
    while (status := await publish_on(connection, 2)) != 202:
        assert status == 503, status
        assert loop.time() < deadline, "no 202 within 15 s of Redis coming back"
        await asyncio.sleep(0.1)  # the retry's pace, not a synchronisation
    await connection.close()
    assert "Traceback" not in server.log()


async def publish_on(connection: Connection, data: Any) -> int:
    await connection.send(request({"event": "wire", "data": data}))
    return (await connection.response())[0]
