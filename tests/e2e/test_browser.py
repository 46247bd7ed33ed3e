"""The browser client (wschat/static/) in headless Chromium against the real `twistd -n wschat`.

Each test starts its own server through the `wschat_server` fixture; pages of different people
live in separate browser contexts (separate localStorage, like separate browsers).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .api import api_server, call
from .browser import (
    EXPECT_TIMEOUT_MS,
    REPO_ROOT,
    WEBSOCKET_FAILED_RE,
    PageWatch,
    artifacts_dir,
    import_playwright,
    message_ids,
    say_frames,
    texts,
)
from .client import Chat
from .conftest import ServerFactory

sync_api = import_playwright()
expect = sync_api.expect
expect.set_options(timeout=EXPECT_TIMEOUT_MS)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

DESKTOP = {"width": 1000, "height": 680}
PHONE = {"width": 390, "height": 844}
XSS = "<img src=x onerror=alert(1)>"
EVIL_NAME = "<img src=y onerror=alert(2)>"  # names are user data too
UPDATE_DOCS_SCREENSHOT_ENV = "WSCHAT_UPDATE_DOCS_SCREENSHOT"

OpenChat = Callable[..., Any]


@pytest.fixture
def open_chat(chromium: Any, request: pytest.FixtureRequest) -> Iterator[OpenChat]:
    """`open_chat(url, name)`: a page in its own context, named and online.

    At the end every page is screenshotted into the artifacts directory, and the test fails if
    any page logged a console error, threw, or opened a dialog (alert/confirm/prompt).
    """
    opened: list[tuple[Any, Any, PageWatch]] = []

    def open_(
        url: str,
        name: str,
        *,
        viewport: dict[str, int] | None = None,
        ignore_https_errors: bool = False,
        outage: bool = False,
        wait_online: bool = True,
    ) -> Any:
        context = chromium.new_context(
            viewport=viewport or DESKTOP, ignore_https_errors=ignore_https_errors
        )
        context.set_default_timeout(EXPECT_TIMEOUT_MS)
        page = context.new_page()
        # outage=True: the server is killed on purpose, so Chromium's own "WebSocket
        # connection failed" lines are expected; script errors are still not.
        watch = PageWatch(name, allowed=[WEBSOCKET_FAILED_RE] if outage else [])
        page.on("console", watch.on_console)
        page.on("pageerror", watch.on_page_error)
        page.on("dialog", watch.on_dialog)
        page.sent_frames = []
        page.on(
            "websocket",
            lambda ws: ws.on("framesent", lambda payload: page.sent_frames.append(payload)),
        )
        opened.append((context, page, watch))
        page.goto(url)
        expect(page.locator("#name-dialog")).to_be_visible()
        page.fill("#name-input", name)
        page.press("#name-input", "Enter")
        if wait_online:
            expect(page.locator("#status")).to_have_attribute("data-state", "online")
        return page

    yield open_

    problems: list[str] = []
    for i, (context, page, watch) in enumerate(opened):
        try:
            if not page.is_closed():
                stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{request.node.name}-{i}-{watch.name}")
                page.screenshot(path=artifacts_dir() / f"{stem}.png")
        finally:
            context.close()
        problems += watch.problems()
    assert not problems, "\n".join(problems)


def send(page: Any, text: str) -> None:
    """Type `text` and press Enter, as a person would."""
    page.fill("#input", text)
    page.press("#input", "Enter")


def delivered(page: Any, text: str) -> Any:
    """The delivered (server-numbered) messages on `page` whose text is exactly `text`."""
    return page.locator("#messages li[data-id]").filter(
        has=page.locator(".text", has_text=re.compile(f"^{re.escape(text)}$"))
    )


def status(page: Any) -> Any:
    return page.locator("#status")


def bot_say(bot: Chat, text: str) -> None:
    """Say `text` in lobby from a Python client; wait for its ack and its broadcast copy."""
    bot.send(type="say", room="lobby", text=text)
    while not (event := bot.recv())["type"] == "message" or event["text"] != text:
        assert event["type"] != "error", event


def history_texts(ws_url: str, room: str) -> list[str]:
    """What a brand-new client gets as the room's history: the server's stored truth."""
    chat = Chat(ws_url)
    try:
        welcome = chat.join(room, "auditor")
        return [m["text"] for m in welcome["history"]]
    finally:
        chat.close()


def test_two_users_see_each_others_messages_and_presence(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """Two pages as two people: history on join, live messages both ways, own marked, presence."""
    srv = wschat_server()
    url = f"{srv.http_url}/#/lobby"
    alice = open_chat(url, "alice")
    send(alice, "hello before bob")
    expect(delivered(alice, "hello before bob")).to_have_count(1)

    bob = open_chat(url, "bob")
    # History on join, and bob sees alice as present; alice sees bob arrive.
    expect(delivered(bob, "hello before bob")).to_have_count(1)
    expect(bob.locator("#users li")).to_have_text(["alice", re.compile("^bob")])
    expect(alice.locator("#users li[data-name=bob]")).to_have_count(1)
    expect(alice.locator("#user-count")).to_have_text("2")

    send(bob, "hi alice")
    send(alice, "hi bob\nsecond line")
    for page in (alice, bob):
        expect(delivered(page, "hi alice")).to_have_count(1)
        expect(delivered(page, "hi bob\nsecond line")).to_have_count(1)
        assert texts(page) == ["hello before bob", "hi alice", "hi bob\nsecond line"]
        ids = message_ids(page)
        assert ids == sorted(ids) and len(set(ids)) == 3
    # Own messages are marked, the others' are not; each shows the name and a local time.
    expect(delivered(alice, "hi bob\nsecond line")).to_have_class(re.compile(r"\bown\b"))
    expect(delivered(bob, "hi bob\nsecond line")).not_to_have_class(re.compile(r"\bown\b"))
    expect(delivered(bob, "hi alice").locator(".author")).to_have_text("bob")
    expect(delivered(bob, "hi alice").locator("time")).to_have_text(re.compile(r"\d"))
    expect(alice.locator("#input")).to_have_value("")  # sent messages leave the box

    # The send button works as well as Enter.
    bob.fill("#input", "by button")
    bob.click("#send")
    expect(delivered(alice, "by button")).to_have_count(1)

    # Leaving (closing the tab) is presence too.
    bob.close()
    expect(alice.locator("#users li[data-name=bob]")).to_have_count(0)
    expect(alice.locator("#user-count")).to_have_text("1")

    # The name is remembered: a reload goes straight back online as alice.
    alice.reload()
    expect(status(alice)).to_have_attribute("data-state", "online")
    expect(alice.locator("#name-dialog")).to_be_hidden()
    expect(alice.locator("#me-name")).to_have_text("alice")
    expect(delivered(alice, "by button")).to_have_count(1)


def test_a_big_room_shows_the_count_and_pages_its_member_panel(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """Over --member-list-limit the page shows the count, pages the member panel with `who`
    ("Show more"), and gets the full list back when the room comes under the limit again."""
    srv = wschat_server("--member-list-limit", "3", "--presence-interval", "0.05")
    url = f"{srv.http_url}/#/big"
    # These clients never read: max_queue=None lets websockets' reader thread go on taking
    # frames (presence every 0.05 s) and answering the server's pings. With its default
    # queue of 16 it stops reading, and the server drops them ~15 s in: on a loaded machine,
    # mid-test.
    others = []
    for i in range(229):
        chat = Chat(srv.ws_url, max_queue=None)
        chat.join("big", f"m{i:03d}")
        others.append(chat)
    alice = open_chat(url, "alice")
    expect(alice.locator("#user-count")).to_have_text("230")
    # One page of 200 names in order, then the rest on demand.
    expect(alice.locator("#users li")).to_have_count(200)
    expect(alice.locator("#users-note")).to_have_text("230 people; showing 200")
    alice.click("#users-more")
    expect(alice.locator("#users li")).to_have_count(230)
    expect(alice.locator("#users-more")).to_be_hidden()
    names = alice.locator("#users li").evaluate_all("els => els.map(e => e.dataset.name)")
    assert names == sorted([f"m{i:03d}" for i in range(229)] + ["alice"])
    # Joins keep the count live while the list is not sent.
    late = Chat(srv.ws_url, max_queue=None)
    late.join("big", "late")
    expect(alice.locator("#user-count")).to_have_text("231")
    # Back under the limit: the page reads the list again and keeps it up to date.
    for chat in others[1:]:
        chat.close()
    expect(alice.locator("#user-count")).to_have_text("3")
    expect(alice.locator("#users li")).to_have_text([re.compile("^alice"), "late", "m000"])
    expect(alice.locator("#users-note")).to_be_hidden()
    late.close()
    expect(alice.locator("#users li")).to_have_text([re.compile("^alice"), "m000"])
    expect(alice.locator("#user-count")).to_have_text("2")
    others[0].close()


def test_markup_in_a_message_is_shown_as_text_and_never_run(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """`<img src=x onerror=alert(1)>` appears literally on both pages; no element, no dialog."""
    srv = wschat_server()
    url = f"{srv.http_url}/#/lobby"
    alice = open_chat(url, "alice")
    bob = open_chat(url, "bob")
    send(alice, XSS)
    evil = open_chat(url, EVIL_NAME)
    send(evil, "hi")
    for page in (alice, bob):
        expect(delivered(page, XSS)).to_have_count(1)
        expect(delivered(page, XSS).locator(".text")).to_have_text(XSS)
        expect(page.locator("#users li").filter(has_text=EVIL_NAME)).to_have_count(1)
        expect(delivered(page, "hi").locator(".author")).to_have_text(EVIL_NAME)
        page.wait_for_timeout(300)  # an onerror handler would have fired by now
        assert page.locator("#messages img, #users img").count() == 0
    # The open_chat fixture fails the test if any page opened a dialog or logged an error.


ISOLATE_JS = """
els => els.map(e => [e.tagName, e.dir, getComputedStyle(e).unicodeBidi])
"""


def test_names_and_texts_are_bidi_isolated_so_none_can_forge_another_line(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """A right-to-left name, a text with RLO and one with a newline and a forged sender: each
    name and text is its own bidi isolate, and the forged line stays in its sender's message."""
    srv = wschat_server()
    alice = open_chat(f"{srv.http_url}/#/lobby", "alice")
    mallory = Chat(srv.ws_url)
    mallory.join("lobby", "\u05de\u05dc\u05d5\u05e8\u05d9")
    forged = "ok\nalice: I owe mallory 100"
    bot_say(mallory, forged)
    bot_say(mallory, "\u202eevil 001 si ecirp")
    expect(alice.locator("#messages li[data-id]")).to_have_count(2)
    forged_msg = alice.locator("#messages li[data-id]").first
    expect(forged_msg.locator(".author")).to_have_text("\u05de\u05dc\u05d5\u05e8\u05d9")
    assert forged_msg.locator(".text").inner_text() == forged
    expect(alice.locator("#messages li[data-id] .author", has_text="alice")).to_have_count(0)
    expect(alice.locator("#users .user-name")).to_have_count(2)
    authors = alice.locator("#messages .author").evaluate_all(ISOLATE_JS)
    texts_ = alice.locator("#messages .text").evaluate_all(ISOLATE_JS)
    users = alice.locator("#users .user-name").evaluate_all(ISOLATE_JS)
    assert len(authors) == len(texts_) == len(users) == 2
    assert all(tag == "BDI" and bidi == "isolate" for tag, _, bidi in authors + users)
    assert all(d == "auto" and bidi in ("isolate", "plaintext") for _, d, bidi in texts_)


