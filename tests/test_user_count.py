"""The live ``user count`` over both transports, against a real server with real clients."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import StartServer
from tests.support import Server, SioClient, SseClient, connect_sio, sse_session, until

TRANSPORTS = {
    "websocket": ["websocket"],
    "polling": ["polling"],
    "upgrade": ["polling", "websocket"],
}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_classic_sequence_over_socketio(server: Server, transport: str) -> None:
    a = await connect_sio(server.url, TRANSPORTS[transport])
    await until(lambda: a.last_count == 1, 5, "A to see 1")
    assert a.counts == [1], "the first client sees exactly 1, once"

    b = await connect_sio(server.url, TRANSPORTS[transport])
    await until(lambda: a.last_count == 2 and b.last_count == 2, 5, "A and B to see 2")

    await b.disconnect()
    await until(lambda: a.last_count == 1, 5, "A to see 1 after B left")
    assert server.user_count() == 1
    if transport == "upgrade":
        await until(lambda: a.client.transport() == "websocket", 5, "the upgrade to websocket")
    await a.disconnect()
    await until(lambda: server.user_count() == 0, 5, "the count to reach 0")


async def test_sse_and_socketio_count_each_other(server: Server) -> None:
    async with sse_session() as open_sse:
        sse = await open_sse(server.url)
        await until(lambda: sse.last_count == 1, 5, "the SSE client to see 1")

        sio = await connect_sio(server.url, ["websocket"])
        await until(lambda: sse.last_count == 2 and sio.last_count == 2, 5, "both to see 2")
        assert server.stats()["connections"] == {"socketio": 1, "sse": 1}

        sse2 = await open_sse(server.url)
        await until(
            lambda: sse.last_count == sio.last_count == sse2.last_count == 3, 5, "all to see 3"
        )

        await sio.disconnect()
        await until(lambda: sse.last_count == sse2.last_count == 2, 5, "SSE clients to see 2")


async def test_every_change_is_emitted_when_conflation_is_off(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_COUNT_CONFLATION_MS": "0"})
    watcher = await connect_sio(server.url, ["websocket"])
    others = []
    for expected in range(2, 6):
        others.append(await connect_sio(server.url, ["websocket"]))
        await until(
            lambda: watcher.last_count == len(others) + 1, 5, f"the watcher to see {expected}"
        )
    for other in others:
        await other.disconnect()
    await until(lambda: watcher.last_count == 1, 5, "the watcher to see 1")
    assert watcher.counts == [1, 2, 3, 4, 5, 4, 3, 2, 1]
    await watcher.disconnect()


@pytest.mark.timeout(120)
async def test_burst_is_conflated_and_exact(server: Server) -> None:
    socketio_clients, sse_clients = 150, 150
    total = socketio_clients + sse_clients
    async with sse_session() as open_sse:
        sio: list[SioClient] = list(
            await asyncio.gather(
                *(connect_sio(server.url, ["websocket"]) for _ in range(socketio_clients))
            )
        )
        sse: list[SseClient] = list(
            await asyncio.gather(*(open_sse(server.url) for _ in range(sse_clients)))
        )
        everyone: list[SioClient | SseClient] = [*sio, *sse]

        await until(lambda: all(c.last_count == total for c in everyone), 30, f"all to see {total}")
        assert server.user_count() == total
        most_frames = max(len(c.counts) for c in everyone)
        # Without conflation the first client alone would receive `total` frames.
        assert most_frames < total // 5, f"a client received {most_frames} counts for {total} joins"

        leaving = sio[: socketio_clients // 2] + sse[: sse_clients // 2]
        staying = sio[socketio_clients // 2 :] + sse[sse_clients // 2 :]
        await asyncio.gather(
            *(c.disconnect() for c in leaving if isinstance(c, SioClient)),
            *(c.response.aclose() for c in leaving if isinstance(c, SseClient)),
        )
        remaining = total - len(leaving)
        await until(
            lambda: all(c.last_count == remaining for c in staying),
            30,
            f"the rest to see {remaining}",
        )
        assert server.user_count() == remaining
        await asyncio.gather(*(c.disconnect() for c in staying if isinstance(c, SioClient)))
    await until(lambda: server.user_count() == 0, 10, "everyone to be gone")


async def test_websocket_only_refuses_long_polling(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_SOCKETIO_TRANSPORTS": "websocket"})
    # The Engine.IO handshake over polling, as any client starts it (raw HTTP: python-socketio's
    # client sometimes reports this refusal as a closed connection instead).
    async with httpx.AsyncClient() as http:
        refused = await http.get(
            f"{server.url}/socket.io/", params={"EIO": "4", "transport": "polling"}
        )
    assert refused.status_code == 400
    assert "Invalid transport" in refused.text
    client = await connect_sio(server.url, ["websocket"])
    await until(lambda: client.last_count == 1, 5, "the websocket client to be counted")
    assert server.user_count() == 1
    await client.disconnect()
