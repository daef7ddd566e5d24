"""Socket.IO connection state recovery (issue 14) on one node, with the official Node client
(``socket.io-client`` 4.x): the transport is cut, events are published meanwhile, the client
comes back with ``socket.recovered === true``, the same ``socket.id``, every missed event of its
channels once and in order (its id as last argument) and its channels; refused (a fresh
session, nothing replayed) after the window, after a deliberate disconnect, with a forged pid,
a malformed or a too old offset, and after a restart. With the setting off, clients see nothing
new. The same flows pass against socket.io's own server: test_recovery_reference.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import redis as redis_client

from tests.conftest import StartServer
from tests.node_sio import NodeSio, node_sio
from tests.recovery_support import (
    CHANNEL,
    FORGED_PID,
    TOKEN,
    assert_refused,
    connected_with_one_event,
    cut,
    eventually,
    forge,
    get_json,
    kept_sessions,
    publish,
    recovers_after_engine_close,
    recovers_with_automatic_reconnection,
    recovery_settings,
    refused_after,
    refused_after_a_deliberate_disconnect,
)
from tests.support import RedisServer, Server, connect_sio, sse_session, until
from tests.tcp_proxy import tcp_proxy

pytestmark = pytest.mark.timeout(60)
BACKENDS = ["memory", "redis"]


def backend_redis(request: pytest.FixtureRequest, backend: str) -> RedisServer | None:
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis")
        return server
    return None


async def channel_count(server: Server, name: str = CHANNEL) -> int:
    return int((await get_json(server.url, f"/channels/{name}"))["count"])


async def users(server: Server) -> int:
    return int((await get_json(server.url, "/stats"))["user_count"])


@pytest.mark.parametrize("transport", ["websocket", "polling"])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_official_client_recovers_after_engine_close(
    start_server: StartServer, request: pytest.FixtureRequest, backend: str, transport: str
) -> None:
    server = start_server(recovery_settings(backend_redis(request, backend)))
    async with sse_session() as open_sse:
        observer = await open_sse(server.url)
        await until(lambda: observer.last_count == 1, 10, "the observer counted")

        async def channels_and_count_restored(client: NodeSio) -> None:
            assert await channel_count(server) == 1, "its channel counts it once"
            await until(lambda: observer.last_count == 2, 10, "the count back to 2")
            assert await users(server) == 2
            assert max(observer.counts) <= 2, f"never counted twice: {observer.counts}"
            # Private notices and state carry no offset: the offset is still the last event's.
            state = await client.state()
            assert state["offset"] == client.events("news")[-1][-1]

        await recovers_after_engine_close(server.url, transport, channels_and_count_restored)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_recovery_with_automatic_reconnection(
    start_server: StartServer, request: pytest.FixtureRequest, backend: str
) -> None:
    server = start_server(recovery_settings(backend_redis(request, backend)))
    await recovers_with_automatic_reconnection(server.url)


async def test_restart_of_an_in_process_server_gives_a_fresh_session(
    start_server: StartServer,
) -> None:
    """Memory sessions die with the process: the client, coming back to a new server at the
    same address, gets a fresh session and none of the old epoch's events (or the new's)."""
    one = start_server(recovery_settings())
    async with tcp_proxy(one.url) as proxy:
        options = {"auth": {"channels": [CHANNEL]}, "reconnection": False}
        async with node_sio(proxy.url, transports=["websocket"], **options) as client:
            first, _ = await connected_with_one_event(client, one.url)
            mark = client.mark()
            one.stop()
            await client.disconnection(mark)
            two = start_server(recovery_settings())
            proxy.point_to(two.url)
            await publish(two.url, 1)
            await publish(two.url, 2, CHANNEL)
            await client.command("connect")
            await assert_refused(client, two.url, first, mark)


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("backend", BACKENDS)
async def test_refused_after_the_window(
    start_server: StartServer, request: pytest.FixtureRequest, backend: str
) -> None:
    redis = backend_redis(request, backend)
    server = start_server(recovery_settings(redis, window_ms=1000))

    async def expired(client: NodeSio) -> None:
        if redis is None:

            async def kept(count: int) -> bool:
                return await kept_sessions(server.url) == count

            await eventually(lambda: kept(1), "the session kept (gauge)")
            await eventually(lambda: kept(0), "the session expired (gauge)")
        else:
            key = f"broadcast:sio:session:{(await client.state())['pid']}"
            store = redis_client.Redis.from_url(redis.url)
            try:
                await until(lambda: bool(store.exists(key)), 10, f"{key} kept in Redis")
                await until(lambda: not store.exists(key), 10, f"{key} expired")
            finally:
                store.close()

    await refused_after(server.url, expired)


async def test_refused_after_a_deliberate_disconnect(start_server: StartServer) -> None:
    server = start_server(recovery_settings())
    await refused_after_a_deliberate_disconnect(server.url)
    assert await kept_sessions(server.url) == 0, "nothing kept for a deliberate disconnect"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_refused_with_a_forged_pid(
    start_server: StartServer, request: pytest.FixtureRequest, backend: str
) -> None:
    server = start_server(recovery_settings(backend_redis(request, backend)))

    async def forged(client: NodeSio) -> None:
        await forge(client, pid=FORGED_PID)

    await refused_after(server.url, forged)


@pytest.mark.parametrize("pid", ["short", "A" * 21 + "!", "A" * 200])
async def test_refused_with_a_pid_of_the_wrong_form(start_server: StartServer, pid: str) -> None:
    server = start_server(recovery_settings())

    async def forged(client: NodeSio) -> None:
        await forge(client, pid=pid)

    await refused_after(server.url, forged)
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("offset", ["not-an-offset", "1:2:3", "", "x" * 300])
async def test_refused_with_a_malformed_offset(start_server: StartServer, offset: str) -> None:
    server = start_server(recovery_settings())

    async def malformed(client: NodeSio) -> None:
        await forge(client, offset=offset)

    await refused_after(server.url, malformed)
    assert "Traceback" not in server.log()


async def cut_before_five_events(client: NodeSio, server: Server) -> tuple[dict[str, Any], int]:
    """A client with no channel gets one event, is cut, and five are published: the connect
    line, the mark, and the ids (the first one's, then the five)."""
    first = await client.connection()
    assert first["t"] == "connect", first
    e0 = await publish(server.url, 0)
    await client.event("news", [0, e0])
    mark = client.mark()
    await client.command("engine-close")
    await client.disconnection(mark)
    await eventually(lambda: _no_users(server), "the server to notice")
    return first, mark


async def _no_users(server: Server) -> bool:
    return await users(server) == 0


async def test_refused_with_an_offset_older_than_the_history(start_server: StartServer) -> None:
    server = start_server(recovery_settings(BROADCAST_HISTORY_SIZE="3"))
    async with node_sio(server.url, reconnection=False) as client:
        first, mark = await cut_before_five_events(client, server)
        for n in range(1, 6):
            await publish(server.url, n)
        await client.command("connect")
        await assert_refused(client, server.url, first, mark)


async def test_a_failed_recovery_falls_back_on_last_event_id_with_a_gap(
    start_server: StartServer,
) -> None:
    """The ``lastEventId`` scheme still works beside recovery: refused (offset too old), the
    client that also gave ``lastEventId`` gets the ``gap`` notice and what is held, after the
    ack, as today."""
    server = start_server(recovery_settings(BROADCAST_HISTORY_SIZE="3"))
    async with node_sio(server.url, reconnection=False, auth={"lastEventId": ""}) as client:
        first, mark = await cut_before_five_events(client, server)
        e0 = client.events("news")[0][-1]
        ids = [await publish(server.url, n) for n in range(1, 6)]
        await client.command(f"set-auth {json.dumps({'lastEventId': e0})}")
        await client.command("connect")
        again = await client.connection(mark)
        assert again["t"] == "connect", again
        assert again["recovered"] is False, again
        assert again["id"] != first["id"]
        await client.event("news", [5, ids[4]], mark)
        after = client.lines[client.lines.index(again, mark) :]
        names = [line["name"] for line in after if line["t"] == "event"]
        assert [n for n in names if n in ("gap", "news")] == ["gap", "news", "news", "news"]
        gap = next(line["args"] for line in after if line.get("name") == "gap")
        assert gap == [{"lastEventId": e0, "oldestEventId": ids[2]}]
        assert client.events("news", mark) == [[n, ids[n - 1]] for n in (3, 4, 5)]


# ---------------------------------------------------------------------------- the setting off


async def raw_connect(url: str, http: aiohttp.ClientSession) -> tuple[Any, dict[str, Any]]:
    """A websocket Engine.IO session that sends a bare ``40``: the socket and the ack's JSON."""
    ws = await http.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket")
    opening = await asyncio.wait_for(ws.receive_str(), 5)
    assert opening.startswith("0{"), opening
    await ws.send_str("40")
    return ws, json.loads(await next_frame(ws, "40"))


async def next_frame(ws: Any, prefix: str) -> str:
    """The body of the next text frame starting with ``prefix`` (others skipped)."""
    while True:
        frame: str = await asyncio.wait_for(ws.receive_str(), 5)
        if frame.startswith(prefix):
            return frame[len(prefix) :]


async def next_event(ws: Any, name: str) -> list[Any]:
    """The arguments of the next ``42`` frame of event ``name``."""
    frame = await next_frame(ws, f"42[{json.dumps(name)}")
    arguments: list[Any] = json.loads(f"[{frame.removeprefix(',')}")
    return arguments


async def test_python_socketio_client_unaffected_when_off(start_server: StartServer) -> None:
    """Off by default: a one-parameter handler gets the data alone; the ack has no ``pid``."""
    server = start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN})
    client = await connect_sio(server.url, ["websocket"])
    got: list[Any] = []

    async def on_news(data: Any) -> None:  # the classic handler: one parameter
        got.append(data)

    client.client.on("news", on_news)
    await publish(server.url, {"n": 1})
    await until(lambda: got == [{"n": 1}], 5, "the one-parameter handler called")
    async with aiohttp.ClientSession() as http:
        ws, ack = await raw_connect(server.url, http)
        try:
            assert set(ack) == {"sid"}, ack
            await publish(server.url, 2)
            assert await next_event(ws, "news") == [2], "no offset"
        finally:
            await ws.close()
    assert "TypeError" not in server.log()


