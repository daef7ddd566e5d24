"""Slow consumers: a client that stops reading is cut off, the others carry on.

Each client has a byte budget for what waits to be sent to it (``BROADCAST_CLIENT_BUFFER_BYTES``)
and a websocket write may block at most ``BROADCAST_SEND_TIMEOUT_SECONDS``. The stalled clients
here are raw sockets that stop reading (or stop polling), as a frozen tab or a stalled proxy.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartServer
from tests.support import Server, connect_sio, sse_session, until, wait_until

TOKEN = "slow-token-0123456789"


def publish(server: Server, data: str) -> None:
    response = httpx.post(
        f"{server.url}/publish",
        json={"event": "bulk", "data": data},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text


async def publish_from(http: httpx.AsyncClient, event: str, data: str) -> None:
    """Publish on ``http`` (based at the server's URL) without blocking the test's event loop."""
    response = await http.post(
        "/publish",
        json={"event": event, "data": data},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 202, response.text


def evicted(server: Server, reason: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        if family.name == "broadcast_clients_evicted":
            for sample in family.samples:
                if sample.labels.get("reason") == reason and sample.name.endswith("_total"):
                    return sample.value
    return 0.0


def rss_bytes(server: Server) -> int:
    with open(f"/proc/{server.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    return (
        bytes([0x81, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


@contextmanager
def stalled_websocket(server: Server) -> Iterator[socket.socket]:
    """A Socket.IO client over a raw websocket that connects, then never reads again."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    with sock:
        sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += sock.recv(1024)
        assert response.startswith(b"HTTP/1.1 101"), response
        sock.sendall(masked_text_frame("40"))  # Socket.IO CONNECT; from here on, no reads
        yield sock


def test_a_websocket_client_over_its_buffer_is_evicted_and_memory_stays_bounded(
    start_server: StartServer,
) -> None:
    budget = 256 * 1024
    server = start_server(
        {
            "BROADCAST_PUBLISH_TOKEN": TOKEN,
            "BROADCAST_PUBLISH_MAX_BYTES": "200000",
            "BROADCAST_CLIENT_BUFFER_BYTES": str(budget),
        }
    )
    with stalled_websocket(server):
        wait_until(lambda: server.user_count() == 1, 5, "the stalled client to be counted")
        before = rss_bytes(server)
        event = "x" * 100_000
        published = 0
        for _ in range(200):  # 20 MB in all: all of it would stay queued without a budget
            publish(server, event)
            published += 1
            if server.user_count() == 0:
                break
        wait_until(lambda: server.user_count() == 0, 10, "the stalled client to be evicted")
        for _ in range(50):  # more traffic after the eviction must not pile up anywhere
            publish(server, event)
        grown = rss_bytes(server) - before
    assert published < 200, "evicted long before everything was published"
    assert evicted(server, "too slow") == 1
    assert grown < 10 * 1024 * 1024, f"server memory grew by {grown} bytes"
    assert "too slow: over 262144 bytes waiting to be sent" in server.log()


async def test_a_polling_client_that_stops_polling_is_evicted_and_others_keep_up(
    start_server: StartServer,
) -> None:
    server = start_server(
        {
            "BROADCAST_PUBLISH_TOKEN": TOKEN,
            "BROADCAST_CLIENT_BUFFER_BYTES": "100000",
            "BROADCAST_SOCKETIO_TRANSPORTS": "polling,websocket",
        }
    )
    bystander = await connect_sio(server.url, transports=["websocket"])
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        opened = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
        sid = opened.text.split('"sid":"')[1].split('"')[0]
        query = {"EIO": "4", "transport": "polling", "sid": sid}
        assert (await http.post("/socket.io/", params=query, content="40")).text == "OK"
        await until(lambda: server.user_count() == 2, 5, "the polling client to be counted")
        # It never polls again, so everything for it waits on the server.
        event = "y" * 20_000
        for number in range(20):
            await publish_from(http, "bulk", f"{number}:{event}")
        await until(lambda: server.user_count() == 1, 5, "the idle poller to be evicted")
        await until(
            lambda: len([n for n, _ in bystander.events if n == "bulk"]) == 20,
            10,
            "every event at the bystander",
        )
        bulk = [data for name, data in bystander.events if name == "bulk"]
        assert [int(data.split(":")[0]) for data in bulk] == list(range(20))
        # When it polls at last, its session is over (the official clients reconnect then).
        late = await http.get("/socket.io/", params=query)
        assert late.status_code == 400
        assert "Session is disconnected" in late.text
    assert evicted(server, "too slow") == 1
    assert "too slow: over 100000 bytes waiting to be sent" in server.log()


def test_a_websocket_write_that_blocks_too_long_is_cut_off(start_server: StartServer) -> None:
    server = start_server(
        {
            "BROADCAST_PUBLISH_TOKEN": TOKEN,
            "BROADCAST_PUBLISH_MAX_BYTES": "2000000",
            "BROADCAST_CLIENT_BUFFER_BYTES": str(1024 * 1024 * 1024),  # never the budget
            "BROADCAST_SEND_TIMEOUT_SECONDS": "1",
        }
    )
    with stalled_websocket(server):
        wait_until(lambda: server.user_count() == 1, 5, "the stalled client to be counted")
        for _ in range(30):  # fill its TCP buffers until a write blocks
            publish(server, "z" * 1_000_000)
            if server.user_count() == 0:
                break
        wait_until(lambda: server.user_count() == 0, 10, "the blocked client to be cut off")
    assert evicted(server, "send timeout") == 1
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_an_sse_client_over_its_buffer_is_evicted(start_server: StartServer) -> None:
    server = start_server(
        {
            "BROADCAST_PUBLISH_TOKEN": TOKEN,
            "BROADCAST_PUBLISH_MAX_BYTES": "200000",
            "BROADCAST_CLIENT_BUFFER_BYTES": str(256 * 1024),
            "BROADCAST_SEND_TIMEOUT_SECONDS": "3600",  # the budget, not the timeout, cuts it
        }
    )
    host, port = server.url.removeprefix("http://").split(":")
    with socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((host, int(port)))
        stalled.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: server.user_count() == 1, 5, "the stalled client to be counted")
        for _ in range(200):
            publish(server, "x" * 100_000)
            if server.user_count() == 0:
                break
        wait_until(lambda: server.user_count() == 0, 10, "the stalled client to be evicted")
    assert evicted(server, "too slow") == 1


