from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    async_playwright,
)

from tests.browser import OpenTab, Tab, abort, never_answer
from tests.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    OPEN_CLIENTS,
    RedisServer,
    Server,
    close_client,
    running_server,
)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

StartServer = Callable[..., Server]


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """Where a test keeps its server logs and screenshots (kept after the run)."""
    path = ARTIFACTS / str(request.node.name).replace("/", "_")[:120]
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def start_server(artifacts: Path) -> Iterator[StartServer]:
    """Start real hypercorn servers; each is stopped (SIGTERM) when the test ends."""
    with ExitStack() as stack:

        def start(
            settings: dict[str, str] | None = None, command: list[str] | None = None
        ) -> Server:
            return stack.enter_context(running_server(artifacts, settings, command))

        yield start


@pytest.fixture
def server(start_server: StartServer) -> Server:
    """One server with the default settings."""
    return start_server()


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the whole run; ``redis`` empties it for each test."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(shared_redis: RedisServer) -> RedisServer:
    shared_redis.flush()
    return shared_redis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop and start (outages)."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    """Close every Socket.IO client a test left open, so nothing leaks into the next test."""
    yield
    while OPEN_CLIENTS:
        await close_client(OPEN_CLIENTS.pop())
    # Collect now, so a leaked connection's ResourceWarning fails the test that leaked it rather
    # than whichever test the collector happens to run in later.
    gc.collect()


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium: required, never skipped (a missing browser must not pass quietly)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium (scripts/setup --dev does); "
            "these tests never download a browser"
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def open_tab(browser: Browser, server: Server, artifacts: Path) -> AsyncIterator[OpenTab]:
    """Open ``/?<query>`` in a fresh context (from ``url``, else the server). Requests matching
    a glob in ``block`` fail at once (as offline); those matching ``stall`` are never answered
    (as a proxy that hangs)."""
    contexts: list[BrowserContext] = []

    async def open_(
        query: str = "",
        block: Sequence[str] = (),
        stall: Sequence[str] = (),
        url: str | None = None,
    ) -> Tab:
        context = await browser.new_context()
        contexts.append(context)
        page = await context.new_page()
        tab = Tab(page, context, artifacts)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                tab.errors.append(f"console: {message.text} ({message.location})")

        def on_page_error(error: Error) -> None:
            tab.errors.append(f"pageerror: {error}")

        page.on("console", on_console)
        page.on("pageerror", on_page_error)
        for pattern in block:
            await page.route(pattern, abort)
        for pattern in stall:
            await page.route(pattern, never_answer)
        await page.goto(f"{url or server.url}/?{query}")
        return tab

    try:
        yield open_
    finally:
        for context in contexts:
            await context.close()
