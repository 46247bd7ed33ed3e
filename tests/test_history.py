"""Every history store keeps the same contract (in memory, SQLite, Redis running the real
scripts on a real redis-server, and PostgreSQL on a real server): ids, refs, recovery, pages and
search; SQLite also survives a reopen, and opens the databases of the releases before it."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import pytest_twisted

from wschat.chat.errors import SearchUnavailable, StorageUnavailable
from wschat.chat.memory import MemoryHistory
from wschat.chat.model import Message, format_ts
from wschat.chat.ports import HistoryStore, NewMessage
from wschat.chat.search import Query
from wschat.store.checkpoint import BACKSTOP_WAL_PAGES, CHECKPOINT_EVERY_MESSAGES
from wschat.store.refs import REF_WINDOW_S
from wschat.store.sqlite import (
    BUSY_TIMEOUT_S,
    SCHEMA_VERSION,
    TRIM_EVERY_MESSAGES,
    SqliteHistory,
    Swept,
)

from .chatkit import run
from .conftest import PgStoreFactory, RedisNodeFactory

StoreFactory = Callable[[int], Awaitable[HistoryStore]]
TS = "2026-11-27T00:00:00.000Z"
TS_S = 1_795_737_600.0
# Every engine runs the contract; those that search run the search contract too (Redis alone
# has no index, and says so). A new engine: a name in these lists and a branch in
# store_factory.
ENGINES = ["memory", "sqlite", "redis", "postgres"]
SEARCHING = ["memory", "sqlite", "postgres"]
NOT_SEARCHING = ["redis"]


def store_factory(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """`await factory(keep)`: an empty store of `engine` that keeps about `keep` messages a
    room."""
    if engine == "postgres":
        make_pg: PgStoreFactory = request.getfixturevalue("pg_stores")

        async def pg_store(keep: int) -> HistoryStore:
            return make_pg(keep)

        return pg_store
    if engine == "redis":
        make_node: RedisNodeFactory = request.getfixturevalue("redis_nodes")

        async def redis_store(keep: int) -> HistoryStore:
            return (await make_node("n0", keep)).store

        return redis_store

    async def store(keep: int) -> HistoryStore:
        if engine == "memory":
            return MemoryHistory(keep)
        return SqliteHistory(str(tmp_path / "h.sqlite3"), keep)

    return store


@pytest.fixture(params=ENGINES)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """An empty store of each engine."""
    return store_factory(request.param, request, tmp_path)


@pytest.fixture(params=SEARCHING)
def make_searching(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """An empty store of each engine that can search."""
    return store_factory(request.param, request, tmp_path)


@pytest.fixture(params=NOT_SEARCHING)
def make_not_searching(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """An empty store of each engine without a search index."""
    return store_factory(request.param, request, tmp_path)


async def afill(store: HistoryStore, room: str, count: int, name: str = "alice") -> None:
    for i in range(count):
        await store.append(room, NewMessage(name, f"m{i + 1}", TS, f"r{i + 1}"))


def fill(store: HistoryStore, room: str, count: int, name: str = "alice") -> None:
    for i in range(count):
        run(store.append(room, NewMessage(name, f"m{i + 1}", TS, f"r{i + 1}")))


@pytest_twisted.ensureDeferred
async def test_ids_increase_per_room(make_store: StoreFactory) -> None:
    """Each room numbers its messages 1, 2, 3, ... independently."""
    store = await make_store(10)
    a1 = (await store.append("a", NewMessage("x", "1", TS, None)))[0]
    b1 = (await store.append("b", NewMessage("x", "1", TS, None)))[0]
    a2 = (await store.append("a", NewMessage("x", "2", TS, None)))[0]
    assert (a1.id, b1.id, a2.id) == (1, 1, 2)


@pytest_twisted.ensureDeferred
async def test_latest_is_oldest_first_and_limited(make_store: StoreFactory) -> None:
    """latest(limit) gives the newest `limit` messages in id order."""
    store = await make_store(100)
    await afill(store, "lobby", 7)
    assert [m.id for m in (await store.latest("lobby", 3))] == [5, 6, 7]
    assert (await store.latest("empty", 3)) == []


@pytest_twisted.ensureDeferred
async def test_a_kept_ref_is_not_stored_again(make_store: StoreFactory) -> None:
    """append with a ref the same name already stored in the room returns the kept message
    and False; another name, or another room, stores a new one."""
    store = await make_store(10)
    first, new = await store.append("lobby", NewMessage("alice", "hi", TS, "r1"))
    assert new
    again, new = await store.append("lobby", NewMessage("alice", "hi (resent)", TS, "r1"))
    assert (again, new) == (first, False)
    assert (await store.append("lobby", NewMessage("bob", "hi", TS, "r1")))[1]
    assert (await store.append("dev", NewMessage("alice", "hi", TS, "r1")))[1]


@pytest_twisted.ensureDeferred
async def test_the_applications_refs_are_apart_from_the_clients(make_store: StoreFactory) -> None:
    """An application's publish and a client's say with the same name and ref are two messages,
    each stored once: a resend of either finds its own, never the other's."""
    store = await make_store(10)
    said, new = await store.append("lobby", NewMessage("api", "client", TS, "r1"))
    assert new
    published, new = await store.append(
        "lobby", NewMessage("api", "application", TS, "r1", application=True)
    )
    assert new and published.id == said.id + 1
    again = await store.append("lobby", NewMessage("api", "again", TS, "r1", application=True))
    assert again == (published, False)
    assert (await store.append("lobby", NewMessage("api", "again", TS, "r1"))) == (said, False)
    assert await store.find_ref("lobby", "api", "r1", application=True) == published
    assert await store.find_ref("lobby", "api", "r1") == said
    assert [m.text for m in await store.latest("lobby", 10)] == ["client", "application"]


