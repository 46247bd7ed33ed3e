"""The server API (wschat/api.py) in memory with StubTreq, checked against docs/api.yaml:
every documented route and status is produced by a scenario here, and every answer of every
scenario must match the document."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import treq
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from treq.testing import StubTreq

from wschat.chat.errors import SearchUnavailable, StorageUnavailable, Unavailable
from wschat.chat.identity import Identity, sign_in
from wschat.chat.limits import Limits
from wschat.chat.memory import MemoryHistory
from wschat.chat.model import Join, Left, Message, Presence, Recovery
from wschat.chat.search import Query
from wschat.chat.session import Session
from wschat.server.api import Api, ApiContext, ApiKeys, KeyFileError, load_api_keys

from .chatkit import Peer, World, run

SPEC_PATH = Path(__file__).parent.parent / "docs" / "api.yaml"
KEY = "k" * 32
OTHER_KEY = "o" * 32


class FlakyHistory(MemoryHistory):
    """A store whose disk can be made to fail."""

    broken = False

    def _check(self) -> None:
        if self.broken:
            raise StorageUnavailable("disk unreadable")

    async def append(self, *args: Any, **kwargs: Any) -> tuple[Message, bool]:
        self._check()
        return await super().append(*args, **kwargs)

    async def latest(self, room: str, limit: int) -> list[Message]:
        self._check()
        return await super().latest(room, limit)

    async def after(self, room: str, since: int, limit: int) -> Recovery:
        self._check()
        return await super().after(room, since, limit)

    async def page(
        self, room: str, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        self._check()
        return await super().page(room, before, after, limit)

    async def search(
        self, room: str, query: Query, before: int | None, limit: int
    ) -> list[Message]:
        self._check()
        return await super().search(room, query, before, limit)


class UnreachableHistory(MemoryHistory):
    """A shared store (Redis) that is out of reach."""

    async def append(self, *args: Any, **kwargs: Any) -> tuple[Message, bool]:
        raise Unavailable("Redis is out of reach")

    async def latest(self, room: str, limit: int) -> list[Message]:
        raise Unavailable("Redis is out of reach")

    async def page(
        self, room: str, before: int | None, after: int | None, limit: int
    ) -> list[Message]:
        raise Unavailable("Redis is out of reach")

    async def search(
        self, room: str, query: Query, before: int | None, limit: int
    ) -> list[Message]:
        raise Unavailable("Redis is out of reach")


class UnsearchableHistory(MemoryHistory):
    """History without an index (Redis streams alone)."""

    async def search(
        self, room: str, query: Query, before: int | None, limit: int
    ) -> list[Message]:
        raise SearchUnavailable("history in Redis alone has no index")


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: Any


@dataclass
class ApiWorld:
    """A hub with an API in front of it; `call` makes one request and returns the answer."""

    world: World = field(default_factory=lambda: World(store=FlakyHistory(100)))
    disconnected: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        context = ApiContext(self.world.hub, self.world.store, 100, self._disconnect, self._info)
        self.stub = StubTreq(Api(ApiKeys([KEY.encode(), OTHER_KEY.encode()]), context))

    def _disconnect(self, user: str) -> int:
        self.disconnected.append(user)
        return 2 if user == "u-alice" else 0

    def _info(self) -> dict[str, Any]:
        hub = self.world.hub
        return {
            "version": "0.1.0",
            "auth": "optional",
            "connections": hub.connection_count,
            "rooms": hub.room_count,
            "uptime_s": 1.5,
        }

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        key: str | None = KEY,
        raw: bytes | None = None,
    ) -> Answer:
        headers = {"authorization": f"Bearer {key}"} if key is not None else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        responses: list[Any] = []
        # StubTreq copies treq's request functions onto itself at run time, out of mypy's sight.
        self.stub.request(  # type: ignore[attr-defined]
            method, "http://api.test" + path, data=data, headers=headers
        ).addCallback(responses.append)
        self.stub.flush()
        [response] = responses
        content: list[bytes] = []
        treq.content(response).addCallback(content.append)
        self.stub.flush()
        assert response.headers.getRawHeaders("content-type") == ["application/json"]
        return Answer(response.code, json.loads(content[0]), response.headers)

    def member(
        self, name: str, room: str = "lobby", who: Identity | None = None
    ) -> tuple[Session, Peer]:
        session, peer = self.world.connect(name)
        if who is not None:
            sign_in(session, who)
        run(self.world.hub.join(session, Join(room, None if who else name)))
        return session, peer


ALICE = Identity("u-alice", "alice", 2_000_000_000.0)


# --- the document -------------------------------------------------------------------------


class Spec:
    """docs/api.yaml: which (method, path template, status) exist, and their body schemas."""

    def __init__(self, path: Path) -> None:
        self.doc = yaml.safe_load(path.read_text("utf-8"))
        self.registry: Registry[Any] = Registry().with_resource(
            "urn:api", Resource.from_contents(self.doc, default_specification=DRAFT202012)
        )

    def documented(self) -> set[tuple[str, str, int]]:
        return {
            (method.upper(), template, int(status))
            for template, operations in self.doc["paths"].items()
            for method, operation in operations.items()
            for status in operation["responses"]
        }

    def template_of(self, path: str) -> str:
        parts = path.split("?")[0].strip("/").split("/")
        for template in self.doc["paths"]:
            pattern = template.strip("/").split("/")
            if len(pattern) == len(parts) and all(
                p.startswith("{") or p == s for p, s in zip(pattern, parts, strict=True)
            ):
                return str(template)
        raise AssertionError(f"{path} is not a documented path")

    def validate(self, method: str, template: str, answer: Answer) -> None:
        responses = self.doc["paths"][template][method.lower()]["responses"]
        assert str(answer.status) in responses, (method, template, answer.status, answer.body)
        pointer = "/".join(
            ["paths", template.replace("~", "~0").replace("/", "~1"), method.lower(), "responses"]
        )
        response = responses[str(answer.status)]
        if "$ref" in response:
            pointer = response["$ref"].lstrip("#/")
            response = self.resolve(response["$ref"])
        else:
            pointer += f"/{answer.status}"
        schema_ref = f"urn:api#/{pointer}/content/application~1json/schema"
        Draft202012Validator({"$ref": schema_ref}, registry=self.registry).validate(answer.body)

    def resolve(self, ref: str) -> Any:
        node = self.doc
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
        return node


SPEC = Spec(SPEC_PATH)


# --- one scenario per documented answer -----------------------------------------------------

Scenario = Callable[[ApiWorld], Answer]


def _publish_new(w: ApiWorld) -> Answer:
    return w.call("POST", "/api/publish", {"room": "lobby", "text": "hi", "ref": "r1"})


def _publish_again(w: ApiWorld) -> Answer:
    _publish_new(w)
    return _publish_new(w)


def _broken(w: ApiWorld) -> ApiWorld:
    w.world.store.broken = True  # type: ignore[attr-defined]
    return w


def _with_members(w: ApiWorld) -> ApiWorld:
    w.member("alice", who=ALICE)
    w.member("bob")
    return w


SCENARIOS: dict[tuple[str, str, int], Scenario] = {
    ("POST", "/api/publish", 201): _publish_new,
    ("POST", "/api/publish", 200): _publish_again,
    ("POST", "/api/publish", 400): lambda w: w.call("POST", "/api/publish", {"room": "lobby"}),
    ("POST", "/api/publish", 401): lambda w: w.call("POST", "/api/publish", {}, key="wrong"),
    ("POST", "/api/publish", 405): lambda w: w.call("GET", "/api/publish"),
    ("POST", "/api/publish", 413): lambda w: w.call(
        "POST", "/api/publish", raw=b'{"text":"' + b"x" * 70000 + b'"}'
    ),
    ("POST", "/api/publish", 503): lambda w: _publish_new(_broken(w)),
    ("GET", "/api/rooms", 200): lambda w: _with_members(w).call("GET", "/api/rooms"),
    ("GET", "/api/rooms", 401): lambda w: w.call("GET", "/api/rooms", key=None),
    ("GET", "/api/rooms", 405): lambda w: w.call("DELETE", "/api/rooms"),
    ("GET", "/api/rooms/{room}/members", 200): lambda w: _with_members(w).call(
        "GET", "/api/rooms/lobby/members"
    ),
    ("GET", "/api/rooms/{room}/members", 400): lambda w: w.call(
        "GET", "/api/rooms/no%20spaces/members"
    ),
    ("GET", "/api/rooms/{room}/members", 401): lambda w: w.call(
        "GET", "/api/rooms/lobby/members", key="k" * 31
    ),
    ("GET", "/api/rooms/{room}/members", 404): lambda w: w.call("GET", "/api/rooms/empty/members"),
    ("GET", "/api/rooms/{room}/members", 405): lambda w: w.call(
        "POST", "/api/rooms/lobby/members", {}
    ),
    ("GET", "/api/rooms/{room}/history", 200): lambda w: (
        _publish_new(w),
        w.call("GET", "/api/rooms/lobby/history?since=0&limit=10"),
    )[1],
    ("GET", "/api/rooms/{room}/history", 400): lambda w: w.call(
        "GET", "/api/rooms/lobby/history?limit=0"
    ),
    ("GET", "/api/rooms/{room}/history", 401): lambda w: w.call(
        "GET", "/api/rooms/lobby/history", key=None
    ),
    ("GET", "/api/rooms/{room}/history", 404): lambda w: w.call(
        "GET", "/api/rooms/nowhere/history"
    ),
    ("GET", "/api/rooms/{room}/history", 405): lambda w: w.call(
        "PUT", "/api/rooms/lobby/history", {}
    ),
    ("GET", "/api/rooms/{room}/history", 503): lambda w: _broken(w).call(
        "GET", "/api/rooms/lobby/history"
    ),
    ("GET", "/api/rooms/{room}/search", 200): lambda w: (
        _publish_new(w),
        w.call("GET", "/api/rooms/lobby/search?q=hi&limit=1"),
    )[1],
    ("GET", "/api/rooms/{room}/search", 400): lambda w: w.call("GET", "/api/rooms/lobby/search"),
    ("GET", "/api/rooms/{room}/search", 401): lambda w: w.call(
        "GET", "/api/rooms/lobby/search?q=hi", key="wrong"
    ),
    ("GET", "/api/rooms/{room}/search", 405): lambda w: w.call(
        "POST", "/api/rooms/lobby/search?q=hi", {}
    ),
    ("GET", "/api/rooms/{room}/search", 501): lambda w: ApiWorld(
        World(store=UnsearchableHistory(100))
    ).call("GET", "/api/rooms/lobby/search?q=hi"),
    ("GET", "/api/rooms/{room}/search", 503): lambda w: _broken(w).call(
        "GET", "/api/rooms/lobby/search?q=hi"
    ),
    ("POST", "/api/kick", 200): lambda w: _with_members(w).call(
        "POST", "/api/kick", {"room": "lobby", "name": "bob"}
    ),
    ("POST", "/api/kick", 400): lambda w: w.call("POST", "/api/kick", {"room": "lobby"}),
    ("POST", "/api/kick", 401): lambda w: w.call("POST", "/api/kick", {}, key=None),
    ("POST", "/api/kick", 404): lambda w: w.call(
        "POST", "/api/kick", {"room": "lobby", "name": "nobody"}
    ),
    ("POST", "/api/kick", 405): lambda w: w.call("GET", "/api/kick"),
    ("POST", "/api/disconnect", 200): lambda w: w.call(
        "POST", "/api/disconnect", {"user": "u-alice"}
    ),
    ("POST", "/api/disconnect", 400): lambda w: w.call("POST", "/api/disconnect", raw=b"[1]"),
    ("POST", "/api/disconnect", 401): lambda w: w.call("POST", "/api/disconnect", {}, key=None),
    ("POST", "/api/disconnect", 405): lambda w: w.call("GET", "/api/disconnect"),
    ("GET", "/api/info", 200): lambda w: w.call("GET", "/api/info"),
    ("GET", "/api/info", 401): lambda w: w.call("GET", "/api/info", key=None),
    ("GET", "/api/info", 405): lambda w: w.call("POST", "/api/info", {}),
}


def test_every_documented_answer_has_a_scenario() -> None:
    """docs/api.yaml and the scenarios list the same routes, methods and statuses."""
    assert set(SCENARIOS) == SPEC.documented()


@pytest.mark.parametrize("case", sorted(SCENARIOS), ids=lambda c: f"{c[0]} {c[1]} {c[2]}")
def test_the_server_answers_as_documented(case: tuple[str, str, int]) -> None:
    """Each scenario gets its documented status, with a body matching the documented schema."""
    method, template, status = case
    answer = SCENARIOS[case](ApiWorld())
    assert answer.status == status, answer.body
    SPEC.validate(method, template, answer)


# --- what the answers mean ------------------------------------------------------------------


def test_publish_is_stored_and_broadcast_like_a_say() -> None:
    """A publish is acked with the stored id and reaches every member as a message."""
    w = ApiWorld()
    _, peer = w.member("bob")
    peer.take()
    answer = w.call(
        "POST", "/api/publish", {"room": "lobby", "text": "deploy at 5", "name": "ops-bot"}
    )
    assert answer.status == 201 and answer.body["id"] == 1 and answer.body["ref"] is None
    [msg] = peer.take()
    assert isinstance(msg, Message)
    assert (msg.id, msg.name, msg.text, msg.user) == (1, "ops-bot", "deploy at 5", None)
    assert [m.text for m in run(w.world.store.latest("lobby", 10))] == ["deploy at 5"]


def test_publish_is_idempotent_on_ref() -> None:
    """The same ref (and name) gives the same id, and is neither stored nor sent again."""
    w = ApiWorld()
    _, peer = w.member("bob")
    peer.take()
    body = {"room": "lobby", "text": "once", "ref": "job-7", "user": "u-ops"}
    first = w.call("POST", "/api/publish", body)
    second = w.call("POST", "/api/publish", body)
    assert (first.status, second.status) == (201, 200)
    assert first.body == second.body
    [msg] = peer.take()
    assert isinstance(msg, Message) and msg.user == "u-ops" and msg.name == "api"
    assert len(run(w.world.store.latest("lobby", 10))) == 1


def test_publish_applies_the_chats_rules() -> None:
    """Text, name and room are checked as for a say; the error codes are the chat's."""
    w = ApiWorld()
    codes = [
        w.call("POST", "/api/publish", body).body["error"]
        for body in (
            {"room": "lobby", "text": "   "},
            {"room": "lobby", "text": "x" * 2001},
            {"room": "no spaces", "text": "hi"},
            {"room": "lobby", "text": "hi", "name": " padded"},
            {"room": "lobby", "text": "hi", "ref": ""},
        )
    ]
    assert codes == ["text_empty", "text_too_long", "room_invalid", "name_invalid", "invalid_field"]


