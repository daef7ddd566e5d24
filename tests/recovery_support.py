"""What the connection state recovery tests share: publishing, reading a server's state, and the
flows that run unchanged against our server and against socket.io's own
(``tests/node/recovery-reference.js``, which serves the same few routes), so that what the tests
expect is shown to be what the official stack does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.node_sio import Line, NodeSio, node_sio
from tests.support import PROJECT_ROOT, RedisServer, answers_health, wait_until
from tests.tcp_proxy import tcp_proxy

TOKEN = "recovery-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHANNEL = "post:1"
OTHER_CHANNEL = "post:2"
FORGED_PID = "AAAAAAAAAAAAAAAAAAAAAA"  # the form of a pid (22 URL-safe characters), no session's
GAUGE = re.compile(r"^broadcast_socketio_recovery_sessions(?:\{[^}]*\})? (\S+)$", re.MULTILINE)


def recovery_settings(
    redis: RedisServer | None = None, window_ms: int | None = None, **more: str
) -> dict[str, str]:
    """Settings of a server with recovery on (on ``redis`` when given, else in memory)."""
    settings = {"BROADCAST_PUBLISH_TOKEN": TOKEN, "BROADCAST_SOCKETIO_RECOVERY": "true", **more}
    if redis is not None:
        settings["BROADCAST_BROKER_URL"] = redis.url
    if window_ms is not None:
        settings["BROADCAST_SOCKETIO_RECOVERY_MAX_DISCONNECTION_MS"] = str(window_ms)
    return settings


async def publish(url: str, data: Any, channel: str | None = None, event: str = "news") -> str:
    """``POST /publish``: the event's id (on the reference: the offset it was given)."""
    body: dict[str, Any] = {"event": event, "data": data}
    if channel is not None:
        body["channel"] = channel
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{url}/publish", json=body, headers=AUTH, timeout=5)
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


async def get_json(url: str, path: str) -> Any:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}{path}", headers=AUTH, timeout=5)
    response.raise_for_status()
    return response.json()


async def subscribers(url: str, channel: str = CHANNEL) -> int:
    """The channel's subscribers on the node at ``url`` (its ``/stats``)."""
    stats = await get_json(url, "/stats")
    return int(stats["channels"].get(channel, 0))


async def kept_sessions(url: str) -> float | None:
    """The ``broadcast_socketio_recovery_sessions`` gauge (None: not exported)."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/metrics", timeout=5)
    found = GAUGE.search(response.text)
    return float(found.group(1)) if found else None


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 10) -> None:
    """Poll the async ``check`` until it holds; fail with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


async def subscribed(url: str, count: int = 1, channel: str = CHANNEL) -> None:
    async def check() -> bool:
        return await subscribers(url, channel) == count

    await eventually(check, f"{count} subscriber(s) of {channel} at {url}")


# ---------------------------------------------------------------------------- the flows


async def connected_with_one_event(client: NodeSio, url: str) -> tuple[Line, str]:
    """The client's first connection (fresh), once it holds an offset: the connect line and
    the id of the event that gave it."""
    first = await client.connection()
    assert first["t"] == "connect", first
    assert first["recovered"] is False, f"a first connection is never recovered: {first}"
    await subscribed(url)
    e0 = await publish(url, 0, CHANNEL)
    await client.event("news", [0, e0])
    return first, e0


async def cut(client: NodeSio, url: str, command: str = "engine-close") -> int:
    """Cut the client (``engine-close`` or ``disconnect``); return once both sides know. The
    mark before the cut."""
    mark = client.mark()
    await client.command(command)
    await client.disconnection(mark)
    await subscribed(url, 0)  # the server noticed: its channel is left
    return mark


async def publish_meanwhile(url: str) -> tuple[str, str]:
    """Publish to everyone, to the client's channel, and to another channel: the ids of the
    two it must get."""
    e1 = await publish(url, 1)
    e2 = await publish(url, 2, CHANNEL)
    await publish(url, 3, OTHER_CHANNEL)
    return e1, e2


async def assert_recovered(
    client: NodeSio, url: str, first: Line, mark: int, missed: list[list[Any]]
) -> Line:
    """The client's next connection after ``mark`` is a recovery of ``first``: same id, the
    ``missed`` events (each ``[data, id]``) exactly, in order, before the connect; its channel
    restored (a later event of it arrives)."""
    again = await client.connection(mark)
    assert again["t"] == "connect", again
    assert again["recovered"] is True, f"not recovered: {again}"
    assert again["id"] == first["id"], "a recovered socket keeps its id"
    connected_at = client.lines.index(again, mark)
    assert client.events("news", mark, connected_at) == missed, "missed events, before connect"
    try:
        await subscribed(url)
        later = await publish(url, 4, CHANNEL)
        await client.event("news", [4, later], mark)
    except AssertionError as failure:  # say what the client saw (a disconnect, and why)
        seen = client.lines[mark:]
        raise AssertionError(f"{failure}; the client since the cut: {seen}") from None
    assert client.events("news", mark) == [*missed, [4, later]], "each event once, in order"
    return again


async def assert_refused(client: NodeSio, url: str, first: Line, mark: int) -> Line:
    """The client's next connection after ``mark`` is a fresh session: new id, ``recovered``
    false, nothing replayed (the next event it gets is one published after it connected)."""
    again = await client.connection(mark)
    assert again["t"] == "connect", again
    assert again["recovered"] is False, f"recovered, or recovery off: {again}"
    assert again["id"] != first["id"], "a fresh session has a fresh id"
    sentinel = await publish(url, 9)
    await client.event("news", [9, sentinel], mark)
    assert client.events("news", mark) == [[9, sentinel]], "nothing replayed"
    return again