def test_sqlite_recognises_a_resend_for_a_day(tmp_path: Path) -> None:
    """While everything is kept, a ref is remembered for REF_WINDOW_S after its message: a
    resend a millisecond inside the window gets the stored message, one a millisecond past
    it is stored again (and is what later resends find)."""
    store = SqliteHistory(str(tmp_path / "h.sqlite3"), 0)
    start_s = 1_800_000_000.0
    first, _ = run(store.append("lobby", NewMessage("alice", "hi", format_ts(start_s), "r1")))
    inside = format_ts(start_s + REF_WINDOW_S - 0.001)
    assert run(store.append("lobby", NewMessage("alice", "hi", inside, "r1"))) == (first, False)
    past = format_ts(start_s + REF_WINDOW_S + 0.001)
    second, new = run(store.append("lobby", NewMessage("alice", "hi", past, "r1")))
    assert new and second.id == first.id + 1
    later = format_ts(start_s + REF_WINDOW_S + 60)
    assert run(store.append("lobby", NewMessage("alice", "hi", later, "r1"))) == (second, False)
    assert run(store.find_ref("lobby", "alice", "r1")) == second
    store.close()


def test_sqlite_forgets_refs_older_than_the_window_in_batches(tmp_path: Path) -> None:
    """forget_refs deletes the oldest refs stamped before the window's start, a batch at a
    time, and keeps the others; the messages stay, and their refs, no longer remembered,
    are not recognised."""
    store = SqliteHistory(str(tmp_path / "h.sqlite3"), 0)
    start_s = 1_800_000_000.0
    for i in range(7):
        run(store.append("lobby", NewMessage("alice", "x", format_ts(start_s + i), f"r{i}")))
    window_start = format_ts(start_s + 5)
    assert store.forget_refs(window_start, 3) == Swept(3, 0, False)
    assert store.forget_refs(window_start, 3) == Swept(2, 0, True)
    assert store.forget_refs(window_start, 3) == Swept(0, 0, True)
    assert run(store.find_ref("lobby", "alice", "r4")) is None
    assert run(store.find_ref("lobby", "alice", "r5")) is not None
    assert [m.ref for m in run(store.latest("lobby", 10))] == [f"r{i}" for i in range(7)]
    store.close()