def test_server_errors_show_beside_the_input(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """A taken name and a refused message show as text next to the input, never as an alert."""
    srv = wschat_server()
    url = f"{srv.http_url}/#/lobby"
    open_chat(url, "alice")
    second = open_chat(url, "alice", wait_online=False)
    expect(second.locator("#error")).to_contain_text("taken")
    # The page asks for another name and joins with it.
    expect(second.locator("#name-dialog")).to_be_visible()
    second.fill("#name-input", "alice2")
    second.press("#name-input", "Enter")
    expect(status(second)).to_have_attribute("data-state", "online")
    expect(second.locator("#error")).to_be_empty()

    # Too long: the page stops it before sending and says why, keeping the text.
    long_text = "x" * 2001
    second.fill("#input", long_text)
    second.press("#input", "Enter")
    expect(second.locator("#error")).to_contain_text("2000")
    expect(second.locator("#input")).to_have_value(long_text)

    # A server-side refusal (control character) marks the message as not sent.
    send(second, "bell\x07")
    failed = second.locator("#messages li.pending[data-state=failed]")
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("Not sent")
    expect(second.locator("#error")).not_to_be_empty()
    second.locator("#messages li.failed button.discard").click()
    expect(failed).to_have_count(0)


def test_a_kick_shows_and_opening_the_room_joins_again(
    wschat_server: ServerFactory, open_chat: OpenChat, tmp_path: Path
) -> None:
    """A `left` the page did not ask for (an API kick) says so beside the input; opening the
    room's tab joins it again."""
    srv, api = api_server(wschat_server, tmp_path)
    alice = open_chat(f"{srv.http_url}/#/lobby", "alice")
    bot = Chat(srv.ws_url)
    bot.join("lobby", "bot")
    assert call(api, "POST", "/api/kick", {"room": "lobby", "name": "alice"})[0] == 200
    bot.expect_presence(left=["alice"])
    expect(alice.locator("#error")).to_contain_text("removed from the room")
    alice.locator("#rooms button[data-room=lobby]").click()
    bot.expect_presence(joined=["alice"])
    bot_say(bot, "welcome back")
    expect(delivered(alice, "welcome back")).to_have_count(1)


def test_reconnects_after_the_server_is_killed_and_shows_missed_messages_once(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """SIGKILL the server: pages show reconnecting, come back by themselves, miss nothing.

    alice's page is held offline (navigator.onLine = false, which the client respects) while the
    server restarts and bob's page reconnects by its own backoff and sends; then alice's network
    comes back and her page rejoins with `since` and shows bob's message exactly once, in order.
    """
    srv = wschat_server()
    url = f"{srv.http_url}/#/lobby"
    alice = open_chat(url, "alice", outage=True)
    bob = open_chat(url, "bob", outage=True)
    send(alice, "before the outage")
    expect(delivered(bob, "before the outage")).to_have_count(1)

    srv.kill()
    for page in (alice, bob):
        expect(status(page)).to_have_attribute("data-state", "reconnecting")
        expect(status(page)).to_have_text(re.compile(r"^reconnecting in \d+ s$"))

    alice.context.set_offline(True)
    expect(status(alice)).to_have_attribute("data-state", "offline")

    srv.start()  # same port, same database
    expect(status(bob)).to_have_attribute("data-state", "online")
    send(bob, "while alice was away")
    expect(delivered(bob, "while alice was away")).to_have_count(1)
    expect(status(alice)).to_have_attribute("data-state", "offline")
    expect(delivered(alice, "while alice was away")).to_have_count(0)

    alice.context.set_offline(False)
    expect(status(alice)).to_have_attribute("data-state", "online")
    expect(delivered(alice, "while alice was away")).to_have_count(1)
    assert texts(alice) == ["before the outage", "while alice was away"]
    ids = message_ids(alice)
    assert ids == sorted(set(ids))
    # The rejoin asked only for what was missed, and took the name over with the old token.
    joins = [f for f in map(_json, alice.sent_frames) if f.get("type") == "join"]
    assert joins[-1]["since"] == ids[0] and joins[-1]["token"]
    # Presence is right again on both sides.
    expect(alice.locator("#users li")).to_have_count(2)
    expect(bob.locator("#users li")).to_have_count(2)


# Records the close code of every WebSocket the page opens (the client keeps its socket private).
RECORD_CLOSE_CODES = """
(() => {
  const Native = window.WebSocket;
  window.wsCloseCodes = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('close', (event) => window.wsCloseCodes.push(event.code));
    }
  };
})();
"""


def test_the_page_comes_back_by_itself_after_a_graceful_restart(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """After a drain's 1012 the page comes back by itself in seconds and rejoins with since."""
    srv = wschat_server("--drain-seconds", "0.5")
    url = f"{srv.http_url}/#/lobby"
    alice = open_chat(url, "alice", outage=True)
    alice.add_init_script(RECORD_CLOSE_CODES)
    alice.reload()
    expect(status(alice)).to_have_attribute("data-state", "online")
    send(alice, "before the restart")
    expect(delivered(alice, "before the restart")).to_have_count(1)

    srv.stop()  # SIGTERM, and wait for the drained process to exit
    expect(status(alice)).to_have_text(re.compile(r"^reconnecting in [1-5] s$"))
    assert alice.evaluate("window.wsCloseCodes")[0] == 1012
    srv.start()
    expect(status(alice)).to_have_attribute("data-state", "online")
    bot = Chat(srv.ws_url)
    try:
        bot.join("lobby", "bot")
        bot_say(bot, "after the restart")
    finally:
        bot.close()
    expect(delivered(alice, "after the restart")).to_have_count(1)
    assert texts(alice) == ["before the restart", "after the restart"]
    joins = [f for f in map(_json, alice.sent_frames) if f.get("type") == "join"]
    assert joins[-1]["since"] == message_ids(alice)[0] and joins[-1]["token"]


def test_close_codes_decide_whether_the_page_comes_back_by_itself(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """After 1008 the page stays offline until asked; after 1013 it comes back by itself."""
    srv = wschat_server()
    sockets: list[Any] = []

    def route(ws: Any) -> None:
        server = ws.connect_to_server()
        ws.on_message(server.send)
        server.on_message(ws.send)
        sockets.append(ws)

    alice = open_chat(f"{srv.http_url}/#/lobby", "alice")
    alice.route_web_socket(re.compile(r"/ws$"), route)
    alice.reload()  # the route applies to new sockets
    expect(status(alice)).to_have_attribute("data-state", "online")
    assert len(sockets) == 1

    sockets[-1].close(code=1008, reason="test: policy violation")
    expect(status(alice)).to_have_text(re.compile(r"^offline: .*policy violation"))
    expect(alice.locator("#reconnect-now")).to_be_visible()
    alice.wait_for_timeout(6000)  # longer than any reconnect delay after 1001/1012/1013
    assert len(sockets) == 1, "the page reconnected by itself after 1008"
    alice.click("#reconnect-now")
    expect(status(alice)).to_have_attribute("data-state", "online")
    assert len(sockets) == 2

    sockets[-1].close(code=1013, reason="test: try again later")
    expect(status(alice)).to_have_text(re.compile(r"^reconnecting in [1-5] s$"))
    expect(status(alice)).to_have_attribute("data-state", "online")
    assert len(sockets) == 3


def test_a_gap_larger_than_the_kept_history_replaces_the_list(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """After `recovered: false` the page shows the server's latest history, never a partial set."""
    srv = wschat_server("--history-size", "3")
    url = f"{srv.http_url}/#/lobby"
    alice = open_chat(url, "alice", outage=True)
    bob = open_chat(url, "bob", outage=True)
    send(alice, "old")
    expect(delivered(bob, "old")).to_have_count(1)

    srv.kill()
    expect(status(alice)).to_have_attribute("data-state", "reconnecting")
    alice.context.set_offline(True)
    srv.start()
    expect(status(bob)).to_have_attribute("data-state", "online")
    for i in range(1, 5):  # four missed messages, one more than the server keeps
        send(bob, f"missed {i}")
        expect(delivered(bob, f"missed {i}")).to_have_count(1)

    alice.context.set_offline(False)
    expect(status(alice)).to_have_attribute("data-state", "online")
    expect(delivered(alice, "missed 4")).to_have_count(1)
    # The latest history; before it, only what the page read back with `history` to fill its
    # screen, one run without a hole up to it: never a partial set.
    assert texts(alice)[-3:] == ["missed 2", "missed 3", "missed 4"]
    ids = message_ids(alice)
    assert ids == list(range(ids[0], ids[-1] + 1))


def test_a_message_typed_while_the_server_is_down_is_delivered_once(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """Typed during the outage: shown as pending, sent after the page reconnects by itself, once."""
    srv = wschat_server()
    url = f"{srv.http_url}/#/lobby"
    alice = open_chat(url, "alice", outage=True)
    send(alice, "first")
    expect(delivered(alice, "first")).to_have_count(1)

    srv.kill()
    expect(status(alice)).to_have_attribute("data-state", "reconnecting")
    send(alice, "typed while down")
    pending = alice.locator("#messages li.pending", has_text="typed while down")
    expect(pending).to_have_attribute("data-state", "queued")
    expect(pending).to_contain_text("Waiting for connection")

    srv.start()
    expect(status(alice)).to_have_attribute("data-state", "online")
    expect(delivered(alice, "typed while down")).to_have_count(1)
    expect(alice.locator("#messages li.pending")).to_have_count(0)
    assert texts(alice) == ["first", "typed while down"]

    assert history_texts(srv.ws_url, "lobby") == ["first", "typed while down"]
    frames = say_frames(alice.sent_frames, "typed while down")
    assert len(frames) == 1 and frames[0]["ref"]


def test_a_lost_ack_is_resent_with_the_same_ref_and_stored_once(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """The connection drops after the server stored a message but before its ack arrived.

    A Playwright WebSocket route passes frames through and, once, swallows the ack and cuts the
    connection. The page must resend with the same `ref`; the server recognises it, so the
    history holds the message once and the page shows it once.
    """
    srv = wschat_server()
    url = f"{srv.http_url}/#/lobby"
    lost_text = "ack goes missing"
    cut = {"done": False}
    page_frames: list[str] = []

    def route(ws: Any) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            page_frames.append(message if isinstance(message, str) else message.decode())
            server.send(message)

        def from_server(message: str | bytes) -> None:
            frame = _json(message)
            if not cut["done"] and frame.get("type") == "ack":
                sent = say_frames(page_frames, lost_text)
                if sent and frame.get("ref") == sent[0]["ref"]:
                    cut["done"] = True
                    ws.close(code=1012, reason="test: connection lost")
                    server.close()
                    return
            ws.send(message)

        ws.on_message(from_page)
        server.on_message(from_server)

    alice = open_chat(url, "alice")
    alice.route_web_socket(re.compile(r"/ws$"), route)
    alice.reload()  # the route applies to new sockets
    expect(status(alice)).to_have_attribute("data-state", "online")
    send(alice, lost_text)
    # Reconnected (a second join went out) and resent: the pending message turns delivered.
    expect(delivered(alice, lost_text)).to_have_count(1)
    expect(alice.locator("#messages li.pending")).to_have_count(0)

    frames = say_frames(page_frames, lost_text)
    assert cut["done"] and len(frames) == 2, frames
    joins = [f for f in map(_json, page_frames) if f.get("type") == "join"]
    assert len(joins) == 2 and joins[1]["since"] >= 0
    assert frames[0]["ref"] == frames[1]["ref"]
    assert history_texts(srv.ws_url, "lobby") == [lost_text]


def test_rooms_come_from_the_url_and_tabs_switch_between_them(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """`?room=` and `#/room` pick the room; a person can be in several rooms at once."""
    srv = wschat_server()
    alice = open_chat(f"{srv.http_url}/?room=dev", "alice")
    expect(alice.locator("#rooms button[role=tab][aria-selected=true]")).to_have_text("#dev")
    bob = open_chat(f"{srv.http_url}/#/random", "bob")

    # alice joins "random" through the room box: a second tab, now selected, URL follows.
    alice.fill("#room-input", "random")
    alice.press("#room-input", "Enter")
    expect(alice.locator("#rooms li[data-room]")).to_have_count(2)
    expect(alice.locator("#rooms button[aria-selected=true]")).to_have_text("#random")
    assert alice.evaluate("location.hash") == "#/random"
    expect(alice.locator("#users li[data-name=bob]")).to_have_count(1)

    send(alice, "in random")
    expect(delivered(bob, "in random")).to_have_count(1)

    # Back to dev with the keyboard (arrow keys on the tab list): random's message stays there.
    alice.locator("#rooms button[aria-selected=true]").focus()
    alice.keyboard.press("ArrowLeft")
    expect(alice.locator("#rooms button[aria-selected=true]")).to_have_text("#dev")
    expect(delivered(alice, "in random")).to_have_count(0)
    send(alice, "in dev")
    expect(delivered(alice, "in dev")).to_have_count(1)

    # A message in a room that is not shown raises an unread badge on its tab.
    send(bob, "psst")
    expect(alice.locator("#rooms li[data-room=random] .badge")).to_have_text("1")
    alice.locator("#rooms button[data-room=random]").click()
    expect(delivered(alice, "psst")).to_have_count(1)
    expect(alice.locator("#rooms .badge")).to_have_count(0)
    assert history_texts(srv.ws_url, "dev") == ["in dev"]

    # Changing the hash by hand opens that room too.
    alice.evaluate("location.hash = '#/third'")
    expect(alice.locator("#rooms button[aria-selected=true]")).to_have_text("#third")
    expect(alice.locator("#rooms li[data-room=third]")).to_have_attribute("data-state", "joined")


def test_the_list_follows_new_messages_unless_scrolled_up(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """New messages scroll into view at the bottom; someone reading older ones is not moved."""
    srv = wschat_server("--rate", "1000", "--burst", "1000")
    bot = Chat(srv.ws_url)
    try:
        bot.join("lobby", "bot")
        for i in range(40):
            bot_say(bot, f"backlog {i}")
        alice = open_chat(f"{srv.http_url}/#/lobby", "alice")
        expect(delivered(alice, "backlog 39")).to_be_in_viewport()

        bot_say(bot, "live 1")
        expect(delivered(alice, "live 1")).to_be_in_viewport()

        # Scroll up, and go on once the page's own scroll listener has run (it was added
        # before ours, so it runs first).
        alice.locator("#messages").evaluate(
            """el => new Promise(done => {
                el.addEventListener('scroll', () => done(), {once: true});
                el.scrollTop = 0;
            })"""
        )
        bot_say(bot, "live 2")
        expect(delivered(alice, "live 2")).to_have_count(1)
        assert alice.locator("#messages").evaluate("el => el.scrollTop") == 0
        expect(alice.locator("#jump")).to_be_visible()
        alice.click("#jump")
        expect(delivered(alice, "live 2")).to_be_in_viewport()
        expect(alice.locator("#jump")).to_be_hidden()
    finally:
        bot.close()


def test_phone_sized_screen_and_keyboard_only(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """On a 390 px wide screen nothing scrolls sideways, and the chat works from the keyboard."""
    srv = wschat_server()
    bob = open_chat(f"{srv.http_url}/#/lobby", "bob")
    send(bob, "a-very-long-word-" * 12)
    alice = open_chat(f"{srv.http_url}/#/lobby", "alice", viewport=PHONE)
    expect(delivered(alice, "a-very-long-word-" * 12)).to_have_count(1)
    overflow = alice.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    for selector in ("#input", "#send", "#status"):
        expect(alice.locator(selector)).to_be_in_viewport()

    # After a fresh load, the skip link is the first stop of Tab and leads to the message box.
    alice.reload()
    expect(status(alice)).to_have_attribute("data-state", "online")
    alice.keyboard.press("Tab")
    expect(alice.locator(".skip-link")).to_be_focused()
    alice.keyboard.press("Enter")
    alice.keyboard.type("typed with keys only")
    alice.keyboard.press("Shift+Enter")
    alice.keyboard.type("second line")
    alice.keyboard.press("Enter")
    expect(delivered(bob, "typed with keys only\nsecond line")).to_have_count(1)
    alice.keyboard.type("via the button")
    alice.keyboard.press("Tab")
    expect(alice.locator("#send")).to_be_focused()
    alice.keyboard.press("Enter")
    expect(delivered(bob, "via the button")).to_have_count(1)


def test_the_chat_works_over_https_and_wss(
    wschat_server: ServerFactory, open_chat: OpenChat
) -> None:
    """Against the TLS endpoint (generated certificate) the page uses wss:// and chats normally."""
    srv = wschat_server(tls=True)
    url = f"{srv.https_url}/#/secure"
    alice = open_chat(url, "alice", ignore_https_errors=True)
    bob = open_chat(url, "bob", ignore_https_errors=True)
    for page in (alice, bob):
        assert page.evaluate("location.protocol") == "https:"
    send(alice, "over tls")
    send(bob, "over tls too")
    for page in (alice, bob):
        expect(delivered(page, "over tls")).to_have_count(1)
        expect(delivered(page, "over tls too")).to_have_count(1)
        expect(page.locator("#users li")).to_have_count(2)
    urls = []
    alice.on("websocket", lambda ws: urls.append(ws.url))
    alice.reload()
    expect(status(alice)).to_have_attribute("data-state", "online")
    assert urls == [f"wss://127.0.0.1:{srv.tls_port}/ws"]


def test_screenshot_of_a_conversation(wschat_server: ServerFactory, open_chat: OpenChat) -> None:
    """A screenshot with a few messages is saved as an artifact (and, on request, for the docs)."""
    srv = wschat_server()
    url = f"{srv.http_url}/#/lobby"
    alice = open_chat(url, "alice", viewport={"width": 960, "height": 600})
    bob = open_chat(url, "bob")
    lines = [
        (bob, "Morning! Is the release still on for today?"),
        (alice, "Yes, tagging it after lunch. The reconnect fix is in."),
        (bob, "Great. I killed the server mid-chat and nothing got lost."),
        (alice, "That's the idea: missed messages come back exactly once."),
    ]
    for page, text in lines:
        send(page, text)
        expect(delivered(alice, text)).to_have_count(1)
    carol = open_chat(url, "carol")
    expect(alice.locator("#users li")).to_have_count(3)
    # A second room with unread messages, shown as a tab with a badge.
    alice.fill("#room-input", "release")
    alice.press("#room-input", "Enter")
    expect(alice.locator("#rooms li[data-room=release]")).to_have_attribute("data-state", "joined")
    alice.locator("#rooms button[data-room=lobby]").click()
    bob.fill("#room-input", "release")
    bob.press("#room-input", "Enter")
    send(bob, "Changelog draft is up.")
    send(bob, "Please review before 3.")
    expect(alice.locator("#rooms li[data-room=release] .badge")).to_have_text("2")
    alice.fill("#input", "On it, see you at 3")
    alice.locator("#input").blur()

    target = artifacts_dir() / "chat.png"
    alice.screenshot(path=target)
    carol.set_viewport_size(PHONE)
    carol.screenshot(path=artifacts_dir() / "chat-phone.png")
    assert target.stat().st_size > 10_000
    if os.environ.get(UPDATE_DOCS_SCREENSHOT_ENV) == "1":
        shutil.copyfile(target, REPO_ROOT / "docs" / "screenshot.png")


def _json(raw: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
