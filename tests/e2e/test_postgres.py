"""The real `twistd wschat --history-db postgresql://...` on a real PostgreSQL: clients say, page
and search; the history outlives the node; PostgreSQL SIGKILLed in the middle of traffic."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ..pgkit import PgServer
from .client import Chat
from .conftest import ServerFactory
from .redis import health

pytestmark = pytest.mark.e2e

# Wide open: these tests are about storage, not about the rate limits.
OPEN_LIMITS = ("--rate", "1000", "--burst", "1000", "--request-rate", "1000")


def answer(chat: Chat, ref: str | None = None, types: tuple[str, ...] = ()) -> dict[str, Any]:
    """The next event that is an answer: an ack or an error for `ref`, or one of `types`
    (broadcast messages and presence are skipped)."""
    while True:
        event = chat.recv()
        if event["type"] in types:
            return event
        if event["type"] in ("ack", "error") and event.get("ref") == ref:
            return event


def said(chat: Chat, text: str, ref: str) -> int:
    """Say in the lobby; the id of its ack."""
    chat.send(type="say", room="lobby", text=text, ref=ref)
    ack = answer(chat, ref)
    assert ack["type"] == "ack", ack
    return int(ack["id"])


def test_a_node_keeps_pages_and_searches_its_history_in_postgres(
    wschat_server: ServerFactory, pg_url: str
) -> None:
    """Said through the node, paged back and searched; after a restart the history is there
    and ids go on; /healthz reports the store."""
    server = wschat_server("--history-db", pg_url, "--history-size", "5", *OPEN_LIMITS)
    chat = Chat(server.ws_url)
    chat.join("lobby", "alice")
    texts = [f"message {i}" for i in range(1, 21)] + ["Résumé of the deploy"]
    for i, text in enumerate(texts):
        assert said(chat, text, f"r{i}") == i + 1
    assert said(chat, "resent", "r3") == 4  # the ref is known: stored once
    chat.send(type="history", room="lobby", before=6, limit=3)
    page = answer(chat, types=("page",))
    assert [m["id"] for m in page["messages"]] == [3, 4, 5] and page["more"] is True
    chat.send(type="search", room="lobby", q="resume DEPL")
    results = answer(chat, types=("results",))
    assert [m["id"] for m in results["messages"]] == [21] and results["next"] is None
    status, body = health(server)
    assert status == 200 and body["store"] == "up"
    chat.close()

    server.stop()
    server.start()
    chat = Chat(server.ws_url)
    welcome = chat.join("lobby", "bob")
    assert [m["id"] for m in welcome["history"]] == [17, 18, 19, 20, 21]
    assert said(chat, "after the restart", "r-after") == 22
    chat.close()


class Sender(threading.Thread):
    """Says r0, r1, ... one at a time, each again with the same ref after storage_unavailable
    (as the browser does) until acked."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.chat = Chat(url)
        self.chat.join("lobby", "sender")  # nobody says anything before this one's welcome
        self.acked: list[tuple[str, int]] = []
        self.refused = 0
        self.stopping = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                ref = f"r{len(self.acked)}"
                self.chat.send(type="say", room="lobby", text=f"text of {ref}", ref=ref)
                event = answer(self.chat, ref)
                if event["type"] == "ack":
                    self.acked.append((ref, event["id"]))
                else:
                    assert event["code"] == "storage_unavailable", event
                    self.refused += 1
                    time.sleep(0.02)
        except BaseException as exc:  # reported by the test
            self.failure = exc

    def wait_acked(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acked) < count:
            assert self.failure is None, self.failure
            assert time.monotonic() < deadline, f"{len(self.acked)} acked, not {count}"
            time.sleep(0.02)


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL of the test's own: it is killed."""
    server = PgServer().start()
    yield server
    server.remove()


def test_postgres_killed_during_traffic_loses_no_acked_message(
    wschat_server: ServerFactory, own_pg: PgServer
) -> None:
    """PostgreSQL SIGKILLed while a client says: storage_unavailable at once meanwhile (history,
    search and a join's welcome too), /healthz 503 with the store down; restarted, the node
    reconnects by itself, and every acked message is stored once, in order; the outage is
    logged once when it starts and once when it ends."""
    url = own_pg.url(own_pg.create_database())
    server = wschat_server("--history-db", url, *OPEN_LIMITS)
    sender = Sender(server.ws_url)
    sender.start()
    reader = Chat(server.ws_url)
    # (Messages said meanwhile may come before the welcome: docs/protocol.md, `welcome`.)
    reader.send(type="join", room="lobby", name="reader")
    assert answer(reader, None, ("welcome",))["type"] == "welcome"
    sender.wait_acked(50)
    own_pg.kill()
    started = time.monotonic()
    reader.send(type="history", room="lobby")
    assert answer(reader, None, ("page",))["code"] == "storage_unavailable"
    reader.send(type="search", room="lobby", q="text")
    assert answer(reader, None, ("results",))["code"] == "storage_unavailable"
    assert time.monotonic() - started < 2.0
    late = Chat(server.ws_url)
    late.send(type="join", room="lobby", name="late")
    assert answer(late, None, ("welcome",))["code"] == "storage_unavailable"
    late.close()
    status, body = health(server)
    assert status == 503 and body["store"] == "down"
    acked_while_down = len(sender.acked)
    time.sleep(1.0)
    assert sender.refused > 10 and len(sender.acked) == acked_while_down

    own_pg.start()
    sender.wait_acked(acked_while_down + 50)
    sender.stopping.set()
    sender.join(timeout=10)
    assert sender.failure is None, sender.failure
    status, body = health(server)
    assert status == 200 and body["store"] == "up"

    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT ref, id FROM messages WHERE room = 'lobby' AND name = 'sender' ORDER BY id"
        ).fetchall()
    # Every acked message once, in the order said, under the id its ack gave; nothing else
    # (a say refused after it was committed was found again by its ref).
    assert stored[: len(sender.acked)] == sender.acked
    assert [ref for ref, _ in stored[len(sender.acked) :]] in ([], [f"r{len(sender.acked)}"])
    log = server.log()
    assert log.count("is out of reach") == 1, log
    assert log.count("is back after") == 1, log
    reader.close()