def test_members_say_who_is_signed_and_how_many_connections() -> None:
    """Each member has its name, its sub when signed, a guest mark, and its connections."""
    w = ApiWorld()
    w.member("alice", who=ALICE)
    w.member("alice", who=ALICE)
    guest, _ = w.world.connect("zed")
    guest.guest = True
    run(w.world.hub.join(guest, Join("lobby", "zed")))
    answer = w.call("GET", "/api/rooms/lobby/members")
    assert answer.body == {
        "room": "lobby",
        "count": 2,
        "members": [
            {"name": "alice", "user": "u-alice", "connections": 2},
            {"name": "zed (guest)", "guest": True, "connections": 1},
        ],
    }
    assert w.call("GET", "/api/rooms").body == {"rooms": [{"room": "lobby", "count": 2}]}


def get(w: ApiWorld, path: str) -> Answer:
    """GET `path`, checked against docs/api.yaml."""
    answer = w.call("GET", path)
    SPEC.validate("GET", SPEC.template_of(path), answer)
    return answer


def published(count: int, world: World | None = None) -> ApiWorld:
    """An API whose room `lobby` holds m1..m<count> (ids 1..count), and no member."""
    w = ApiWorld() if world is None else ApiWorld(world)
    for i in range(1, count + 1):
        assert w.call("POST", "/api/publish", {"room": "lobby", "text": f"m{i}"}).status == 201
    return w


