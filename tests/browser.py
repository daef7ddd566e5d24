"""What the browser tests share: a page in its own browser context (``Tab``, opened by the
``open_tab`` fixture in conftest), waits on what a page shows, and a network link to cut."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from playwright.async_api import BrowserContext, Page, Route, expect

WAIT_MS = 10_000
"""How long an ``expect`` may wait for the page: generous, since it returns as soon as it holds."""

SOCKET_IO_CLIENT = "**/static/vendor/socket.io.min.js"


@dataclass
class Tab:
    """One page in its own browser context, with the errors its console reported."""

    page: Page
    context: BrowserContext
    artifacts: Path
    errors: list[str] = field(default_factory=list)

    async def screenshot(self, name: str) -> None:
        await self.page.screenshot(path=self.artifacts / f"{name}.png", full_page=True)

    async def close(self) -> None:
        await self.context.close()

    async def chat(self, text: str) -> None:
        """Type and send a message; the server's acknowledgement clears the input."""
        await self.page.fill("#chat-input", text)
        await self.page.click("#chat-send")
        await expect(self.page.locator("#chat-input")).to_have_value("", timeout=WAIT_MS)

    def assert_console_clean(self) -> None:
        assert self.errors == [], f"console errors: {self.errors}"


class OpenTab(Protocol):
    async def __call__(
        self,
        query: str = "",
        block: Sequence[str] = (),
        stall: Sequence[str] = (),
        url: str | None = None,
    ) -> Tab: ...


async def abort(route: Route) -> None:
    await route.abort()


async def never_answer(route: Route) -> None:
    """Leave the request pending until its context closes."""


async def expect_count(tab: Tab, users: int) -> None:
    text = "1 user online" if users == 1 else f"{users} users online"
    await expect(tab.page.locator("#count")).to_have_text(text, timeout=WAIT_MS)


async def expect_live(tab: Tab, transport: str) -> None:
    await expect(tab.page.locator("#state")).to_have_attribute(
        "data-state", "live", timeout=WAIT_MS
    )
    await expect(tab.page.locator("#state")).to_have_text("live")
    await expect(tab.page.locator("#transport")).to_have_text(transport, timeout=WAIT_MS)


class CuttableLink:
    """A TCP proxy between the page and the server whose connections can be cut, as a network
    drop: the server sees the page leave, and nothing gets through until it is restored."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self._target = (host, int(port))
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.down = False
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        upstream_reader, upstream = await asyncio.open_connection(*self._target)
        self._writers |= {writer, upstream}
        await asyncio.gather(self._pipe(reader, upstream), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    def cut(self) -> None:
        self.down = True
        for writer in list(self._writers):
            writer.transport.abort()

    def restore(self) -> None:
        self.down = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
