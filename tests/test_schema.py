"""`/schema`: the Redoc page works offline (everything from this server), and the OpenAPI schema
says what the server does (`/events` is an event stream; publish's `event` with its limits)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest
from litestar.exceptions import ValidationException
from playwright.async_api import Browser, Request, Response, Route, expect

from broadcast.channels import MAX_CHANNEL_LENGTH
from broadcast.publish import (
    EVENT_NAME_MAX_LENGTH,
    EVENT_NAME_PATTERN,
    RESERVED_EVENT_NAMES,
    check_event_name,
)
from tests.browser import WAIT_MS
from tests.conftest import StartServer
from tests.support import Server

TOKEN = "schema-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class References(HTMLParser):
    """Every URL a page's markup loads: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]


def same_origin(url: str, origin: str) -> bool:
    return url.startswith((f"{origin}/", "data:", "blob:"))


async def test_the_schema_page_references_only_this_servers_files(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        page = await client.get("/schema")
        assert page.status_code == 200
        references = References()
        references.feed(page.text)
        scripts = [url for url in references.urls if url.endswith(".js")]
        assert scripts == ["/static/vendor/redoc.standalone.js"], references.urls
        for url in references.urls:
            if url.startswith("data:"):
                continue
            assert url.startswith("/"), f"not same-origin: {url}"
            assert not url.startswith("//"), f"not same-origin: {url}"
            assert (await client.get(url)).status_code == 200, url


async def test_the_schema_page_renders_offline_in_a_browser(
    server: Server, browser: Browser
) -> None:
    """The rendered page needs nothing but this server: every request it makes to this server
    succeeds, and none leaves for elsewhere (a CDN, Google fonts). The bundle's own logo from
    cdn.redoc.ly is stopped in the browser by the page's Content-Security-Policy."""
    context = await browser.new_context()
    page = await context.new_page()
    ours: list[str] = []
    left: list[str] = []
    failed: list[str] = []
    errors: list[str] = []

    async def elsewhere(route: Route) -> None:
        """Only requests the page's policy let through get here: they would leave."""
        left.append(route.request.url)
        await route.abort()

    def on_request(request: Request) -> None:
        if same_origin(request.url, server.url):
            ours.append(request.url)

    def on_response(response: Response) -> None:
        if response.status != 200:
            failed.append(f"{response.status} {response.url}")

    def on_failed(request: Request) -> None:
        blocked_by_policy = request.failure == "csp"  # Chromium: never sent
        if not blocked_by_policy or same_origin(request.url, server.url):
            failed.append(f"{request.failure} {request.url}")

    page.on("request", on_request)
    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.route(re.compile(rf"^(?!{re.escape(server.url)}/|data:|blob:)"), elsewhere)
    try:
        await page.goto(f"{server.url}/schema")
        # Redoc has rendered the operations of the schema.
        heading = page.get_by_role("heading", name="Publish one event to every client")
        await expect(heading).to_be_visible(timeout=WAIT_MS)
        assert f"{server.url}/static/vendor/redoc.standalone.js" in ours
        assert left == []
        assert failed == []
        assert errors == []
    finally:
        await context.close()


@pytest.fixture
def publishing(start_server: StartServer) -> Server:
    return start_server({"BROADCAST_PUBLISH_TOKEN": TOKEN})


async def test_the_schema_documents_the_event_stream_and_the_event_name_rules(
    publishing: Server,
) -> None:
    async with httpx.AsyncClient(base_url=publishing.url) as client:
        schema = (await client.get("/schema/openapi.json")).json()
        events = schema["paths"]["/events"]["get"]["responses"]["200"]
        assert list(events["content"]) == ["text/event-stream"]

        event = schema["components"]["schemas"]["PublishRequest"]["properties"]["event"]
        assert event["type"] == "string"
        assert event["minLength"] == 1
        assert event["maxLength"] == EVENT_NAME_MAX_LENGTH
        assert sorted(event["not"]["enum"]) == sorted(RESERVED_EVENT_NAMES)
        pattern = re.compile(event["pattern"])

        # What the schema allows, the server takes; what it forbids, the server refuses.
        samples = ["x" * event["maxLength"], "x" * (event["maxLength"] + 1), "a\nb", "a\rb"]
        samples += ["", "news", "user count", "message", "ünïcødé 🎉"]
        for name in samples:
            allowed = (
                event["minLength"] <= len(name) <= event["maxLength"]
                and pattern.search(name) is not None
                and name not in event["not"]["enum"]
            )
            answer = await client.post("/publish", json={"event": name}, headers=AUTH)
            assert answer.status_code == (202 if allowed else 400), (name, answer.text)


async def test_the_schema_documents_the_channel_name_rules(publishing: Server) -> None:
    async with httpx.AsyncClient(base_url=publishing.url) as client:
        schema = (await client.get("/schema/openapi.json")).json()
        request = schema["components"]["schemas"]["PublishRequest"]["properties"]
        channel = request["channel"]
        # String keywords constrain strings only: null (everyone) stays valid.
        assert {option["type"] for option in channel["oneOf"]} == {"string", "null"}
        assert channel["minLength"] == 1
        assert channel["maxLength"] == MAX_CHANNEL_LENGTH
        assert "403" in schema["paths"]["/publish"]["post"]["responses"]
        pattern = re.compile(channel["pattern"])

        samples = ["post:42", "a+b/c=d@e.f_g-h", "x" * 200, "x" * 201, "", "a b", "é", "a*"]
        for name in samples:
            allowed = (
                channel["minLength"] <= len(name) <= channel["maxLength"]
                and pattern.search(name) is not None
            )
            answer = await client.post(
                "/publish", json={"event": "news", "channel": name}, headers=AUTH
            )
            assert answer.status_code == (202 if allowed else 400), (name, answer.text)


@pytest.mark.parametrize(
    "name",
    ["", "ok", "x" * 100, "x" * 101, "line\nbreak", "carriage\rreturn", "user", "gap", " "],
)
def test_the_documented_pattern_agrees_with_the_check(name: str) -> None:
    documented = (
        1 <= len(name) <= EVENT_NAME_MAX_LENGTH
        and re.search(EVENT_NAME_PATTERN, name) is not None
        and name not in RESERVED_EVENT_NAMES
    )
    try:
        check_event_name(name)
        enforced = True
    except ValidationException:
        enforced = False
    assert documented == enforced
