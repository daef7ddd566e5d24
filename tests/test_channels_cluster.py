"""Channels across two real nodes on a real Redis: every node sees every channel's exact count
and presence, events reach a channel's subscribers wherever they are, and a node receives only
the events of the channels its clients subscribe to. Also ``GET /channels`` and
``GET /channels/{name}`` (on one node, then across nodes)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from tests.conftest import StartServer
from tests.support import RedisServer, Server, SioClient, connect_sio, sse_session, until
from tests.test_channels import last_channel_count, sio_data, sse_data, sse_path

TOKEN = "channels-cluster-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.timeout(90)


def node_settings(redis: RedisServer) -> dict[str, str]:
    return {
        "BROADCAST_BROKER_URL": redis.url,
        "BROADCAST_PUBLISH_TOKEN": TOKEN,
        "BROADCAST_PRESENCE_TTL_SECONDS": "3",
        "BROADCAST_PRESENCE_HEARTBEAT_SECONDS": "0.5",
    }


async def publish(server: Server, event: str, data: Any, channel: str | None = None) -> None:
    body = {"event": event, "data": data, "channel": channel}
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{server.url}/publish", json=body, headers=AUTH)
    assert response.status_code == 202, response.text


def get(server: Server, path: str, **params: Any) -> Any:
    response = httpx.get(f"{server.url}{path}", params=params, headers=AUTH, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def received(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    match = re.search(r"^broadcast_events_received_total (\S+)$", text, re.M)
    assert match is not None, "broadcast_events_received_total is exported"
    return float(match[1])


async def test_counts_presence_and_events_cross_nodes(
    start_server: StartServer, redis: RedisServer
) -> None:
    one = start_server(node_settings(redis))
    two = start_server(node_settings(redis))
    alice = await connect_sio(
        one.url, ["websocket"], auth={"username": "alice", "channels": ["room"]}
    )
    quiet = await connect_sio(one.url, ["websocket"], auth={"channels": ["room"]})
    bob = await connect_sio(two.url, ["polling"], auth={"username": "bob", "channels": ["room"]})
    elsewhere = await connect_sio(two.url, ["websocket"], auth={"channels": ["other"]})
    async with sse_session() as open_sse:
        sse = await open_sse(one.url, sse_path("room"))
        room: list[SioClient] = [alice, quiet, bob]

        def room_counts() -> list[int | None]:
            counts = [last_channel_count(sio_data(c, "channel count"), "room") for c in room]
            return [*counts, last_channel_count(sse_data(sse, "channel count"), "room")]

        await until(lambda: room_counts() == [4] * 4, 10, "every room subscriber on 4")
        assert last_channel_count(sio_data(elsewhere, "channel count"), "other") == 1

        listing = {"channels": [{"name": "other", "count": 1}, {"name": "room", "count": 4}]}
        await until(lambda: get(one, "/channels") == {**listing, "next": None}, 10, "listing")
        assert get(two, "/channels", prefix="ro") == {
            "channels": [{"name": "room", "count": 4}],
            "next": None,
        }
        assert get(one, "/channels", limit=1) == {
            "channels": [{"name": "other", "count": 1}],
            "next": "other",
        }
        assert get(one, "/channels", after="other")["channels"] == [{"name": "room", "count": 4}]
        assert get(two, "/channels/room") == {"name": "room", "count": 4, "users": ["alice", "bob"]}
        assert get(one, "/channels/nobody-here") == {"name": "nobody-here", "count": 0, "users": []}

        # A room event published on either node reaches the room on both; "other" never
        # reaches node one, which has no subscriber of it: it does not even receive it.
        before = received(one)
        for n in range(20):
            await publish(one, "other-news", n, channel="other")
        await publish(two, "room-news", {"n": 1}, channel="room")
        await until(lambda: all(sio_data(c, "room-news") for c in room), 10, "the room event")
        await until(lambda: bool(sse_data(sse, "room-news")), 10, "over SSE on node one")
        await until(lambda: len(sio_data(elsewhere, "other-news")) == 20, 10, "other's events")
        assert received(one) - before == 1, "node one received the room's event only"
        assert not any(sio_data(c, "other-news") for c in room)

        # Bob leaves on node two: node one's subscribers hear it and count 3.
        await bob.disconnect()
        room.remove(bob)
        await until(lambda: room_counts() == [3] * 3, 10, "every room subscriber on 3")

        def leaves() -> list[Any]:
            return [
                d
                for d in sio_data(alice, "user")
                if d.get("channel") == "room" and d["connected"] is False
            ]

        await until(lambda: bool(leaves()), 10, "bob's leave announced on node one")
        assert leaves()[0]["username"] == "bob"
        assert get(one, "/channels/room")["users"] == ["alice"]
        events = [json.loads(e.data) for e in sse.events if e.event == "room-news"]
        assert events == [{"n": 1}]


async def test_the_channel_routes_need_the_publish_token(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN})
    async with httpx.AsyncClient(timeout=5) as http:
        for path in ("/channels", "/channels/room"):
            response = await http.get(server.url + path)
            assert response.status_code == 401
            assert "token" in response.json()["detail"]
        bad = await http.get(server.url + "/channels/no spaces", headers=AUTH)
        assert bad.status_code == 400
        assert "channel" in bad.json()["detail"]
        too_many = await http.get(server.url + "/channels", params={"limit": 5000}, headers=AUTH)
        assert too_many.status_code == 400
