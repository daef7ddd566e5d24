"""Replay after reconnect over SSE: ``Last-Event-ID`` brings back exactly what was missed."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import StartServer
from tests.support import RedisServer, Server, SseClient, close_sse, sse_session, until

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