def test_sqlite_refs_of_removed_messages_are_not_recognised() -> None:
    """A ref whose message retention removed is no resend: the message is stored again."""
    store = SqliteHistory(":memory:", 5)
    fill(store, "lobby", TRIM_EVERY_MESSAGES)
    again, new = run(store.append("lobby", NewMessage("alice", "m1", TS, "r1")))
    assert new and again.id == TRIM_EVERY_MESSAGES + 1
    assert run(store.append("lobby", NewMessage("alice", "m1", TS, "r1"))) == (again, False)


@pytest_twisted.ensureDeferred
async def test_find_ref(make_store: StoreFactory) -> None:
    """A ref is found for the name that used it, in its room only."""
    store = await make_store(100)
    await afill(store, "lobby", 3)
    found = await store.find_ref("lobby", "alice", "r2")
    assert found is not None and found.id == 2 and found.text == "m2"
    assert (await store.find_ref("lobby", "bob", "r2")) is None
    assert (await store.find_ref("dev", "alice", "r2")) is None


@pytest_twisted.ensureDeferred
async def test_after_is_exact_or_incomplete(make_store: StoreFactory) -> None:
    """after(since) is complete only when it holds every later message."""
    store = await make_store(100)
    await afill(store, "lobby", 5)
    got = await store.after("lobby", 2, 100)
    assert got.complete and [m.id for m in got.messages] == [3, 4, 5]
    assert (await store.after("lobby", 5, 100)).complete
    assert not (await store.after("lobby", 6, 100)).complete
    assert not (await store.after("lobby", 0, 3)).complete
    assert (await store.after("empty", 0, 3)).complete


@pytest_twisted.ensureDeferred
async def test_after_notices_trimmed_messages(make_store: StoreFactory) -> None:
    """Once old messages are dropped, a since before them is not recoverable."""
    keep = 5
    store = await make_store(keep)
    await afill(store, "lobby", TRIM_EVERY_MESSAGES * 2)
    last = TRIM_EVERY_MESSAGES * 2
    assert not (await store.after("lobby", 1, 1000)).complete
    recent = await store.after("lobby", last - keep, keep)
    assert recent.complete and [m.id for m in recent.messages] == list(
        range(last - keep + 1, last + 1)
    )


def ids(messages: list[Message]) -> list[int]:
    return [m.id for m in messages]


@pytest_twisted.ensureDeferred
async def test_page_reads_back_and_forth(make_store: StoreFactory) -> None:
    """A page holds at most `limit` messages, oldest first: the newest without a bound, those
    just older than `before`, or those just newer than `after` (both exclusive)."""
    store = await make_store(100)
    await afill(store, "lobby", 10)
    assert ids(await store.page("lobby", None, None, 3)) == [8, 9, 10]
    assert ids(await store.page("lobby", 8, None, 3)) == [5, 6, 7]
    assert ids(await store.page("lobby", 3, None, 5)) == [1, 2]
    assert ids(await store.page("lobby", 1000, None, 2)) == [9, 10]
    assert ids(await store.page("lobby", None, 4, 3)) == [5, 6, 7]
    assert ids(await store.page("lobby", None, 8, 5)) == [9, 10]
    assert ids(await store.page("lobby", None, 0, 100)) == list(range(1, 11))
    assert await store.page("lobby", 1, None, 5) == []
    assert await store.page("lobby", None, 10, 5) == []


