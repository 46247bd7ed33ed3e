"""Requests against the real server: every request is charged, one join draws a bounded
welcome, and no client can pre-empt the application's publishes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from .api import api_server, call
from .client import Chat
from .conftest import ServerFactory

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
# The welcome's fields besides its history (room, name, users, count, token, recovered).
WELCOME_FIELDS_BYTES = 1024
EMOJI_TEXT = "😀" * 2000


def test_a_welcome_is_cut_to_a_mib_of_history_and_never_says_recovered(
    wschat_server: ServerFactory,
) -> None:
    """200 kept messages of 2,000 emoji (1.6 MB): a join with since=0 gets the newest that fit
    in 1 MiB, and recovered false, not a complete-looking 1.6 MB of history."""
    server = wschat_server("--history-size", "200", "--rate", "1000", "--burst", "1000")
    writer = Chat(server.ws_url)
    writer.join("lobby", "writer")
    for index in range(200):
        writer.send(type="say", room="lobby", text=EMOJI_TEXT, ref=f"r{index}")
    acks = 0
    while acks < 200:
        acks += writer.recv()["type"] == "ack"
    reader = Chat(server.ws_url)
    reader.send(type="join", room="lobby", name="reader", since=0)
    frame = reader.ws.recv(timeout=10)
    assert isinstance(frame, str)
    welcome = json.loads(frame)
    assert welcome["type"] == "welcome"
    assert len(frame.encode("utf-8")) <= MIB + WELCOME_FIELDS_BYTES
    ids = [message["id"] for message in welcome["history"]]
    assert ids[-1] == 200 and len(ids) > 100 and ids == list(range(ids[0], 201))
    assert welcome["recovered"] is False
    writer.close()
    reader.close()


def test_join_leave_and_who_draw_from_a_bucket_of_their_own(wschat_server: ServerFactory) -> None:
    """With --request-burst 10 (the join spent one), 9 `who` are answered and the 10th is
    refused with rate_limited; then join/leave pairs the same way on a fresh
    connection; a say is charged apart, and another client is served as before."""
    server = wschat_server("--request-rate", "0.1", "--request-burst", "10")
    flooder, other = Chat(server.ws_url), Chat(server.ws_url)
    flooder.join("lobby", "flooder")
    other.join("lobby", "other")
    for _ in range(10):
        flooder.send(type="who", room="lobby")
    answers = Counter(_answer(flooder) for _ in range(10))
    assert answers == {"members": 9, "rate_limited": 1}, answers
    # Read again after the hold (at most 1 s): the say draws from its own bucket.
    flooder.send(type="say", room="lobby", text="a say is charged apart")
    assert _answer(flooder) == "ack"
    pairs = Chat(server.ws_url)
    pairs.join("lobby", "pairs")
    for index in range(5):
        pairs.send(type="join", room=f"r{index}")
        pairs.send(type="leave", room=f"r{index}")
    answers = Counter(_answer(pairs) for _ in range(10))
    assert answers == {"welcome": 5, "left": 4, "rate_limited": 1}, answers
    other.send(type="who", room="lobby")
    assert _answer(other) == "members"
    flooder.close()
    pairs.close()
    other.close()


def _answer(chat: Chat) -> str:
    """The type of the next answer, or its error code; presence and broadcasts skipped."""
    while (event := chat.recv())["type"] in ("presence", "message"):
        pass
    return str(event["code"]) if event["type"] == "error" else str(event["type"])


def test_a_client_cannot_pre_empt_an_api_publish(
    wschat_server: ServerFactory, tmp_path: Path
) -> None:
    """No client may join as `api` (any case, or a name that reads the same); a client and the
    application saying the same ref under one name are two stored messages: the publish is
    201, stored and broadcast."""
    server, api = api_server(wschat_server, tmp_path)
    mallory = Chat(server.ws_url)
    for name in ("api", "API", "\u0430pi"):  # the last with a Cyrillic a
        mallory.send(type="join", room="lobby", name=name)
        assert _answer(mallory) == "name_invalid"
    mallory.join("lobby", "bot")
    assert mallory.say("lobby", "pre-empted?", ref="a1")["type"] == "ack"
    assert mallory.expect("message")["text"] == "pre-empted?"
    publish = {"room": "lobby", "name": "bot", "text": "from the application", "ref": "a1"}
    status, published = call(api, "POST", "/api/publish", publish)
    assert status == 201
    assert mallory.expect("message")["text"] == "from the application"
    assert call(api, "POST", "/api/publish", publish) == (200, published)
    history = call(api, "GET", "/api/rooms/lobby/history")[1]
    assert [m["text"] for m in history["messages"]] == ["pre-empted?", "from the application"]
    mallory.close()
