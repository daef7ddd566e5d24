"""Socket.IO connection state recovery (issue 14) when the link itself breaks, and across nodes:
a silent dropped link (both sides find out by pings), a link the client knows is dead before the
server does (the server's live socket is taken over by the recovery), a node drained or killed
behind nginx (the client comes back to the other node on Redis), and a kept session claimed
twice on two nodes (taken once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import StartServer
from tests.node_sio import node_sio
from tests.recovery_support import (
    CHANNEL,
    assert_recovered,
    assert_refused,
    connected_with_one_event,
    cut,
    forge,
    get_json,
    publish_meanwhile,
    recovers_after_a_dropped_link,
    recovery_settings,
    subscribers,
)
from tests.support import VENV_BIN, RedisServer, Server, free_port, sse_session, until
from tests.tcp_proxy import tcp_proxy
from tests.test_nginx import render, running_nginx

pytestmark = pytest.mark.timeout(90)
SHORT_PINGS = {
    # Short enough that a dead link is found in about 2 s, long enough that the recovered
    # connection outlives a stall of the busy test machine: at 300 ms, a pause of the test
    # process (which runs the proxy) or of the Node client timed it out once in a few CI runs.
    "BROADCAST_SOCKETIO_PING_INTERVAL_MS": "1000",
    "BROADCAST_SOCKETIO_PING_TIMEOUT_MS": "1000",
}


async def channel_count(server: Server, name: str = CHANNEL) -> int:
    return int((await get_json(server.url, f"/channels/{name}"))["count"])


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_dropped_link_server_notices_first(
    start_server: StartServer, request: pytest.FixtureRequest, backend: str
) -> None:
    redis: RedisServer | None = request.getfixturevalue("redis") if backend == "redis" else None
    server = start_server({**recovery_settings(redis), **SHORT_PINGS})
    await recovers_after_a_dropped_link(server.url)


async def test_dropped_link_client_notices_first(start_server: StartServer) -> None:
    """The client's side of the link is reset; the server's stays open and silent (its pings
    are long): the server still holds the socket when the client claims it. The recovery takes
    it over: recovered, same id, missed events once, never counted twice."""
    server = start_server(recovery_settings())
    async with sse_session() as open_sse, tcp_proxy(server.url) as proxy:
        observer = await open_sse(server.url)
        await until(lambda: observer.last_count == 1, 10, "the observer counted")
        options = {"auth": {"channels": [CHANNEL]}, "reconnection": False}
        async with node_sio(proxy.url, transports=["websocket"], **options) as client:
            first, _ = await connected_with_one_event(client, server.url)
            mark = client.mark()
            proxy.drop_client_side()
            await client.disconnection(mark)
            assert await subscribers(server.url) == 1, "the server has not noticed"
            e1, e2 = await publish_meanwhile(server.url)
            await client.command("connect")
            await assert_recovered(client, server.url, first, mark, [[1, e1], [2, e2]])
            assert await channel_count(server) == 1
            await until(lambda: observer.last_count == 2, 10, "the count back to 2")
            assert max(observer.counts) <= 2, f"never counted twice: {observer.counts}"
            assert server.user_count() == 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ending", ["drain", "kill"])
async def test_recovery_on_another_node_through_nginx(
    start_server: StartServer, redis: RedisServer, artifacts: Path, ending: str
) -> None:
    """The client's node goes away; it comes back through nginx to the other. Drained
    (SIGTERM): its session was kept in Redis: recovered there, with what was published on the
    other node meanwhile. Killed (SIGKILL): nothing was kept: a fresh session, nothing
    replayed."""
    # ``broadcast serve``: SIGTERM drains (keeps the sessions in Redis), as in production.
    serve = [str(VENV_BIN / "broadcast"), "serve"]
    nodes = [start_server(recovery_settings(redis), serve) for _ in range(2)]
    port = free_port()
    config = render([n.url.removeprefix("http://") for n in nodes], port, artifacts)
    with running_nginx(config, port, artifacts) as url:
        options = {"auth": {"channels": [CHANNEL]}, "reconnection": False}
        async with node_sio(url, transports=["websocket"], **options) as client:
            first, _ = await connected_with_one_event(client, url)
            await until(
                lambda: sorted(n.stats()["local_users"] for n in nodes) == [0, 1], 10, "its node"
            )
            home, other = sorted(nodes, key=lambda n: -int(n.stats()["local_users"]))
            mark = client.mark()
            if ending == "drain":
                home.stop()
            else:
                home.kill()
            await client.disconnection(mark)
            e1, e2 = await publish_meanwhile(other.url)
            await client.command("connect")
            if ending == "drain":
                await assert_recovered(client, other.url, first, mark, [[1, e1], [2, e2]])
                assert await channel_count(other) == 1
                assert other.stats()["local_users"] == 1
            else:
                await assert_refused(client, other.url, first, mark)


async def test_a_kept_session_is_taken_once_across_nodes(
    start_server: StartServer, redis: RedisServer
) -> None:
    """One kept session, two claims of its pid on two nodes: the first (node two) recovers it;
    the second (node one, where it was kept) gets a fresh session, and the first is left
    alone."""
    one = start_server(recovery_settings(redis))
    two = start_server(recovery_settings(redis))
    options = {"auth": {"channels": [CHANNEL]}, "reconnection": False}
    async with node_sio(one.url, **options) as original:
        first, _ = await connected_with_one_event(original, one.url)
        await cut(original, one.url)
        state = await original.state()
        e1, e2 = await publish_meanwhile(two.url)
        claim = {"autoConnect": False, "reconnection": False}
        async with node_sio(two.url, **claim) as winner:
            await forge(winner, pid=state["pid"], offset=state["offset"])
            await winner.command("connect")
            await assert_recovered(winner, two.url, first, 0, [[1, e1], [2, e2]])
            async with node_sio(one.url, **claim) as second:
                await forge(second, pid=state["pid"], offset=state["offset"])
                await second.command("connect")
                await assert_refused(second, one.url, first, 0)
            assert not [line for line in winner.lines if line["t"] == "disconnect"]
