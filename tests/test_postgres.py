"""The PostgreSQL store beyond the contract every store keeps (tests/test_history.py): its URL,
its migrations, group commit, the ref window, the search index, and outages; each on a real
PostgreSQL (tests/pgkit.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel
from twisted.python import usage

from wschat.app.options import Options
from wschat.app.wiring import make_store, postgres_backend
from wschat.certs import write_dev_cert
from wschat.chat.errors import StorageUnavailable
from wschat.chat.model import format_ts
from wschat.chat.ports import NewMessage
from wschat.chat.search import Query, words
from wschat.postgres.commit import MAX_LEXEME_BYTES, lexemes
from wschat.postgres.link import PgLink, connect
from wschat.postgres.schema import SCHEMA_VERSION, SchemaTooNew, migrate
from wschat.postgres.store import (
    SEARCH_SCAN,
    SWEEP_EVERY_S,
    PostgresHistory,
    open_store,
    ts_query,
)
from wschat.postgres.url import conninfo, redacted

from .conftest import PgStoreFactory
from .pgkit import PgServer

TS = "2026-11-27T00:00:00.000Z"


def said(name: str, text: str, ref: str | None = None, **extra: Any) -> NewMessage:
    return NewMessage(name, text, TS, ref, **extra)


# The URL (no server needed).


def test_a_password_in_the_url_is_refused() -> None:
    """`ps` would show it: the URL must leave it to the password file or libpq's own means."""
    with pytest.raises(ValueError, match="password"):
        conninfo("postgresql://wschat:secret@db.example/chat")


def test_the_password_comes_from_its_file_and_tls_is_kept(tmp_path: Path) -> None:
    """The file's first line is the password; the URL's TLS settings and wschat's timeouts
    end up in the connection string, an operator's own timeout wins."""
    secret = tmp_path / "pg.pass"
    secret.write_text("s3cret\nignored\n")
    url = "postgresql://wschat@db.example:5433/chat?sslmode=verify-full&sslrootcert=/ca.pem"
    params = psycopg.conninfo.conninfo_to_dict(conninfo(url, str(secret)))
    assert params["password"] == "s3cret"
    assert (params["host"], params["port"], params["dbname"]) == ("db.example", "5433", "chat")
    assert (params["sslmode"], params["sslrootcert"]) == ("verify-full", "/ca.pem")
    assert params["connect_timeout"] == "5" and params["tcp_user_timeout"] == "5000"
    assert "statement_timeout=5000" in str(params["options"])
    mine = psycopg.conninfo.conninfo_to_dict(conninfo(url + "&connect_timeout=9"))
    assert mine["connect_timeout"] == "9" and "password" not in mine
    assert redacted(url) == "postgresql://db.example:5433/chat"


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    """An empty file is a mistake to report at start-up, not a login failure later."""
    empty = tmp_path / "pg.pass"
    empty.write_text("")
    with pytest.raises(ValueError, match="no password"):
        conninfo("postgresql://wschat@db.example/chat", str(empty))


def test_the_query_quotes_each_word_and_the_last_is_a_prefix() -> None:
    """Each word is one lexeme as folded (no parser between), the last one a prefix."""
    assert ts_query(Query.parse("Deploy FAILED")) == "'deploy' & 'failed':*"
    assert ts_query(Query.parse("it's")) == "'it' & 's':*"


@pytest.mark.parametrize(
    "text",
    [
        "Deploy FAILED at 10:42, see build_77 (again!)",
        "Résumé, Ελληνικά and Кириллица; ﬁnancé ①",
        "tabs\tand\nnew lines",
        "",
        "x" * 2000,
        "漢" * 700,
    ],
)
def test_the_index_gets_the_words_search_folds(text: str) -> None:
    """What a message is indexed under is chat/search.py's words of it (ASCII by a quicker
    path), each no heavier than a lexeme may be."""
    expected = [w.encode()[:MAX_LEXEME_BYTES].decode("utf-8", "ignore") for w in words(text)]
    assert lexemes(text) == " ".join(expected)


