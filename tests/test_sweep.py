"""The history sweeps (the ref window, --history-ttl, --max-history-rooms) on SQLite, timed by
task.Clock; makeService starts them, and gives the store --history-keep."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from twisted.application.service import MultiService
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock

from wschat.app.wiring import Options, make_store, makeService
from wschat.chat.model import format_ts
from wschat.chat.ports import NewMessage
from wschat.store.refs import REF_WINDOW_S
from wschat.store.sqlite import MEMORY, TRIM_EVERY_MESSAGES, SqliteHistory, Swept
from wschat.store.sweep import BATCH_MESSAGES, SWEEP_INTERVAL_S, HistorySweeper

from .chatkit import run

DAY_S = 86400.0
NOW_S = 1_800_000_000.0


def say(store: SqliteHistory, room: str, at_s: float, text: str = "x") -> int:
    return run(store.append(room, NewMessage("n", text, format_ts(at_s), None)))[0].id


def sweeps(log_events: EventLoggingObserver) -> list[dict[str, object]]:
    return [e for e in log_events if e.get("log_format", "").startswith("history sweep")]


def test_ttl_deletes_old_messages_in_batches_between_reactor_turns(
    log_events: EventLoggingObserver,
) -> None:
    """Messages older than the TTL go, a batch per reactor turn; a room left with none is
    forgotten, a room with newer ones keeps those; one log line for the whole sweep."""
    store = SqliteHistory(MEMORY, 10_000, track_rooms=True, expiring=True)
    for index in range(BATCH_MESSAGES * 2 + 10):
        say(store, "old", NOW_S - 40 * DAY_S + index)
    say(store, "mixed", NOW_S - 31 * DAY_S, "stale")
    say(store, "mixed", NOW_S - 1 * DAY_S, "fresh")
    clock = Clock()
    batches: list[tuple[int, int]] = []
    expire = store.expire

    def recording(before_ts: str, batch: int) -> Swept:
        swept = expire(before_ts, batch)
        batches.append((swept.messages, batch))
        return swept

    store.expire = recording  # type: ignore[method-assign]
    sweeper = HistorySweeper(store, clock, 30 * DAY_S, 0, now_s=lambda: NOW_S)
    sweeper.startService()
    clock.advance(SWEEP_INTERVAL_S)
    # task.Clock runs the callLater(0) of each next batch within the same advance; the real
    # reactor runs it on its next turn, after polling the sockets.
    assert batches == [(500, BATCH_MESSAGES)] * 2 + [(11, BATCH_MESSAGES)]
    assert sweeper.sweeps == 1
    assert run(store.latest("old", 10)) == []
    assert [m.text for m in run(store.latest("mixed", 10))] == ["fresh"]
    assert store.room_count == 1
    [line] = sweeps(log_events)
    assert (line["expired"], line["expired_rooms"], line["evicted_rooms"]) == (1011, 1, 0)
    clock.advance(SWEEP_INTERVAL_S)
    assert sweeper.sweeps == 2 and len(sweeps(log_events)) == 1  # nothing to do: no line
    sweeper.stopService()
    assert clock.getDelayedCalls() == []


def test_a_forgotten_room_that_comes_back_counts_on_above_its_old_ids() -> None:
    """Ids stay strictly increasing per room across a forgetting: an old `since` is never
    answered with the new history's messages as if they were the ones it missed."""
    store = SqliteHistory(MEMORY, 100, track_rooms=True)
    for _ in range(5):
        say(store, "lobby", NOW_S - 10 * DAY_S)
    assert store.expire(format_ts(NOW_S - DAY_S), 100).rooms == 1
    assert say(store, "lobby", NOW_S) == 6
    assert say(store, "other", NOW_S) == 6
    recovered = run(store.after("lobby", 3, 100))
    assert not recovered.complete


def test_the_bound_forgets_the_least_recently_written_rooms_first(
    log_events: EventLoggingObserver,
) -> None:
    """Beyond --max-history-rooms the rooms written to least recently go first, in
    batches, until the bound holds; one log line per sweep says how many."""
    store = SqliteHistory(MEMORY, 100, track_rooms=True)
    for index in range(30):
        say(store, f"room{index}", NOW_S + index)
    say(store, "room0", NOW_S + 100)  # written to again: now the most recent
    clock = Clock()
    sweeper = HistorySweeper(store, clock, None, 20, now_s=lambda: NOW_S + 200)
    sweeper.startService()
    clock.advance(SWEEP_INTERVAL_S)
    for _ in range(3):
        clock.advance(0)
    assert store.room_count == 20
    kept = {f"room{index}" for index in range(30) if run(store.latest(f"room{index}", 1))}
    assert kept == {"room0", *(f"room{index}" for index in range(11, 30))}
    [line] = sweeps(log_events)
    assert (line["evicted_rooms"], line["evicted"], line["max_rooms"]) == (10, 10, 20)
    sweeper.stopService()


