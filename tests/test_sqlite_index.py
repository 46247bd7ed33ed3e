"""The SQLite history's search index holds exactly the words of the kept messages: through
every deletion (trim, TTL, eviction, removal) and edit, a crash before a batch was indexed, a
change of Python's Unicode tables, and a database made by the release before the index."""

from __future__ import annotations

import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from twisted.internet.testing import EventLoggingObserver

from wschat.chat.errors import StorageUnavailable
from wschat.chat.model import format_ts
from wschat.chat.ports import NewMessage
from wschat.chat.search import Query, words
from wschat.store import index
from wschat.store.backlog import BATCH_CHARS, BATCH_MESSAGES
from wschat.store.index import MAX_ID
from wschat.store.sqlite import MEMORY, SqliteHistory

from .chatkit import run

NOW_S = 1_800_000_000.0
FIXTURES = Path(__file__).parent / "fixtures"
# An hour after the fixture's last message (2026-11-20T11:03:19Z).
UPGRADED_S = 1_795_172_599.0 + 3600
VOCABULARY = ["deploy", "failed", "résumé", "ελληνικά", "привет", "snake_case", "build", "41"]


def vocabulary(store: SqliteHistory) -> Counter[str]:
    """Each word in the index, with the number of messages it finds (once pending ones are
    indexed)."""
    store._backlog.flush()
    db = store._db
    db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab USING fts5vocab(main, search, row)")
    return Counter({term: docs for term, docs in db.execute("SELECT term, doc FROM temp.vocab")})


def kept_words(store: SqliteHistory) -> Counter[str]:
    """Each folded word of the kept messages, with the number of messages holding it."""
    counts: Counter[str] = Counter()
    for (text,) in store._db.execute("SELECT text FROM messages"):
        counts.update(set(words(text)))
    return counts


def assert_index_is_the_kept_words(store: SqliteHistory) -> None:
    assert vocabulary(store) == kept_words(store)


def say(store: SqliteHistory, room: str, i: int, at_s: float = NOW_S) -> int:
    text = f"{VOCABULARY[i % len(VOCABULARY)]} {VOCABULARY[i * 3 % len(VOCABULARY)]} n{i}"
    return run(store.append(room, NewMessage("alice", text, format_ts(at_s), None)))[0].id


def search(store: SqliteHistory, room: str, q: str, before: int | None = None) -> list[int]:
    return [m.id for m in run(store.search(room, Query.parse(q), before, 1000))]


def test_trimming_takes_the_trimmed_words_out() -> None:
    """--history-keep trims each room in batches, and the trimmed messages' words leave the
    index with them (unique words and their prefixes included)."""
    store = SqliteHistory(MEMORY, 10)
    for i in range(300):
        say(store, f"room{i % 3}", i)
    assert_index_is_the_kept_words(store)
    # room0 holds every third message; the trim at its 64th kept ids 55 and up.
    assert search(store, "room0", "n159 n159") == []
    assert search(store, "room0", "n162 n162") == [55]
    assert search(store, "room0", "n297") == [100]


def test_the_ttl_takes_the_expired_words_out() -> None:
    """Messages deleted by --history-ttl, in batches, take their words out of the index."""
    store = SqliteHistory(MEMORY, 0, track_rooms=True, expiring=True)
    for i in range(120):
        say(store, f"room{i % 4}", i, NOW_S - 1000 + i)
    cutoff = format_ts(NOW_S - 1000 + 70)
    while not store.expire(cutoff, 25).done:
        pass
    assert_index_is_the_kept_words(store)
    assert store._db.execute("SELECT count(*) FROM messages").fetchone() == (50,)
    assert search(store, "room2", "n66") == []
    assert search(store, "room2", "n70") == [18]


def test_eviction_deletes_a_long_history_in_batches_of_messages() -> None:
    """Over --max-history-rooms, the least recently written room's history is deleted a
    batch of messages at a time (a room may hold millions), and forgotten once empty; its
    words leave the index."""
    store = SqliteHistory(MEMORY, 0, track_rooms=True)
    for i in range(1200):
        say(store, "big", i, NOW_S + i)
    for room in ("a", "b"):
        say(store, room, 1, NOW_S + 2000)
    steps = []
    while True:
        swept = store.evict(2, 500)
        steps.append((swept.messages, swept.rooms, swept.done))
        if swept.done:
            break
    assert steps == [(500, 0, False), (500, 0, False), (200, 1, True)]
    assert store.room_count == 2
    assert_index_is_the_kept_words(store)
    assert search(store, "big", "n1") == []
    # It comes back above the ids it had.
    assert say(store, "big", 1) == 1201


