"""`history` and `search` (docs/protocol.md): the hub's answers on the in-memory store, then the
same requests as frames through the real factory and protocol on a task.Clock (wschat/testing.py)
for what only the wire shows: validation, the answers' shape, the welcome byte budget."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.task import Clock

from wschat.chat.errors import InvalidField, NotInRoom, RateLimited
from wschat.chat.limits import Limits
from wschat.chat.memory import MemoryHistory
from wschat.chat.model import (
    PAGE_DEFAULT_LIMIT,
    SEARCH_DEFAULT_LIMIT,
    History,
    Join,
    Leave,
    Message,
    Page,
    Results,
    Search,
    format_ts,
    message_bytes,
)
from wschat.chat.search import Query
from wschat.chat.session import Session
from wschat.server.settings import WsSettings
from wschat.testing import OP_TEXT, Client, make_factory, text

from .chatkit import Peer, World, run

ROOM = "lobby"


def world_of(texts: list[str], limits: Limits = Limits(), keep: int = 10_000) -> World:
    """A world whose room holds `texts` as messages 1..n, published by the application."""
    world = World(limits, store=MemoryHistory(keep))
    for said in texts:
        run(world.hub.publish(ROOM, "bot", said, None))
    return world


def member(world: World, name: str = "alice", room: str = ROOM) -> tuple[Session, Peer]:
    session, peer = world.connect(name)
    run(world.hub.join(session, Join(room, name)))
    peer.take()
    return session, peer


def page(world: World, session: Session, **fields: Any) -> tuple[list[int], bool]:
    """The ids of the page `history` answers (oldest first), and its `more`."""
    run(world.hub.history(session, History(ROOM, **fields)))
    answer = session.outbox.take()[-1]
    assert isinstance(answer, Page) and answer.room == ROOM
    return [m.id for m in answer.messages], answer.more


def found(world: World, session: Session, q: str, **fields: Any) -> tuple[list[int], int | None]:
    """The ids of the results `search` answers (newest first), and its `next`."""
    run(world.hub.search(session, Search(ROOM, Query.parse(q), **fields)))
    answer = session.outbox.take()[-1]
    assert isinstance(answer, Results) and (answer.room, answer.q) == (ROOM, q)
    return [m.id for m in answer.messages], answer.next


def numbered(count: int) -> list[str]:
    return [f"m{i}" for i in range(1, count + 1)]


# --- history ---------------------------------------------------------------------------------


def test_history_without_before_or_after_is_the_newest_page() -> None:
    """Neither `before` nor `after`: the newest `limit` messages, oldest first; `more` says
    whether older ones are kept."""
    world = world_of(numbered(10))
    alice, _ = member(world)
    assert page(world, alice, limit=3) == ([8, 9, 10], True)
    assert page(world, alice, limit=10) == (list(range(1, 11)), False)
    assert page(world, alice, limit=200) == (list(range(1, 11)), False)


def test_the_default_limit_is_50() -> None:
    """Without `limit` a page holds 50 messages."""
    world = world_of(numbered(PAGE_DEFAULT_LIMIT + 1))
    alice, _ = member(world)
    ids, more = page(world, alice)
    assert ids == list(range(2, PAGE_DEFAULT_LIMIT + 2)) and more is True
    assert page(world, alice, before=2) == ([1], False)


def test_before_pages_back_and_more_is_exact_at_the_edge() -> None:
    """`before` (exclusive) gives the messages just older; `more` is true while one older than
    the page is kept, false exactly when the page reaches the first message."""
    world = world_of(numbered(10))
    alice, _ = member(world)
    assert page(world, alice, before=6, limit=4) == ([2, 3, 4, 5], True)
    assert page(world, alice, before=6, limit=5) == ([1, 2, 3, 4, 5], False)
    assert page(world, alice, before=6, limit=6) == ([1, 2, 3, 4, 5], False)
    assert page(world, alice, before=1) == ([], False)
    assert page(world, alice, before=0) == ([], False)
    assert page(world, alice, before=99, limit=2) == ([9, 10], True)


def test_after_pages_forward_and_more_is_exact_at_the_edge() -> None:
    """`after` (exclusive) gives the messages just newer; `more` is true while a newer one is
    kept beyond the page, false exactly when the page reaches the newest."""
    world = world_of(numbered(10))
    alice, _ = member(world)
    assert page(world, alice, after=5, limit=4) == ([6, 7, 8, 9], True)
    assert page(world, alice, after=5, limit=5) == ([6, 7, 8, 9, 10], False)
    assert page(world, alice, after=0, limit=3) == ([1, 2, 3], True)
    assert page(world, alice, after=10) == ([], False)


def test_scrolling_back_then_forward_visits_every_message_once() -> None:
    """Following `before` from the newest page to the first, then `after` back to the newest,
    lists each message exactly once each way."""
    world = world_of(numbered(23))
    alice, _ = member(world)
    back: list[int] = []
    ids, more = page(world, alice, limit=5)
    back = ids + back
    while more:
        ids, more = page(world, alice, before=back[0], limit=5)
        back = ids + back
    assert back == list(range(1, 24))
    forward, more = page(world, alice, after=0, limit=7)
    while more:
        ids, more = page(world, alice, after=forward[-1], limit=7)
        forward += ids
    assert forward == back


def test_messages_retention_removed_are_simply_absent() -> None:
    """A store that keeps the last 5 of 10: pages hold the kept messages nearest to where they
    start, and `more` is false at the oldest kept one."""
    world = world_of(numbered(10), keep=5)
    alice, _ = member(world)
    assert page(world, alice) == ([6, 7, 8, 9, 10], False)
    assert page(world, alice, before=8, limit=10) == ([6, 7], False)
    assert page(world, alice, before=4) == ([], False)
    assert page(world, alice, after=2, limit=2) == ([6, 7], True)


def test_a_page_is_exactly_what_a_message_event_is() -> None:
    """Each message of a page is the message as it was broadcast (the same values)."""
    world = World(store=MemoryHistory(100))
    alice, peer = member(world)
    run(world.hub.publish(ROOM, "bot", "hello", "r1", user="u-bot"))
    [live] = peer.take()
    assert isinstance(live, Message) and live.user == "u-bot"
    run(world.hub.history(alice, History(ROOM)))
    assert peer.take() == [Page(ROOM, [live], False)]


def test_only_members_may_read_history() -> None:
    """`history` for a room the connection has not joined (or has left) is not_in_room, even
    when others are in it."""
    world = world_of(numbered(3))
    alice, _ = member(world)
    bob, _ = member(world, "bob", "elsewhere")
    with pytest.raises(NotInRoom):
        run(world.hub.history(bob, History(ROOM)))
    world.hub.leave(alice, Leave(ROOM))
    with pytest.raises(NotInRoom):
        run(world.hub.history(alice, History(ROOM)))
    assert not [e for e in alice.outbox.take() if isinstance(e, Page)]


# --- search ----------------------------------------------------------------------------------

CORPUS = [
    "deploy failed on web-1",  # 1
    "Résumé uploaded",  # 2
    "the deployment is done",  # 3
    "DEPLOY FAILED again",  # 4
    "failed to deploy",  # 5
    "nothing to see",  # 6
    "resume the deploy",  # 7
]


def test_search_matches_every_word_ignoring_case_and_accents() -> None:
    """A message matches when it holds every word of `q`, in any order and case, accents
    ignored both ways; results are newest first."""
    world = world_of(CORPUS)
    alice, _ = member(world)
    assert found(world, alice, "deploy failed") == ([5, 4, 1], None)
    assert found(world, alice, "FAILED Deploy") == ([5, 4, 1], None)
    assert found(world, alice, "resume") == ([7, 2], None)
    assert found(world, alice, "résumé") == ([7, 2], None)
    assert found(world, alice, "web 1") == ([1], None)
    assert found(world, alice, "absent words") == ([], None)


def test_only_the_last_word_matches_as_a_prefix() -> None:
    """`depl` finds deploy and deployment; a word before the last must be whole."""
    world = world_of(CORPUS)
    alice, _ = member(world)
    assert found(world, alice, "depl") == ([7, 5, 4, 3, 1], None)
    assert found(world, alice, "failed depl") == ([5, 4, 1], None)
    assert found(world, alice, "depl failed") == ([], None)
    assert found(world, alice, "deployment") == ([3], None)


def test_search_pages_with_next_to_the_end() -> None:
    """`next` is the `before` of the next page, and null exactly when no older match is left;
    following it visits every match once."""
    world = world_of([f"match {i}" if i % 3 else f"other {i}" for i in range(1, 31)])
    alice, _ = member(world)
    matching = [i for i in range(30, 0, -1) if i % 3]
    assert len(matching) == SEARCH_DEFAULT_LIMIT
    assert found(world, alice, "match") == (matching, None)
    visited: list[int] = []
    ids, after = found(world, alice, "match", limit=6)
    visited += ids
    while after is not None:
        assert after == visited[-1]
        ids, after = found(world, alice, "match", before=after, limit=6)
        visited += ids
    assert visited == matching
    assert found(world, alice, "match", before=matching[5], limit=14) == (matching[6:], None)
    assert found(world, alice, "match", before=matching[5], limit=13) == (
        matching[6:19],
        matching[18],
    )


def test_only_members_may_search_and_the_query_is_checked() -> None:
    """`search` outside the room is not_in_room; a query without words, over 200 characters
    or over 16 words is invalid_field."""
    world = world_of(CORPUS)
    alice, _ = member(world)
    bob, _ = member(world, "bob", "elsewhere")
    with pytest.raises(NotInRoom):
        run(world.hub.search(bob, Search(ROOM, Query.parse("deploy"))))
    for bad in ("", "?!", "x" * 201, " ".join(["w"] * 17)):
        with pytest.raises(InvalidField):
            Query.parse(bad)
    assert found(world, alice, "x" * 200) == ([], None)
    assert found(world, alice, " ".join(["deploy"] * 16)) == ([7, 5, 4, 1], None)


# --- the weight of an answer -----------------------------------------------------------------


def heavy_world(count: int, cap_messages: float) -> World:
    """`count` messages of equal weight, with --welcome-history-bytes at `cap_messages` of
    them."""
    texts = [f"heavy {i:02d} " + "x" * 300 for i in range(1, count + 1)]
    weight = message_bytes(Message(ROOM, 1, "bot", texts[0], format_ts(0)))
    return world_of(texts, Limits(welcome_history_bytes=int(weight * cap_messages)))


def test_a_page_weighs_at_most_the_welcome_history_bytes() -> None:
    """Over --welcome-history-bytes, a page holds the messages that fit nearest to where it
    starts and says `more`, in either direction."""
    world = heavy_world(10, 3.5)
    alice, _ = member(world)
    assert page(world, alice, limit=10) == ([8, 9, 10], True)
    assert page(world, alice, before=8, limit=2) == ([6, 7], True)
    assert page(world, alice, after=0, limit=10) == ([1, 2, 3], True)
    assert page(world, alice, after=7, limit=10) == ([8, 9, 10], False)


def test_a_page_holds_at_least_one_message() -> None:
    """A message heavier than --welcome-history-bytes is sent alone, with `more` when others
    lie beyond it."""
    world = heavy_world(3, 0.5)
    alice, _ = member(world)
    assert page(world, alice) == ([3], True)
    assert page(world, alice, before=2) == ([1], False)
    assert page(world, alice, after=0) == ([1], True)
    assert page(world, alice, after=2) == ([3], False)


def test_results_weigh_at_most_the_welcome_history_bytes() -> None:
    """Search results over --welcome-history-bytes hold what fits (at least one), and `next`
    points past the last one carried."""
    world = heavy_world(10, 3.5)
    alice, _ = member(world)
    assert found(world, alice, "heavy", limit=10) == ([10, 9, 8], 8)
    assert found(world, alice, "heavy", before=3, limit=10) == ([2, 1], None)
    tiny = heavy_world(3, 0.5)
    bob, _ = member(tiny, "bob")
    assert found(tiny, bob, "heavy") == ([3], 3)


# --- what a request costs --------------------------------------------------------------------


def test_history_and_search_are_charged_to_the_request_bucket() -> None:
    """Each history and search takes a request token (join too): past the burst they are
    rate_limited and answer nothing, until the bucket refills."""
    world = world_of(CORPUS, Limits(request_rate_per_s=1, request_burst=4))
    alice, _ = member(world)  # the join took one
    page(world, alice)
    found(world, alice, "deploy")
    page(world, alice, before=3)
    for request in (
        world.hub.history(alice, History(ROOM)),
        world.hub.search(alice, Search(ROOM, Query.parse("deploy"))),
    ):
        with pytest.raises(RateLimited) as refused:
            run(request)
        assert "history and search" in refused.value.message
        assert 0 < refused.value.retry_in_s <= 1
    assert alice.outbox.take() == []
    world.now_s += 1
    assert page(world, alice, limit=1) == ([7], True)


def test_a_refused_request_is_charged_too() -> None:
    """history or search refused for not being a member still costs a token: refusals are no
    free way to make the server work."""
    world = world_of(CORPUS, Limits(request_rate_per_s=1, request_burst=3))
    alice, _ = member(world)
    with pytest.raises(NotInRoom):
        run(world.hub.history(alice, History("elsewhere")))
    with pytest.raises(NotInRoom):
        run(world.hub.search(alice, Search("elsewhere", Query.parse("deploy"))))
    with pytest.raises(RateLimited):
        run(world.hub.history(alice, History(ROOM)))


# --- on the wire -----------------------------------------------------------------------------


def wire_client(
    clock: Clock,
    texts: list[str],
    settings: WsSettings = WsSettings(),
    limits: Limits = Limits(),
) -> Client:
    """A client of the real factory that joined the room holding `texts` (1..n)."""
    factory = make_factory(clock, settings, limits, store=MemoryHistory(10_000))
    for said in texts:
        run(factory.hub.publish(ROOM, "bot", said, None))
    client = Client(factory)
    client.join(ROOM, "alice")
    return client


def answers(client: Client, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for payload in payloads:
        client.send(text(payload))
    return [e for e in client.events() if e["type"] != "message"]


def test_the_answers_on_the_wire(clock: Clock) -> None:
    """`page` and `results` are sent as docs/protocol.md shows them: messages with their
    `"type": "message"`, `more` and `next` always present (`next` null at the end)."""
    client = wire_client(clock, ["deploy one", "deploy two"])
    [paged, searched, last] = answers(
        client,
        [
            {"type": "history", "room": ROOM, "before": 2},
            {"type": "search", "room": ROOM, "q": "DEPL", "limit": 1},
            {"type": "search", "room": ROOM, "q": "depl", "before": 2},
        ],
    )
    assert paged == {
        "type": "page",
        "room": ROOM,
        "messages": [
            {
                "type": "message",
                "room": ROOM,
                "id": 1,
                "name": "bot",
                "text": "deploy one",
                "ts": paged["messages"][0]["ts"],
            }
        ],
        "more": False,
    }
    assert searched["type"] == "results" and searched["q"] == "DEPL" and searched["next"] == 2
    assert [m["id"] for m in searched["messages"]] == [2]
    assert searched["messages"][0]["type"] == "message"
    assert last == {
        "type": "results",
        "room": ROOM,
        "q": "depl",
        "messages": last["messages"],
        "next": None,
    }
    assert [m["text"] for m in last["messages"]] == ["deploy one"]


@pytest.mark.parametrize(
    "request_",
    [
        {"type": "history", "room": ROOM, "before": 5, "after": 1},
        {"type": "history", "room": ROOM, "limit": 0},
        {"type": "history", "room": ROOM, "limit": 201},
        {"type": "history", "room": ROOM, "limit": "5"},
        {"type": "history", "room": ROOM, "limit": True},
        {"type": "history", "room": ROOM, "before": -1},
        {"type": "history", "room": ROOM, "after": 1.5},
        {"type": "history", "room": ROOM, "before": "9"},
        {"type": "history"},
        {"type": "search", "room": ROOM},
        {"type": "search", "room": ROOM, "q": 5},
        {"type": "search", "room": ROOM, "q": ""},
        {"type": "search", "room": ROOM, "q": "..."},
        {"type": "search", "room": ROOM, "q": "x" * 201},
        {"type": "search", "room": ROOM, "q": " ".join(["w"] * 17)},
        {"type": "search", "room": ROOM, "q": "a", "limit": 101},
        {"type": "search", "room": ROOM, "q": "a", "limit": 0},
        {"type": "search", "room": ROOM, "q": "a", "before": -3},
    ],
    ids=lambda r: json.dumps(r)[:60],
)
def test_bad_fields_are_invalid_field(clock: Clock, request_: dict[str, Any]) -> None:
    """Both `before` and `after`, limits out of 1-200 (history) or 1-100 (search), ids that
    are not integers from 0, and queries without words or over 200 characters are
    invalid_field, with the request's ref; the connection stays open."""
    client = wire_client(clock, ["hello"])
    [error] = answers(client, [{**request_, "ref": "q1"}])
    assert (error["type"], error["code"], error["ref"]) == ("error", "invalid_field", "q1")
    [ok] = answers(client, [{"type": "history", "room": ROOM}])
    assert ok["type"] == "page"