def test_the_order_and_the_high_id_survive_a_restart(tmp_path: Path) -> None:
    """The rooms' order is read back from the file at start, and so is the highest id the
    sweeps forgot."""
    path = str(tmp_path / "h.sqlite3")
    store = SqliteHistory(path, 100, track_rooms=True)
    for _ in range(7):
        say(store, "gone", NOW_S)
    say(store, "a", NOW_S + 1)
    say(store, "b", NOW_S + 2)
    assert store.evict(2, 10).rooms == 1
    store.close()
    again = SqliteHistory(path, 100, track_rooms=True)
    assert again.room_count == 2
    assert again.evict(1, 10).rooms == 1
    assert run(again.latest("a", 1)) == [] and len(run(again.latest("b", 1))) == 1
    assert say(again, "gone", NOW_S + 3) == 8
    again.close()


def test_a_version_1_database_is_migrated(tmp_path: Path) -> None:
    """A history file of schema v1 gets the forgotten table (and, expiring, the timestamp
    index), and keeps its messages."""
    path = tmp_path / "v1.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE messages (room TEXT NOT NULL, id INTEGER NOT NULL, name TEXT NOT NULL,"
        " text TEXT NOT NULL, ts TEXT NOT NULL, ref TEXT, PRIMARY KEY (room, id)) WITHOUT ROWID;"
        "INSERT INTO messages VALUES ('r', 4, 'n', 'kept', '2020-01-01T00:00:00.000Z', NULL);"
        "PRAGMA user_version = 1;"
    )
    db.close()
    store = SqliteHistory(str(path), 100, track_rooms=True, expiring=True)
    assert [m.text for m in run(store.latest("r", 5))] == ["kept"]
    assert store.room_count == 1
    assert store.expire("2021-01-01T00:00:00.000Z", 10).rooms == 1
    store.close()


def test_the_sweeper_forgets_refs_past_their_window_whatever_the_ttl(
    log_events: EventLoggingObserver,
) -> None:
    """Without --history-ttl or --max-history-rooms the sweeper still runs for the refs: each
    sweep deletes those older than REF_WINDOW_S, in batches between reactor turns, keeps the
    younger ones and every message, and logs nothing for it."""
    store = SqliteHistory(MEMORY, 0)
    old = BATCH_MESSAGES + 20
    for i in range(old):
        run(store.append("lobby", NewMessage("n", "x", format_ts(NOW_S - 2 * DAY_S + i), f"o{i}")))
    for i in range(5):
        run(store.append("lobby", NewMessage("n", "x", format_ts(NOW_S - DAY_S + 60), f"y{i}")))
    clock = Clock()
    batches: list[Swept] = []
    forget_refs = store.forget_refs

    def recording(before_ts: str, batch: int) -> Swept:
        batches.append(forget_refs(before_ts, batch))
        return batches[-1]

    store.forget_refs = recording  # type: ignore[method-assign]
    sweeper = HistorySweeper(store, clock, None, 0, now_s=lambda: NOW_S)
    sweeper.startService()
    clock.advance(SWEEP_INTERVAL_S)
    assert batches == [Swept(BATCH_MESSAGES, 0, False), Swept(20, 0, True)]
    assert store._db.execute("SELECT count(*) FROM refs").fetchone() == (5,)
    assert len(run(store.latest("lobby", 1000))) == old + 5
    assert sweeps(log_events) == []
    assert REF_WINDOW_S == DAY_S
    sweeper.stopService()


class ThreadedReactor(MemoryReactorClock):
    """The SQLite history hands its checkpoints to the reactor's threads; these run them now."""

    def callInThread(self, f: Callable[..., object], *args: object, **kwargs: object) -> None:
        f(*args, **kwargs)


def test_make_service_sweeps_every_sqlite_history(tmp_path: Path) -> None:
    """makeService starts the sweeper for a SQLite file even without a TTL or a bound of
    rooms (the refs need it), and none for a history in memory."""

    def sweepers(*args: str) -> list[HistorySweeper]:
        options = Options()
        options.parseOptions(["--listen", "tcp:0", *args])
        top = makeService(options, reactor=ThreadedReactor())
        assert isinstance(top, MultiService)
        return [service for service in top if isinstance(service, HistorySweeper)]

    assert len(sweepers("--history-db", str(tmp_path / "h.sqlite3"))) == 1
    assert sweepers("--history-db", ":memory:") == []


def test_make_store_keeps_what_history_keep_says(tmp_path: Path) -> None:
    """--history-keep bounds each room of the SQLite file (0, the default, keeps all); in
    memory it bounds each room too, and without it --history-size does."""

    def kept(*args: str) -> int:
        options = Options()
        options.parseOptions(["--history-size", "5", *args])
        store = make_store(options, ThreadedReactor())
        for i in range(TRIM_EVERY_MESSAGES * 2):
            run(store.append("lobby", NewMessage("n", "x", format_ts(NOW_S + i), None)))
        count = len(run(store.latest("lobby", 1000)))
        store.close()
        return count

    assert kept("--history-db", str(tmp_path / "all.sqlite3")) == TRIM_EVERY_MESSAGES * 2
    assert kept("--history-db", str(tmp_path / "ten.sqlite3"), "--history-keep", "10") == 10
    assert kept("--history-db", ":memory:") == 5
    assert kept("--history-db", ":memory:", "--history-keep", "7") == 7