def test_tls_is_checked_as_libpq_checks_it(tmp_path: Path) -> None:
    """sslmode=verify-full with the CA that signed the server's certificate connects, over TLS;
    another CA, or another host name, is refused; and a server that takes TLS only refuses a
    connection without it."""
    server = PgServer()
    ca = server.with_tls()
    server.start()
    try:
        base = f"postgresql://postgres@127.0.0.1:{server.port}/{server.create_database()}"
        with connect(conninfo(f"{base}?sslmode=verify-full&sslrootcert={ca}")) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        other, _ = write_dev_cert(tmp_path / "other")
        refused = {
            f"{base}?sslmode=verify-full&sslrootcert={other}": "certificate verify failed",
            f"{base}?sslmode=verify-full&sslrootcert={ca}&host=db.example&hostaddr=127.0.0.1": (
                "does not match host name"
            ),
            f"{base}?sslmode=disable": "no encryption",
        }
        for url, reason in refused.items():
            with pytest.raises(psycopg.OperationalError, match=reason):
                connect(conninfo(url))
    finally:
        server.remove()


# Migrations.


def test_the_schema_is_created_once_and_a_newer_one_refused(pg_url: str) -> None:
    """A new database gets every version; opening again changes nothing; a database that a
    newer wschat migrated stops start-up instead of being written by an older one."""
    with connect(pg_url) as conn:
        assert migrate(conn) == 0
        assert migrate(conn) == SCHEMA_VERSION
        conn.execute("UPDATE wschat_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew, match=f"v{SCHEMA_VERSION + 1}"):
        open_store(conninfo(pg_url), "test", reactor, 0)


def test_nodes_starting_together_migrate_once(pg_url: str) -> None:
    """Eight nodes migrating the same new database at once: the advisory lock lets one create
    the schema while the others wait, then find it done."""
    found: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def node() -> None:
        try:
            with connect(pg_url) as conn:
                start.wait()
                found.append(migrate(conn))
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=node) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(found) == [0] + [SCHEMA_VERSION] * 7


# Group commit.


@pytest_twisted.ensureDeferred
async def test_concurrent_appends_keep_each_rooms_order(pg_stores: PgStoreFactory) -> None:
    """Hundreds of appends in flight at once over three rooms are batched, and each room's ids
    follow the order in which its messages were said."""
    store = pg_stores()
    appends = [
        defer.ensureDeferred(store.append(f"room{i % 3}", said("alice", f"{i}")))
        for i in range(300)
    ]
    stored = await defer.gatherResults(appends)
    for room in range(3):
        mine = [msg for msg, _ in stored if msg.room == f"room{room}"]
        assert [m.id for m in mine] == list(range(1, 101))
        assert [int(m.text) for m in mine] == list(range(room, 300, 3))
    kept = await store.latest("room1", 200)
    assert [m.text for m in kept] == [str(i) for i in range(1, 300, 3)]


@pytest_twisted.ensureDeferred
async def test_a_ref_twice_in_one_batch_is_stored_once(pg_stores: PgStoreFactory) -> None:
    """A resend that lands in the same transaction as the original gets the original back."""
    store = pg_stores()
    # The first holds the room: the next two wait for it and go out together.
    first = defer.ensureDeferred(store.append("lobby", said("alice", "first")))
    one = defer.ensureDeferred(store.append("lobby", said("alice", "hi", "r1")))
    two = defer.ensureDeferred(store.append("lobby", said("alice", "hi (resent)", "r1")))
    other = defer.ensureDeferred(store.append("lobby", said("bob", "hi", "r1")))
    await first
    (msg1, fresh1), (msg2, fresh2), (msg3, fresh3) = await defer.gatherResults([one, two, other])
    assert (fresh1, fresh2, fresh3) == (True, False, True)
    assert msg1 == msg2 and (msg1.id, msg1.text) == (2, "hi")
    assert msg3.id == 3
    assert [m.text for m in await store.latest("lobby", 10)] == ["first", "hi", "hi"]