async def test_recovery_on_puts_pid_in_the_ack_and_offsets_in_events(
    start_server: StartServer,
) -> None:
    """On: ``40{"sid","pid"}``; every event with an id gains it as last argument (any
    client); ``user count`` (state) gains nothing."""
    server = start_server(recovery_settings())
    async with aiohttp.ClientSession() as http:
        ws, ack = await raw_connect(server.url, http)
        try:
            assert set(ack) == {"sid", "pid"}, ack
            assert isinstance(ack["pid"], str)
            assert ack["pid"] != ack["sid"]
            assert await next_event(ws, "user count") == [1], "state: no offset"
            event_id = await publish(server.url, 2)
            assert await next_event(ws, "news") == [2, event_id]
        finally:
            await ws.close()


async def test_last_event_id_clients_still_resume_with_recovery_on(
    start_server: StartServer,
) -> None:
    """python-socketio with ``lastEventId``, recovery on: the classic resume, unchanged."""
    server = start_server(recovery_settings())
    first = await connect_sio(server.url, auth={"lastEventId": ""})
    seen = await publish(server.url, 0)
    await until(lambda: first.ids == [seen], 5, "the first event and its id")
    await first.disconnect()
    missed = [await publish(server.url, n) for n in (1, 2, 3)]
    again = await connect_sio(server.url, auth={"lastEventId": seen})
    await until(lambda: len(again.ids) == 3, 5, "the three missed events")
    assert [data for name, data in again.events if name == "news"] == [1, 2, 3]
    assert again.ids == missed


async def test_a_cut_without_an_offset_yet_is_refused(start_server: StartServer) -> None:
    """Node parity: a client that got no event with an offset sends no offset: refused."""
    server = start_server(recovery_settings())
    async with node_sio(server.url, reconnection=False, auth={"channels": [CHANNEL]}) as client:
        first = await client.connection()
        assert first["t"] == "connect", first
        mark = await cut(client, server.url)
        assert (await client.state())["offset"] is None
        await client.command("connect")
        await assert_refused(client, server.url, first, mark)