async def recovers_after_engine_close(
    url: str, transport: str, also: Callable[[NodeSio], Awaitable[None]] | None = None
) -> None:
    """Issue 14's first case: the transport is cut, events are published, the client
    reconnects. ``also``: more checks, while the recovered client is connected."""
    options = {"transports": [transport], "auth": {"channels": [CHANNEL]}, "reconnection": False}
    async with node_sio(url, **options) as client:
        first, _ = await connected_with_one_event(client, url)
        mark = await cut(client, url)
        e1, e2 = await publish_meanwhile(url)
        await client.command("connect")
        await assert_recovered(client, url, first, mark, [[1, e1], [2, e2]])
        if also is not None:
            await also(client)


async def recovers_with_automatic_reconnection(url: str) -> None:
    """Default client options (reconnection on, short delays): cut, publish at once while it
    comes back. Recovered, same id; every event once and in order, live or replayed."""
    async with node_sio(url, auth={"channels": [CHANNEL]}) as client:
        first, e0 = await connected_with_one_event(client, url)
        mark = client.mark()
        await client.command("engine-close")
        ids = [e0]
        for n in range(1, 6):
            ids.append(await publish(url, n, CHANNEL if n % 2 else None))
        again = await client.connection(mark)
        assert again["t"] == "connect", again
        assert again["recovered"] is True, again
        assert again["id"] == first["id"]
        ids.append(await publish(url, 6, CHANNEL))
        await client.event("news", [6, ids[-1]])
        assert client.events("news") == [[n, event_id] for n, event_id in enumerate(ids)]


async def recovers_after_a_dropped_link(url: str) -> None:
    """The link goes silent (``blackhole``: nothing passes, both sockets stay open); both sides
    find out by their pings (the server's must be short), the client reconnects: recovered."""
    async with tcp_proxy(url) as proxy:
        options = {"auth": {"channels": [CHANNEL]}, "reconnection": False}
        async with node_sio(proxy.url, transports=["websocket"], **options) as client:
            first, _ = await connected_with_one_event(client, url)
            mark = client.mark()
            proxy.blackhole()
            assert (await client.disconnection(mark))["reason"] == "ping timeout"
            await subscribed(url, 0)  # the server's ping timeout
            e1, e2 = await publish_meanwhile(url)
            await client.command("connect")
            await assert_recovered(client, url, first, mark, [[1, e1], [2, e2]])


async def refused_after(url: str, prepare: Callable[[NodeSio], Awaitable[None]]) -> None:
    """Cut by ``engine-close``, events published, ``prepare`` (forge, wait...), connect: a
    fresh session."""
    options = {"auth": {"channels": [CHANNEL]}, "reconnection": False}
    async with node_sio(url, **options) as client:
        first, _ = await connected_with_one_event(client, url)
        mark = await cut(client, url)
        await publish_meanwhile(url)
        await prepare(client)
        await client.command("connect")
        await assert_refused(client, url, first, mark)


async def refused_after_a_deliberate_disconnect(url: str) -> None:
    options = {"auth": {"channels": [CHANNEL]}, "reconnection": False}
    async with node_sio(url, **options) as client:
        first, _ = await connected_with_one_event(client, url)
        mark = await cut(client, url, "disconnect")
        await publish_meanwhile(url)
        assert (await client.state())["pid"] == first["pid"], "the client still holds its pid"
        await client.command("connect")
        await assert_refused(client, url, first, mark)


async def forge(client: NodeSio, pid: str | None = None, offset: str | None = None) -> None:
    if pid is not None:
        await client.command(f"forge-pid {pid}")
    if offset is not None:
        await client.command(f"forge-offset {offset}")


# ---------------------------------------------------------------------------- the reference


@dataclass
class Reference:
    """socket.io's own server with ``connectionStateRecovery``."""

    url: str
    process: subprocess.Popen[bytes]


# The kit beside the checkout (as bench/ expects), or beside the directory of worktrees.
SHARED_BENCH = next(
    (
        path
        for path in (
            PROJECT_ROOT.parent / "shared" / "bench",
            PROJECT_ROOT.parents[1] / "shared" / "bench",
        )
        if path.is_dir()
    ),
    PROJECT_ROOT.parent / "shared" / "bench",
)


def reference_modules() -> Path:
    """The benchmark's Node peer install (socket.io 4.8): ``bench.servers.prepare_peer``."""
    from bench.servers import prepare_peer

    if shutil.which("node") is None:
        pytest.fail("these tests need Node.js")
    return prepare_peer(SHARED_BENCH, None) / "node_modules"


@contextlib.contextmanager
def running_reference(
    log_dir: Path, window_ms: int = 120_000, ping_ms: tuple[int, int] | None = None
) -> Iterator[Reference]:
    env = {
        **os.environ,
        "NODE_PATH": str(reference_modules()),
        "MAX_DISCONNECTION_MS": str(window_ms),
    }
    if ping_ms is not None:
        env["PING_INTERVAL_MS"], env["PING_TIMEOUT_MS"] = map(str, ping_ms)
    script = PROJECT_ROOT / "tests" / "node" / "recovery-reference.js"
    with (log_dir / "reference.log").open("wb") as log:
        process = subprocess.Popen(
            ["node", str(script)], stdout=subprocess.PIPE, stderr=log, env=env, cwd=log_dir
        )
    try:
        assert process.stdout is not None
        port = json.loads(process.stdout.readline())["port"]
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers_health(url), 10, "the reference server")
        yield Reference(url, process)
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