def paged(w: ApiWorld, query: str) -> tuple[list[int], bool]:
    body = get(w, f"/api/rooms/lobby/history?{query}").body
    return [m["id"] for m in body["messages"]], body["more"]


def test_history_pages_back_and_forth_as_the_history_request() -> None:
    """Without since, history pages like `history`: the newest, `before` and `after`
    (exclusive), `more` exact at both ends, 50 by default, a room without members too."""
    w = published(60)
    assert not w.world.hub.members_of("lobby")
    assert paged(w, "") == (list(range(11, 61)), True)
    assert paged(w, "limit=3") == ([58, 59, 60], True)
    assert paged(w, "before=4&limit=2") == ([2, 3], True)
    assert paged(w, "before=4&limit=3") == ([1, 2, 3], False)
    assert paged(w, "after=57&limit=3") == ([58, 59, 60], False)
    assert paged(w, "after=56&limit=3") == ([57, 58, 59], True)
    assert paged(w, "after=0&limit=200")[0] == list(range(1, 61))
    assert paged(w, "before=1") == ([], False)
    assert paged(w, "after=60") == ([], False)
    first = get(w, "/api/rooms/lobby/history?limit=1").body["messages"][0]
    assert first == {"room": "lobby", "id": 60, "name": "api", "text": "m60", "ts": first["ts"]}