def test_the_limits_bounds_are_accepted(clock: Clock) -> None:
    """limit 200 (history) and 100 (search) are served; before and after 0 are ids too."""
    client = wire_client(clock, ["hello"])
    kinds = answers(
        client,
        [
            {"type": "history", "room": ROOM, "limit": 200},
            {"type": "history", "room": ROOM, "after": 0, "limit": 1},
            {"type": "search", "room": ROOM, "q": "hello", "limit": 100},
            {"type": "search", "room": ROOM, "q": "hello", "before": 0},
        ],
    )
    assert [(k["type"], len(k["messages"])) for k in kinds] == [
        ("page", 1),
        ("page", 1),
        ("results", 1),
        ("results", 0),
    ]


def test_non_members_get_not_in_room_on_the_wire(clock: Clock) -> None:
    """history and search of a room the connection is not in are not_in_room."""
    client = wire_client(clock, ["hello"])
    errors = answers(
        client,
        [
            {"type": "history", "room": "elsewhere"},
            {"type": "search", "room": "elsewhere", "q": "hello"},
        ],
    )
    assert [e["code"] for e in errors] == ["not_in_room", "not_in_room"]


def test_rate_limited_on_the_wire(clock: Clock) -> None:
    """Past --request-burst, history and search are refused rate_limited (and the connection
    is read again once a token is back)."""
    client = wire_client(clock, [], limits=Limits(request_rate_per_s=1, request_burst=3))
    kinds = answers(
        client,
        [
            {"type": "history", "room": ROOM},
            {"type": "search", "room": ROOM, "q": "x"},
            {"type": "history", "room": ROOM},
        ],
    )
    assert [k.get("code", k["type"]) for k in kinds] == ["page", "results", "rate_limited"]
    clock.advance(1)
    [again] = answers(client, [{"type": "search", "room": ROOM, "q": "x"}])
    assert again["type"] == "results"


