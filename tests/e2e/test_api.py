"""The server API on its own listener of the real `twistd -n wschat`, over real HTTP."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ..jwtkit import claims, hs256, write_secret
from .api import api_server, call
from .client import Chat
from .conftest import ServerFactory

pytestmark = pytest.mark.e2e


def test_publish_reaches_the_room_and_the_history(
    wschat_server: ServerFactory, tmp_path: Path
) -> None:
    """A publish is stored (201, then 200 for the same ref), broadcast to the WebSocket
    members, and listed by rooms, members and history."""
    server, api = api_server(wschat_server, tmp_path)
    bob = Chat(server.ws_url)
    bob.join("lobby", "bob")
    status, published = call(
        api, "POST", "/api/publish", {"room": "lobby", "text": "hello from the app", "ref": "a1"}
    )
    assert status == 201
    message = bob.expect("message")
    assert (message["id"], message["name"], message["text"]) == (
        published["id"],
        "api",
        "hello from the app",
    )
    again = call(
        api, "POST", "/api/publish", {"room": "lobby", "text": "hello from the app", "ref": "a1"}
    )
    assert again == (200, published)
    bob.say("lobby", "and from bob")
    assert bob.expect("message")["text"] == "and from bob"
    assert call(api, "GET", "/api/rooms") == (200, {"rooms": [{"room": "lobby", "count": 1}]})
    members = call(api, "GET", "/api/rooms/lobby/members")[1]
    assert members["members"] == [{"name": "bob", "connections": 1}]
    history = call(api, "GET", "/api/rooms/lobby/history?since=0")[1]
    assert history["complete"] is True
    assert [m["text"] for m in history["messages"]] == ["hello from the app", "and from bob"]
    first, second = (m["id"] for m in history["messages"])
    newest = call(api, "GET", "/api/rooms/lobby/history?limit=1")
    assert newest == (200, {"room": "lobby", "messages": history["messages"][1:], "more": True})
    older = call(api, "GET", f"/api/rooms/lobby/history?before={second}")[1]
    assert ([m["id"] for m in older["messages"]], older["more"]) == ([first], False)
    newer = call(api, "GET", f"/api/rooms/lobby/history?after={first}")[1]
    assert ([m["id"] for m in newer["messages"]], newer["more"]) == ([second], False)
    status, info = call(api, "GET", "/api/info")
    assert status == 200 and info["auth"] == "off" and info["connections"] == 1


def test_the_api_needs_its_key_and_is_not_on_the_chat_port(
    wschat_server: ServerFactory, tmp_path: Path
) -> None:
    """A wrong key is 401; the chat's own port serves no API."""
    server, api = api_server(wschat_server, tmp_path)
    assert call(api, "GET", "/api/info", key="wrong")[0] == 401
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{server.http_url}/api/info", timeout=10)
    assert caught.value.code == 404


def test_disconnect_and_kick_signed_users(wschat_server: ServerFactory, tmp_path: Path) -> None:
    """The application kicks a signed user from a room (left, reason kicked) and disconnects
    it everywhere (close 4403)."""
    server, api = api_server(
        wschat_server, tmp_path, "--jwt-secret-file", str(write_secret(tmp_path))
    )
    alice = Chat(server.ws_url)
    alice.send(type="auth", token=hs256(claims(exp=int(time.time()) + 600, name="alice")))
    alice.expect("authed")
    alice.join("lobby")
    assert call(api, "GET", "/api/rooms/lobby/members")[1]["members"] == [
        {"name": "alice", "user": "u-alice", "connections": 1}
    ]
    assert call(api, "POST", "/api/kick", {"room": "lobby", "name": "alice"})[0] == 200
    assert alice.expect("left") == {"type": "left", "room": "lobby", "reason": "kicked"}
    assert call(api, "GET", "/api/rooms/lobby/members")[0] == 404
    assert call(api, "POST", "/api/disconnect", {"user": "u-alice"}) == (
        200,
        {"user": "u-alice", "connections": 1},
    )
    code, reason = alice.expect_close()
    assert code == 4403 and "application" in reason


def test_history_and_search_of_a_room_without_members(
    wschat_server: ServerFactory, tmp_path: Path
) -> None:
    """An application pages through a room nobody is in, back to the first message and
    forward again, and searches it page by page (`next` to null); the answers agree with
    what a member's `history` and `search` get."""
    server, api = api_server(
        wschat_server, tmp_path, "--history-db", ":memory:", "--history-size", "500"
    )
    for i in range(1, 61):
        text = f"build {i} " + ("failed" if i % 4 == 0 else "passed")
        assert call(api, "POST", "/api/publish", {"room": "ci", "text": text})[0] == 201
    status, page = call(api, "GET", "/api/rooms/ci/history?limit=25")
    assert status == 200 and page["more"] is True
    back = [m["id"] for m in page["messages"]]
    while page["more"]:
        page = call(api, "GET", f"/api/rooms/ci/history?before={back[0]}&limit=25")[1]
        back = [m["id"] for m in page["messages"]] + back
    assert back == list(range(1, 61))
    forward = call(api, "GET", "/api/rooms/ci/history?after=0&limit=200")[1]
    assert [m["id"] for m in forward["messages"]] == back and forward["more"] is False
    failed = [i for i in range(60, 0, -1) if i % 4 == 0]
    seen: list[int] = []
    results = call(api, "GET", "/api/rooms/ci/search?q=Build+FAIL&limit=4")[1]
    seen += [m["id"] for m in results["messages"]]
    while results["next"] is not None:
        path = f"/api/rooms/ci/search?q=Build+FAIL&limit=4&before={results['next']}"
        results = call(api, "GET", path)[1]
        seen += [m["id"] for m in results["messages"]]
    assert seen == failed
    assert call(api, "GET", "/api/rooms/ci/search?q=x&limit=101")[1]["error"] == "invalid_field"
    member = Chat(server.ws_url)
    member.join("ci", "ann")
    member.send(type="history", room="ci", before=11, limit=5)
    assert [m["id"] for m in member.expect("page")["messages"]] == [6, 7, 8, 9, 10]
    member.send(type="search", room="ci", q="build fail", limit=4)
    assert [m["id"] for m in member.expect("results")["messages"]] == failed[:4]
