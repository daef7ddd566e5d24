"""Hostile input on the wire: oversized frames and connection floods are refused, and every other
client carries on."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import StartServer
from tests.support import ConnectRefused, close_sse, connect_sio, sse_session, until


async def test_an_oversized_frame_disconnects_its_sender_only(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_MAX_FRAME_BYTES": "10000"})
    bystander = await connect_sio(server.url, ["websocket"], auth={"username": "bob"})
    offender = await connect_sio(server.url, ["websocket"], auth={"username": "eve"})
    await until(lambda: bystander.last_count == 2, 5, "both counted")
    await offender.client.emit("chat message", "x" * 20_000)
    await until(lambda: not offender.client.connected, 5, "the offender to be disconnected")
    await until(lambda: bystander.last_count == 1, 5, "the bystander to see it leave")
    # The bystander carries on: its own messages still go out and come back.
    assert (await bystander.client.call("chat message", "still here", timeout=5))["ok"] is True
    await until(
        lambda: ("chat message", {"username": "bob", "message": "still here"}) in bystander.events,
        5,
        "the bystander's message",
    )


@pytest.mark.timeout(60)
async def test_a_connection_flood_from_one_address_is_refused(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_MAX_CONNECTIONS_PER_ADDRESS": "3"})
    async with sse_session() as open_sse:
        sse = [await open_sse(server.url) for _ in range(2)]
        first = await connect_sio(server.url, ["websocket"])
        await until(lambda: first.last_count == 3, 5, "three connections")

        with pytest.raises(ConnectRefused, match=re.escape("too many connections from 127.0.0.1")):
            await connect_sio(server.url, ["websocket"])
        async with httpx.AsyncClient() as http:
            refused = await http.get(f"{server.url}/events")
        assert refused.status_code == 429
        assert "too many connections from 127.0.0.1" in refused.json()["detail"]
        assert server.user_count() == 3

        # Another address is not affected.
        other = await open_sse(server.url, local_address="127.0.0.2")
        others = [
            await connect_sio(server.url, ["websocket"], local_address="127.0.0.3")
            for _ in range(3)
        ]
        await until(lambda: other.last_count == 7, 5, "the other addresses counted")
        assert all(o.client.connected for o in others)
        await others[0].disconnect()

        # A slot is given back when a connection closes.
        await close_sse(sse[0])
        await until(lambda: server.user_count() == 5, 5, "the closed stream to leave")
        again = await open_sse(server.url)
        await until(lambda: again.last_count == 6, 5, "a new stream within the limit")
