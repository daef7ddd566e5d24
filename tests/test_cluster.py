"""Scale-out on Redis with real processes: several nodes and workers, a killed node, an outage."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import httpx
import pytest

from tests.conftest import StartServer
from tests.support import (
    HYPERCORN,
    RedisServer,
    Server,
    SioClient,
    SseClient,
    connect_sio,
    sse_session,
    until,
    wait_until,
)

TOKEN = "cluster-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def node_settings(redis: RedisServer, **extra: str) -> dict[str, str]:
    return {
        "BROADCAST_BROKER_URL": redis.url,
        "BROADCAST_PUBLISH_TOKEN": TOKEN,
        "BROADCAST_PRESENCE_TTL_SECONDS": "3",
        "BROADCAST_PRESENCE_HEARTBEAT_SECONDS": "0.5",
        "BROADCAST_REDIS_RECONNECT_MAX_SECONDS": "0.5",
        **extra,
    }


async def publish(server: Server, event: str, data: Any = None) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{server.url}/publish", json={"event": event, "data": data}, headers=AUTH
        )


def all_hold(clients: list[SseClient]) -> bool:
    """Every client's last count is the number of clients."""
    return all(c.last_count == len(clients) for c in clients)


def metrics_text(server: Server) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=5).text


def readiness(server: Server) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{server.url}/readyz", timeout=5)
    body: dict[str, Any] = response.json()
    return response.status_code, body


@pytest.mark.timeout(90)
async def test_two_nodes_one_count_every_event_once_and_a_killed_node(
    start_server: StartServer, redis: RedisServer
) -> None:
    one = start_server(node_settings(redis))
    two = start_server(node_settings(redis))
    async with sse_session() as open_sse:
        sio_one = await connect_sio(one.url, ["websocket"])
        sse_one = await open_sse(one.url)
        sio_two = await connect_sio(two.url, ["polling"])
        sse_two = await open_sse(two.url)
        extra_two = [await connect_sio(two.url, ["websocket"]) for _ in range(3)]
        everyone: list[SioClient | SseClient] = [sio_one, sse_one, sio_two, sse_two, *extra_two]
        await until(lambda: all(c.last_count == 7 for c in everyone), 10, "one count of 7")
        assert one.user_count() == two.user_count() == 7
        assert one.stats()["local_users"] == 2
        assert two.stats()["local_users"] == 5

        ids = [(await publish(one, "tick", i)).json()["id"] for i in range(10)]
        ids += [(await publish(two, "tick", i)).json()["id"] for i in range(10, 20)]
        await until(
            lambda: all(len([e for e in c.events if e[0] == "tick"]) >= 20 for c in extra_two),
            10,
            "twenty ticks on node two",
        )
        await until(
            lambda: len([e for e in sse_one.events if e.event == "tick"]) >= 20, 10, "SSE ticks"
        )
        for client in [sio_one, sio_two, *extra_two]:
            ticks = [data for name, data in client.events if name == "tick"]
            assert ticks == list(range(20)), "each event exactly once, in order"
        assert [e.id for e in sse_one.events if e.event == "tick"] == ids
        assert [e.id for e in sse_two.events if e.event == "tick"] == ids

        # kill -9 node two: no goodbye; its share expires within the TTL (3 s here).
        two.kill()
        killed = time.monotonic()
        await until(lambda: sio_one.last_count == sse_one.last_count == 2, 10, "the correction")
        assert time.monotonic() - killed < 3 + 0.5 + 1.5, "within TTL + heartbeat (+ slack)"

        # Restart it: everyone converges again.
        three = start_server(node_settings(redis))
        sio_three = await connect_sio(three.url, ["websocket"])
        await until(
            lambda: sio_one.last_count == sse_one.last_count == sio_three.last_count == 3,
            10,
            "convergence on 3",
        )
        await sio_three.disconnect()
        await sio_one.disconnect()


@pytest.mark.timeout(60)
async def test_a_clean_stop_removes_a_nodes_share_at_once(
    start_server: StartServer, redis: RedisServer
) -> None:
    one = start_server(node_settings(redis, BROADCAST_PRESENCE_TTL_SECONDS="30"))
    two = start_server(node_settings(redis, BROADCAST_PRESENCE_TTL_SECONDS="30"))
    watcher = await connect_sio(one.url, ["websocket"])
    async with sse_session() as open_sse:
        await open_sse(two.url)
        await open_sse(two.url)
        await until(lambda: watcher.last_count == 3, 10, "a count of 3")
    await until(lambda: watcher.last_count == 1, 10, "the SSE clients to leave")
    await connect_sio(two.url, ["websocket"])
    await until(lambda: watcher.last_count == 2, 10, "a count of 2")
    stopped = time.monotonic()
    assert two.stop() == 0
    await until(lambda: watcher.last_count == 1, 10, "node two's share to go")
    assert time.monotonic() - stopped < 10, "long before the 30 s TTL"
    await watcher.disconnect()


