"""The browser client through a Redis outage, in headless Chromium against a real
`twistd -n wschat --redis` node on a real redis-server that is SIGKILLed for 25 s."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .browser import EXPECT_TIMEOUT_MS, PageWatch, artifacts_dir, import_playwright
from .client import Chat
from .conftest import ServerFactory
from .redis import RedisServer, nodes_on

sync_api = import_playwright()
expect = sync_api.expect
expect.set_options(timeout=EXPECT_TIMEOUT_MS)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

OUTAGE_S = 25.0
TYPED_APART_S = 2.0
# From Redis accepting connections again: the node is back within a second, and the page's
# wait between tries is at most 4 s.
BACK_WITHIN_MS = 8_000
# wschat.redis.lease.RESTORE_S, with room for a loaded machine.
RESTORE_WITHIN_S = 10.0


@pytest.fixture
def page(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A page in its own context that records the frames it sends and receives; the test fails
    on console errors (other than Chromium's own failed-connection lines), uncaught exceptions
    and dialogs, and the page is screenshotted at the end."""
    context = chromium.new_context(viewport={"width": 1000, "height": 680})
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    page = context.new_page()
    watch = PageWatch("alice")
    page.on("console", watch.on_console)
    page.on("pageerror", watch.on_page_error)
    page.on("dialog", watch.on_dialog)
    page.sent = []
    page.received = []

    def on_socket(ws: Any) -> None:
        ws.on("framesent", lambda payload: page.sent.append(json.loads(payload)))
        ws.on("framereceived", lambda payload: page.received.append(json.loads(payload)))

    page.on("websocket", on_socket)
    yield page
    try:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        page.screenshot(path=artifacts_dir() / f"{stem}.png")
    finally:
        context.close()
    assert not watch.problems(), "\n".join(watch.problems())


def delivered(page: Any, text: str) -> Any:
    """The delivered (server-numbered) messages on `page` whose text is exactly `text`."""
    return page.locator("#messages li[data-id]").filter(
        has=page.locator(".text", has_text=re.compile(f"^{re.escape(text)}$"))
    )


def test_messages_typed_while_redis_is_down_are_sent_once_without_a_flood(
    wschat_server: ServerFactory, durable_redis: RedisServer, page: Any
) -> None:
    """Redis SIGKILLed for 25 s, five messages typed 2 s apart (default --rate 5 --burst 20):
    the page never trips the rate limit and never marks a message as not sent; once Redis is
    back each message is stored once and shown once within seconds, and the red "out of
    reach" line is gone without anyone typing."""
    node = nodes_on(wschat_server, durable_redis)("a")
    page.goto(f"{node.http_url}/#/lobby")
    page.fill("#name-input", "alice")
    page.press("#name-input", "Enter")
    expect(page.locator("#status")).to_have_attribute("data-state", "online")

    durable_redis.kill()
    down_at = time.monotonic()
    typed = [f"typed offline {i}" for i in range(5)]
    for text in typed:
        page.fill("#input", text)
        page.press("#input", "Enter")
        page.wait_for_timeout(TYPED_APART_S * 1000)
        assert page.locator("#messages li.failed").count() == 0
    expect(page.locator("#error")).to_contain_text("out of reach")
    while time.monotonic() - down_at < OUTAGE_S:
        page.wait_for_timeout(1000)
        assert page.locator("#messages li.failed").count() == 0
    durable_redis.start()

    for text in typed:
        expect(delivered(page, text)).to_have_count(1, timeout=BACK_WITHIN_MS)
    expect(page.locator("#messages li.pending")).to_have_count(0)
    expect(page.locator("#error")).to_have_text("")

    refusals = [f["code"] for f in page.received if f["type"] == "error"]
    assert "rate_limited" not in refusals and "unavailable" in refusals, refusals
    says = [f for f in page.sent if f["type"] == "say"]
    # Five first tries, then one try at a time with a wait of 0.5 s and more between tries.
    assert len(says) <= 5 + OUTAGE_S, f"{len(says)} say frames in a {OUTAGE_S:g} s outage"
    auditor = Chat(node.ws_url)
    # A node whose lease ran out during the outage takes new names only once every node has
    # restored its own (RESTORE_S): until then a join is answered `unavailable`, to be retried.
    deadline = time.monotonic() + RESTORE_WITHIN_S
    while True:
        auditor.send(type="join", room="lobby", name="auditor")
        answer = auditor.recv()
        if answer["type"] == "welcome" or time.monotonic() > deadline:
            break
        assert answer.get("code") == "unavailable", answer
        time.sleep(0.25)
    auditor.close()
    assert answer["type"] == "welcome", answer
    assert [m["text"] for m in answer["history"]] == typed
