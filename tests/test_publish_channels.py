"""Publishing to a channel against a real server: the ``channel`` field and its refusals, scoped
publish tokens (a JWT with a ``publish`` claim), and ``broadcast publish --channel``."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest

from tests.conftest import StartServer
from tests.support import Server, SseClient, connect_sio, sse_session, until
from tests.test_publish import AUTH, SETTINGS, TOKEN, Audience, cli, post

SECRET = "jwt-secret-for-tests-0123456789abcdef"
SCOPED_SETTINGS = {**SETTINGS, "BROADCAST_JWT_SECRET": SECRET}


def scoped_token(
    publish: object = ("orders:*", "status"),
    expires_in: float = 60,
    key: str = SECRET,
    **claims: object,
) -> str:
    body: dict[str, object] = {"exp": int(time.time() + expires_in), **claims}
    if publish is not None:
        body["publish"] = list(publish) if isinstance(publish, tuple) else publish
    return jwt.encode(body, key, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def scoped_server(start_server: StartServer) -> Server:
    return start_server(SCOPED_SETTINGS)


@pytest.fixture
async def everyone(scoped_server: Server) -> AsyncIterator[Audience]:
    """Classic clients of both transports: subscribed to no channel."""
    async with sse_session() as open_sse:
        sio = await connect_sio(scoped_server.url, ["websocket"])
        sse = await open_sse(scoped_server.url)
        await until(lambda: sse.last_count == 2 and sio.last_count == 2, 5, "both counted")
        yield Audience(sio, sse)
        await sio.disconnect()


async def only_the_marker_arrives(server: Server, audience: Audience) -> None:
    """Nothing published before reached ``audience``: the next event to everyone is the first
    it gets."""
    marker = await post(server, json={"event": "marker"}, headers=AUTH)
    assert marker.status_code == 202, marker.text
    await audience.wait_for(1)
    sio, sse = audience.received()
    assert sio == [("marker", None)]
    assert [name for name, _, _ in sse] == ["marker"]


# ------------------------------------------------------------------------ the channel field


async def test_a_publish_to_a_channel_is_accepted_and_skips_clients_of_no_channel(
    scoped_server: Server, everyone: Audience
) -> None:
    one = await post(
        scoped_server, json={"event": "news", "data": 1, "channel": "post:42"}, headers=AUTH
    )
    assert one.status_code == 202, one.text
    assert one.json()["id"]
    batch = await post(
        scoped_server,
        "/publish/batch",
        json={"events": [{"event": "a", "channel": "post:42"}, {"event": "b", "channel": "c/d"}]},
        headers=AUTH,
    )
    assert batch.status_code == 202, batch.text
    assert len(batch.json()["ids"]) == 2
    null = await post(scoped_server, json={"event": "x", "channel": None}, headers=AUTH)
    assert null.status_code == 202, "a null channel is everyone"
    await everyone.wait_for(1)
    assert everyone.received()[0] == [("x", None)]


BAD_CHANNELS = [
    pytest.param("", "channel must not be empty", id="empty"),
    pytest.param("x" * 201, "too long: at most 200 characters", id="too-long"),
    pytest.param("post 42", "character ' ' at position 4 is not allowed", id="space"),
    pytest.param("café", "character 'é' at position 3 is not allowed", id="non-ascii"),
    pytest.param("a\nb", "character '\\\\n' at position 1", id="newline"),
    pytest.param("private:*", "character '*'", id="wildcard"),
    pytest.param(7, '"Expected `str | null`, got `int`", "key": "channel"', id="number"),
    pytest.param(["a"], "Expected `str | null`, got `array`", id="array"),
]


@pytest.mark.parametrize(("channel", "detail"), BAD_CHANNELS)
async def test_a_bad_channel_is_refused_saying_why(
    scoped_server: Server, everyone: Audience, channel: object, detail: str
) -> None:
    response = await post(scoped_server, json={"event": "news", "channel": channel}, headers=AUTH)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status_code"] == 400
    assert detail in json.dumps(body, ensure_ascii=False), body
    await only_the_marker_arrives(scoped_server, everyone)


async def test_a_huge_bad_channel_is_not_echoed(scoped_server: Server) -> None:
    response = await post(
        scoped_server, json={"event": "news", "channel": "\u00e9" * 300}, headers=AUTH
    )
    assert response.status_code == 400
    assert "(300 characters)" in response.json()["detail"]
    assert len(response.text) < 400, response.text


async def test_a_bad_channel_in_a_batch_says_which_event_and_publishes_nothing(
    scoped_server: Server, everyone: Audience
) -> None:
    events = [{"event": "fine"}, {"event": "fine", "channel": "ok"}, {"event": "x", "channel": ""}]
    response = await post(scoped_server, "/publish/batch", json={"events": events}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["detail"] == "events[2]: channel must not be empty"
    typed = await post(
        scoped_server,
        "/publish/batch",
        json={"events": [{"event": "fine"}, {"event": "x", "channel": 3}]},
        headers=AUTH,
    )
    assert typed.status_code == 400
    assert '"key":"events[1].channel"' in typed.text
    await only_the_marker_arrives(scoped_server, everyone)


# ------------------------------------------------------------------------ scoped tokens


async def test_a_scoped_token_publishes_to_the_channels_it_grants(scoped_server: Server) -> None:
    token = bearer(scoped_token(sub="orders-fn"))
    for channel in ("orders:1", "orders:eu/2", "status"):
        response = await post(scoped_server, json={"event": "x", "channel": channel}, headers=token)
        assert response.status_code == 202, (channel, response.text)
    batch = await post(
        scoped_server,
        "/publish/batch",
        json={
            "events": [{"event": "a", "channel": "orders:1"}, {"event": "b", "channel": "status"}]
        },
        headers=token,
    )
    assert batch.status_code == 202, batch.text


async def test_a_scoped_token_is_refused_elsewhere_and_for_everyone(
    scoped_server: Server, everyone: Audience
) -> None:
    token = bearer(scoped_token(sub="orders-fn"))
    other = await post(scoped_server, json={"event": "x", "channel": "news"}, headers=token)
    assert other.status_code == 403
    assert other.json() == {
        "status_code": 403,
        "detail": "this token may not publish to channel 'news' (claim 'publish')",
    }
    to_everyone = await post(scoped_server, json={"event": "x"}, headers=token)
    assert to_everyone.status_code == 403
    assert "not to everyone" in to_everyone.json()["detail"]
    batch = await post(
        scoped_server,
        "/publish/batch",
        json={"events": [{"event": "a", "channel": "orders:1"}, {"event": "b"}]},
        headers=token,
    )
    assert batch.status_code == 403
    assert batch.json()["detail"].startswith("events[1]: this token may publish only")
    await only_the_marker_arrives(scoped_server, everyone)


@pytest.mark.parametrize(
    ("make_token", "status", "detail"),
    [
        pytest.param(lambda: scoped_token(expires_in=-10), 401, "it has expired", id="expired"),
        pytest.param(
            lambda: scoped_token(key="another-secret-0123456789abcdef-xyz"),
            401,
            "missing or invalid bearer token",
            id="bad-signature",
        ),
        pytest.param(
            lambda: jwt.encode({"publish": ["orders:*"]}, SECRET, algorithm="HS256"),
            401,
            "missing or invalid bearer token",
            id="no-exp",
        ),
        pytest.param(
            lambda: scoped_token(publish="orders:*"),
            401,
            "claim 'publish' must be an array",
            id="bad-claim",
        ),
        pytest.param(
            lambda: scoped_token(publish=None, sub="alice", channels=["orders:*"]),
            403,
            "no 'publish' claim",
            id="a-client-token",
        ),
    ],
)
async def test_bad_scoped_tokens_are_refused(
    scoped_server: Server,
    everyone: Audience,
    make_token: Callable[[], str],
    status: int,
    detail: str,
) -> None:
    response = await post(
        scoped_server, json={"event": "x", "channel": "orders:1"}, headers=bearer(make_token())
    )
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert SECRET not in response.text
    await only_the_marker_arrives(scoped_server, everyone)


async def test_without_a_jwt_secret_a_scoped_token_is_a_wrong_token(
    start_server: StartServer,
) -> None:
    server = start_server(SETTINGS)
    response = await post(
        server, json={"event": "x", "channel": "orders:1"}, headers=bearer(scoped_token())
    )
    assert response.status_code == 401
    assert response.json()["detail"] == "missing or invalid bearer token"


async def test_each_scoped_token_has_its_own_rate_limit(start_server: StartServer) -> None:
    server = start_server(
        {
            **SCOPED_SETTINGS,
            "BROADCAST_PUBLISH_BURST": "2",
            "BROADCAST_PUBLISH_RATE_PER_SECOND": "0.01",
        }
    )
    body: dict[str, Any] = {"event": "x", "channel": "orders:1"}
    first = bearer(scoped_token(sub="fn-a"))
    statuses = [(await post(server, json=body, headers=first)).status_code for _ in range(3)]
    assert statuses == [202, 202, 429]
    same_subject = bearer(scoped_token(sub="fn-a", expires_in=120))
    refused = await post(server, json=body, headers=same_subject)
    assert refused.status_code == 429, "a reissued token of the same subject shares the bucket"
    assert int(refused.headers["retry-after"]) >= 1
    assert (
        await post(server, json=body, headers=bearer(scoped_token(sub="fn-b")))
    ).status_code == 202
    assert (await post(server, json=body, headers=AUTH)).status_code == 202, "static: its own"


# ------------------------------------------------------------------------------------ CLI


async def test_cli_publishes_to_a_channel(scoped_server: Server, everyone: Audience) -> None:
    orders = scoped_token(sub="orders-fn")
    result = cli(
        "placed",
        '{"id": 1}',
        "--channel",
        "orders:1",
        "--url",
        scoped_server.url,
        "--token",
        orders,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    # The channel reached the request: without it, the scoped token is refused.
    result = cli("placed", "--url", scoped_server.url, "--token", orders)
    assert result.returncode == 1
    assert "403 this token may publish only to its channels" in result.stderr
    result = cli("placed", "--channel", "news", "--url", scoped_server.url, "--token", orders)
    assert result.returncode == 1
    assert "403 this token may not publish to channel 'news'" in result.stderr
    result = cli("placed", "--channel", "no spaces", "--url", scoped_server.url, "--token", TOKEN)
    assert result.returncode == 1
    assert "400 channel 'no spaces': character ' ' at position 2 is not allowed" in result.stderr
    await only_the_marker_arrives(scoped_server, everyone)


# ------------------------------------------------------------------------ end to end


async def test_channel_publishes_reach_only_that_channels_subscribers(
    scoped_server: Server,
) -> None:
    """A scoped token, the CLI and a batch, each publishing to a channel: only its SSE
    subscribers get the event; an event to everyone reaches all, after them, in order."""
    own = {"user count", "user", "channel count"}

    def published(client: SseClient) -> list[str]:
        return [e.event for e in client.events if e.event not in own]

    async with sse_session() as open_sse:
        orders = await open_sse(scoped_server.url, "/events?channel=orders%3A1")
        news = await open_sse(scoped_server.url, "/events?channel=news")
        nobody = await open_sse(scoped_server.url)
        await until(
            lambda: scoped_server.stats().get("channels") == {"orders:1": 1, "news": 1},
            10,
            "both channels subscribed",
        )
        response = await post(
            scoped_server,
            json={"event": "placed", "data": {"id": 1}, "channel": "orders:1"},
            headers=bearer(scoped_token(sub="orders-fn")),
        )
        assert response.status_code == 202, response.text
        result = cli(
            "headline", '"hi"', "--channel", "news", "--url", scoped_server.url, "--token", TOKEN
        )
        assert result.returncode == 0, result.stderr
        events = [
            {"event": "b1", "channel": "orders:1"},
            {"event": "b2", "channel": "news"},
            {"event": "all"},
        ]
        batch = await post(scoped_server, "/publish/batch", json={"events": events}, headers=AUTH)
        assert batch.status_code == 202, batch.text

        clients = (orders, news, nobody)
        await until(lambda: all("all" in published(c) for c in clients), 10, "the last event")
        assert published(orders) == ["placed", "b1", "all"]
        assert published(news) == ["headline", "b2", "all"]
        assert published(nobody) == ["all"]
        placed = next(e for e in orders.events if e.event == "placed")
        assert json.loads(placed.data) == {"id": 1}, "the data as published, no channel added"