async def test_one_event_larger_than_the_budget_still_reaches_clients_that_keep_up(
    start_server: StartServer,
) -> None:
    server = start_server(
        {
            "BROADCAST_PUBLISH_TOKEN": TOKEN,
            "BROADCAST_PUBLISH_MAX_BYTES": "2000000",
            "BROADCAST_CLIENT_BUFFER_BYTES": str(64 * 1024),
        }
    )
    sio = await connect_sio(server.url, transports=["websocket"])
    async with sse_session() as open_sse:
        sse = await open_sse(server.url)
        await until(lambda: server.user_count() == 2, 5, "both clients to be counted")
        big = "b" * 1_500_000  # larger than the budget and than a loopback socket's buffers
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            for number in range(3):
                await publish_from(http, "big", f"{number}:{big}")
        await until(
            lambda: len([n for n, _ in sio.events if n == "big"]) == 3, 10, "Socket.IO: 3 events"
        )
        await until(lambda: len([e for e in sse.events if e.event == "big"]) == 3, 10, "SSE: 3")
        assert [d[:2] for n, d in sio.events if n == "big"] == ["0:", "1:", "2:"]
        assert [e.data[1:3] for e in sse.events if e.event == "big"] == ["0:", "1:", "2:"]
        assert server.user_count() == 2, "neither was evicted"
    assert evicted(server, "too slow") == 0