def test_history_refuses_what_the_history_request_refuses() -> None:
    """Both `before` and `after` (or either with `since`), limits out of 1-200, and ids that
    are not integers from 0 are 400 invalid_field; a bad room is room_invalid."""
    w = published(3)
    for bad in (
        "before=3&after=1",
        "since=1&before=3",
        "since=1&after=1",
        "limit=0",
        "limit=201",
        "before=-1",
        "after=x",
        "before=",
    ):
        answer = w.call("GET", f"/api/rooms/lobby/history?{bad}")
        assert (answer.status, answer.body["error"]) == (400, "invalid_field"), bad
    assert w.call("GET", "/api/rooms/lobby/history?limit=200").status == 200
    assert w.call("GET", "/api/rooms/a%20b/history").body["error"] == "room_invalid"


def test_history_of_an_unknown_room_is_404_and_an_empty_page_of_a_known_one_is_not() -> None:
    """404 only for a room with neither members here nor a kept message; an empty page of a
    room that has either is 200."""
    w = published(3)
    for query in ("", "before=5", "after=0", "since=0"):
        answer = w.call("GET", f"/api/rooms/nowhere/history?{query}")
        assert (answer.status, answer.body["error"]) == (404, "room_not_found"), query
    assert paged(w, "after=3") == ([], False)
    w.member("bob", room="quiet")
    assert get(w, "/api/rooms/quiet/history").body == {
        "room": "quiet",
        "messages": [],
        "more": False,
    }


