"""The page in a real browser: Playwright drives Debian's Chromium against a real server.

Each tab is its own browser context (its own cookies and storage, like another person). Nothing
here sleeps: every wait is Playwright's ``expect`` (which retries until the page agrees) or a
condition polled against the server. Screenshots land in ``artifacts/<test>/``.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from playwright.async_api import expect

from tests.browser import (
    SOCKET_IO_CLIENT,
    WAIT_MS,
    CuttableLink,
    OpenTab,
    expect_count,
    expect_live,
)
from tests.conftest import StartServer
from tests.support import Server, connect_sio, until


async def server_count(server: Server) -> int:
    return await asyncio.to_thread(server.user_count)


# ---------------------------------------------------------------------------- tests


async def test_count_follows_pages_opening_and_closing(open_tab: OpenTab, server: Server) -> None:
    alice = await open_tab("username=alice")
    await expect_count(alice, 1)
    # The default is long-polling first, then the upgrade to websocket.
    await expect_live(alice, "websocket")

    bob = await open_tab("username=bob")
    await expect_count(bob, 2)
    await expect_count(alice, 2)
    await expect_live(bob, "websocket")
    await expect(alice.page.locator("#events li").last).to_have_text("bob joined (2 online)")
    assert await server_count(server) == 2
    await alice.screenshot("alice-with-bob")
    await bob.screenshot("bob")

    await bob.close()
    await expect_count(alice, 1)
    await expect(alice.page.locator("#events li").last).to_have_text("bob left (1 online)")
    await expect_live(alice, "websocket")
    await alice.screenshot("alice-after-bob-left")
    alice.assert_console_clean()
    bob.assert_console_clean()


async def test_chat_message_reaches_the_other_page(open_tab: OpenTab) -> None:
    alice = await open_tab("username=alice")
    bob = await open_tab("username=bob")
    await expect_count(alice, 2)
    await expect_live(alice, "websocket")

    await alice.chat("hello bob")
    await expect(bob.page.locator("#messages li")).to_have_text(["alice: hello bob"])
    await expect(alice.page.locator("#messages li")).to_have_text(["alice: hello bob"])
    await expect(alice.page.locator("#error")).to_be_hidden()
    await bob.screenshot("bob-received")
    await alice.screenshot("alice-sent")
    alice.assert_console_clean()
    bob.assert_console_clean()


async def test_sse_page_counts_and_receives_chat_read_only(open_tab: OpenTab) -> None:
    alice = await open_tab("username=alice")
    await expect_live(alice, "websocket")
    carol = await open_tab("transport=sse&username=carol")

    await expect_count(carol, 2)
    await expect_count(alice, 2)
    await expect_live(carol, "SSE")
    await expect(alice.page.locator("#events li").last).to_have_text("carol joined (2 online)")
    await expect(carol.page.locator("#chat-note")).to_be_visible()
    await expect(carol.page.locator("#chat-note")).to_have_text(re.compile("read-only over SSE"))
    await expect(carol.page.locator("#chat-input")).to_be_disabled()

    await alice.chat("hi carol")
    await expect(carol.page.locator("#messages li")).to_have_text(["alice: hi carol"])
    await carol.screenshot("carol-sse")
    carol.assert_console_clean()
    alice.assert_console_clean()


async def test_markup_in_a_message_is_shown_as_text(open_tab: OpenTab) -> None:
    alice = await open_tab("username=alice")
    bob = await open_tab("username=bob")
    await expect_count(alice, 2)
    payloads = ["<script>window.pwned=1</script>", '<img src=x onerror="window.pwned=2">']

    for payload in payloads:
        await alice.chat(payload)
    await expect(bob.page.locator("#messages li")).to_have_text([f"alice: {p}" for p in payloads])
    assert await bob.page.locator("#messages script, #messages img").count() == 0
    assert await bob.page.evaluate("typeof window.pwned") == "undefined"
    assert await alice.page.evaluate("typeof window.pwned") == "undefined"
    await bob.screenshot("bob-markup-as-text")
    bob.assert_console_clean()


@pytest.mark.parametrize(
    ("blocked", "stalled"),
    [
        pytest.param([SOCKET_IO_CLIENT], [], id="client-script-missing"),
        pytest.param(["**/socket.io/**"], [], id="socketio-endpoint-unreachable"),
        pytest.param([], ["**/socket.io/**"], id="socketio-endpoint-hangs"),
    ],
)
async def test_falls_back_to_sse_without_socketio(
    open_tab: OpenTab, server: Server, blocked: list[str], stalled: list[str]
) -> None:
    dave = await open_tab("username=dave", block=blocked, stall=stalled)
    await expect_live(dave, "SSE")
    await expect_count(dave, 1)
    await expect(dave.page.locator("#chat-input")).to_be_disabled()
    await expect(dave.page.locator("#chat-note")).to_have_text(re.compile("read-only over SSE"))

    alice = await open_tab("username=alice")
    await expect_count(dave, 2)
    await alice.chat("still there?")
    await expect(dave.page.locator("#messages li")).to_have_text(["alice: still there?"])
    assert await server_count(server) == 2
    await dave.screenshot("dave-fallback")


@pytest.mark.parametrize(
    ("query", "transport"),
    [
        pytest.param("username=%3Cbad%3E", "websocket", id="socketio"),
        pytest.param("transport=sse&username=%3Cbad%3E", "SSE", id="sse"),
    ],
)
async def test_bad_username_is_refused_with_a_clear_error(
    open_tab: OpenTab, server: Server, query: str, transport: str
) -> None:
    alice = await open_tab("username=alice")
    await expect_live(alice, "websocket")

    bad = await open_tab(query)
    error = bad.page.locator("#error")
    await expect(error).to_be_visible(timeout=WAIT_MS)
    await expect(error).to_have_text(re.compile(r"^Name refused: .*username", re.IGNORECASE))
    # Refused as <bad>, the page stays on anonymously: counted, never announced, cannot chat.
    await expect_live(bad, transport)
    await expect_count(alice, 2)
    await expect(bad.page.locator("#whoami")).to_have_text("You are anonymous.")
    await bad.screenshot("bad-username")
    if transport != "SSE":
        await expect(bad.page.locator("#chat-note")).to_have_text(re.compile("name to chat"))
        await bad.page.fill("#chat-input", "let me in")
        await bad.page.click("#chat-send")
        await expect(error).to_have_text(re.compile("choose a name to chat", re.IGNORECASE))
        await expect(bad.page.locator("#chat-input")).to_have_value("let me in")

    # Events arrive in order: once a later join is shown, no announcement of <bad> is pending.
    erin = await open_tab("username=erin")
    await expect(alice.page.locator("#events li").last).to_have_text("erin joined (3 online)")
    await expect(alice.page.locator("#events")).not_to_contain_text("bad")
    await expect_count(erin, 3)
    assert await server_count(server) == 3
    alice.assert_console_clean()


async def test_setting_a_name_reconnects_and_is_remembered(open_tab: OpenTab) -> None:
    alice = await open_tab("username=alice")
    anonymous = await open_tab()
    await expect_count(alice, 2)
    await expect(anonymous.page.locator("#whoami")).to_have_text("You are anonymous.")

    await anonymous.page.fill("#name-input", "frank")
    await anonymous.page.click("#name-form button[type=submit]")
    await expect(alice.page.locator("#events li").last).to_have_text(
        re.compile(r"^frank joined \(\d online\)$"), timeout=WAIT_MS
    )
    await expect(anonymous.page.locator("#whoami")).to_have_text("You are frank.")
    await expect_count(alice, 2)
    await anonymous.chat("I have a name now")
    await expect(alice.page.locator("#messages li")).to_have_text(["frank: I have a name now"])

    # The name survives a reload (localStorage, and the address keeps ?username= in step).
    await anonymous.page.reload()
    await expect(anonymous.page.locator("#whoami")).to_have_text("You are frank.")
    await expect(anonymous.page.locator("#name-input")).to_have_value("frank")
    await expect_live(anonymous, "websocket")
    await anonymous.screenshot("frank")
    anonymous.assert_console_clean()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_forced_transport_is_kept(open_tab: OpenTab, transport: str) -> None:
    tab = await open_tab(f"transport={transport}&username=gina")
    await expect_live(tab, transport)
    await expect_count(tab, 1)
    await tab.chat(f"over {transport}")
    await expect(tab.page.locator("#messages li")).to_have_text([f"gina: over {transport}"])
    # A page on polling must not have been upgraded behind its back.
    await expect(tab.page.locator("#transport")).to_have_text(transport)
    tab.assert_console_clean()


async def test_pages_show_reconnecting_when_the_server_goes_away(
    open_tab: OpenTab, server: Server
) -> None:
    socketio_tab = await open_tab("username=alice")
    sse_tab = await open_tab("transport=sse&username=carol")
    await expect_live(socketio_tab, "websocket")
    await expect_live(sse_tab, "SSE")

    assert await asyncio.to_thread(server.stop) == 0
    for tab in (socketio_tab, sse_tab):
        await expect(tab.page.locator("#state")).to_have_attribute(
            "data-state", "reconnecting", timeout=WAIT_MS
        )
        await expect(tab.page.locator("#state")).to_have_text("reconnecting")
    await socketio_tab.screenshot("socketio-reconnecting")
    await sse_tab.screenshot("sse-reconnecting")


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_a_page_that_lost_its_connection_gets_what_it_missed(
    open_tab: OpenTab, server: Server, transport: str
) -> None:
    link = CuttableLink(server.url)
    await link.start()
    try:
        query = "username=alice" + ("&transport=sse" if transport == "sse" else "")
        tab = await open_tab(query, url=link.url)
        await expect_live(tab, "SSE" if transport == "sse" else "websocket")
        bob = await connect_sio(server.url, auth={"username": "bob"})
        messages = tab.page.locator("#messages li")

        assert (await bob.client.call("chat message", "one", timeout=5))["ok"]
        await expect(messages).to_have_text(["bob: one"], timeout=WAIT_MS)

        link.cut()
        await until(lambda: server.user_count() == 1, 10, "the page to be counted gone")
        await expect(tab.page.locator("#state")).to_have_text("reconnecting", timeout=WAIT_MS)
        for text in ("two", "three"):
            assert (await bob.client.call("chat message", text, timeout=5))["ok"]
        link.restore()

        await expect_live(tab, "SSE" if transport == "sse" else "websocket")
        await expect(messages).to_have_text(["bob: one", "bob: two", "bob: three"], timeout=WAIT_MS)
        assert (await bob.client.call("chat message", "four", timeout=5))["ok"]
        await expect(messages).to_have_text(
            ["bob: one", "bob: two", "bob: three", "bob: four"], timeout=WAIT_MS
        )
        await expect(tab.page.locator("#events li", has_text="missed")).to_have_count(0)
        await tab.screenshot(f"resumed-{transport}")
    finally:
        await link.close()


async def test_the_page_recovers_its_socketio_session(
    open_tab: OpenTab, start_server: StartServer
) -> None:
    """With BROADCAST_SOCKETIO_RECOVERY on, the page's official client recovers by itself after
    a network drop: the same session, what it missed once, in order."""
    server = start_server({"BROADCAST_SOCKETIO_RECOVERY": "true"})
    link = CuttableLink(server.url)
    await link.start()
    try:
        tab = await open_tab("username=alice&transport=websocket", url=link.url)
        await expect_live(tab, "websocket")
        root = tab.page.locator("html")
        await expect(root).to_have_attribute("data-recovered", "false", timeout=WAIT_MS)
        bob = await connect_sio(server.url, auth={"username": "bob"})
        messages = tab.page.locator("#messages li")
        assert (await bob.client.call("chat message", "one", timeout=5))["ok"]
        await expect(messages).to_have_text(["bob: one"], timeout=WAIT_MS)

        link.cut()
        await until(lambda: server.user_count() == 1, 10, "the page to be counted gone")
        for text in ("two", "three"):
            assert (await bob.client.call("chat message", text, timeout=5))["ok"]
        link.restore()

        await expect(root).to_have_attribute("data-recovered", "true", timeout=WAIT_MS)
        await expect(messages).to_have_text(["bob: one", "bob: two", "bob: three"], timeout=WAIT_MS)
        assert (await bob.client.call("chat message", "four", timeout=5))["ok"]
        await expect(messages).to_have_text(
            ["bob: one", "bob: two", "bob: three", "bob: four"], timeout=WAIT_MS
        )
        await expect(tab.page.locator("#events li", has_text="missed")).to_have_count(0)
    finally:
        await link.close()