def test_removal_and_edits_keep_the_index_exact() -> None:
    """remove() takes messages and their words out; replace_text() finds a message by its new
    words only; both after messages still waiting for their batch."""
    store = SqliteHistory(MEMORY, 0)
    for i in range(BATCH_MESSAGES + 5):
        say(store, "lobby", i)
    assert store.replace_text("lobby", BATCH_MESSAGES + 5, "edited wording") is True
    assert store.replace_text("lobby", 3, "another edit") is True
    assert store.replace_text("lobby", 10_000, "no such message") is False
    assert search(store, "lobby", "edited") == [BATCH_MESSAGES + 5]
    assert search(store, "lobby", f"n{BATCH_MESSAGES + 4}") == []
    assert search(store, "lobby", "edit") == [BATCH_MESSAGES + 5, 3]
    assert store.remove("lobby", [3, 4, 10_000]) == 2
    assert search(store, "lobby", "another") == []
    assert [m.id for m in run(store.page("lobby", 6, None, 10))] == [1, 2, 5]
    assert_index_is_the_kept_words(store)


def indexed_up_to(store: SqliteHistory, room: str) -> int:
    (top,) = store._db.execute("SELECT indexed FROM rooms WHERE room = ?", (room,)).fetchone()
    assert isinstance(top, int)
    return top


