"""Replay after reconnect: SSE's ``Last-Event-ID`` and Socket.IO's ``lastEventId`` auth bring back
exactly what was missed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.conftest import StartServer
from tests.support import (
    ConnectRefused,
    RedisServer,
    Server,
    SioClient,
    SseClient,
    close_sse,
    connect_sio,
    sse_session,
    until,
)

TOKEN = "replay-token-0123456789"


async def publish(server: Server, data: Any) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/publish",
            json={"event": "tick", "data": data},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert response.status_code == 202
    event_id: str = response.json()["id"]
    return event_id


def ticks(client: SseClient) -> list[tuple[Any, str | None]]:
    return [(json.loads(e.data), e.id) for e in client.events if e.event == "tick"]


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_reconnecting_sse_client_gets_exactly_what_it_missed(
    start_server: StartServer, request: pytest.FixtureRequest, backend: str
) -> None:
    settings = {"BROADCAST_PUBLISH_TOKEN": TOKEN}
    if backend == "redis":
        redis: RedisServer = request.getfixturevalue("redis")
        settings["BROADCAST_BROKER_URL"] = redis.url
    one = start_server(settings)
    # With Redis, the client comes back to another node, which replays from the shared history.
    two = start_server(settings) if backend == "redis" else one
    async with sse_session() as open_sse:
        first = await open_sse(one.url)
        seen = await publish(one, 0)
        await until(lambda: len(ticks(first)) == 1, 5, "the first event")
        await close_sse(first)

        missed = [await publish(one, i) for i in (1, 2, 3)]
        again = await open_sse(two.url, headers={"Last-Event-ID": seen})
        await until(lambda: len(ticks(again)) == 3, 5, "the three missed events")
        live = await publish(two, 4)
        await until(lambda: len(ticks(again)) == 4, 5, "the live event")
        assert ticks(again) == [(1, missed[0]), (2, missed[1]), (3, missed[2]), (4, live)]
        assert not [e for e in again.events if e.event == "gap"]
        counts = [e for e in again.events if e.event == "user count"]
        assert counts, "the count is state: the current one, not a replay"

        # The query parameter works the same, for clients that cannot set headers.
        by_query = await open_sse(two.url, lastEventId=missed[1])
        await until(lambda: len(ticks(by_query)) == 2, 5, "two events by query")
        assert [data for data, _ in ticks(by_query)] == [3, 4]


async def test_an_id_older_than_the_history_gets_a_gap_notice(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN, "BROADCAST_HISTORY_SIZE": "2"})
    ids = [await publish(server, i) for i in range(5)]
    async with sse_session() as open_sse:
        client = await open_sse(server.url, headers={"Last-Event-ID": ids[0]})
        await until(lambda: len(ticks(client)) == 2, 5, "what is still held")
        gaps = [json.loads(e.data) for e in client.events if e.event == "gap"]
        assert gaps == [{"lastEventId": ids[0], "oldestEventId": ids[3]}]
        assert [data for data, _ in ticks(client)] == [3, 4]
        names = [e.event for e in client.events if e.event != "user count"]
        assert names.index("gap") < names.index("tick"), "the notice comes first"

        unknown = await open_sse(server.url, headers={"Last-Event-ID": "not-an-id"})
        await until(lambda: any(e.event == "gap" for e in unknown.events), 5, "a gap notice")
        assert ticks(unknown) == []
        live = await publish(server, 9)
        await until(lambda: ticks(unknown) == [(9, live)], 5, "live events after the notice")


def sio_ticks(client: SioClient) -> list[Any]:
    return [data for name, data in client.events if name == "tick"]


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_reconnecting_socketio_client_gets_exactly_what_it_missed(
    start_server: StartServer, request: pytest.FixtureRequest, backend: str
) -> None:
    settings = {"BROADCAST_PUBLISH_TOKEN": TOKEN}
    if backend == "redis":
        redis: RedisServer = request.getfixturevalue("redis")
        settings["BROADCAST_BROKER_URL"] = redis.url
    one = start_server(settings)
    two = start_server(settings) if backend == "redis" else one
    first = await connect_sio(one.url, auth={"lastEventId": ""})  # ids, nothing to replay
    seen = await publish(one, 0)
    await until(lambda: sio_ticks(first) == [0], 5, "the first event")
    assert first.ids == [seen], "the id comes as a last argument"
    await first.disconnect()

    missed = [await publish(one, i) for i in (1, 2, 3)]
    again = await connect_sio(two.url, auth={"lastEventId": first.ids[-1]})
    await until(lambda: len(sio_ticks(again)) == 3, 5, "the three missed events")
    live = await publish(two, 4)
    await until(lambda: len(sio_ticks(again)) == 4, 5, "the live event")
    assert sio_ticks(again) == [1, 2, 3, 4]
    assert again.ids == [*missed, live]
    assert not [name for name, _ in again.events if name == "gap"]
    assert again.counts, "the count is state: the current one, not a replay"


async def test_a_socketio_client_resuming_under_live_traffic_misses_nothing(
    start_server: StartServer,
) -> None:
    server = start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN})
    first = await connect_sio(server.url, auth={"lastEventId": ""})
    await publish(server, 0)
    await until(lambda: sio_ticks(first) == [0], 5, "the first event")
    await first.disconnect()
    async with httpx.AsyncClient() as http:

        async def publish_many(start: int) -> None:
            for i in range(start, start + 100):
                response = await http.post(
                    f"{server.url}/publish",
                    json={"event": "tick", "data": i},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                assert response.status_code == 202

        # Events published while the client reconnects: each must arrive once, in order,
        # whether it comes from the history or live.
        publishing = asyncio.create_task(publish_many(1))
        again = await connect_sio(server.url, auth={"lastEventId": first.ids[-1]})
        await publishing
    await until(lambda: len(sio_ticks(again)) >= 100, 10, "every event")
    assert sio_ticks(again) == list(range(1, 101))
    assert again.ids == sorted(again.ids, key=int)
    assert len(set(again.ids)) == 100


async def test_a_socketio_client_with_a_too_old_id_gets_a_gap_notice(
    start_server: StartServer,
) -> None:
    server = start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN, "BROADCAST_HISTORY_SIZE": "2"})
    ids = [await publish(server, i) for i in range(5)]
    client = await connect_sio(server.url, auth={"lastEventId": ids[0]})
    await until(lambda: len(sio_ticks(client)) == 2, 5, "what is still held")
    names = [name for name, _ in client.events if name != "user count"]
    assert names == ["gap", "tick", "tick"], "the notice comes first"
    assert client.events[[n for n, _ in client.events].index("gap")][1] == {
        "lastEventId": ids[0],
        "oldestEventId": ids[3],
    }
    assert sio_ticks(client) == [3, 4]


async def test_a_classic_socketio_client_gets_no_ids(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN})
    classic = await connect_sio(server.url)
    await publish(server, 7)
    await until(lambda: sio_ticks(classic) == [7], 5, "the event")
    assert classic.ids == [], "socket.on(name, data) exactly as before"


async def test_a_bad_last_event_id_is_refused_clearly(start_server: StartServer) -> None:
    server = start_server()
    with pytest.raises(ConnectRefused, match="lastEventId must be a string"):
        await connect_sio(server.url, auth={"lastEventId": {"no": 1}})
    assert server.user_count() == 0
