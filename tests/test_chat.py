"""Named users and chat: the ``user`` and ``chat message`` events, and every refused input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import socketio

from tests.conftest import StartServer
from tests.support import ConnectRefused, Server, SioClient, connect_sio, sse_session, until


def chat_events(client: SioClient) -> list[Any]:
    return [data for name, data in client.events if name == "chat message"]


def user_events(client: SioClient) -> list[Any]:
    return [data for name, data in client.events if name == "user"]


async def test_named_joins_and_leaves_are_announced_on_both_transports(server: Server) -> None:
    async with sse_session() as open_sse:
        watcher = await connect_sio(server.url, ["websocket"])
        sse_watcher = await open_sse(server.url)
        await until(lambda: sse_watcher.last_count == 2, 5, "the SSE watcher to be counted")

        alice = await connect_sio(server.url, ["websocket"], auth={"username": "alice"})
        joined = {"username": "alice", "currentUsers": 3, "connected": True}
        await until(lambda: user_events(watcher) == [joined], 5, "alice's join")
        await until(lambda: any(e.event == "user" for e in sse_watcher.events), 5, "SSE join")
        (sse_join,) = [e for e in sse_watcher.events if e.event == "user"]
        assert sse_join.id is not None
        await until(lambda: user_events(alice) == [joined], 5, "alice to see her own join")

        anonymous = await connect_sio(server.url, ["websocket"])
        await until(lambda: watcher.last_count == 4, 5, "the anonymous client to be counted")
        await anonymous.disconnect()

        carol = await open_sse(server.url, username="Carol Ñandú")
        await until(lambda: len(user_events(watcher)) == 2, 5, "carol's join over SSE")
        assert user_events(watcher)[1]["username"] == "Carol Ñandú"

        await alice.disconnect()
        await carol.response.aclose()
        await until(lambda: len(user_events(watcher)) == 4, 5, "alice and carol leaving")
        left = [e for e in user_events(watcher)[2:] if not e["connected"]]
        assert sorted(e["username"] for e in left) == ["Carol Ñandú", "alice"]
        await until(lambda: watcher.last_count == 2, 5, "the count to fall back to 2")
        assert len(user_events(watcher)) == 4, "anonymous clients are never announced"
        await watcher.disconnect()


@pytest.mark.parametrize(
    ("username", "reason"),
    [
        ("<script>", "letters, digits"),
        ("x" * 33, "at most 32"),
        (" padded", "letters, digits"),
        (42, "must be a string"),
    ],
)
async def test_a_bad_username_gets_a_clear_connect_error(
    server: Server, username: object, reason: str
) -> None:
    with pytest.raises(ConnectRefused, match=reason):
        await connect_sio(server.url, ["websocket"], auth={"username": username})
    if isinstance(username, str):
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{server.url}/events", params={"username": username})
        assert response.status_code == 400
        assert reason in response.json()["detail"]
    assert server.user_count() == 0


async def test_a_chat_message_reaches_every_client_of_both_transports(server: Server) -> None:
    async with sse_session() as open_sse:
        alice = await connect_sio(server.url, ["websocket"], auth={"username": "alice"})
        bob = await connect_sio(server.url, ["polling"], auth={"username": "bob"})
        sse = await open_sse(server.url)
        await until(lambda: sse.last_count == 3, 5, "everyone to be counted")

        ack = await alice.client.call("chat message", "hello <b>bob</b>\nsecond line", timeout=5)
        assert ack["ok"] is True
        expected = {"username": "alice", "message": "hello <b>bob</b>\nsecond line"}
        await until(lambda: chat_events(bob) == [expected], 5, "bob to receive the message")
        await until(lambda: chat_events(alice) == [expected], 5, "alice to receive her message")
        await until(lambda: any(e.event == "chat message" for e in sse.events), 5, "SSE")
        (frame,) = [e for e in sse.events if e.event == "chat message"]
        assert frame.id == ack["id"]
        assert frame.data == '{"username":"alice","message":"hello <b>bob</b>\\nsecond line"}'
        await alice.disconnect()
        await bob.disconnect()


REFUSALS = [
    pytest.param(("",), "must not be empty", id="empty"),
    pytest.param(("   \n ",), "must not be empty", id="blank"),
    pytest.param(("x" * 21,), "at most 20 characters", id="oversized"),
    pytest.param((123,), "must be a string", id="number"),
    pytest.param(({"text": "hi"},), "must be a string", id="object"),
    pytest.param(("a", "b"), "one chat message", id="two-arguments"),
]


@pytest.mark.parametrize(("args", "reason"), REFUSALS)
@pytest.mark.parametrize("reply", ["ack", "error-event"])
async def test_bad_chat_messages_are_refused_to_the_sender_only(
    start_server: StartServer, args: tuple[Any, ...], reason: str, reply: str
) -> None:
    server = start_server({"BROADCAST_CHAT_MAX_LENGTH": "20"})
    alice = await connect_sio(server.url, ["websocket"], auth={"username": "alice"})
    bob = await connect_sio(server.url, ["websocket"], auth={"username": "bob"})
    data: Any = args[0] if len(args) == 1 else args
    if reply == "ack":
        ack = await alice.client.call("chat message", data, timeout=5)
        assert ack["ok"] is False
        assert reason in ack["error"]
    else:
        await alice.client.emit("chat message", data)
        await until(lambda: any(n == "error" for n, _ in alice.events), 5, "the error event")
        (error,) = [d for n, d in alice.events if n == "error"]
        assert error["event"] == "chat message"
        assert reason in error["error"]
    assert not any(n == "error" for n, _ in bob.events), "the refusal goes to the sender only"

    # Nothing was broadcast: the next good message is the first anyone receives.
    assert (await alice.client.call("chat message", "ok", timeout=5))["ok"] is True
    await until(lambda: len(chat_events(bob)) == 1, 5, "the good message")
    assert chat_events(bob) == [{"username": "alice", "message": "ok"}]
    await alice.disconnect()
    await bob.disconnect()


async def test_anonymous_clients_cannot_chat(server: Server) -> None:
    anonymous = await connect_sio(server.url, ["websocket"])
    ack = await anonymous.client.call("chat message", "hi", timeout=5)
    assert ack == {"ok": False, "error": "choose a username to chat"}
    await anonymous.disconnect()


async def test_a_chat_flood_is_rate_limited(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_CHAT_BURST": "3", "BROADCAST_CHAT_RATE_PER_SECOND": "0.01"})
    alice = await connect_sio(server.url, ["websocket"], auth={"username": "alice"})
    bob = await connect_sio(server.url, ["websocket"], auth={"username": "bob"})
    acks = [await alice.client.call("chat message", f"m{i}", timeout=5) for i in range(5)]
    assert [a["ok"] for a in acks] == [True, True, True, False, False]
    assert "too many requests" in acks[3]["error"]
    await until(lambda: len(chat_events(bob)) == 3, 5, "the three accepted messages")
    # Another connection has its own allowance.
    assert (await bob.client.call("chat message", "mine", timeout=5))["ok"] is True
    await alice.disconnect()
    await bob.disconnect()


async def test_unknown_client_events_are_refused(server: Server) -> None:
    client = await connect_sio(server.url, ["websocket"])
    ack = await client.client.call("launch", {"x": 1}, timeout=5)
    assert ack == {"ok": False, "error": "unknown event 'launch'"}
    await client.disconnect()


async def test_other_origins_only_as_configured(start_server: StartServer) -> None:
    default = start_server()
    evil = {"Origin": "http://evil.example"}
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect_sio(default.url, ["websocket"], headers=evil)
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{default.url}/events", headers=evil)
        assert response.status_code == 403
        assert "BROADCAST_CORS_ORIGINS" in response.json()["detail"]

        allowing = start_server({"BROADCAST_CORS_ORIGINS": "http://friend.example"})
        friend = {"Origin": "http://friend.example"}
        client = await connect_sio(allowing.url, ["websocket"], headers=friend)
        await client.disconnect()
        async with http.stream("GET", f"{allowing.url}/events", headers=friend) as stream:
            assert stream.status_code == 200
            assert stream.headers["access-control-allow-origin"] == "http://friend.example"
        assert (await http.get(f"{allowing.url}/events", headers=evil)).status_code == 403


@pytest.mark.parametrize("name", ["connect", "disconnect"])
async def test_clients_cannot_fire_the_servers_own_handlers(server: Server, name: str) -> None:
    alice = await connect_sio(server.url, ["websocket"], auth={"username": "alice"})
    watcher = await connect_sio(server.url, ["websocket"])
    await until(lambda: watcher.last_count == 2, 5, "both counted")
    for _ in range(3):
        ack = await alice.client.call(name, {"username": "mallory"}, timeout=5)
        assert ack == {"ok": False, "error": f"event {name!r} is reserved for the server"}
    assert server.user_count() == 2
    await alice.disconnect()
    await until(lambda: watcher.last_count == 1, 5, "alice to leave")
    assert server.user_count() == 1
    assert not [d for n, d in watcher.events if n == "user" and d["username"] == "mallory"]
    await watcher.disconnect()
