"""A room over --member-list-limit, against the real `twistd -n wschat` (the limit set low so
that a few hundred clients take the big-room path)."""

from __future__ import annotations

import pytest

from .client import Chat
from .conftest import ServerFactory
from .process import ServerProcess

pytestmark = pytest.mark.e2e

MEMBERS = 300
LIMIT = 50


@pytest.fixture
def big(wschat_server: ServerFactory) -> ServerProcess:
    """A server whose rooms are 'big' past 50 members, with quick presence batches."""
    return wschat_server(
        "--member-list-limit",
        str(LIMIT),
        "--presence-interval",
        "0.05",
        "--max-connections-per-ip",
        "0",
    )


def fill(server: ServerProcess, room: str, count: int) -> list[Chat]:
    clients = []
    for i in range(count):
        chat = Chat(server.ws_url, max_queue=None)
        welcome = chat.join(room, f"m{i:03d}")
        assert welcome["count"] == i + 1
        assert ("users" in welcome) == (i + 1 <= LIMIT), welcome
        clients.append(chat)
    return clients


def test_a_big_room_counts_pages_and_delivers_to_everyone(big: ServerProcess) -> None:
    """300 members in one room: welcomes past the limit carry the count and no list, who pages
    through every name once in order, and a message reaches all 300 once."""
    clients = fill(big, "lobby", MEMBERS)
    first = clients[0]
    names: list[str] = []
    after = None
    while True:
        fields = {"type": "who", "room": "lobby", "limit": 120}
        if after is not None:
            fields["after"] = after
        first.send(**fields)
        while (event := first.recv())["type"] == "presence":
            pass
        assert event["type"] == "members" and event["count"] == MEMBERS
        names += event["names"]
        after = event["next"]
        if after is None:
            break
    assert names == [f"m{i:03d}" for i in range(MEMBERS)]

    ack = clients[-1].say("lobby", "to all of you")
    for chat in clients:
        while (event := chat.recv())["type"] == "presence":
            assert set(event) <= {"type", "room", "joined", "left", "count"}
        assert (event["type"], event["id"]) == ("message", ack["id"])


def test_past_the_limit_presence_is_the_count_and_comes_back_below_it(
    big: ServerProcess,
) -> None:
    """Past the limit a batch carries only the count, at most one per interval; back under
    it, batches name who joined and left again."""
    clients = fill(big, "stage", LIMIT + 10)
    watcher = clients[0]
    # Drain what the joins produced, up to the batch with the final count.
    while watcher.expect("presence")["count"] != LIMIT + 10:
        pass
    for chat in clients[-5:]:
        chat.close()
    while (event := watcher.expect("presence"))["count"] != LIMIT + 5:
        assert "joined" not in event and "left" not in event
    assert "joined" not in event and "left" not in event
    for chat in reversed(clients[LIMIT - 5 : LIMIT + 5]):
        chat.close()
    event = watcher.expect_presence(left=[f"m{i:03d}" for i in range(LIMIT - 5, LIMIT)])
    assert event["count"] == LIMIT - 5
    newcomer = Chat(big.ws_url)
    assert newcomer.join("stage", "newcomer")["users"][-1] == "newcomer"
    assert watcher.expect_presence(joined=["newcomer"])["count"] == LIMIT - 4