def test_messages_are_indexed_in_batches_of_a_bounded_size() -> None:
    """Stored messages are indexed together every BATCH_MESSAGES, or sooner once they
    hold BATCH_CHARS of text (folding long texts takes a while); a search indexes
    those still waiting first."""
    store = SqliteHistory(MEMORY, 0)
    for i in range(BATCH_MESSAGES - 1):
        say(store, "short", i)
    assert indexed_up_to(store, "short") == 0
    say(store, "short", BATCH_MESSAGES)
    assert indexed_up_to(store, "short") == BATCH_MESSAGES
    long_text = "word " * 400
    count = -(-BATCH_CHARS // len(long_text))
    for _ in range(count - 1):
        run(store.append("long", NewMessage("alice", long_text, format_ts(NOW_S), None)))
    assert indexed_up_to(store, "long") == 0
    run(store.append("long", NewMessage("alice", long_text, format_ts(NOW_S), None)))
    assert indexed_up_to(store, "long") == count
    say(store, "short", 1)
    assert search(store, "short", "n1 n1") == [BATCH_MESSAGES + 1, 2]
    assert indexed_up_to(store, "short") == BATCH_MESSAGES + 1


def test_what_a_crash_left_unindexed_is_indexed_at_start(tmp_path: Path) -> None:
    """Messages are indexed, and their refs written, in batches after they are stored: those
    a crash left out (stored, acked, not yet written) are written when the store opens again,
    and a resend of such a message is still recognised."""
    path = str(tmp_path / "h.sqlite3")
    crashed = SqliteHistory(path, 0)
    for i in range(BATCH_MESSAGES + 3):
        say(crashed, "lobby", i)
    said = NewMessage("alice", "with a ref", format_ts(NOW_S), "r1")
    acked, _ = run(crashed.append("lobby", said))
    # No close(): the last four never reached the index, nor the ref its table.
    assert indexed_up_to(crashed, "lobby") == BATCH_MESSAGES
    store = SqliteHistory(path, 0, now_s=lambda: NOW_S + 60)
    assert search(store, "lobby", f"n{BATCH_MESSAGES + 2}") == [BATCH_MESSAGES + 3]
    assert_index_is_the_kept_words(store)
    assert store._db.execute("SELECT id FROM refs WHERE ref = 'r1'").fetchone() == (acked.id,)
    assert run(store.append("lobby", said)) == (acked, False)
    store.close()
    crashed._db.close()


def test_new_unicode_tables_build_the_index_again(
    tmp_path: Path, log_events: EventLoggingObserver
) -> None:
    """The index records the Unicode version its words were folded with; opened by a Python
    with other tables, the store builds it again (taking words out with another folding
    would corrupt it), and logs it."""
    path = str(tmp_path / "h.sqlite3")
    store = SqliteHistory(path, 0)
    for i in range(100):
        say(store, "lobby", i)
    store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE search_state SET unicode = '6.1.0'")
    db.commit()
    db.close()
    store = SqliteHistory(path, 0)
    [line] = [e for e in log_events if e.get("log_format", "").startswith("search index")]
    assert line["count"] == 100
    assert_index_is_the_kept_words(store)
    assert search(store, "lobby", "résumé") == search(store, "lobby", "resume") != []
    store.close()


def steps_of(store: SqliteHistory, room: str, q: str) -> int:
    """How many SQLite virtual machine instructions a search takes."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    store._backlog.flush()
    store._db.set_progress_handler(count, 1)
    search(store, room, q)
    store._db.set_progress_handler(None, 1)
    return steps


def test_a_search_reads_the_index_never_the_room() -> None:
    """A search costs the same in a room of 20 messages and in one of 5,000 (and beside a
    room of 5,000): it walks the words' entries in the index, newest first, never the room's
    messages."""
    store = SqliteHistory(MEMORY, 0)
    for room, count in (("small", 20), ("big", 5000), ("other", 5000)):
        run(store.append(room, NewMessage("alice", "the needle", format_ts(NOW_S), None)))
        for i in range(count):
            say(store, room, i)
    small = steps_of(store, "small", "needle")
    big = steps_of(store, "big", "needle")
    assert search(store, "big", "needle") == [1]
    assert big < small * 1.5 + 200, (small, big)


def test_room_numbers_are_reused_once_all_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """A room's number bounds its index entries' rowids; past the last number, a new room
    takes one that a forgotten room freed, and finds none of that room's words."""
    monkeypatch.setattr(index, "MAX_ROOM_NO", 3)
    store = SqliteHistory(MEMORY, 0, track_rooms=True)
    for i, room in enumerate(("a", "b", "c")):
        say(store, room, 0, NOW_S + i)
    assert store.evict(2, 100).rooms == 1
    say(store, "d", 1, NOW_S + 10)
    assert store._db.execute("SELECT no FROM rooms WHERE room = 'd'").fetchone() == (1,)
    assert search(store, "d", "n0") == []
    assert search(store, "d", "n1") == [2]
    with pytest.raises(StorageUnavailable, match="room numbers"):
        say(store, "e", 2)
    assert_index_is_the_kept_words(store)


def test_a_room_past_the_last_id_refuses_more_messages(tmp_path: Path) -> None:
    """Ids share the rowid with the room's number: a room that reached MAX_ID refuses a
    message (storage_unavailable) rather than index it under another room."""
    path = str(tmp_path / "h.sqlite3")
    SqliteHistory(path, 0).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE forgotten SET high_id = ?", (MAX_ID - 1,))
    db.commit()
    db.close()
    store = SqliteHistory(path, 0)
    assert say(store, "lobby", 0) == MAX_ID
    assert search(store, "lobby", "n0") == [MAX_ID]
    with pytest.raises(StorageUnavailable, match="ids"):
        say(store, "lobby", 1)
    store.close()


def test_a_database_of_the_release_before_keeps_everything_and_becomes_searchable(
    tmp_path: Path,
) -> None:
    """A history file written by the release before v5 (tests/fixtures/make_history_v4.py
    ran commit 0a68858's own store) opens with every message, sender and ref as they were,
    its refs still recognised (a client's and the application's apart), its forgotten ids
    still above, and every message searchable."""
    path = tmp_path / "h.sqlite3"
    shutil.copyfile(FIXTURES / "history-v4.sqlite3", path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (4,)
    before = db.execute("SELECT * FROM messages ORDER BY room, id").fetchall()
    db.close()
    assert len(before) == 6 + 108

    # Started an hour after the last message: its refs are within the window.
    store = SqliteHistory(str(path), 0, track_rooms=True, now_s=lambda: UPGRADED_S)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (5,)
    assert db.execute("SELECT * FROM messages ORDER BY room, id").fetchall() == before
    db.close()
    lobby = run(store.page("lobby", None, 0, 100))
    assert [(m.name, m.ref, m.user, m.guest) for m in lobby] == [
        ("alice", "a1", None, False),
        ("bob", None, "u-bob", False),
        ("zed (guest)", "z1", None, True),
        ("api", "r1", None, False),
        ("api", "r1", None, False),
        ("carol", "c1", None, False),
    ]
    assert_index_is_the_kept_words(store)
    assert search(store, "lobby", "resume deploy") == [1]
    assert search(store, "lobby", "καλημερα") == [3]
    assert search(store, "lobby", "привет snake_case_n") == [6]
    assert search(store, "busy", "200 message") == [200]
    assert search(store, "busy", "1 message") == []  # trimmed by that release

    # Resent within a day of the message: recognised, each side's ref apart.
    within = "2026-11-20T12:00:00.000Z"
    alice = run(store.append("lobby", NewMessage("alice", "again", within, "a1")))
    assert alice == (lobby[0], False)
    published = NewMessage("api", "again", within, "r1", application=True)
    assert run(store.append("lobby", published)) == (lobby[3], False)
    assert run(store.append("lobby", NewMessage("api", "again", within, "r1"))) == (
        lobby[4],
        False,
    )
    # The room the sweeps forgot counts on above its old ids; the others go on.
    assert run(store.append("gone", NewMessage("dave", "back", within, None)))[0].id == 8
    assert run(store.append("lobby", NewMessage("bob", "new", within, None)))[0].id == 7
    assert store.room_count == 3
    store.close()


def test_refs_older_than_a_day_are_not_written_when_the_index_is_built(tmp_path: Path) -> None:
    """Building the index writes the refs of the last day's messages only (by the store's
    clock): a database opened long after its last message recognises none of them."""
    path = tmp_path / "h.sqlite3"
    shutil.copyfile(FIXTURES / "history-v4.sqlite3", path)
    store = SqliteHistory(str(path), 0, now_s=lambda: UPGRADED_S + 2 * 86400)
    assert store._db.execute("SELECT count(*) FROM refs").fetchone() == (0,)
    resent = NewMessage("alice", "again", format_ts(UPGRADED_S + 2 * 86400), "a1")
    again, new = run(store.append("lobby", resent))
    assert new and again.id == 7
    store.close()