@pytest_twisted.ensureDeferred
async def test_two_nodes_share_the_ids_and_the_refs(pg_stores: PgStoreFactory) -> None:
    """Two stores on one database (two nodes) appending to the same rooms at once: each room's
    ids are 1..n with none given twice, and a ref sent through both is stored once."""
    one, two = pg_stores(), pg_stores()
    appends = []
    for i in range(200):
        for store in (one, two):
            room = f"room{i % 2}"
            # Every message is sent through both nodes with the same ref: stored once.
            appends.append(defer.ensureDeferred(store.append(room, said("a", f"{i}", f"r{i}"))))
    stored = await defer.gatherResults(appends)
    assert sum(fresh for _, fresh in stored) == 200
    for room in ("room0", "room1"):
        kept = await one.page(room, None, None, 500)
        assert [m.id for m in kept] == list(range(1, 101))
        assert sorted(str(m.ref) for m in kept) == sorted(
            f"r{i}" for i in range(room == "room1", 200, 2)
        )
        assert await two.last_id(room) == 100
    for (first, _), (second, _) in zip(stored[::2], stored[1::2], strict=True):
        assert first == second


@pytest_twisted.ensureDeferred
async def test_keep_zero_keeps_everything(pg_stores: PgStoreFactory) -> None:
    """--history-keep 0: nothing is trimmed, however many messages."""
    store = pg_stores(0)
    await defer.gatherResults(
        [defer.ensureDeferred(store.append("lobby", said("a", f"m{i}"))) for i in range(500)]
    )
    assert len(await store.page("lobby", None, None, 1000)) == 500
    assert (await store.page("lobby", None, 0, 1))[0].id == 1


# The ref window.


@pytest_twisted.ensureDeferred
async def test_a_ref_is_known_for_the_window_and_then_forgotten(
    pg_stores: PgStoreFactory,
) -> None:
    """A resend just inside the window gets the stored message back; just past it, it is
    stored again; the refs past the window are then deleted from disk."""
    now = [1_800_000_000.0]
    window_s = 24 * 3600.0
    store = pg_stores(0, now_s=lambda: now[0], ref_window_s=window_s)
    original, _ = await store.append("lobby", said("alice", "hi", "r1"))
    await store.append("lobby", said("alice", "other", "r2"))
    now[0] += window_s
    assert await store.append("lobby", said("alice", "hi", "r1")) == (original, False)
    assert await store.find_ref("lobby", "alice", "r1") == original
    now[0] += 0.001
    assert await store.find_ref("lobby", "alice", "r1") is None
    again, fresh = await store.append("lobby", said("alice", "hi", "r1"))
    assert fresh and again.id == 3
    # r2 is past the window and goes; r1 was remembered again with the new message.
    assert await store.sweep() == (1, 0)
    assert await store.append("lobby", said("alice", "hi", "r1")) == (again, False)
    assert [m.id for m in await store.latest("lobby", 10)] == [1, 2, 3]


@pytest_twisted.ensureDeferred
async def test_the_ttl_deletes_older_messages_and_ids_go_on(pg_stores: PgStoreFactory) -> None:
    """--history-ttl: a sweep deletes the messages stamped before now - ttl (through an index on
    ts made for it), the others stay, and the room's ids never start over."""
    now = [1_800_000_000.0]
    store = pg_stores(0, now_s=lambda: now[0], ttl_s=3600.0)
    for age_s in (7200, 3601, 3599, 10):
        await store.append("lobby", NewMessage("a", f"{age_s}s old", format_ts(now[0] - age_s)))
    await store.append("dev", NewMessage("a", "old", format_ts(now[0] - 7200)))
    assert await store.sweep() == (0, 3)
    assert [m.text for m in await store.latest("lobby", 10)] == ["3599s old", "10s old"]
    assert await store.latest("dev", 10) == []
    assert (await store.append("dev", NewMessage("a", "new", format_ts(now[0]))))[0].id == 2
    now[0] += 3600
    assert await store.sweep() == (0, 2)


