"""The page's rooms in a real browser (Chromium): ``/?channel=room-1`` and the room field. A room
is a channel of the server: the page shows its count ("M in room-1") beside the global one, its
joins and leaves, and its chat; a page with no room is the classic page. Nothing sleeps: a
message's absence is shown by a later message that arrived (every client receives the events in
the order they were published)."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from playwright.async_api import expect

from tests.browser import WAIT_MS, CuttableLink, OpenTab, Tab, expect_count, expect_live
from tests.support import Server, connect_sio, until


async def expect_room(tab: Tab, text: str | None) -> None:
    """The room's count reads ``text`` (``None``: the page is in no room, and shows none)."""
    room_count = tab.page.locator("#room-count")
    if text is None:
        await expect(room_count).to_be_hidden(timeout=WAIT_MS)
    else:
        await expect(room_count).to_have_text(text, timeout=WAIT_MS)
        await expect(room_count).to_be_visible()


async def expect_messages(tab: Tab, messages: list[str]) -> None:
    await expect(tab.page.locator("#messages li")).to_have_text(messages, timeout=WAIT_MS)


async def expect_event(tab: Tab, text: str) -> None:
    """``text`` is one of the joins and leaves the page shows."""
    events = tab.page.locator("#events li", has_text=re.compile(f"^{re.escape(text)}$"))
    await expect(events).to_have_count(1, timeout=WAIT_MS)


async def change_room(tab: Tab, room: str) -> None:
    await tab.page.fill("#room-input", room)
    await tab.page.click("#room-join")


async def expect_address(tab: Tab, room: str | None) -> None:
    """The address has ``?channel=<room>`` (``None``: no ``channel`` at all)."""
    if room is None:
        await expect(tab.page).not_to_have_url(re.compile(r"[?&]channel="), timeout=WAIT_MS)
    else:
        pattern = re.compile(rf"[?&]channel={re.escape(room)}(&|$)")
        await expect(tab.page).to_have_url(pattern, timeout=WAIT_MS)


@pytest.mark.timeout(120)
async def test_two_rooms_counts_joins_chat_and_changing_room(open_tab: OpenTab) -> None:
    alice = await open_tab("username=alice&channel=room-1")
    bob = await open_tab("username=bob&channel=room-1")
    await expect_room(bob, "2 in room-1")
    carol = await open_tab("username=carol&channel=room-2")
    await expect_event(carol, "carol joined room-2 (1 in room-2)")
    dave = await open_tab("username=dave")  # no room: the classic page
    everyone = (alice, bob, carol, dave)
    for tab in everyone:
        await expect_count(tab, 4)
        await expect_live(tab, "websocket")
    await expect_room(alice, "2 in room-1")
    await expect_room(bob, "2 in room-1")
    await expect_room(carol, "1 in room-2")
    await expect_room(dave, None)
    await expect(dave.page.locator("#chat-to")).to_be_hidden()

    # Joins of a room reach that room only (carol's came before dave's join, which alice has).
    await expect_event(alice, "bob joined room-1 (2 in room-1)")
    await expect_event(alice, "dave joined (4 online)")
    await expect(alice.page.locator("#events")).not_to_contain_text("room-2")
    await expect(dave.page.locator("#events")).not_to_contain_text("room-")
    await alice.screenshot("alice-in-room-1")
    await dave.screenshot("dave-no-room")

    # In a room, the chat goes to the room; a page with no room chats to everyone.
    await alice.chat("hello room-1")
    await dave.chat("hello everyone")
    await expect_messages(bob, ["[room-1] alice: hello room-1", "dave: hello everyone"])
    await expect_messages(alice, ["[room-1] alice: hello room-1", "dave: hello everyone"])
    await expect_messages(carol, ["dave: hello everyone"])
    await expect_messages(dave, ["dave: hello everyone"])

    # From a room, "everyone" sends the plain message, as the classic page does.
    await alice.page.select_option("#chat-to", "everyone")
    await alice.chat("all of you")
    await alice.page.select_option("#chat-to", "room")
    await carol.chat("hi room-2")
    for tab in everyone:
        await expect(tab.page.locator("#messages li").last).to_have_text(
            "[room-2] carol: hi room-2" if tab is carol else "alice: all of you", timeout=WAIT_MS
        )

    # bob moves to room-2 with the field: room-1 counts one less, room-2 one more.
    await change_room(bob, "room-2")
    await expect_room(bob, "2 in room-2")
    await expect_room(carol, "2 in room-2")
    await expect_room(alice, "1 in room-1")
    await expect_address(bob, "room-2")
    await expect(bob.page.locator("#chat-to-room")).to_have_text("room-2")
    await expect_event(alice, "bob left room-1 (1 in room-1)")
    await expect_event(carol, "bob joined room-2 (2 in room-2)")
    await expect_count(alice, 4)  # nobody left the server

    # And the chat follows him.
    await bob.chat("moved")
    await alice.chat("anyone?")
    await dave.chat("bye")
    first = ["dave: hello everyone", "alice: all of you"]
    await expect_messages(dave, [*first, "dave: bye"])
    await expect_messages(
        carol, [*first, "[room-2] carol: hi room-2", "[room-2] bob: moved", "dave: bye"]
    )
    await expect_messages(
        bob,
        ["[room-1] alice: hello room-1", *first, "[room-2] bob: moved", "dave: bye"],
    )
    await expect_messages(
        alice,
        ["[room-1] alice: hello room-1", *first, "[room-1] alice: anyone?", "dave: bye"],
    )
    await bob.screenshot("bob-moved-to-room-2")
    await carol.screenshot("carol-room-2")

    # An empty field leaves the room: the page is the classic one again.
    await change_room(bob, "")
    await expect_room(bob, None)
    await expect_room(carol, "1 in room-2")
    await expect_address(bob, None)
    await expect(bob.page.locator("#chat-to")).to_be_hidden()
    await bob.chat("plain again")
    for tab in everyone:
        await expect(tab.page.locator("#messages li").last).to_have_text(
            "bob: plain again", timeout=WAIT_MS
        )
    for tab in everyone:
        tab.assert_console_clean()