@pytest_twisted.ensureDeferred
async def test_page_messages_are_the_stored_ones(make_store: StoreFactory) -> None:
    """A page's messages are whole, as `latest` gives them (sender, user, guest, ref)."""
    store = await make_store(100)
    await store.append("lobby", NewMessage("alice", "signed", TS, "r1", user="u-alice"))
    await store.append("lobby", NewMessage("zed (guest)", "guest", TS, None, guest=True))
    assert await store.page("lobby", None, None, 10) == await store.latest("lobby", 10)
    assert await store.page("lobby", None, 0, 10) == await store.latest("lobby", 10)


@pytest_twisted.ensureDeferred
async def test_page_of_a_room_without_history(make_store: StoreFactory) -> None:
    """A room nobody wrote to has empty pages, whatever the bound."""
    store = await make_store(100)
    await afill(store, "lobby", 3)
    assert await store.page("empty", None, None, 50) == []
    assert await store.page("empty", 10, None, 50) == []
    assert await store.page("empty", None, 0, 50) == []


@pytest_twisted.ensureDeferred
async def test_page_skips_what_retention_removed(make_store: StoreFactory) -> None:
    """Ids that retention removed are simply absent: a page holds the kept messages nearest to
    where it starts, and nothing lies before the oldest kept."""
    store = await make_store(5)
    await afill(store, "lobby", TRIM_EVERY_MESSAGES * 2)
    kept = await store.latest("lobby", 1000)
    oldest = kept[0].id
    assert oldest > 1
    assert await store.page("lobby", None, 0, 3) == kept[:3]
    assert await store.page("lobby", oldest, None, 10) == []
    assert await store.page("lobby", None, None, 1000) == kept


async def say_all(store: HistoryStore, room: str, texts: list[str]) -> list[Message]:
    return [(await store.append(room, NewMessage("alice", text, TS, None)))[0] for text in texts]


async def found(store: HistoryStore, q: str, room: str = "lobby", limit: int = 100) -> list[int]:
    return ids(await store.search(room, Query.parse(q), None, limit))


@pytest_twisted.ensureDeferred
async def test_search_needs_every_word(make_searching: StoreFactory) -> None:
    """A message matches when it holds every word of the query, in any order and place;
    results are newest first."""
    store = await make_searching(100)
    await say_all(
        store,
        "lobby",
        ["deploy failed on node 3", "deploy succeeded", "the build failed", "failed: deploy"],
    )
    assert await found(store, "deploy failed") == [4, 1]
    assert await found(store, "failed deploy") == [4, 1]
    assert await found(store, "node 3 failed") == [1]
    assert await found(store, "deploy build") == []


@pytest_twisted.ensureDeferred
async def test_search_ignores_case_and_accents(make_searching: StoreFactory) -> None:
    """Case and accents are ignored in every script: `resume` finds `Résumé`, and so do
    `RÉSUMÉ` and `résumé`; Greek, Cyrillic and German fold alike."""
    store = await make_searching(100)
    await say_all(store, "lobby", ["Résumé attached", "Ελληνικά κείμενα", "ПРИВЕТ мир", "Straße"])
    for q in ("resume", "RÉSUMÉ", "résumé attached"):
        assert await found(store, q) == [1], q
    assert await found(store, "ελληνικα") == [2]
    assert await found(store, "привет") == [3]
    assert await found(store, "strasse") == [4]


@pytest_twisted.ensureDeferred
async def test_search_takes_the_last_word_as_a_prefix(make_searching: StoreFactory) -> None:
    """The last word also matches the beginning of a word (`depl` finds `deploy`), in any
    script; the others must be whole words."""
    store = await make_searching(100)
    await say_all(store, "lobby", ["deploy failed", "καλημέρα κόσμε"])
    assert await found(store, "depl") == [1]
    assert await found(store, "d") == [1]
    assert await found(store, "failed depl") == [1]
    assert await found(store, "depl failed") == []
    assert await found(store, "καλημ") == [2]
    assert await found(store, "deployment") == []