@pytest_twisted.ensureDeferred
async def test_a_started_store_sweeps_every_minute(pg_url: str) -> None:
    """start() sweeps every SWEEP_EVERY_S: the refs past the window go without anyone asking."""
    now = [1_800_000_000.0]
    clock = Clock()
    link = PgLink(conninfo(pg_url), reactor, "test")
    with connect(pg_url) as conn:
        migrate(conn)
    store = PostgresHistory(link, 0, lambda: now[0], 60.0, clock=clock)
    store.start()
    try:
        await store.append("lobby", said("a", "hi", "r1"))
        now[0] += 61
        clock.advance(SWEEP_EVERY_S)
        await until(lambda: refs_left(pg_url) == 0)
    finally:
        store.close()


def refs_left(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM refs").fetchone()
        return int(row[0]) if row else -1


def test_the_ts_index_is_made_only_for_a_ttl(pg_url: str) -> None:
    """Every insert pays for an index: the one on ts is made when a TTL asks for it."""
    with connect(pg_url) as conn:
        migrate(conn)
        query = "SELECT count(*) FROM pg_indexes WHERE indexname = 'messages_ts'"
        assert conn.execute(query).fetchone() == (0,)
        migrate(conn, expiring=True)
        assert conn.execute(query).fetchone() == (1,)


# Search.


@pytest_twisted.ensureDeferred
async def test_search_folds_scripts_underscores_and_long_words(pg_stores: PgStoreFactory) -> None:
    """Words of any script and with `_` are lexemes as Python folded them; a word too long for
    an index entry is indexed by its beginning, which a prefix query still finds."""
    store = pg_stores()
    await store.append("lobby", said("a", "Ελληνικά и Кириллица snake_case"))
    long_word = "漢" * 1000
    assert len(long_word.encode()) > MAX_LEXEME_BYTES
    await store.append("lobby", said("a", f"{long_word} tail"))

    async def found(q: str) -> list[int]:
        return [m.id for m in await store.search("lobby", Query.parse(q), None, 5)]

    assert await found("ΕΛΛΗΝΙΚΑ кирил") == [1]
    assert await found("snake_c") == [1]
    assert await found("snake ελληνικα") == []
    assert await found(f"tail {'漢' * 190}") == [2]
    assert await found(f"{'漢' * 190} tail") == []


def index_use(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Index scans and the rows they read, and sequential scans of messages, so far."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    rows = conn.execute(
        "SELECT indexrelname, idx_scan, idx_tup_read FROM pg_stat_user_indexes "
        "WHERE relname = 'messages'"
    ).fetchall()
    used = {f"{name}.scans": scans for name, scans, _ in rows}
    used |= {f"{name}.read": read for name, _, read in rows}
    [(seq,)] = conn.execute(
        "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'messages'"
    ).fetchall()
    return used | {"seq": seq}


def test_a_rare_word_is_found_through_the_index_not_by_reading_the_room(pg_url: str) -> None:
    """In a room of 200,000 messages a word of four of them is found through the GIN index
    after the newest SEARCH_SCAN messages; a common word among those; a word in 0.5 % of them
    in the next 8 x SEARCH_SCAN; none reads the room."""
    with connect(pg_url) as conn:
        migrate(conn)
        conn.execute(
            "INSERT INTO messages (room, id, name, text, ts, tsv) "
            "SELECT 'big', g, 'n', 'common words ' || g, 't', "
            "array_to_tsvector(ARRAY['common', 'words', g::text] "
            "|| CASE WHEN g % 50000 = 0 THEN ARRAY['needle'] ELSE ARRAY[]::text[] END "
            "|| CASE WHEN g % 200 = 0 THEN ARRAY['some'] ELSE ARRAY[]::text[] END) "
            "FROM generate_series(1, 200000) g"
        )
        conn.execute("ANALYZE messages")
        search = b"SELECT id FROM wschat_search('big', %s::tsquery, %s, 21, %s)"
        before = index_use(conn)
        rare = conn.execute(search, ("'needle':*", 2**62, SEARCH_SCAN)).fetchall()
        after = index_use(conn)
        assert [r[0] for r in rare] == [200000, 150000, 100000, 50000]
        assert after["messages_tsv.scans"] > before["messages_tsv.scans"]
        # The newest SEARCH_SCAN (twice: the matches, then where they end), no more.
        assert after["messages_pkey.read"] - before["messages_pkey.read"] <= 2 * SEARCH_SCAN + 10
        assert after["seq"] == before["seq"]
        common = conn.execute(search, ("'common' & 'wor':*", 150000, SEARCH_SCAN)).fetchall()
        assert [r[0] for r in common] == list(range(149999, 149978, -1))
        assert index_use(conn)["messages_tsv.scans"] == after["messages_tsv.scans"]
        # 1 in 200: 5 among the newest 1,000, the other 16 among the next 8,000.
        some = conn.execute(search, ("'some':*", 2**62, SEARCH_SCAN)).fetchall()
        assert [r[0] for r in some] == list(range(200000, 195800, -200))
        last = index_use(conn)
        assert last["messages_tsv.scans"] == after["messages_tsv.scans"]
        assert last["messages_pkey.read"] - after["messages_pkey.read"] < 20 * SEARCH_SCAN


# Outages, on a server of the test's own (it is killed).


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    server = PgServer().start()
    yield server
    server.remove()


async def until(condition: Any, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await deferLater(reactor, 0.05)


@pytest_twisted.ensureDeferred
async def test_an_outage_is_refused_at_once_logged_once_and_recovered(
    own_pg: PgServer, log_events: EventLoggingObserver
) -> None:
    """PostgreSQL SIGKILLed: the next say fails with storage_unavailable, and every one after
    it at once, without waiting on the database; the outage is logged once; the link comes
    back by itself once the server is restarted, and every acked message is there."""
    url = own_pg.url(own_pg.create_database())
    store = open_store(conninfo(url), "test", reactor, 0)
    store.start()
    try:
        acked = [(await store.append("lobby", said("a", f"m{i}", f"r{i}")))[0] for i in range(5)]
        own_pg.kill()
        with pytest.raises(StorageUnavailable) as caught:
            await store.append("lobby", said("a", "lost", "rx"))
        assert caught.value.ref == "rx" and not store.up
        started = time.monotonic()
        for _ in range(100):
            with pytest.raises(StorageUnavailable):
                await store.append("lobby", said("a", "refused"))
            with pytest.raises(StorageUnavailable):
                await store.page("lobby", None, None, 10)
        assert time.monotonic() - started < 1.0
        await deferLater(reactor, 1.0)  # a few reconnection attempts, all failing
        own_pg.start()
        await until(lambda: store.up)
        await store.append("lobby", said("a", "after", "r9"))
        kept = await store.latest("lobby", 100)
        assert [m.id for m in kept[:5]] == [m.id for m in acked]
        assert [m.text for m in kept if m.text != "lost"] == [*(m.text for m in acked), "after"]
    finally:
        store.close()
    down = [e for e in log_events if "out of reach" in e.get("log_format", "")]
    back = [e for e in log_events if "is back after" in e.get("log_format", "")]
    assert len(down) == 1 and down[0]["log_level"] == LogLevel.error
    assert len(back) == 1 and back[0]["outage_s"] > 1.0


@pytest_twisted.ensureDeferred
async def test_connections_from_before_an_outage_are_not_used_after_it(
    own_pg: PgServer,
) -> None:
    """Every idle connection died with the server: once it is back, none of them is tried
    (a read and a write on each thread succeed the first time)."""
    url = own_pg.url(own_pg.create_database())
    store = open_store(conninfo(url), "test", reactor, 0)
    store.start()
    try:
        await defer.gatherResults(
            [defer.ensureDeferred(store.page("lobby", None, None, 5)) for _ in range(8)]
        )
        own_pg.kill()
        with pytest.raises(StorageUnavailable):
            await store.page("lobby", None, None, 5)
        own_pg.start()
        await until(lambda: store.up)
        pages = [defer.ensureDeferred(store.page("lobby", None, None, 5)) for _ in range(8)]
        says = [defer.ensureDeferred(store.append("lobby", said("a", f"{i}"))) for i in range(8)]
        assert len(await defer.gatherResults(pages)) == 8
        assert len(await defer.gatherResults(says)) == 8 and store.up
    finally:
        store.close()


def test_a_database_out_of_reach_stops_start_up() -> None:
    """Nothing listens there: open_store fails within the connect timeout."""
    from .pgkit import free_port

    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        open_store(conninfo(f"postgresql://wschat@127.0.0.1:{free_port()}/chat"), "x", reactor, 0)
    assert time.monotonic() - started < 6


@pytest_twisted.ensureDeferred
async def test_no_thread_runs_before_the_store_is_used(pg_url: str) -> None:
    """open_store only migrates (twistd may fork after it): the threads start with the first
    piece of work, whether or not start() was called (a tool filling a store needs none)."""
    before = threading.active_count()
    store = open_store(conninfo(pg_url), "test", reactor, 0)
    assert threading.active_count() == before
    try:
        assert (await store.append("lobby", said("a", "hi")))[0].id == 1
        assert threading.active_count() > before
    finally:
        store.close()


# The options and the wiring of one node.


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_the_options_refuse_what_postgres_cannot_do(tmp_path: Path) -> None:
    """A password in the URL, a password file for SQLite, and --max-history-rooms (not built
    for PostgreSQL yet) each stop start-up with a message that says what to do."""
    with pytest.raises(usage.UsageError, match="password-file"):
        parse("--history-db", "postgresql://wschat:pw@db.example/chat")
    secret = tmp_path / "pg.pass"
    secret.write_text("pw\n")
    with pytest.raises(usage.UsageError, match="is for a PostgreSQL"):
        parse("--history-db-password-file", str(secret))
    with pytest.raises(usage.UsageError, match="--history-keep"):
        parse("--history-db", "postgresql://wschat@db.example/chat", "--max-history-rooms", "9")
    ttl = parse("--history-db", "postgresql://wschat@db.example/chat", "--history-ttl", "30d")
    assert ttl["history-ttl"] == 30 * 86400
    with pytest.raises(usage.UsageError, match="No such file"):
        parse(
            "--history-db",
            "postgresql://wschat@db.example/chat",
            "--history-db-password-file",
            str(tmp_path / "missing"),
        )
    options = parse(
        "--history-db", "postgresql://wschat@db.example/chat", "--history-db-password-file",
        str(secret),
    )  # fmt: skip
    assert "password=pw" in options["history-conninfo"]
    assert options["history-db-shown"] == "postgresql://db.example/chat"
    assert parse()["history-conninfo"] is None


def test_the_backend_of_one_node_on_postgres(pg_url: str) -> None:
    """The store is migrated when the service is made, starts with the service tree, and
    /healthz's check reports it; a database out of reach stops start-up."""
    options = parse("--history-db", pg_url, "--history-keep", "7")
    made = make_store(options, reactor)
    assert isinstance(made, PostgresHistory)
    made.close()
    backend = postgres_backend(options, reactor)
    assert isinstance(backend.store, PostgresHistory)
    [check] = backend.checks
    assert check() == ({"store": "up"}, True)
    [service] = backend.services
    service.startService()
    backend.store.close()
    from .pgkit import free_port

    gone = parse("--history-db", f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(usage.UsageError, match="--history-db"):
        postgres_backend(gone, reactor)
