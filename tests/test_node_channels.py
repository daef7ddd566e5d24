"""Channels with the official Node Socket.IO client (npm ``socket.io-client``): ``auth.channels``
at connect, ``subscribe`` and ``unsubscribe`` with acknowledgements, and what reaches it of
``POST /publish {event, data, channel}``. An event's absence is shown by a later event to
everyone that arrived (a client receives the events in the order they were published)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import StartServer
from tests.node_sio import NodeSio, node_sio
from tests.support import Server, until

TOKEN = "node-channels-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def publish_server(start_server: StartServer) -> Server:
    return start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN})


async def publish(server: Server, data: int, channel: str | None = None) -> None:
    body: dict[str, Any] = {"event": "news", "data": data}
    if channel is not None:
        body["channel"] = channel
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{server.url}/publish", json=body, headers=AUTH, timeout=5)
    assert response.status_code == 202, response.text


async def news_after(client: NodeSio, last: int) -> list[Any]:
    """The ``news`` the client got, once the one published last (``last``) has arrived."""
    await client.event("news", [last])
    return firsts(client.events("news"))


def firsts(events: list[list[Any]]) -> list[Any]:
    return [args[0] if args else None for args in events]


def channel_counts(client: NodeSio) -> list[Any]:
    return firsts(client.events("channel count"))


def node_client(url: str, auth: dict[str, Any]) -> Any:
    """Connected at once with ``auth``, over websocket, never reconnecting: a test sees every
    refusal and disconnection as it happens."""
    return node_sio(url, auth=auth, transports=["websocket"], reconnection=False)


async def test_subscribe_and_unsubscribe_with_acks(publish_server: Server) -> None:
    server = publish_server
    async with node_client(server.url, {"channels": ["room-1"]}) as client:
        assert (await client.connection())["t"] == "connect"
        await client.event("channel count", [{"channel": "room-1", "count": 1}])

        ack = await client.call("subscribe", ["room-2", "room-3"])
        assert ack == {"ok": True, "channels": ["room-1", "room-2", "room-3"]}
        for room in ("room-2", "room-3"):
            await client.event("channel count", [{"channel": room, "count": 1}])

        # Only its channels' events reach it, and the events to everyone.
        await publish(server, 1, "room-2")
        await publish(server, 2, "elsewhere")
        await publish(server, 3)
        assert await news_after(client, 3) == [1, 3]

        ack = await client.call("unsubscribe", ["room-2"])
        assert ack == {"ok": True, "channels": ["room-1", "room-3"]}
        await publish(server, 4, "room-2")
        await publish(server, 5, "room-1")
        await publish(server, 6)
        assert await news_after(client, 6) == [1, 3, 5, 6]

        # Refusals: acknowledged with the reason, and nothing changes.
        for bad in (["no spaces"], ["x" * 201], "", 42, [["nested"]]):
            refused = await client.call("subscribe", bad)
            assert refused["ok"] is False, (bad, refused)
            assert isinstance(refused["error"], str), refused
            assert refused["error"], refused
        refused = await client.call("unsubscribe", ["no spaces"])
        assert refused["ok"] is False, refused
        assert "channel" in refused["error"], refused
        assert await client.call("subscribe", []) == {"ok": True, "channels": ["room-1", "room-3"]}
        await publish(server, 7, "room-3")
        assert await news_after(client, 7) == [1, 3, 5, 6, 7]
        # Unsubscribing from a channel it is not in changes nothing, and is no error.
        assert await client.call("unsubscribe", ["room-9"]) == {
            "ok": True,
            "channels": ["room-1", "room-3"],
        }


async def test_counts_follow_other_subscribers(publish_server: Server) -> None:
    server = publish_server
    async with (
        node_client(server.url, {"channels": ["room-1"]}) as first,
        node_client(server.url, {}) as second,
    ):
        assert (await first.connection())["t"] == "connect"
        assert (await second.connection())["t"] == "connect"
        assert await second.call("subscribe", ["room-1"]) == {"ok": True, "channels": ["room-1"]}
        await first.event("channel count", [{"channel": "room-1", "count": 2}])
        assert await second.call("unsubscribe", ["room-1"]) == {"ok": True, "channels": []}
        # Its count had reached 2: the last one it has is 1 again.
        await until(
            lambda: channel_counts(first)[-1] == {"channel": "room-1", "count": 1},
            5,
            "room-1's count back to 1",
        )
        # The one that left hears no more of the channel.
        await publish(server, 1, "room-1")
        await publish(server, 2)
        assert await news_after(first, 2) == [1, 2]
        assert await news_after(second, 2) == [2]


@pytest.mark.parametrize(
    "channels",
    [
        pytest.param(["no spaces"], id="invalid-name"),
        pytest.param(["x" * 201], id="too-long"),
        pytest.param(42, id="not-an-array"),
    ],
)
async def test_invalid_channels_at_connect_are_refused_with_a_message(
    publish_server: Server, channels: Any
) -> None:
    async with node_client(publish_server.url, {"channels": channels}) as client:
        refused = await client.connection()
        assert refused["t"] == "connect_error", refused
        assert "channel" in refused["message"], refused
    assert publish_server.user_count() == 0
