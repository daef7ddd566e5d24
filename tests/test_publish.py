"""The HTTP publish API against a real server: delivery, auth, limits, refusals, the CLI, a fuzz."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broadcast.events import parse_event_id
from tests.conftest import StartServer
from tests.support import (
    VENV_BIN,
    ConnectRefused,
    Server,
    SioClient,
    SseClient,
    connect_sio,
    server_environment,
    sse_session,
    until,
)

TOKEN = "publish-token-0123456789"
OTHER_TOKEN = "rotated-token-9876543210"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SETTINGS = {
    "BROADCAST_PUBLISH_TOKEN": f"{TOKEN},{OTHER_TOKEN}",
    "BROADCAST_PUBLISH_MAX_BYTES": "1024",
}


@dataclass
class Audience:
    sio: SioClient
    sse: SseClient

    def received(self) -> tuple[list[tuple[str, Any]], list[tuple[str, Any, str | None]]]:
        """Published events each client got (the server's own events left out)."""
        own = {"user count", "user"}
        sio = [(name, data) for name, data in self.sio.events if name not in own]
        sse = [(e.event, json.loads(e.data), e.id) for e in self.sse.events if e.event not in own]
        return sio, sse

    async def wait_for(self, count: int) -> None:
        def arrived() -> bool:
            sio, sse = self.received()
            return len(sio) >= count and len(sse) >= count

        await until(arrived, 5, f"{count} published events on both transports")


@pytest.fixture
def publish_server(start_server: StartServer) -> Server:
    return start_server(SETTINGS)


@pytest.fixture
async def audience(publish_server: Server) -> AsyncIterator[Audience]:
    async with sse_session() as open_sse:
        sio = await connect_sio(publish_server.url, ["websocket"])
        sse = await open_sse(publish_server.url)
        await until(lambda: sse.last_count == 2 and sio.last_count == 2, 5, "both counted")
        yield Audience(sio, sse)
        await sio.disconnect()


async def post(server: Server, path: str = "/publish", **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(f"{server.url}{path}", **kwargs)


@pytest.mark.parametrize(
    "data",
    [{"price": 1.5, "tags": ["a"]}, [1, "two"], "multi\nline", 42, None, True],
    ids=["object", "array", "string", "number", "null", "bool"],
)
async def test_a_publish_reaches_both_transports_with_one_id(
    publish_server: Server, audience: Audience, data: Any
) -> None:
    response = await post(publish_server, json={"event": "news", "data": data}, headers=AUTH)
    assert response.status_code == 202
    event_id = response.json()["id"]
    await audience.wait_for(1)
    sio, sse = audience.received()
    assert sio == [("news", data)]
    assert sse == [("news", data, event_id)]
    assert "\n" not in audience.sse.events[-1].data, "JSON escapes line breaks: one data: line"


async def test_a_batch_is_delivered_in_order(publish_server: Server, audience: Audience) -> None:
    events = [{"event": f"step {i}", "data": i} for i in range(5)]
    response = await post(publish_server, "/publish/batch", json={"events": events}, headers=AUTH)
    assert response.status_code == 202
    ids = response.json()["ids"]
    await audience.wait_for(5)
    sio, sse = audience.received()
    assert sio == [(f"step {i}", i) for i in range(5)]
    assert [e[2] for e in sse] == ids
    offsets = [p.offset for p in map(parse_event_id, ids) if p is not None]
    assert len(offsets) == len(ids), ids
    assert offsets == sorted(offsets), ids


REFUSED = [
    pytest.param(
        {"json": {"event": "x"}, "headers": {}},
        401,
        "missing or invalid bearer token",
        id="no-token",
    ),
    pytest.param(
        {"json": {"event": "x"}, "headers": {"Authorization": "Bearer wrong-token-0000000"}},
        401,
        "missing or invalid bearer token",
        id="wrong-token",
    ),
    pytest.param(
        {"json": {"event": "x"}, "headers": {"Authorization": f"Basic {TOKEN}"}},
        401,
        "missing or invalid bearer token",
        id="wrong-scheme",
    ),
    pytest.param({"content": b'{"event": "x",'}, 400, "malformed JSON", id="malformed"),
    pytest.param({"json": {"data": 1}}, 400, "missing required field `event`", id="no-event"),
    pytest.param({"json": {"event": 7}}, 400, "Expected `str`, got `int`", id="event-number"),
    pytest.param({"json": ["x"]}, 400, "Expected `object`", id="array-body"),
    pytest.param({"json": {"event": "x", "chanel": "a"}}, 400, "unknown field", id="typo-field"),
    pytest.param({"json": {"event": ""}}, 400, "must not be empty", id="empty-name"),
    pytest.param({"json": {"event": "x" * 101}}, 400, "at most 100", id="long-name"),
    pytest.param({"json": {"event": "a\nb"}}, 400, "line break", id="newline-name"),
    pytest.param({"json": {"event": "user count"}}, 400, "reserved", id="user-count"),
    pytest.param({"json": {"event": "user"}}, 400, "reserved", id="user"),
    pytest.param({"json": {"event": "chat message"}}, 400, "reserved", id="chat"),
    pytest.param({"json": {"event": "connect"}}, 400, "reserved", id="connect"),
    pytest.param({"json": {"event": "disconnect"}}, 400, "reserved", id="disconnect"),
    pytest.param(
        {"content": b'{"event": "x", "data": 18446744073709551616}'},
        400,
        "data cannot be sent",
        id="integer-beyond-64-bits",
    ),
    pytest.param(
        {"content": b'{"event": "x", "data": ' + b"[" * 300 + b"]" * 300 + b"}"},
        400,
        "data cannot be sent",
        id="nested-too-deep",
    ),
    pytest.param(
        {"json": {"event": "x", "data": "y" * 2000}},
        413,
        "over the limit of 1024 (BROADCAST_PUBLISH_MAX_BYTES)",
        id="too-large",
    ),
]


@pytest.mark.parametrize(("request_kwargs", "status", "detail"), REFUSED)
async def test_refused_publishes_say_why_and_deliver_nothing(
    publish_server: Server,
    audience: Audience,
    request_kwargs: dict[str, Any],
    status: int,
    detail: str,
) -> None:
    kwargs = {"headers": AUTH, **request_kwargs}
    if "content" in kwargs:
        kwargs["headers"] = {**kwargs["headers"], "Content-Type": "application/json"}
    response = await post(publish_server, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status_code"] == status
    assert detail in json.dumps(body)
    if status == 401:
        assert TOKEN not in response.text
        assert OTHER_TOKEN not in response.text

    # Nothing was delivered: the next good event is the first anyone receives.
    marker = await post(publish_server, json={"event": "marker"}, headers=AUTH)
    assert marker.status_code == 202
    await audience.wait_for(1)
    sio, sse = audience.received()
    assert sio == [("marker", None)]
    assert [name for name, _, _ in sse] == ["marker"]


async def test_a_body_without_length_is_read_and_bounded(
    publish_server: Server, audience: Audience
) -> None:
    """A chunked body (no Content-Length): taken whole when small, a 413 as soon as it passes
    the limit."""

    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 100):
            yield data[start : start + 100]

    small = json.dumps({"event": "chunked", "data": "y" * 300}).encode()
    response = await post(publish_server, content=chunks(small), headers=AUTH)
    assert response.status_code == 202, response.text
    large = json.dumps({"event": "chunked", "data": "y" * 3000}).encode()
    response = await post(publish_server, content=chunks(large), headers=AUTH)
    assert response.status_code == 413, response.text
    assert response.json() == {"status_code": 413, "detail": "Request Entity Too Large"}
    await audience.wait_for(1)
    assert audience.received()[0] == [("chunked", "y" * 300)]


async def test_a_refused_shape_says_which_field(publish_server: Server) -> None:
    response = await post(
        publish_server, json={"event": "x", "data": 1, "channel": 5}, headers=AUTH
    )
    assert response.status_code == 400
    assert response.json() == {
        "status_code": 400,
        "detail": "Validation failed for POST /publish",
        "extra": [
            {"message": "Expected `str | null`, got `int`", "key": "channel", "source": "body"}
        ],
    }
    response = await post(publish_server, content=b"", headers=AUTH)
    assert response.status_code == 400
    assert response.json()["detail"] == "malformed JSON: the body is empty"


async def test_a_publisher_that_hangs_up_mid_body_costs_nothing(
    publish_server: Server, audience: Audience
) -> None:
    host, port = publish_server.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 200\r\n\r\n".encode()
        + b'{"event": "cut'
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    marker = await post(publish_server, json={"event": "marker"}, headers=AUTH)
    assert marker.status_code == 202
    await audience.wait_for(1)
    assert audience.received()[0] == [("marker", None)]
    assert "Traceback" not in publish_server.log()


async def test_one_bad_event_refuses_the_whole_batch(
    publish_server: Server, audience: Audience
) -> None:
    events = [{"event": "fine"}, {"event": "user count"}]
    response = await post(publish_server, "/publish/batch", json={"events": events}, headers=AUTH)
    assert response.status_code == 400
    assert "events[1]" in response.json()["detail"]
    await post(publish_server, json={"event": "marker"}, headers=AUTH)
    await audience.wait_for(1)
    assert audience.received()[0] == [("marker", None)]


async def test_too_many_requests_per_token(start_server: StartServer) -> None:
    server = start_server(
        {**SETTINGS, "BROADCAST_PUBLISH_BURST": "3", "BROADCAST_PUBLISH_RATE_PER_SECOND": "0.01"}
    )
    statuses = [
        (await post(server, json={"event": "x"}, headers=AUTH)).status_code for _ in range(4)
    ]
    assert statuses == [202, 202, 202, 429]
    refused = await post(server, json={"event": "x"}, headers=AUTH)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "too many requests" in refused.json()["detail"]
    # Each token has its own allowance: the rotated-in token still works.
    other = {"Authorization": f"Bearer {OTHER_TOKEN}"}
    assert (await post(server, json={"event": "x"}, headers=other)).status_code == 202


async def test_a_generated_token_is_logged_once_and_works(start_server: StartServer) -> None:
    server = start_server()
    found = re.search(r"Authorization: Bearer (\S+)'", server.log())
    assert found, server.log()
    token = found.group(1)
    assert (await post(server, json={"event": "x"})).status_code == 401
    response = await post(server, json={"event": "x"}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 202
    assert server.log().count(token) == 1


async def test_configured_tokens_are_never_logged(publish_server: Server) -> None:
    await post(publish_server, json={"event": "x"}, headers=AUTH)
    await post(publish_server, json={"event": "x"}, headers={"Authorization": "Bearer nope"})
    log = publish_server.log()
    assert TOKEN not in log
    assert OTHER_TOKEN not in log


def test_a_bad_token_setting_is_not_echoed(tmp_path: Any) -> None:
    secret = "short"
    result = subprocess.run(
        [str(VENV_BIN / "broadcast"), "serve", "--port", "0"],
        env=server_environment({"BROADCAST_PUBLISH_TOKEN": secret}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "at least 16 characters" in result.stderr
    assert "'short'" not in result.stderr
    assert "(hidden)" in result.stderr


# ------------------------------------------------------------------------------------ CLI


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "broadcast"), "publish", *args],
        env=server_environment(env or {}),
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_cli_publishes_and_prints_the_id(publish_server: Server, audience: Audience) -> None:
    result = cli("deploy", '{"version": "1.2"}', "--url", publish_server.url, "--token", TOKEN)
    assert result.returncode == 0, result.stderr
    event_id = result.stdout.strip()
    result = cli("ping", "--url", publish_server.url, env={"BROADCAST_PUBLISH_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    await audience.wait_for(2)
    sio, sse = audience.received()
    assert sio == [("deploy", {"version": "1.2"}), ("ping", None)]
    assert sse[0][2] == event_id


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("news", "not json", "--token", TOKEN), "DATA is not valid JSON"),
        (("news", "--token", "wrong-token-0000000"), "401 missing or invalid bearer token"),
        (("user count", "1", "--token", TOKEN), "400 event name 'user count' is reserved"),
        (("news",), "no token"),
    ],
)
def test_cli_errors_exit_non_zero_with_a_message(
    publish_server: Server, args: tuple[str, ...], message: str
) -> None:
    result = cli(*args, "--url", publish_server.url)
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stdout == ""


def test_cli_reports_an_unreachable_server() -> None:
    result = cli("news", "--url", "http://127.0.0.1:9", "--token", TOKEN)
    assert result.returncode == 1
    assert "could not reach http://127.0.0.1:9" in result.stderr


# ------------------------------------------------------------------------ verified identity

SECRET = "jwt-secret-for-tests-0123456789abcdef"


def signed(subject: str, expires_in: float = 60, key: str = SECRET) -> str:
    return jwt.encode({"sub": subject, "exp": time.time() + expires_in}, key, algorithm="HS256")


async def test_usernames_come_from_verified_tokens(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_JWT_SECRET": SECRET})
    watcher = await connect_sio(server.url, ["websocket"])
    dana = await connect_sio(server.url, ["websocket"], auth={"token": signed("dana")})
    await until(
        lambda: any(n == "user" and d["username"] == "dana" for n, d in watcher.events), 5, "dana"
    )
    refusals = [
        ({"token": signed("dana", expires_in=-10)}, "invalid token: it has expired"),
        ({"token": signed("dana", key="another-secret-0123456789abcdef-xyz")}, "invalid token"),
        ({"token": "not.a.jwt"}, "invalid token"),
        (
            {"token": jwt.encode({"sub": "dana"}, SECRET, algorithm="HS256")},
            'missing the "exp" claim',
        ),
        ({"username": "mallory"}, "takes usernames from signed tokens"),
    ]
    for auth, reason in refusals:
        with pytest.raises(ConnectRefused, match=reason):
            await connect_sio(server.url, ["websocket"], auth=auth)
    async with httpx.AsyncClient() as http:
        expired = await http.get(
            f"{server.url}/events", params={"token": signed("eve", expires_in=-10)}
        )
        assert expired.status_code == 400
        assert "expired" in expired.json()["detail"]
    async with sse_session() as open_sse:
        erin = await open_sse(server.url, token=signed("erin"))
        await until(lambda: erin.last_count == 3, 5, "erin to be counted")
        await until(
            lambda: any(n == "user" and d["username"] == "erin" for n, d in watcher.events),
            5,
            "erin's join",
        )
    await dana.disconnect()
    await watcher.disconnect()


async def test_identity_can_be_required(start_server: StartServer) -> None:
    server = start_server({"BROADCAST_JWT_SECRET": SECRET, "BROADCAST_IDENTITY_REQUIRED": "true"})
    with pytest.raises(ConnectRefused, match="a signed token is required"):
        await connect_sio(server.url, ["websocket"])
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.url}/events")
    assert response.status_code == 400
    assert "a signed token is required" in response.json()["detail"]
    frank = await connect_sio(server.url, ["websocket"], auth={"token": signed("frank")})
    await frank.disconnect()


# ------------------------------------------------------------------------------ fuzzing

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
BODIES = st.one_of(
    st.binary(max_size=1500),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"event": st.text(max_size=120)},
        optional={"data": JSON, "channel": st.none() | st.text(max_size=210) | JSON},
    ).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"events": st.lists(JSON, max_size=3)}).map(
        lambda v: json.dumps(v).encode()
    ),
)


@pytest.mark.timeout(180)
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=BODIES,
    path=st.sampled_from(["/publish", "/publish/batch"]),
    authorized=st.booleans(),
    content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form"]),
)
def test_fuzzed_publishes_never_fail_the_server(
    publish_server: Server, body: bytes, path: str, authorized: bool, content_type: str
) -> None:
    headers = {"Content-Type": content_type, **(AUTH if authorized else {})}
    response = httpx.post(f"{publish_server.url}{path}", content=body, headers=headers)
    assert response.status_code < 500, response.text
    assert response.status_code in (202, 400, 401, 413, 415, 429), response.text
    assert "status_code" in response.json() or response.status_code == 202
    assert httpx.get(f"{publish_server.url}/healthz").status_code == 200
