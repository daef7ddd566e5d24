"""Socket.IO connection state recovery and who comes back: the CONNECT that claims a kept session
carries the client's credentials again, checked as at any connect. The same user (the same
``username``, or a token of the same subject that still grants each private channel it held)
gets its session back, with the grants of the token it came back with; anyone else gets a fresh
session, counted as ``broadcast_socketio_recoveries_total{result="identity"}``."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import StartServer
from tests.node_sio import NodeSio, node_sio
from tests.recovery_support import (
    CHANNEL,
    assert_recovered,
    assert_refused,
    connected_with_one_event,
    cut,
    publish,
    publish_meanwhile,
    recovery_settings,
    subscribed,
    subscribers,
)
from tests.tcp_proxy import tcp_proxy

pytestmark = pytest.mark.timeout(60)
SECRET = "recovery-identity-secret-0123456789abcdef"
PRIVATE = "private:a"


def token(subject: str = "alice", **claims: Any) -> str:
    return jwt.encode({"sub": subject, "exp": time.time() + 600, **claims}, SECRET, "HS256")


def refused_for_identity(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    found = re.search(
        r'^broadcast_socketio_recoveries_total\{result="identity"\} (\S+)$', text, re.M
    )
    assert found is not None, "the identity outcome is exported"
    return float(found.group(1))


async def come_back_as(client: NodeSio, auth: dict[str, Any]) -> None:
    await client.command(f"set-auth {json.dumps(auth)}")
    await client.command("connect")


@pytest.mark.parametrize(("again", "recovered"), [("ada", True), ("bob", False)])
async def test_a_session_goes_back_to_the_same_name_only(
    start_server: StartServer, again: str, recovered: bool
) -> None:
    server = start_server(recovery_settings())
    options = {"auth": {"channels": [CHANNEL], "username": "ada"}, "reconnection": False}
    async with node_sio(server.url, **options) as client:
        first, _ = await connected_with_one_event(client, server.url)
        mark = await cut(client, server.url)
        e1, e2 = await publish_meanwhile(server.url)
        await come_back_as(client, {"channels": [CHANNEL], "username": again})
        if recovered:
            await assert_recovered(client, server.url, first, mark, [[1, e1], [2, e2]])
        else:
            await assert_refused(client, server.url, first, mark)
    assert refused_for_identity(server.url) == (0 if recovered else 1)


async def private_session(client: NodeSio, url: str) -> tuple[dict[str, Any], int, str]:
    """The client in ``PRIVATE`` with one event of it, then cut, then one more published: its
    first connect line, the mark before the cut, and the missed event's id."""
    first = await client.connection()
    assert first["t"] == "connect", first
    await subscribed(url, 1, PRIVATE)
    e0 = await publish(url, 0, PRIVATE)
    await client.event("news", [0, e0])
    mark = await cut_from(client, url)
    return first, mark, await publish(url, 1, PRIVATE)


async def cut_from(client: NodeSio, url: str) -> int:
    mark = client.mark()
    await client.command("engine-close")
    await client.disconnection(mark)
    await subscribed(url, 0, PRIVATE)
    return mark


def jwt_settings() -> dict[str, str]:
    return recovery_settings(BROADCAST_JWT_SECRET=SECRET)


async def test_a_renewed_token_that_still_grants_its_channel_recovers_with_its_own_grants(
    start_server: StartServer,
) -> None:
    server = start_server(jwt_settings())
    auth = {"token": token(channels=["private:*"]), "channels": [PRIVATE]}
    async with node_sio(server.url, auth=auth, reconnection=False) as client:
        first, mark, e1 = await private_session(client, server.url)
        await come_back_as(client, {"token": token(channels=[PRIVATE])})
        again = await client.connection(mark)
        assert again["recovered"] is True, again
        assert again["id"] == first["id"]
        await client.event("news", [1, e1], mark)
        await subscribed(server.url, 1, PRIVATE)
        # The grants are the renewed token's: private:b is no longer granted.
        ack = await client.call("subscribe", ["private:b"])
        assert ack["ok"] is False, ack
        assert "private" in ack["error"], ack
    assert refused_for_identity(server.url) == 0


# The tokens are minted when the test runs: minted at collection, they would expire before a
# long run reaches this test.
@pytest.mark.parametrize(
    "make_auth",
    [
        pytest.param(lambda: {"token": token()}, id="its-channel-no-longer-granted"),
        pytest.param(
            lambda: {"token": token("mallory", channels=["private:*"])}, id="another-subject"
        ),
    ],
)
async def test_anyone_else_gets_a_fresh_session(
    start_server: StartServer, make_auth: Callable[[], dict[str, Any]]
) -> None:
    auth = make_auth()
    server = start_server(jwt_settings())
    first_auth = {"token": token(channels=["private:*"]), "channels": [PRIVATE]}
    async with node_sio(server.url, auth=first_auth, reconnection=False) as client:
        first, mark, _ = await private_session(client, server.url)
        await come_back_as(client, auth)
        await assert_refused(client, server.url, first, mark)
        assert (await client.state())["pid"] != first["pid"], "a fresh session, a fresh pid"
    await subscribed(server.url, 0, PRIVATE)
    assert refused_for_identity(server.url) == 1


async def test_someone_else_with_its_pid_never_takes_over_a_live_connection(
    start_server: StartServer,
) -> None:
    """The server still holds a client's connection (its link died unnoticed). A claim of its
    pid by another user leaves that connection alone: only its own client may take it over."""
    server = start_server(recovery_settings())
    options = {"auth": {"channels": [CHANNEL], "username": "ada"}, "reconnection": False}
    async with (
        tcp_proxy(server.url) as proxy,
        node_sio(proxy.url, transports=["websocket"], **options) as client,
    ):
        first, _ = await connected_with_one_event(client, server.url)
        mark = client.mark()
        proxy.drop_client_side()
        await client.disconnection(mark)
        assert await subscribers(server.url) == 1, "the server has not noticed"
        await come_back_as(client, {"channels": [CHANNEL], "username": "bob"})
        again = await client.connection(mark)
        assert again["recovered"] is False, again
        assert again["id"] != first["id"]
        await subscribed(server.url, 2)  # the old connection is still there, and the new one
    assert refused_for_identity(server.url) == 1