def test_history_pages_weigh_at_most_the_welcome_history_bytes() -> None:
    """A page of heavy messages holds those that fit in --welcome-history-bytes (at least
    one) nearest to where it starts, with `more`."""
    w = ApiWorld(World(Limits(welcome_history_bytes=1200), FlakyHistory(100)))
    for _ in range(5):
        w.call("POST", "/api/publish", {"room": "lobby", "text": "x" * 400})
    assert paged(w, "") == ([4, 5], True)
    assert paged(w, "after=0") == ([1, 2], True)
    w.call("POST", "/api/publish", {"room": "lobby", "text": "y" * 1500})
    assert paged(w, "") == ([6], True)


def test_history_since_recovers_as_a_rejoin() -> None:
    """With `since`: every message after it and `complete`, or the latest and not complete;
    its limit is 1 to --history-size."""
    w = published(5)
    after = get(w, "/api/rooms/lobby/history?since=3").body
    assert after["complete"] is True and [m["text"] for m in after["messages"]] == ["m4", "m5"]
    assert "more" not in after
    ahead = get(w, "/api/rooms/lobby/history?since=99&limit=1").body
    assert ahead["complete"] is False and [m["id"] for m in ahead["messages"]] == [5]
    too_many = get(w, "/api/rooms/lobby/history?since=1&limit=2").body
    assert too_many["complete"] is False and [m["id"] for m in too_many["messages"]] == [4, 5]
    assert get(w, "/api/rooms/lobby/history?since=5").body == {
        "room": "lobby",
        "complete": True,
        "messages": [],
    }
    for bad in ("since=-1", "since=x", "since=0&limit=101", "since=0&limit=0"):
        assert w.call("GET", f"/api/rooms/lobby/history?{bad}").status == 400


