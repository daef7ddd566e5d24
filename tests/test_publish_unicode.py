"""A publish body whose JSON escapes half a surrogate pair (`"\\ud800"`) is not Unicode text: the
server says so and where, instead of the decoder's "Input data was truncated"."""

from __future__ import annotations

import httpx
import pytest

from broadcast.lone_surrogates import lone_surrogate
from tests.conftest import StartServer
from tests.support import Server

TOKEN = "unicode-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
UNICODE = "JSON text must be valid Unicode"


@pytest.fixture
def publishing(start_server: StartServer) -> Server:
    return start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN})


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/publish", rb'{"event": "news", "data": "\ud800"}', r"lone surrogate \ud800 at $.data"),
        ("/publish", rb'{"event": "\udc00x", "data": 1}', r"lone surrogate \udc00 at $.event"),
        (
            "/publish",
            rb'{"event": "news", "data": {"a": ["ok", "\uDBFF then text"]}}',
            r"lone surrogate \udbff at $.data.a[1]",
        ),
        (
            "/publish/batch",
            rb'{"events": [{"event": "a"}, {"event": "b", "data": "\ud83d"}]}',
            r"lone surrogate \ud83d at $.events[1].data",
        ),
        (
            "/publish",
            rb'{"event": "news", "data": {"\ud800": 1}}',
            r'lone surrogate in the key $.data["\ud800"]',
        ),
    ],
)
async def test_a_lone_surrogate_is_refused_saying_what_and_where(
    publishing: Server, path: str, body: bytes, where: str
) -> None:
    async with httpx.AsyncClient(base_url=publishing.url) as client:
        answer = await client.post(path, content=body, headers=AUTH)
        assert answer.status_code == 400, answer.text
        detail = answer.json()["detail"]
        assert detail.startswith(f"malformed JSON: {where}: {UNICODE}"), detail
        assert "truncated" not in detail
        # the server carries on
        ok = await client.post(path, content=body.replace(b"\\u", b"u"), headers=AUTH)
        assert ok.status_code == 202, ok.text
    assert "Traceback" not in publishing.log()


async def test_surrogate_pairs_and_escaped_backslashes_are_published(publishing: Server) -> None:
    async with httpx.AsyncClient(base_url=publishing.url) as client:
        for body in (
            rb'{"event": "news", "data": "party \ud83c\udf89"}',  # an escaped emoji: valid
            rb'{"event": "news", "data": "\\ud800 is how you write it"}',  # text, not an escape
        ):
            answer = await client.post("/publish", content=body, headers=AUTH)
            assert answer.status_code == 202, (body, answer.text)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (rb'"\ud800"', r"lone surrogate \ud800 at $"),
        (rb'["\ud83d\ude00", "\ude00"]', r"lone surrogate \ude00 at $[1]"),
        (rb'{"a b": "\ud800\ud800\udc00"}', r'lone surrogate \ud800 at $["a b"]'),
        (rb'"\ud83d\ude00"', None),
        (rb'"\\ud800"', None),
        (rb'"\\\ud800"', r"lone surrogate \ud800 at $"),
        (rb'{"broken": "\ud800"', None),  # not JSON at all: the decoder says so
        (b"[" * 100_000 + rb'"\ud800"' + b"]" * 100_000, None),  # too deep to look into
    ],
)
def test_lone_surrogate(body: bytes, expected: str | None) -> None:
    assert lone_surrogate(body) == expected