@pytest.mark.timeout(90)
async def test_a_redis_outage_under_load_is_reported_and_survived(
    start_server: StartServer, own_redis: RedisServer
) -> None:
    one = start_server(node_settings(own_redis))
    two = start_server(node_settings(own_redis))
    wait_until(lambda: readiness(one)[0] == readiness(two)[0] == 200, 10, "both nodes ready")
    statuses: list[int] = []
    stop_publishing = asyncio.Event()

    async def publish_all_along() -> None:
        # Load through the whole outage: publishes to both nodes, one after another.
        async with httpx.AsyncClient() as http:
            for seq in range(100_000):
                if stop_publishing.is_set():
                    return
                node = (one, two)[seq % 2]
                response = await http.post(
                    f"{node.url}/publish", json={"event": "load", "data": seq}, headers=AUTH
                )
                statuses.append(response.status_code)
                await asyncio.sleep(0.01)  # a steady rate, not a synchronisation

    async with sse_session() as open_sse:
        crowd = [await open_sse(node.url) for node in (one, two) for _ in range(40)]
        a = await connect_sio(one.url, ["websocket"])
        b = await connect_sio(two.url, ["websocket"])
        await until(lambda: a.last_count == b.last_count == 82, 10, "a count of 82")
        publisher = asyncio.create_task(publish_all_along())
        await until(lambda: statuses.count(202) >= 20, 10, "publishes flowing")

        own_redis.stop()
        for node in (one, two):
            wait_until(lambda node=node: readiness(node)[0] == 503, 10, "readyz 503")  # type: ignore[misc]
            _, body = readiness(node)
            assert body["status"] == "unavailable"
            assert "broadcast_broker_up 0.0" in metrics_text(node)
            assert any("redis unreachable" in reason for reason in body["reasons"])
            refused = await publish(node, "news")
            assert refused.status_code == 503
            assert "cannot deliver now" in refused.json()["detail"]
            assert refused.headers["retry-after"] == "1"
        await until(lambda: statuses[-10:].count(503) == 10, 10, "the load to be refused")
        # Each node keeps serving its own clients: a newcomer is counted and told at once.
        c = await connect_sio(one.url, ["websocket"], auth={"username": "carol"})
        await until(lambda: a.last_count == c.last_count == 83, 10, "node one's newcomer")
        ack = await c.client.call("chat message", "anyone?", timeout=5)
        assert ack == {"ok": False, "error": "chat is unavailable for a moment"}
        await crowd[0].response.aclose()  # and a leave during the outage

        own_redis.start()
        wait_until(lambda: readiness(one)[0] == readiness(two)[0] == 200, 15, "both ready again")
        assert "broadcast_broker_up 1.0" in metrics_text(one)
        await until(lambda: statuses[-10:].count(202) == 10, 15, "the load to be accepted again")
        stop_publishing.set()
        await publisher
        assert set(statuses) == {202, 503}, "nothing but accepted or refused, never a crash"
        everyone: list[SioClient | SseClient] = [a, b, c, *crowd[1:]]
        await until(lambda: all(x.last_count == 82 for x in everyone), 15, "convergence on 82")
        response = await publish(two, "news", "back")
        assert response.status_code == 202
        await until(lambda: ("news", "back") in a.events, 10, "node two's event on node one")
    for node in (one, two):
        assert "Traceback" not in node.log(), node.log()


@pytest.mark.timeout(120)
async def test_several_workers_share_one_count_on_redis(
    start_server: StartServer, redis: RedisServer
) -> None:
    server = start_server(node_settings(redis), command=[HYPERCORN, "--workers", "2"])
    async with (
        sse_session() as open_sse,
        httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as http,
    ):
        clients: list[SseClient] = []
        crossed = False
        # The kernel hands each connection (clients' and /stats requests alike) to whichever
        # worker accepts first: keep going until a /stats served by a worker that does not hold
        # every client still reports them all, which only the shared count can do.
        while not crossed and len(clients) < 200:
            clients += [await open_sse(server.url) for _ in range(10)]
            await until(partial(all_hold, list(clients)), 15, "everyone to hold the count")
            for _ in range(4):
                # A worker learns the other's count from Redis a moment after its clients do:
                # wait for it (each request may land on either worker).
                deadline = time.monotonic() + 5
                while (stats := (await http.get(f"{server.url}/stats")).json())[
                    "user_count"
                ] != len(clients):
                    assert time.monotonic() < deadline, f"{stats} after 5 s, not {len(clients)}"
                    await asyncio.sleep(0.02)  # the poll's pace
                crossed = crossed or stats["local_users"] < len(clients)
        assert crossed, "no /stats answer came from a worker without every client"
        total = len(clients)
        await until(
            lambda: all(c.last_count == total for c in clients), 15, f"one count of {total}"
        )
        assert (await http.get(f"{server.url}/stats")).json()["user_count"] == total


def test_memory_broker_with_several_workers_warns_loudly(start_server: StartServer) -> None:
    server = start_server(command=[HYPERCORN, "--workers", "2"])
    wait_until(lambda: "each worker has its own user count" in server.log(), 10, "the warning")
