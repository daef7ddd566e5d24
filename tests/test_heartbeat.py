"""The Engine.IO heartbeat (``overrides/engineio_ping.py``: one sweep pings every client and
closes those whose ping goes unanswered), against the real server with raw clients that answer
the pings, or not, as the test says. With the overrides off (``TEST_OVERRIDES=off``) the same
behaviour comes from python-engineio's own heartbeat."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from typing import Any

import aiohttp
import engineio
import httpx
import pytest
from engineio.async_socket import AsyncSocket

from broadcast.overrides.engineio_ping import PingSweep, intercepted, tick_for
from tests.conftest import StartServer
from tests.support import PROJECT_ROOT, Server, until
from tests.test_metrics import scrape
from tests.test_socketio_conformance import CLOSED, EIO, connected, raw_websocket

pytestmark = pytest.mark.timeout(60)

INTERVAL, TIMEOUT = 0.3, 0.2
FAST = {
    "BROADCAST_SOCKETIO_PING_INTERVAL_MS": str(int(INTERVAL * 1000)),
    "BROADCAST_SOCKETIO_PING_TIMEOUT_MS": str(int(TIMEOUT * 1000)),
}


def user_count(server: Server) -> int:
    count: int = httpx.get(f"{server.url}/stats", timeout=5).json()["user_count"]
    return count


async def pings_answered(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> list[float]:
    """Answer every PING for ``seconds``: when each came. Fails if the server closes."""
    pings: list[float] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await ws.receive(timeout=left)
        except TimeoutError:
            break
        assert message.type not in CLOSED, f"closed after {len(pings)} ping(s)"
        if message.type == aiohttp.WSMsgType.TEXT and message.data == "2":
            pings.append(time.monotonic())
            await ws.send_str("3")
    return pings


async def test_a_websocket_client_that_answers_is_pinged_every_interval_and_kept(
    start_server: StartServer,
) -> None:
    server = start_server(FAST)
    async with raw_websocket(server) as ws:
        await connected(ws)
        pings = await pings_answered(ws, 12 * INTERVAL)
        # One ping an interval after each pong: about 12 in the window, never two at once.
        assert len(pings) >= 6, pings
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert min(gaps) > INTERVAL * 0.8, gaps
        assert max(gaps) < INTERVAL + 1.0, gaps
        assert user_count(server) == 1


async def test_a_websocket_client_that_stops_answering_is_closed_and_leaves_the_count(
    start_server: StartServer,
) -> None:
    server = start_server(FAST)
    async with raw_websocket(server) as ws, raw_websocket(server) as other:
        await connected(ws)
        await connected(other)
        await until(lambda: user_count(server) == 2, 5, "both counted")
        listening = asyncio.ensure_future(pings_answered(other, 8 * INTERVAL))
        started = time.monotonic()
        closed_at = None
        while time.monotonic() - started < 5:
            message = await ws.receive(timeout=5)
            if message.type in CLOSED:
                closed_at = time.monotonic() - started
                break
            # Its pings go unanswered; Engine.IO's CLOSE packet ("1") may come first.
        assert closed_at is not None, "a client that never answers its pings is never closed"
        assert closed_at < INTERVAL + TIMEOUT + 2.0, closed_at
        assert len(await listening) >= 3, "the client that answers is still pinged, and kept"
    # ...and the one that answered is closed by the test itself, so both leave.
    await until(lambda: user_count(server) == 0, 5, "the count is back to 0")


async def test_a_polling_client_is_pinged_and_closed_when_it_stops_polling(
    start_server: StartServer,
) -> None:
    server = start_server({**FAST, "BROADCAST_SOCKETIO_TRANSPORTS": "polling"})
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        opened = await http.get(f"{EIO}&transport=polling")
        assert opened.status_code == 200, opened.text
        sid = opened.text.split('"sid":"')[1].split('"')[0]
        query = f"{EIO}&transport=polling&sid={sid}"
        assert (await http.post(query, content="40")).status_code == 200
        seen = ""
        while "2" not in seen.split("\x1e"):  # the ping, after an interval
            seen = (await http.get(query)).text
        await http.post(query, content="3")  # one pong, then silence
        await until(lambda: user_count(server) == 1, 5, "counted while it answers")
        # No more polls, no more pongs: gone after its next ping times out.
        await until(lambda: user_count(server) == 0, 5, "a silent poller leaves the count")
        gone = await http.get(query)
        assert gone.status_code == 400, gone.text


def test_the_sweep_runs_often_enough_for_any_settings() -> None:
    assert tick_for(25, 20) == 1.0
    assert tick_for(0.3, 0.2) == pytest.approx(0.03)
    assert tick_for(0.01, 0.01) == 0.01


class _Server:
    """What the sweep reads of python-engineio's server (a unit below the transport)."""

    ping_interval = 25.0
    ping_timeout = 20.0


def test_only_pings_and_the_service_task_are_taken_over() -> None:
    sweep = PingSweep(_Server())
    socket = AsyncSocket.__new__(AsyncSocket)
    assert intercepted(sweep, socket._send_ping) is None
    assert len(sweep) == 1, "the ping is the sweep's now"
    server: Any = engineio.AsyncServer(async_mode="asgi")
    assert intercepted(sweep, server._service_task) == sweep.until_shutdown

    async def other() -> None:
        return None

    assert intercepted(sweep, other) is other


@pytest.mark.skipif(
    os.environ.get("TEST_OVERRIDES") == "off", reason="the sweep is an override; off, no sweep"
)
async def test_a_crashed_heartbeat_is_logged_counted_reported_and_restarted(
    start_server: StartServer,
) -> None:
    server = start_server(
        {**FAST, "FAULTY_HEARTBEAT": "1", "PYTHONPATH": str(PROJECT_ROOT)},
        command=[sys.executable, "-m", "hypercorn", "tests.faulty_app:app"],
    )
    async with raw_websocket(server) as ws:
        await connected(ws)

        def reasons() -> list[str]:
            found: list[str] = httpx.get(f"{server.url}/readyz", timeout=5).json()["reasons"]
            return found

        crashed = "task socketio-heartbeat crashed: RuntimeError: injected fault: the heartbeat"
        await until(lambda: reasons() == [crashed], 10, "/readyz to report the heartbeat down")
        metrics = scrape(server.url)
        assert metrics[("broadcast_task_crashes_total", (("task", "socketio-heartbeat"),))] == 1
        await until(lambda: reasons() == [], 10, "the heartbeat to be restarted")
    # Down for the test's 3 s restart delay, longer than this client's 500 ms allowance, so the
    # first client was let go; clients are pinged again, and kept while they answer.
    async with raw_websocket(server) as ws:
        await connected(ws)
        assert len(await pings_answered(ws, 6 * INTERVAL)) >= 3