SAID = ["deploy failed on web-1", "Résumé uploaded", "the deployment is done", "DEPLOY FAILED"]


def searched(w: ApiWorld, query: str, room: str = "lobby") -> tuple[list[int], int | None]:
    body = get(w, f"/api/rooms/{room}/search?{query}").body
    return [m["id"] for m in body["messages"]], body["next"]


def test_search_finds_as_the_search_request() -> None:
    """Every word, any case, accents ignored, the last word as a prefix, newest first, in a
    room without members; the query is echoed as asked."""
    w = ApiWorld()
    for said in SAID:
        w.call("POST", "/api/publish", {"room": "lobby", "text": said})
    assert searched(w, "q=deploy+failed") == ([4, 1], None)
    assert searched(w, "q=resume") == ([2], None)
    assert searched(w, "q=depl") == ([4, 3, 1], None)
    assert searched(w, "q=nothing") == ([], None)
    assert searched(w, "q=deploy", room="nowhere") == ([], None)
    body = get(w, "/api/rooms/lobby/search?q=R%C3%A9SUM%C3%89").body
    assert body["q"] == "RéSUMÉ" and [m["text"] for m in body["messages"]] == ["Résumé uploaded"]
    assert "type" not in body["messages"][0]


def test_search_pages_with_next_to_the_end() -> None:
    """`next` is the `before` of the next page, null at the end; following it visits each
    match once."""
    w = published(25)
    seen: list[int] = []
    ids, after = searched(w, "q=m&limit=7")
    assert ids == [25, 24, 23, 22, 21, 20, 19] and after == 19
    # "m" is a prefix of every text (m1..m25): paging covers the room once, newest first.
    seen = ids
    while after is not None:
        ids, after = searched(w, f"q=m&before={after}&limit=7")
        seen += ids
    assert seen == list(range(25, 0, -1))
    assert searched(w, "q=m&before=5&limit=4") == ([4, 3, 2, 1], None)


def test_search_refuses_what_the_search_request_refuses() -> None:
    """No `q`, an empty one, one without words, over 200 characters or 16 words, not UTF-8,
    a limit out of 1-100 or a bad `before` is 400 invalid_field."""
    w = published(1)
    for bad in (
        "",
        "q=",
        "q=%3F%21",
        "q=" + "x" * 201,
        "q=" + "+w" * 17,
        "q=%FF",
        "q=m&limit=0",
        "q=m&limit=101",
        "q=m&before=-1",
    ):
        answer = w.call("GET", f"/api/rooms/lobby/search?{bad}")
        assert (answer.status, answer.body["error"]) == (400, "invalid_field"), bad
        SPEC.validate("GET", "/api/rooms/{room}/search", answer)
    assert w.call("GET", "/api/rooms/lobby/search?q=m&limit=100").status == 200
    assert w.call("GET", "/api/rooms/lobby/search?q=" + "x" * 200).status == 200


def test_search_where_history_has_no_index_is_501() -> None:
    """History kept in Redis alone cannot be searched: 501 search_unavailable, not a 503 to
    retry."""
    w = ApiWorld(World(store=UnsearchableHistory(100)))
    answer = w.call("GET", "/api/rooms/lobby/search?q=hi")
    assert (answer.status, answer.body["error"]) == (501, "search_unavailable")


