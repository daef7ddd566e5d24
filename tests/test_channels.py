"""Channels against a real server with real clients of both transports: routing (nobody gets
another channel's events), subscribe and unsubscribe with their acknowledgements, ``channel
count`` exact after joins, leaves and churn, presence per channel, names and limits refused."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import StartServer
from tests.support import Server, SioClient, SseClient, connect_sio, sse_session, until

TOKEN = "channels-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def server(start_server: StartServer) -> Server:
    return start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN})


async def publish(url: str, event: str, data: Any, channel: str | None = None) -> str:
    body: dict[str, Any] = {"event": event, "data": data}
    if channel is not None:
        body["channel"] = channel
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{url}/publish", json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


def sse_path(*channels: str) -> str:
    return "/events?" + str(httpx.QueryParams([("channel", c) for c in channels]))


def sio_data(client: SioClient, name: str) -> list[Any]:
    return [data for event, data in client.events if event == name]


def sse_data(client: SseClient, name: str) -> list[Any]:
    return [json.loads(e.data) for e in client.events if e.event == name]


def last_channel_count(events: list[Any], channel: str) -> int | None:
    counts = [d["count"] for d in events if isinstance(d, dict) and d.get("channel") == channel]
    return counts[-1] if counts else None


async def test_events_reach_only_their_channel_over_both_transports(server: Server) -> None:
    async with sse_session() as open_sse:
        sse_a = await open_sse(server.url, sse_path("post:42"))
        sse_b = await open_sse(server.url, sse_path("news"))
        sse_none = await open_sse(server.url)
        sio_a = await connect_sio(server.url, ["websocket"], auth={"channels": ["post:42"]})
        sio_b = await connect_sio(server.url, ["polling"], auth={"channels": ["news"]})
        sio_none = await connect_sio(server.url, ["websocket"])
        await until(lambda: server.stats()["channels"] == {"post:42": 2, "news": 2}, 10, "subs")

        await publish(server.url, "comment", {"n": 1}, channel="post:42")
        await publish(server.url, "headline", {"n": 2}, channel="news")
        await publish(server.url, "everyone", {"n": 3})

        every = [sse_a, sse_b, sse_none]
        await until(lambda: all(sse_data(c, "everyone") for c in every), 10, "SSE: everyone")
        every_sio = [sio_a, sio_b, sio_none]
        await until(lambda: all(sio_data(c, "everyone") for c in every_sio), 10, "sio: all")
        # Everyone's event was published last: each client has had its channel's by now.
        assert sse_data(sse_a, "comment") == [{"n": 1}]
        assert not sse_data(sse_a, "headline")
        assert sse_data(sse_b, "headline") == [{"n": 2}]
        assert not sse_data(sse_b, "comment")
        assert not sse_data(sse_none, "comment")
        assert not sse_data(sse_none, "headline")
        assert sio_data(sio_a, "comment") == [{"n": 1}]
        assert not sio_data(sio_a, "headline")
        assert sio_data(sio_b, "headline") == [{"n": 2}]
        assert not sio_data(sio_b, "comment")
        assert not sio_data(sio_none, "comment")
        assert not sio_data(sio_none, "headline")
        # Events arrive as they always did: no channel on the wire, and the classic handler.
        assert [e.event for e in sse_a.events if e.event not in ("user count",)][-2:] == [
            "comment",
            "everyone",
        ]


async def test_subscribe_and_unsubscribe_are_acknowledged(server: Server) -> None:
    client = await connect_sio(server.url, ["websocket"], auth={"channels": ["a"]})
    await until(lambda: last_channel_count(sio_data(client, "channel count"), "a") == 1, 5, "a")

    ack = await client.client.call("subscribe", ["b", "c", "b"], timeout=5)
    assert ack == {"ok": True, "channels": ["a", "b", "c"]}

    def counts() -> list[Any]:
        return sio_data(client, "channel count")

    await until(lambda: last_channel_count(counts(), "c") == 1, 5, "c's count")
    assert last_channel_count(counts(), "b") == 1

    # Already subscribed: a no-op, still acknowledged with every channel.
    assert await client.client.call("subscribe", ["a"], timeout=5) == {
        "ok": True,
        "channels": ["a", "b", "c"],
    }
    assert await client.client.call("unsubscribe", ["b", "zzz"], timeout=5) == {
        "ok": True,
        "channels": ["a", "c"],
    }
    await until(lambda: "b" not in server.stats()["channels"], 5, "b to be empty")
    await publish(server.url, "in-b", 1, channel="b")
    await publish(server.url, "in-c", 2, channel="c")
    await until(lambda: sio_data(client, "in-c") == [2], 5, "c's event")
    assert not sio_data(client, "in-b"), "no event of a channel it left"


@pytest.mark.parametrize(
    ("argument", "reason"),
    [
        (["bad name"], "not allowed"),
        ([""], "empty"),
        (["x" * 201], "200"),
        ([42], "string"),
        ({"channels": ["a"]}, "array"),
        (["private:room"], "private"),
    ],
)
async def test_bad_subscriptions_are_refused(server: Server, argument: Any, reason: str) -> None:
    client = await connect_sio(server.url, ["websocket"])
    ack = await client.client.call("subscribe", argument, timeout=5)
    assert ack["ok"] is False, ack
    assert reason in ack["error"]
    assert await client.client.call("subscribe", ["fine"], timeout=5) == {
        "ok": True,
        "channels": ["fine"],
    }, "the connection carries on"


async def test_a_connect_with_bad_channels_is_refused(server: Server) -> None:
    with pytest.raises(Exception, match="not allowed"):
        await connect_sio(server.url, ["websocket"], auth={"channels": ["no spaces"]})
    async with httpx.AsyncClient(timeout=10) as http:
        for path, status in ((sse_path("no spaces"), 400), (sse_path("private:x"), 403)):
            response = await http.get(server.url + path)
            assert response.status_code == status
            assert "channel" in response.json()["detail"]
    assert server.user_count() == 0, "nobody refused was counted"


async def test_the_channels_per_connection_are_limited(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_MAX_CHANNELS_PER_CONNECTION": "3"})
    client = await connect_sio(server.url, ["websocket"], auth={"channels": ["a", "b"]})
    ack = await client.client.call("subscribe", ["c", "d"], timeout=5)
    assert ack["ok"] is False
    assert "at most 3" in ack["error"]
    assert await client.client.call("subscribe", ["c"], timeout=5) == {
        "ok": True,
        "channels": ["a", "b", "c"],
    }
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(server.url + sse_path("a", "b", "c", "d"))
        assert response.status_code == 400
        assert "at most 3" in response.json()["detail"]


async def test_channel_counts_are_exact_after_joins_leaves_and_churn(server: Server) -> None:
    channels = [f"room-{k}" for k in range(5)]
    async with sse_session() as open_sse:
        sse: dict[str, list[SseClient]] = {c: [] for c in channels}
        sio: dict[str, list[SioClient]] = {c: [] for c in channels}

        async def join(index: int) -> None:
            channel = channels[index % len(channels)]
            if index % 2:
                sse[channel].append(await open_sse(server.url, sse_path(channel)))
            else:
                auth = {"channels": [channel]}
                sio[channel].append(await connect_sio(server.url, ["websocket"], auth=auth))

        await asyncio.gather(*(join(i) for i in range(60)))

        def exact() -> bool:
            for channel in channels:
                size = len(sse[channel]) + len(sio[channel])
                for s in sse[channel]:
                    if last_channel_count(sse_data(s, "channel count"), channel) != size:
                        return False
                for c in sio[channel]:
                    if last_channel_count(sio_data(c, "channel count"), channel) != size:
                        return False
            return True

        await until(exact, 15, "every client on its channel's exact count")
        # Churn: half of room-0 and room-1 leave, room-2 gains some.
        for channel in channels[:2]:
            for client in sio[channel][: len(sio[channel]) // 2]:
                await client.disconnect()
            del sio[channel][: len(sio[channel]) // 2]
        for index in range(2, 60, 5):
            await join(index)
        await until(exact, 15, "the exact counts after churn")
        expected = {c: len(sse[c]) + len(sio[c]) for c in channels}
        assert server.stats()["channels"] == expected


async def test_named_users_joining_and_leaving_a_channel_are_announced(server: Server) -> None:
    watcher = await connect_sio(server.url, ["websocket"], auth={"channels": ["room"]})
    bystander = await connect_sio(server.url, ["websocket"])
    alice = await connect_sio(
        server.url, ["websocket"], auth={"username": "alice", "channels": ["room"]}
    )

    def joins(client: SioClient) -> list[Any]:
        return [d for d in sio_data(client, "user") if isinstance(d, dict) and "channel" in d]

    await until(lambda: bool(joins(watcher)), 5, "alice's join of the room")
    assert joins(watcher)[0] == {
        "username": "alice",
        "channel": "room",
        "count": 2,
        "connected": True,
    }
    assert await alice.client.call("unsubscribe", ["room"], timeout=5) == {
        "ok": True,
        "channels": [],
    }
    await until(lambda: len(joins(watcher)) == 2, 5, "alice's leave")
    assert joins(watcher)[1]["connected"] is False
    assert joins(watcher)[1]["count"] == 1
    assert not joins(bystander), "only the channel's subscribers hear of it"


async def test_chat_in_a_channel_reaches_only_its_subscribers(server: Server) -> None:
    alice = await connect_sio(
        server.url, ["websocket"], auth={"username": "alice", "channels": ["room"]}
    )
    inside = await connect_sio(server.url, ["websocket"], auth={"channels": ["room"]})
    outside = await connect_sio(server.url, ["websocket"])
    ack = await alice.client.call(
        "chat message", {"channel": "room", "message": "hi room"}, timeout=5
    )
    assert ack["ok"] is True
    refused = await alice.client.call(
        "chat message", {"channel": "elsewhere", "message": "x"}, timeout=5
    )
    assert refused["ok"] is False
    assert "subscribe" in refused["error"]
    await alice.client.call("chat message", "hi all", timeout=5)
    await until(lambda: len(sio_data(outside, "chat message")) == 1, 5, "the message to all")
    await until(lambda: len(sio_data(inside, "chat message")) == 2, 5, "both messages")
    assert sio_data(inside, "chat message")[0] == {
        "username": "alice",
        "message": "hi room",
        "channel": "room",
    }
    assert sio_data(outside, "chat message") == [{"username": "alice", "message": "hi all"}]


SECRET = "channels-secret-0123456789abcdef0123456789"


def token(**claims: Any) -> str:
    return jwt.encode({"sub": "alice", "exp": time.time() + 600, **claims}, SECRET, "HS256")


async def test_private_channels_need_a_grant_at_connect_and_at_subscribe(
    start_server: StartServer,
) -> None:
    server = start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN, "BROADCAST_JWT_SECRET": SECRET})
    granted = token(channels=["private:team-7", "private:user-alice-*"])
    with pytest.raises(Exception, match="private"):
        await connect_sio(server.url, ["websocket"], auth={"channels": ["private:team-7"]})
    with pytest.raises(Exception, match="private"):
        await connect_sio(
            server.url, ["websocket"], auth={"token": token(), "channels": ["private:team-7"]}
        )
    alice = await connect_sio(
        server.url, ["websocket"], auth={"token": granted, "channels": ["private:team-7"]}
    )
    ack = await alice.client.call("subscribe", ["private:user-alice-inbox"], timeout=5)
    assert ack == {"ok": True, "channels": ["private:team-7", "private:user-alice-inbox"]}
    refused = await alice.client.call("subscribe", ["private:team-8"], timeout=5)
    assert refused["ok"] is False
    assert "private" in refused["error"]
    async with httpx.AsyncClient(timeout=10) as http:
        path = sse_path("private:team-7")
        assert (await http.get(server.url + path)).status_code == 403
        assert (await http.get(f"{server.url}{path}&token={token()}")).status_code == 403
    async with sse_session() as open_sse:
        sse = await open_sse(server.url, f"{sse_path('private:team-7')}&token={granted}")
        await until(lambda: bool(sse_data(sse, "channel count")), 5, "the granted stream")
        await publish(server.url, "secret", {"x": 1}, channel="private:team-7")
        await until(lambda: sse_data(sse, "secret") == [{"x": 1}], 5, "the private event")
        await until(lambda: sio_data(alice, "secret") == [{"x": 1}], 5, "over Socket.IO too")


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_resuming_client_gets_exactly_the_missed_events_of_its_channels(
    start_server: StartServer, request: pytest.FixtureRequest, backend: str
) -> None:
    settings = {"BROADCAST_PUBLISH_TOKEN": TOKEN}
    if backend == "redis":
        settings["BROADCAST_BROKER_URL"] = request.getfixturevalue("redis").url
    server = start_server(settings)
    async with sse_session() as open_sse:
        first = await open_sse(server.url, sse_path("a"))
        await until(lambda: bool(sse_data(first, "channel count")), 5, "the stream")
        seen = await publish(server.url, "in-a", 1, channel="a")
        await until(lambda: bool(sse_data(first, "in-a")), 5, "the first event")
    # Gone: what it misses, interleaved over its channel, another and everyone.
    await publish(server.url, "in-a", 2, channel="a")
    await publish(server.url, "in-b", 3, channel="b")
    await publish(server.url, "to-all", 4)
    await publish(server.url, "in-a", 5, channel="a")
    expected = [("in-a", 2), ("to-all", 4), ("in-a", 5)]

    def replayed(events: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        return [(name, data) for name, data in events if name in ("in-a", "in-b", "to-all", "gap")]

    async with sse_session() as open_sse:
        back = await open_sse(server.url, sse_path("a"), headers={"Last-Event-ID": seen})
        await until(lambda: len(sse_data(back, "in-a")) == 2, 5, "the missed events")
        got = replayed([(e.event, json.loads(e.data)) for e in back.events])
        assert got == expected, "exactly its channels' and everyone's, in order, no gap"
    sio = await connect_sio(
        server.url, ["websocket"], auth={"channels": ["a"], "lastEventId": seen}
    )
    await until(lambda: len(sio_data(sio, "in-a")) == 2, 5, "the missed events over Socket.IO")
    assert replayed(sio.events) == expected