@pytest_twisted.ensureDeferred
async def test_search_words_are_letters_digits_and_underscores(
    make_searching: StoreFactory,
) -> None:
    """A word is a run of letters, digits and `_`: `snake_case` is one word, `deploy-failed`
    two, and numbers are words."""
    store = await make_searching(100)
    await say_all(store, "lobby", ["use snake_case_names", "deploy-failed", "build 41 is out"])
    assert await found(store, "snake_case_names") == [1]
    assert await found(store, "snake_c") == [1]
    assert await found(store, "snake case") == []
    assert await found(store, "failed deploy") == [2]
    assert await found(store, "41") == [3]
    assert await found(store, "4") == [3]


@pytest_twisted.ensureDeferred
async def test_search_pages_newest_first_with_before(make_searching: StoreFactory) -> None:
    """Results come newest first, at most `limit`; `before` continues below an id, and a
    page past the oldest match is empty."""
    store = await make_searching(100)
    await say_all(store, "lobby", [f"match {i}" if i % 2 else f"other {i}" for i in range(1, 12)])
    query = Query.parse("match")
    assert ids(await store.search("lobby", query, None, 3)) == [11, 9, 7]
    assert ids(await store.search("lobby", query, 7, 3)) == [5, 3, 1]
    assert ids(await store.search("lobby", query, 1, 3)) == []
    found_all = await store.search("lobby", query, None, 100)
    assert [m.text for m in found_all] == [f"match {i}" for i in (11, 9, 7, 5, 3, 1)]


@pytest_twisted.ensureDeferred
async def test_search_stays_in_its_room(make_searching: StoreFactory) -> None:
    """A word said in another room is not found, nor anything in a room without history."""
    store = await make_searching(100)
    await say_all(store, "lobby", ["lobby words"])
    await say_all(store, "dev", ["dev words", "more dev words"])
    assert await found(store, "words", "lobby") == [1]
    assert await found(store, "dev", "lobby") == []
    assert await found(store, "words", "dev") == [2, 1]
    assert await found(store, "words", "empty") == []


@pytest_twisted.ensureDeferred
async def test_search_finds_only_kept_messages(make_searching: StoreFactory) -> None:
    """Messages that retention removed are not found any more."""
    store = await make_searching(5)
    await say_all(store, "lobby", [f"needle {i}" for i in range(TRIM_EVERY_MESSAGES * 2)])
    kept = await store.latest("lobby", 1000)
    assert len(kept) < TRIM_EVERY_MESSAGES * 2
    assert await found(store, "needle", limit=1000) == ids(kept)[::-1]


@pytest_twisted.ensureDeferred
async def test_a_store_without_an_index_says_so(make_not_searching: StoreFactory) -> None:
    """An engine without a search index answers SearchUnavailable, never a scan."""
    store = await make_not_searching(100)
    await say_all(store, "lobby", ["deploy failed"])
    with pytest.raises(SearchUnavailable):
        await store.search("lobby", Query.parse("deploy"), None, 10)


def test_sqlite_survives_reopen_and_continues_ids(tmp_path: Path) -> None:
    """History and id sequence persist across a close and reopen of the database."""
    path = str(tmp_path / "h.sqlite3")
    store = SqliteHistory(path, 100)
    fill(store, "lobby", 3)
    store.close()
    store = SqliteHistory(path, 100)
    assert [m.text for m in run(store.latest("lobby", 10))] == ["m1", "m2", "m3"]
    assert run(store.append("lobby", NewMessage("bob", "m4", TS, None)))[0].id == 4
    store.close()