def test_the_unknown_type_error_names_history_and_search(clock: Clock) -> None:
    """An unknown type's error lists every request type, history and search among them."""
    client = wire_client(clock, [])
    [error] = answers(client, [{"type": "scrollback", "room": ROOM}])
    assert error["code"] == "unknown_type"
    assert "history" in error["message"] and "search" in error["message"]


@pytest.mark.parametrize(
    ("request_", "answer"),
    [
        ({"type": "history", "room": ROOM, "limit": 200}, "page"),
        ({"type": "search", "room": ROOM, "q": "heavy", "limit": 100}, "results"),
    ],
)
def test_answers_are_charged_to_the_welcome_budget(
    clock: Clock, request_: dict[str, Any], answer: str
) -> None:
    """A page or results overdrawing --welcome-burst is sent, then nothing the client sends is
    served (input held, nothing refused) until the debt is paid back at --welcome-rate."""
    rate, burst = 2000, 8000
    client = wire_client(
        clock,
        ["heavy " + "x" * 500 for _ in range(30)],
        WsSettings(welcome_rate_bytes_per_s=rate, welcome_burst_bytes=burst),
        Limits(history_size=1),
    )
    client.send(text(request_))
    client.send(text({"type": "who", "room": ROOM}))
    frames = [(json.loads(p), len(p)) for op, p in client.frames() if op == OP_TEXT]
    [(sent, size)] = frames
    assert sent["type"] == answer and len(sent["messages"]) == 30
    # The welcome (one message) took about 600 bytes of the burst, the answer over 15 KB.
    assert size > burst
    assert client.transport.producerState == "paused"
    debt_s = (size - burst) / rate
    clock.advance(debt_s - 0.5)
    assert client.events() == []
    clock.advance(1.0)
    [members] = client.events()
    assert members["type"] == "members"
