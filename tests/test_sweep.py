"""The history sweeps (--history-ttl, --max-history-rooms) on SQLite, timed by task.Clock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver

from wschat.chat.model import format_ts
from wschat.chat.ports import NewMessage
from wschat.store.sqlite import MEMORY, SqliteHistory, Swept
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