async def test_a_refused_room_shows_the_servers_error(open_tab: OpenTab) -> None:
    erin = await open_tab("username=erin&channel=room-1")
    await expect_room(erin, "1 in room-1")
    error = erin.page.locator("#error")

    # A name the server refuses: its error, and the page stays in its room.
    await change_room(erin, "no spaces")
    await expect(error).to_have_text(re.compile(r"^Room refused: .*channel"), timeout=WAIT_MS)
    await expect_room(erin, "1 in room-1")
    await expect_address(erin, "room-1")
    await erin.chat("still in room-1")
    await expect_messages(erin, ["[room-1] erin: still in room-1"])
    await erin.screenshot("erin-refused")
    erin.assert_console_clean()


@pytest.mark.parametrize(
    ("query", "transport"),
    [
        pytest.param("username=fay", "websocket", id="socketio"),
        pytest.param("transport=sse&username=fay", "SSE", id="sse"),
    ],
)
@pytest.mark.parametrize("room", ["no spaces", "private:secret"], ids=["invalid", "private"])
async def test_a_refused_room_in_the_address_leaves_the_page_without_a_room(
    open_tab: OpenTab, query: str, transport: str, room: str
) -> None:
    fay = await open_tab(f"{query}&{urlencode({'channel': room})}")
    await expect(fay.page.locator("#error")).to_have_text(
        re.compile(r"^Room refused: .*channel"), timeout=WAIT_MS
    )
    await expect_live(fay, transport)
    await expect_count(fay, 1)
    await expect_room(fay, None)
    await expect_address(fay, None)
    # The room was refused, not the name.
    await expect(fay.page.locator("#whoami")).to_have_text("You are fay.")
    await expect(fay.page.locator("#room-input")).to_have_value(room)
    await fay.screenshot("fay-refused-room")


async def test_an_sse_page_in_a_room_and_changing_it(open_tab: OpenTab) -> None:
    carol = await open_tab("transport=sse&username=carol&channel=room-1")
    alice = await open_tab("username=alice&channel=room-1")
    await expect_live(carol, "SSE")
    await expect_room(carol, "2 in room-1")
    await expect_room(alice, "2 in room-1")
    await expect_event(carol, "alice joined room-1 (2 in room-1)")
    await alice.chat("hi carol")
    await expect_messages(carol, ["[room-1] alice: hi carol"])

    # Over SSE a new room is a new stream (the name stays, and so does the global count).
    await change_room(carol, "room-2")
    await expect_room(carol, "1 in room-2")
    await expect_room(alice, "1 in room-1")
    await expect_address(carol, "room-2")
    await expect_live(carol, "SSE")
    await expect_event(alice, "carol left room-1 (1 in room-1)")
    await alice.chat("gone?")
    await alice.page.select_option("#chat-to", "everyone")
    await alice.chat("everyone")
    await expect_messages(carol, ["[room-1] alice: hi carol", "alice: everyone"])
    await expect_count(carol, 2)
    await carol.screenshot("carol-sse-room-2")
    alice.assert_console_clean()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_a_page_that_lost_its_connection_comes_back_in_its_room(
    open_tab: OpenTab, server: Server, transport: str
) -> None:
    """Cut off, the page reconnects in the room it is in by then (not the one in the first
    address: the reconnection's auth, or the stream's address, carries it), and gets the room's
    chat it missed."""
    link = CuttableLink(server.url)
    await link.start()
    try:
        query = "username=alice&channel=room-1" + ("&transport=sse" if transport == "sse" else "")
        tab = await open_tab(query, url=link.url)
        shown = "SSE" if transport == "sse" else "websocket"
        await expect_live(tab, shown)
        bob = await connect_sio(server.url, auth={"username": "bob", "channels": ["room-2"]})
        await change_room(tab, "room-2")
        await expect_room(tab, "2 in room-2")

        async def say(text: str) -> None:
            ack = await bob.client.call(
                "chat message", {"channel": "room-2", "message": text}, timeout=5
            )
            assert ack["ok"], ack

        await say("one")
        await expect_messages(tab, ["[room-2] bob: one"])
        link.cut()
        await until(lambda: server.user_count() == 1, 10, "the page to be counted gone")
        await expect(tab.page.locator("#state")).to_have_text("reconnecting", timeout=WAIT_MS)
        for text in ("two", "three"):
            await say(text)
        link.restore()

        await expect_live(tab, shown)
        await expect_room(tab, "2 in room-2")
        await say("four")
        await expect_messages(tab, [f"[room-2] bob: {n}" for n in ("one", "two", "three", "four")])
        await expect(tab.page.locator("#events li", has_text="missed")).to_have_count(0)
        await expect_address(tab, "room-2")
        await tab.screenshot(f"resumed-in-room-{transport}")
    finally:
        await link.close()
