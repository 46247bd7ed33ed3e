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

from wschat.chat.errors import StorageUnavailable, Unavailable
from wschat.chat.identity import Identity, sign_in
from wschat.chat.memory import MemoryHistory
from wschat.chat.model import Join, Left, Message, Presence
from wschat.chat.session import Session
from wschat.server.api import Api, ApiContext, ApiKeys, KeyFileError, load_api_keys

from .chatkit import Peer, World, run

SPEC_PATH = Path(__file__).parent.parent / "docs" / "api.yaml"
KEY = "k" * 32
OTHER_KEY = "o" * 32


class FlakyHistory(MemoryHistory):
    """A store whose disk can be made to fail."""

    broken = False

    async def append(self, *args: Any, **kwargs: Any) -> tuple[Message, bool]:
        if self.broken:
            raise StorageUnavailable("disk full")
        return await super().append(*args, **kwargs)

    async def latest(self, room: str, limit: int) -> list[Message]:
        if self.broken:
            raise StorageUnavailable("disk unreadable")
        return await super().latest(room, limit)


class UnreachableHistory(MemoryHistory):
    """A shared store (Redis) that is out of reach."""

    async def append(self, *args: Any, **kwargs: Any) -> tuple[Message, bool]:
        raise Unavailable("Redis is out of reach")

    async def latest(self, room: str, limit: int) -> list[Message]:
        raise Unavailable("Redis is out of reach")


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


def test_history_pages_with_since_and_limit() -> None:
    """history gives the latest messages, or those after `since` with `complete`."""
    w = ApiWorld()
    for i in range(5):
        w.call("POST", "/api/publish", {"room": "lobby", "text": f"m{i + 1}"})
    latest = w.call("GET", "/api/rooms/lobby/history?limit=2").body
    assert [m["id"] for m in latest["messages"]] == [4, 5] and "complete" not in latest
    after = w.call("GET", "/api/rooms/lobby/history?since=3").body
    assert after["complete"] is True and [m["text"] for m in after["messages"]] == ["m4", "m5"]
    ahead = w.call("GET", "/api/rooms/lobby/history?since=99&limit=1").body
    assert ahead["complete"] is False and [m["id"] for m in ahead["messages"]] == [5]
    for bad in ("since=-1", "since=x", "limit=101", "limit=0"):
        assert w.call("GET", f"/api/rooms/lobby/history?{bad}").status == 400


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
    ],
)
def test_a_shared_store_out_of_reach_is_503(method: str, path: str, body: object) -> None:
    """With --redis and Redis down (Unavailable), publish and history reads answer 503
    `unavailable`, as docs/api.yaml promises, not 400."""
    w = ApiWorld(world=World(store=UnreachableHistory(100)))
    answer = w.call(method, path, body)
    assert (answer.status, answer.body["error"]) == (503, "unavailable")