def test_sqlite_uses_wal_and_versioned_schema(tmp_path: Path) -> None:
    """The file is in WAL mode with the current schema version recorded."""
    path = str(tmp_path / "h.sqlite3")
    SqliteHistory(path, 10).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A database written by a newer wschat is not silently misread."""
    path = str(tmp_path / "h.sqlite3")
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="schema"):
        SqliteHistory(path, 10)


def test_sqlite_write_failure_is_storage_unavailable(tmp_path: Path) -> None:
    """A locked database refuses the insert with StorageUnavailable and reuses no id."""
    path = str(tmp_path / "h.sqlite3")
    store = SqliteHistory(path, 10)
    fill(store, "lobby", 1)
    locker = sqlite3.connect(path, timeout=0, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StorageUnavailable) as caught:
        run(store.append("lobby", NewMessage("alice", "lost?", TS, "rx")))[0]
    assert caught.value.ref == "rx"
    locker.execute("ROLLBACK")
    locker.close()
    assert run(store.append("lobby", NewMessage("alice", "kept", TS, "rx")))[0].id == 2
    assert [m.text for m in run(store.latest("lobby", 10))] == ["m1", "kept"]


def test_sqlite_busy_wait_for_a_lock_is_brief(tmp_path: Path) -> None:
    """SQLite's busy wait for a lock (on the reactor thread) is BUSY_TIMEOUT_S, not 5 s."""
    store = SqliteHistory(str(tmp_path / "h.sqlite3"), 10)
    [(busy_ms,)] = store._db.execute("PRAGMA busy_timeout").fetchall()
    assert busy_ms == round(BUSY_TIMEOUT_S * 1000)
    # Long enough for another connection's short transaction (the checkpoint thread's),
    # short enough that a stuck lock does not stall every connection.
    assert 0 < busy_ms < 1000


def rows_in_main_file(path: str, copy: Path) -> int:
    """Messages in the database file alone, without its WAL: what checkpoints have copied."""
    shutil.copyfile(path, copy)
    db = sqlite3.connect(copy)
    try:
        tables = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchone()
        (count,) = db.execute("SELECT count(*) FROM messages").fetchone() if tables else (0,)
    finally:
        db.close()
    assert isinstance(count, int)
    return count


def test_sqlite_checkpoints_in_the_thread_it_is_given(tmp_path: Path) -> None:
    """Given a thread, the store never checkpoints inside a commit (the reactor thread): it
    hands one checkpoint at a time to that thread, every CHECKPOINT_EVERY_MESSAGES messages."""
    path = str(tmp_path / "h.sqlite3")
    handed: list[Callable[[], None]] = []
    store = SqliteHistory(path, 100_000, in_thread=handed.append)
    fill(store, "lobby", CHECKPOINT_EVERY_MESSAGES - 1)
    assert handed == []
    # About 2,500 pages of WAL in all: SQLite's own checkpoint (at 1,000) would have run by
    # now; nothing is copied.
    more = 900
    fill(store, "other", more)
    assert rows_in_main_file(path, tmp_path / "copy1") == 0
    # One was handed over at the threshold, and no second one while it has not run.
    assert len(handed) == 1

    handed.pop()()
    assert rows_in_main_file(path, tmp_path / "copy2") == CHECKPOINT_EVERY_MESSAGES - 1 + more
    # Messages came in while it waited: the next one hands over another at once.
    fill(store, "third", 1)
    assert len(handed) == 1
    handed.pop()()
    fill(store, "fourth", CHECKPOINT_EVERY_MESSAGES - 1)
    assert handed == []
    fill(store, "fifth", 1)
    assert len(handed) == 1
    store.close()


def test_sqlite_wal_stays_bounded_when_the_thread_never_checkpoints(tmp_path: Path) -> None:
    """If the thread's checkpoints never complete (traffic keeps adding to the WAL while they
    copy, or they never run), SQLite's own checkpoint at BACKSTOP_WAL_PAGES still bounds it."""
    path = str(tmp_path / "h.sqlite3")
    store = SqliteHistory(path, 100_000, in_thread=lambda work: None)
    fill(store, "lobby", 12_000)  # about 26,000 pages of WAL without a checkpoint
    page_size = store._db.execute("PRAGMA page_size").fetchone()[0]
    wal_pages = Path(path + "-wal").stat().st_size / page_size
    assert BACKSTOP_WAL_PAGES <= wal_pages < BACKSTOP_WAL_PAGES + 100
    store.close()


