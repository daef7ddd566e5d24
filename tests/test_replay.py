"""Replay after reconnect: SSE's ``Last-Event-ID`` and Socket.IO's ``lastEventId`` auth bring back
exactly what was missed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from broadcast.events import parse_event_id
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


def offset(event_id: str) -> int:
    position = parse_event_id(event_id)
    assert position is not None, event_id
    return position.offset


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
    assert again.ids == sorted(again.ids, key=offset)
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


# ---------------------------------------------------------------------------- epochs (issue 11.3)


def sse_gaps(client: SseClient) -> list[Any]:
    return [json.loads(e.data) for e in client.events if e.event == "gap"]


def sio_gaps(client: SioClient) -> list[Any]:
    return [data for name, data in client.events if name == "gap"]


async def assert_resuming_gets_a_gap_and_nothing_else(
    server: Server, old_id: str, oldest_id: str
) -> None:
    """Over both transports, a client resuming from ``old_id`` (not a position of the stream
    now) gets ``gap`` first and none of the events held, then the live ones."""
    async with sse_session() as open_sse:
        by_header = await open_sse(server.url, headers={"Last-Event-ID": old_id})
        by_query = await open_sse(server.url, lastEventId=old_id)
        sio = await connect_sio(server.url, auth={"lastEventId": old_id})
        clients = (by_header, by_query)
        await until(lambda: all(sse_gaps(c) for c in clients) and bool(sio_gaps(sio)), 5, "gaps")
        live = await publish(server, "live")
        await until(lambda: all(ticks(c) for c in clients) and bool(sio_ticks(sio)), 5, "live")
        for client in clients:
            assert sse_gaps(client) == [{"lastEventId": old_id, "oldestEventId": oldest_id}]
            assert ticks(client) == [("live", live)], "none of the new epoch's held events"
        assert sio_gaps(sio) == [{"lastEventId": old_id, "oldestEventId": oldest_id}]
        assert sio_ticks(sio) == ["live"]
        assert sio.ids == [live]


async def test_a_restarted_server_never_replays_its_new_events_as_missed(
    start_server: StartServer,
) -> None:
    settings = {"BROADCAST_PUBLISH_TOKEN": TOKEN}
    before = start_server(settings)
    old = [await publish(before, i) for i in range(3)]
    before.stop()
    after = start_server(settings)
    new = [await publish(after, i) for i in range(3, 10)]  # past the old id's offset
    assert offset(new[-1]) > offset(old[-1])
    await assert_resuming_gets_a_gap_and_nothing_else(after, old[-1], new[0])


async def test_redis_losing_its_data_never_replays_the_new_events_as_missed(
    start_server: StartServer, own_redis: RedisServer
) -> None:
    server = start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN, "BROADCAST_BROKER_URL": own_redis.url})
    old = [await publish(server, i) for i in range(3)]
    own_redis.flush()  # as a failover to an empty replica would
    new = [await publish(server, i) for i in range(3, 10)]
    assert offset(new[-1]) > offset(old[-1])
    await assert_resuming_gets_a_gap_and_nothing_else(server, old[-1], new[0])


MALFORMED_IDS = [
    "9" * 4301,  # int() refuses it: the stream used to crash after its 200
    "1" * 10_000,
    "-1",
    "+1",
    "1_0",
    "\u0661",  # Arabic-Indic digit one: str.isdigit() and int() took it for 1
    "\u0662\u0663",
    " 2",
    "2",  # a bare counter, as before epochs
    "",
]


async def test_a_malformed_sse_id_gets_a_gap_and_the_stream_goes_on(
    start_server: StartServer,
) -> None:
    server = start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN})
    ids = [await publish(server, i) for i in range(5)]
    async with sse_session() as open_sse:
        clients = [await open_sse(server.url, lastEventId=text) for text in MALFORMED_IDS]
        clients += [
            await open_sse(server.url, headers={"Last-Event-ID": text})
            for text in ("9" * 4301, "k3x9q2ab:" + "9" * 5000, ids[0] + "0" * 30)
        ]
        await until(lambda: all(sse_gaps(c) for c in clients), 5, "every gap notice")
        live = await publish(server, "live")
        await until(lambda: all(ticks(c) for c in clients), 5, "the live event on every stream")
        for client in clients:
            assert sse_gaps(client) == [{"lastEventId": None, "oldestEventId": ids[0]}]
            assert ticks(client) == [("live", live)], "no replay from a malformed id"
            assert not client.closed
    assert "Traceback" not in server.log()
    assert "ValueError" not in server.log()


async def test_a_malformed_socketio_id_gets_a_gap(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN})
    ids = [await publish(server, i) for i in range(5)]
    clients = [
        await connect_sio(server.url, auth={"lastEventId": text})
        for text in ("-1", "1_0", "\u0661", "\u0662\u0663", " 2", "2", 2, ids[0] + "0" * 30)
    ]
    await until(lambda: all(sio_gaps(c) for c in clients), 5, "every gap notice")
    await publish(server, "live")
    await until(lambda: all(sio_ticks(c) for c in clients), 5, "the live event everywhere")
    for client in clients:
        assert sio_gaps(client) == [{"lastEventId": None, "oldestEventId": ids[0]}]
        assert sio_ticks(client) == ["live"]
    # Over 64 characters is refused at connect, as before.
    with pytest.raises(ConnectRefused, match="lastEventId is not an event id"):
        await connect_sio(server.url, auth={"lastEventId": "9" * 4301})
    assert "Traceback" not in server.log()


async def test_a_replay_sends_at_most_half_the_client_buffer(start_server: StartServer) -> None:
    # Sent at once, more would put a client over its buffer (disconnected as too slow, to come
    # back for the same again): the newest events that fit, after a gap.
    buffer = 64 * 1024
    server = start_server(
        {"BROADCAST_PUBLISH_TOKEN": TOKEN, "BROADCAST_CLIENT_BUFFER_BYTES": str(buffer)}
    )
    ids = [await publish(server, {"n": i, "pad": "x" * 8000}) for i in range(20)]
    async with sse_session() as open_sse:
        sse = await open_sse(server.url, headers={"Last-Event-ID": ids[0]})
        sio = await connect_sio(server.url, auth={"lastEventId": ids[0]})
        await until(lambda: bool(sse_gaps(sse) and sio_gaps(sio)), 5, "both gap notices")
        await publish(server, {"n": 20, "pad": ""})
        await until(
            lambda: (
                any(data["n"] == 20 for data, _ in ticks(sse))
                and any(data["n"] == 20 for data in sio_ticks(sio))
            ),
            5,
            "the live event",
        )
    replayed = [data["n"] for data, _ in ticks(sse)][:-1]
    assert [data["n"] for data in sio_ticks(sio)][:-1] == replayed
    assert replayed == list(range(20 - len(replayed), 20)), "the newest, in order"
    assert buffer // 4 < len(replayed) * 8000 <= buffer // 2, replayed
    first = ids[20 - len(replayed)]
    assert sse_gaps(sse) == [{"lastEventId": ids[0], "oldestEventId": first}]
    assert sio_gaps(sio) == [{"lastEventId": ids[0], "oldestEventId": first}]
    assert "too slow" not in server.log()
