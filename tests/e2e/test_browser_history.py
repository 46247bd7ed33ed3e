"""The browser client's history (wschat/static/timeline.js, history.js, search.js) in headless
Chromium against the real `twistd -n wschat`: scrolling back page by page to a room's first
message, searching and opening a result in its context, "jump to latest", and a page that keeps
at most its window of messages however many arrive.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .browser import EXPECT_TIMEOUT_MS, PageWatch, artifacts_dir, import_playwright, message_ids
from .client import Chat
from .conftest import ServerFactory
from .redis import RedisServer, nodes_on

sync_api = import_playwright()
expect = sync_api.expect
expect.set_options(timeout=EXPECT_TIMEOUT_MS)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# timeline.js's MAX_WINDOW: the most messages a room's list holds; following the newest, the
# oldest leave TRIM_CHUNK at a time.
MAX_WINDOW = 500
TRIM_CHUNK = 100
# The bot's says are no part of what is tested: never refused for their rate.
FAST = ("--rate", "100000", "--burst", "100000")
# The welcome carries the newest 50: the page starts near the end of a long room and pages
# back with `history` through the history of record (SQLite, which keeps every message).
SMALL_WELCOME = ("--history-size", "50")

OpenPage = Callable[[str, str], Any]
# The list begins before message `id` now, or says it holds the room's first message.
EARLIER_OR_START_JS = """id =>
    Number(document.querySelector('#messages li[data-id]').dataset.id) < id
    || document.querySelector('#messages .edge').textContent.startsWith('The beginning')"""
# The list ends after message `id` now.
LATER_JS = """id =>
    Number([...document.querySelectorAll('#messages li[data-id]')].pop().dataset.id) > id"""


@pytest.fixture
def open_page(chromium: Any, request: pytest.FixtureRequest) -> Iterator[OpenPage]:
    """`open_page(url, name)`: a page in its own context, named and online. The test fails on
    console errors, uncaught exceptions and dialogs; each page is screenshotted at the end."""
    opened: list[tuple[Any, Any, PageWatch]] = []

    def open_(url: str, name: str) -> Any:
        context = chromium.new_context(viewport={"width": 1000, "height": 680})
        context.set_default_timeout(EXPECT_TIMEOUT_MS)
        page = context.new_page()
        watch = PageWatch(name)
        page.on("console", watch.on_console)
        page.on("pageerror", watch.on_page_error)
        page.on("dialog", watch.on_dialog)
        page.sent = []
        page.on(
            "websocket", lambda ws: ws.on("framesent", lambda payload: page.sent.append(payload))
        )
        opened.append((context, page, watch))
        page.goto(url)
        page.fill("#name-input", name)
        page.press("#name-input", "Enter")
        expect(page.locator("#status")).to_have_attribute("data-state", "online")
        return page

    yield open_
    problems: list[str] = []
    for i, (context, page, watch) in enumerate(opened):
        try:
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{request.node.name}-{i}")
            page.screenshot(path=artifacts_dir() / f"{stem}.png")
        finally:
            context.close()
        problems += watch.problems()
    assert not problems, "\n".join(problems)


def fill(bot: Chat, texts: list[str], room: str = "lobby") -> list[int]:
    """Say every text in `room` at once (pipelined), and return their ids once all are acked."""
    for i, text in enumerate(texts):
        bot.send(type="say", room=room, text=text, ref=f"fill-{time.monotonic_ns()}-{i}")
    ids: list[int] = []
    while len(ids) < len(texts):
        event = bot.recv()
        assert event["type"] != "error", event
        if event["type"] == "ack":
            ids.append(event["id"])
    return ids


def bot_in(srv: Any, room: str = "lobby") -> Chat:
    bot = Chat(srv.ws_url)
    bot.join(room, "bot")
    return bot


def shown(page: Any) -> list[tuple[int, str]]:
    """(id, text) of every message in the list, in page order."""
    rows = page.eval_on_selector_all(
        "#messages li[data-id]",
        "nodes => nodes.map(n => [Number(n.dataset.id), n.querySelector('.text').textContent])",
    )
    return [(int(i), str(t)) for i, t in rows]


def last_item(page: Any) -> Any:
    return page.locator("#messages li[data-id]").last


def first_id(page: Any) -> int:
    return int(page.eval_on_selector("#messages li[data-id]", "n => Number(n.dataset.id)"))


def top_of(page: Any, msg_id: int) -> float:
    """Where the message `msg_id` is, in pixels from the top of the viewport."""
    return float(
        page.eval_on_selector(
            f"#messages li[data-id='{msg_id}']", "n => n.getBoundingClientRect().top"
        )
    )


def scroll_to_bottom(page: Any) -> None:
    page.eval_on_selector("#messages", "el => { el.scrollTop = el.scrollHeight; }")


def history_frames(page: Any) -> list[str]:
    return [f for f in page.sent if '"type":"history"' in f.replace(" ", "")]


def assert_one_run(rows: list[tuple[int, str]], text_of: Callable[[int], str]) -> None:
    """The rows are consecutive ids, each with its own text: no hole, nothing twice."""
    ids = [i for i, _ in rows]
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids
    assert all(text == text_of(i) for i, text in rows)


def test_scrolling_up_pages_back_to_the_first_message_and_keeps_the_reading_position(
    wschat_server: ServerFactory, open_page: OpenPage
) -> None:
    """520 messages, a welcome of the newest 50: each scroll to the top brings the page
    before it without moving what the person reads, until "The beginning of #lobby" and the
    first message; the list holds at most MAX_WINDOW, in order; scrolling down again pages
    forward to the live end, where a new message shows."""
    srv = wschat_server(*SMALL_WELCOME, *FAST)
    bot = bot_in(srv)
    try:
        ids = fill(bot, [f"message {n}" for n in range(1, 521)])
        text_of = {i: f"message {n}" for n, i in enumerate(ids, 1)}.__getitem__
        alice = open_page(f"{srv.http_url}/#/lobby", "alice")
        expect(last_item(alice)).to_have_attribute("data-id", str(ids[-1]))
        start = first_id(alice)
        assert start > ids[0] + 400, "the welcome carried most of the room: nothing to page"

        moves: list[float] = []
        for _ in range(40):
            if "beginning" in alice.locator("#messages .edge").inner_text():
                break
            before = first_id(alice)
            # Scrolled and measured in one task: the older page cannot land in between.
            was = alice.eval_on_selector(
                "#messages",
                """(el, id) => {
                    el.scrollTop = 0;
                    return el.querySelector(`li[data-id='${id}']`).getBoundingClientRect().top;
                }""",
                before,
            )
            alice.wait_for_function(EARLIER_OR_START_JS, arg=before)
            if first_id(alice) < before:
                moves.append(abs(top_of(alice, before) - was))
        expect(alice.locator("#messages .edge")).to_have_text("The beginning of #lobby")
        rows = shown(alice)
        assert rows[0] == (ids[0], "message 1")
        assert len(rows) == MAX_WINDOW
        assert_one_run(rows, text_of)
        # The message that was at the top stayed where it was as each older page came in.
        assert len(moves) >= 4 and max(moves) <= 2, moves
        assert len(history_frames(alice)) <= 15
        expect(alice.locator("#jump")).to_be_visible()

        # Back down: newer pages until the live end; then a live message joins the list.
        for _ in range(40):
            if alice.locator(f"#messages li[data-id='{ids[-1]}']").count():
                break
            last = shown(alice)[-1][0]
            scroll_to_bottom(alice)
            alice.wait_for_function(LATER_JS, arg=last)
        rows = shown(alice)
        assert rows[-1] == (ids[-1], "message 520") and len(rows) <= MAX_WINDOW
        assert_one_run(rows, text_of)
        scroll_to_bottom(alice)
        expect(alice.locator("#jump")).to_be_hidden()
        (live,) = fill(bot, ["live after paging"])
        expect(alice.locator(f"#messages li[data-id='{live}']")).to_be_in_viewport()
    finally:
        bot.close()


def test_search_opens_a_result_in_its_context_and_jump_to_latest_returns(
    wschat_server: ServerFactory, open_page: OpenPage
) -> None:
    """A search lists the matches newest first with the words marked (accents and case ignored,
    the last word as a prefix), pages on with "More results", and opens a result far back in its
    context: it marked and in view between its neighbours. A message said meanwhile waits
    behind "Jump to latest", which brings back the newest messages."""
    srv = wschat_server(*SMALL_WELCOME, *FAST)
    bot = bot_in(srv)
    try:
        texts = [
            f"Résumé {n}: le déploiement a échoué" if n % 20 == 0 else f"message {n}"
            for n in range(1, 601)
        ]
        ids = fill(bot, texts)
        alice = open_page(f"{srv.http_url}/#/lobby", "alice")
        expect(last_item(alice)).to_have_attribute("data-id", str(ids[-1]))

        alice.fill("#search-input", "resume DEPLOIEMENT ech")
        alice.press("#search-input", "Enter")
        results = alice.locator("#search-results button.result")
        expect(results).to_have_count(20)
        expect(alice.locator("#search-note")).to_have_text("20+ messages match")
        expect(results.first.locator(".text")).to_have_text("Résumé 600: le déploiement a échoué")
        expect(results.first.locator("mark")).to_have_text(["Résumé", "déploiement", "échoué"])
        alice.click("#search-more")
        expect(results).to_have_count(30)
        expect(alice.locator("#search-note")).to_have_text("30 messages match")
        expect(alice.locator("#search-more")).to_be_hidden()
        found = [int(i) for i in results.evaluate_all("bs => bs.map(b => b.dataset.id)")]
        assert found == sorted(found, reverse=True) == [ids[n - 1] for n in range(600, 0, -20)]

        # Message 100, far before the window: opened in its context.
        target = ids[99]
        results.nth(25).click()
        expect(alice.locator("#search-panel")).to_be_hidden()
        hit = alice.locator("#messages li.hit")
        expect(hit).to_have_attribute("data-id", str(target))
        expect(hit).to_be_in_viewport()
        rows = shown(alice)
        assert_one_run(rows, {i: t for i, t in zip(ids, texts, strict=True)}.__getitem__)
        assert rows[0][0] < target - 10 and rows[-1][0] > target + 10 and len(rows) <= 60
        expect(alice.locator("#jump")).to_have_text("Jump to latest ↓")

        # Said while the person reads message 100: not in this part of the list, not lost.
        (live,) = fill(bot, ["said while reading"])
        alice.wait_for_timeout(300)
        expect(alice.locator(f"#messages li[data-id='{live}']")).to_have_count(0)
        alice.click("#jump")
        expect(alice.locator(f"#messages li[data-id='{live}']")).to_be_in_viewport()
        expect(alice.locator("#messages li.hit")).to_have_count(0)
        expect(alice.locator("#jump")).to_be_hidden()
        assert shown(alice)[-2:] == [(ids[-1], texts[-1]), (live, "said while reading")]

        # The query stays with the room: focusing the box shows its results again.
        alice.click("#input")
        alice.focus("#search-input")
        expect(results).to_have_count(30)
        alice.press("#search-input", "Escape")  # empties the box, and ends the room's search
        expect(alice.locator("#search-panel")).to_be_hidden()
        expect(alice.locator("#search-input")).to_have_value("")
    finally:
        bot.close()


def test_a_busy_room_keeps_a_bounded_window_added_a_frame_at_a_time(
    wschat_server: ServerFactory, open_page: OpenPage
) -> None:
    """1,200 messages as fast as the server takes them: the page following the bottom keeps up
    (the last one shown), holds at most MAX_WINDOW in one run, and adds them in batches (far
    fewer list insertions than messages). Scrolled up reading, 600 more do not move what it
    reads nor grow the list; "Jump to latest" reads them back."""
    srv = wschat_server(*SMALL_WELCOME, *FAST)
    bot = bot_in(srv)
    try:
        alice = open_page(f"{srv.http_url}/#/lobby", "alice")
        alice.eval_on_selector(
            "#messages",
            """list => {
                window.insertions = 0;
                new MutationObserver(records => {
                    for (const r of records) if (r.addedNodes.length) window.insertions += 1;
                }).observe(list, { childList: true });
            }""",
        )
        ids = fill(bot, [f"flood {n}" for n in range(1, 1201)])
        expect(last_item(alice)).to_have_attribute("data-id", str(ids[-1]))
        expect(last_item(alice)).to_be_in_viewport()
        rows = shown(alice)
        assert MAX_WINDOW - TRIM_CHUNK <= len(rows) <= MAX_WINDOW
        assert_one_run(rows, {i: f"flood {n}" for n, i in enumerate(ids, 1)}.__getitem__)
        insertions = alice.evaluate("window.insertions")
        assert insertions < len(ids) / 4, insertions

        # Reading a little way up: the list neither grows nor moves under the reader.
        alice.eval_on_selector("#messages", "el => { el.scrollTop = el.scrollHeight / 2; }")
        alice.wait_for_timeout(200)
        reading = alice.evaluate(
            """() => {
                const list = document.getElementById('messages');
                const top = list.getBoundingClientRect().top;
                const n = [...list.querySelectorAll('li[data-id]')]
                    .find(li => li.getBoundingClientRect().bottom > top + 40);
                return Number(n.dataset.id);
            }"""
        )
        was = top_of(alice, reading)
        more = fill(bot, [f"later {n}" for n in range(1, 601)])
        expect(alice.locator("#jump")).to_be_visible()
        alice.wait_for_timeout(500)
        assert len(shown(alice)) <= MAX_WINDOW
        assert abs(top_of(alice, reading) - was) <= 2
        expect(alice.locator(f"#messages li[data-id='{more[-1]}']")).to_have_count(0)
        alice.click("#jump")
        expect(alice.locator(f"#messages li[data-id='{more[-1]}']")).to_be_in_viewport()
        rows = shown(alice)
        assert rows[-1] == (more[-1], "later 600") and len(rows) <= MAX_WINDOW
    finally:
        bot.close()


def test_a_server_without_search_says_so(
    wschat_server: ServerFactory, redis: RedisServer, open_page: OpenPage
) -> None:
    """History in Redis alone has no index: the search box says that the server cannot search,
    and the rest of the page goes on working."""
    node = nodes_on(wschat_server, redis)("a")
    alice = open_page(f"{node.http_url}/#/lobby", "alice")
    alice.fill("#search-input", "anything")
    alice.press("#search-input", "Enter")
    expect(alice.locator("#search-note")).to_have_text("Search is not available on this server.")
    expect(alice.locator("#search-results li")).to_have_count(0)
    expect(alice.locator("#error")).to_have_text("")
    alice.fill("#input", "still chatting")
    alice.press("#input", "Enter")
    expect(alice.locator("#messages li[data-id] .text")).to_have_text(["still chatting"])
    assert message_ids(alice)