def test_kick_takes_every_connection_of_the_name_out() -> None:
    """A kicked name leaves the room on all its connections, each told `left` kicked, and the
    others see it leave; it may join again."""
    w = ApiWorld()
    a1, p1 = w.member("alice", who=ALICE)
    _, p2 = w.member("alice", who=ALICE)
    _, pb = w.member("bob")
    w.world.batch()
    for peer in (p1, p2, pb):
        peer.take()
    answer = w.call("POST", "/api/kick", {"room": "lobby", "name": "alice"})
    assert answer.body == {"room": "lobby", "name": "alice", "connections": 2}
    assert Left("lobby", "kicked") in p1.take() and Left("lobby", "kicked") in p2.take()
    w.world.batch()
    assert pb.take() == [Presence("lobby", [], ["alice"], 1)]
    assert a1.rooms == set()
    run(w.world.hub.join(a1, Join("lobby")))
    assert "alice" in [m[0] for m in w.world.hub.members_of("lobby")]


def test_disconnect_names_the_user() -> None:
    """disconnect closes the sub's connections through the server and says how many."""
    w = ApiWorld()
    assert w.call("POST", "/api/disconnect", {"user": "u-alice"}).body == {
        "user": "u-alice",
        "connections": 2,
    }
    assert w.call("POST", "/api/disconnect", {"user": "u-nobody"}).body["connections"] == 0
    assert w.disconnected == ["u-alice", "u-nobody"]


def test_keys_schemes_and_the_challenge() -> None:
    """Any key of the file works; other schemes or keys get 401 with a Bearer challenge;
    unknown routes are 404 only once authorized."""
    w = ApiWorld()
    assert w.call("GET", "/api/info", key=OTHER_KEY).status == 200
    refused = w.call("GET", "/api/info", key="nope")
    assert refused.status == 401 and refused.body["error"] == "unauthorized"
    assert refused.headers.getRawHeaders("www-authenticate") == ['Bearer realm="wschat"']
    assert w.call("GET", "/api/secret-route", key="nope").status == 401
    missing = w.call("GET", "/api/secret-route")
    assert (missing.status, missing.body["error"]) == (404, "not_found")
    assert w.call("GET", "/elsewhere").status == 404
    assert not ApiKeys([KEY.encode()]).allow(f"Basic {KEY}".encode())
    assert ApiKeys([KEY.encode()]).allow(f"bearer {KEY}".encode())
    not_allowed = w.call("GET", "/api/publish")
    assert not_allowed.headers.getRawHeaders("allow") == ["POST"]


def test_the_key_file(tmp_path: Path) -> None:
    """One key a line, comments and blank lines skipped; short or empty files refused."""
    path = tmp_path / "api.keys"
    path.write_text(f"# rotated 2026-12\n{KEY}\n\n{OTHER_KEY}\n")
    keys = load_api_keys(str(path))
    assert keys.allow(f"Bearer {OTHER_KEY}".encode())
    path.write_text("short\n")
    with pytest.raises(KeyFileError, match="at least"):
        load_api_keys(str(path))
    path.write_text("# nothing\n")
    with pytest.raises(KeyFileError, match="no API key"):
        load_api_keys(str(path))


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/publish", {"room": "lobby", "text": "hi"}),
        ("GET", "/api/rooms/lobby/history", None),
        ("GET", "/api/rooms/lobby/history?before=9", None),
        ("GET", "/api/rooms/lobby/search?q=hi", None),
    ],
)
def test_a_shared_store_out_of_reach_is_503(method: str, path: str, body: object) -> None:
    """With --redis and Redis down (Unavailable), publish, history reads and searches answer 503
    `unavailable`, as docs/api.yaml promises, not 400."""
    w = ApiWorld(world=World(store=UnreachableHistory(100)))
    answer = w.call(method, path, body)
    assert (answer.status, answer.body["error"]) == (503, "unavailable")
