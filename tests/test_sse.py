"""The SSE endpoint's wire format and its detection of clients that vanish."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx

from tests.conftest import StartServer
from tests.support import Server, sse_session, until, wait_until


async def test_stream_headers_retry_and_keepalive(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_SSE_PING_SECONDS": "0.2", "BROADCAST_SSE_RETRY_MS": "1500"})
    async with sse_session() as open_sse:
        client = await open_sse(server.url)
        headers = client.response.headers
        assert client.response.status_code == 200
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["x-accel-buffering"] == "no"
        assert headers["cache-control"] == "no-store"
        await until(lambda: client.retry == 1500, 5, "the retry hint")
        await until(lambda: client.counts == [1], 5, "the current count")
        await until(lambda: len(client.comments) >= 2, 5, "two keep-alive comments")
        assert client.events[0].event == "user count"
        assert client.events[0].data == "1"


def test_a_killed_sse_client_leaves_the_count_within_a_second(server: Server) -> None:
    # A separate process holds the stream and is killed: no goodbye, the kernel just closes.
    host, port = server.url.removeprefix("http://").split(":")
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import socket, sys
                s = socket.create_connection(({host!r}, {port}))
                s.sendall(b"GET /events HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
                while b"user count" not in s.recv(65536):
                    pass
                print("subscribed", flush=True)
                sys.stdin.read()
            """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == b"subscribed\n"
            wait_until(lambda: server.user_count() == 1, 5, "the SSE client to be counted")
            holder.send_signal(signal.SIGKILL)
            holder.wait(5)
            killed_at = time.monotonic()
            wait_until(lambda: server.user_count() == 0, 5, "the killed client to leave")
            assert time.monotonic() - killed_at < 1.0
        finally:
            holder.kill()


def test_a_client_that_stops_reading_is_disconnected(start_server: StartServer) -> None:
    token = "stall-token-0123456789"
    server = start_server(
        {
            "BROADCAST_SEND_TIMEOUT_SECONDS": "1",
            "BROADCAST_PUBLISH_TOKEN": token,
            "BROADCAST_PUBLISH_MAX_BYTES": "2000000",
        }
    )
    host, port = server.url.removeprefix("http://").split(":")
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with stalled:
        stalled.connect((host, int(port)))
        stalled.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: server.user_count() == 1, 5, "the stalled client to be counted")
        # It never reads again: fill its buffers until a write to it blocks.
        for _ in range(20):
            response = httpx.post(
                f"{server.url}/publish",
                json={"event": "bulk", "data": "x" * 1_000_000},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 202
            if server.user_count() == 0:
                break
        wait_until(lambda: server.user_count() == 0, 10, "the stalled client to be cut off")
    assert httpx.get(f"{server.url}/healthz").status_code == 200