def test_sqlite_checkpoint_finds_the_file_after_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """twistd may change directory after the store opened a relative path."""
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path)
    handed: list[Callable[[], None]] = []
    store = SqliteHistory("h.sqlite3", 100_000, in_thread=handed.append)
    monkeypatch.chdir(tmp_path / "run")
    fill(store, "lobby", CHECKPOINT_EVERY_MESSAGES)
    handed.pop()()
    assert rows_in_main_file(str(tmp_path / "h.sqlite3"), tmp_path / "copy") > 0
    assert not (tmp_path / "run" / "h.sqlite3").exists()
    store.close()


def test_sqlite_message_is_kept_when_no_thread_can_be_had(tmp_path: Path) -> None:
    """A failed hand-off neither fails the message nor stops later checkpoints."""
    tries: list[Callable[[], None]] = []

    def refuse(work: Callable[[], None]) -> None:
        tries.append(work)
        raise RuntimeError("thread pool stopped")

    store = SqliteHistory(str(tmp_path / "h.sqlite3"), 100_000, in_thread=refuse)
    fill(store, "lobby", 2 * CHECKPOINT_EVERY_MESSAGES)
    assert len(tries) == 2
    assert run(store.latest("lobby", 1))[0].id == 2 * CHECKPOINT_EVERY_MESSAGES
    store.close()


def test_sqlite_without_a_thread_keeps_sqlite_checkpoints(tmp_path: Path) -> None:
    """Without a thread (tools, tests) SQLite checkpoints as it always does."""
    path = str(tmp_path / "h.sqlite3")
    store = SqliteHistory(path, 100_000)
    fill(store, "lobby", 2_000)
    assert rows_in_main_file(path, tmp_path / "copy") > 0
    store.close()


@pytest_twisted.ensureDeferred
async def test_the_sender_is_kept_with_the_message(make_store: StoreFactory) -> None:
    """A signed sender's sub and a guest's mark are stored and read back with the message."""
    store = await make_store(10)
    await store.append("lobby", NewMessage("alice", "signed", TS, "r1", user="u-alice"))
    await store.append("lobby", NewMessage("zed (guest)", "guest", TS, None, guest=True))
    await store.append("lobby", NewMessage("bob", "open", TS, None))
    kept = await store.latest("lobby", 10)
    assert [(m.user, m.guest) for m in kept] == [("u-alice", False), (None, True), (None, False)]
    found = await store.find_ref("lobby", "alice", "r1")
    assert found is not None and found.user == "u-alice"
    recovered = await store.after("lobby", 0, 10)
    assert [m.user for m in recovered.messages] == ["u-alice", None, None]


def test_a_v1_database_is_migrated_keeping_its_messages(tmp_path: Path) -> None:
    """A history written by the schema-1 wschat gains the sender columns; old messages have
    no user, are no guest's, and their refs stay the clients' (a resend is still known)."""
    from importlib import resources

    path = str(tmp_path / "h.sqlite3")
    db = sqlite3.connect(path)
    db.executescript(resources.files("wschat.store").joinpath("schema/v1.sql").read_text("utf-8"))
    db.execute("INSERT INTO messages VALUES ('lobby', 1, 'alice', 'old', ?, 'r1')", (TS,))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    # Opened a minute after the message: its ref is within the window.
    store = SqliteHistory(path, 10, now_s=lambda: TS_S + 60)
    [old] = run(store.latest("lobby", 10))
    assert (old.text, old.user, old.guest) == ("old", None, False)
    assert run(store.append("lobby", NewMessage("alice", "old", TS, "r1"))) == (old, False)
    assert run(store.append("lobby", NewMessage("bob", "new", TS, None, user="u-bob")))[0].id == 2
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    db.close()
