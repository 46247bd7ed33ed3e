"""`python -m wschat.migrate`: a real SQLite history, written by SqliteHistory, copied into a real
PostgreSQL, also after an interrupted run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_twisted

from wschat import migrate
from wschat.chat.model import Message, format_ts
from wschat.chat.ports import NewMessage
from wschat.chat.search import Query
from wschat.store.sqlite import SqliteHistory

from .chatkit import run
from .conftest import PgStoreFactory


def sqlite_history(path: Path) -> list[Message]:
    """A node's history: two rooms, refs old and recent, a signed user, a guest, the
    application; every message as SqliteHistory reads it back."""
    store = SqliteHistory(str(path), 100_000)
    recent = format_ts(time.time() - 60)
    for i in range(1, 31):
        ts = recent if i > 25 else "2025-01-01T00:00:00.000Z"
        run(store.append("lobby", NewMessage("alice", f"message {i}", ts, f"r{i}")))
    run(store.append("lobby", NewMessage("Alice", "Résumé signed", recent, "s1", user="u-a")))
    run(store.append("lobby", NewMessage("zed (guest)", "a guest", recent, None, guest=True)))
    run(store.append("lobby", NewMessage("bot", "published", recent, "r30", application=True)))
    for i in range(1, 6):
        run(store.append("dev", NewMessage("bob", f"dev {i}", recent, None)))
    kept = run(store.latest("lobby", 100)) + run(store.latest("dev", 100))
    store.close()
    return kept


def everything(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            'SELECT room, id, name, text, ts, ref, "user", guest, application FROM messages '
            "ORDER BY room, id"
        ).fetchall()


@pytest_twisted.ensureDeferred
async def test_a_sqlite_history_is_copied_whole(
    tmp_path: Path, pg_url: str, pg_stores: PgStoreFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ids, texts, timestamps, refs and senders as they were; ids go on from the copy; a
    recent ref is still known to a resend, the copy is searchable, the file unchanged."""
    path = tmp_path / "history.sqlite3"
    before = sqlite_history(path)
    file_bytes = path.read_bytes()
    assert migrate.main([str(path), pg_url]) == 0
    assert "copied 38 messages of 2 rooms" in capsys.readouterr().out
    store = pg_stores()
    assert await store.latest("lobby", 100) + await store.latest("dev", 100) == before
    assert (await store.append("dev", NewMessage("bob", "next", "t", None)))[0].id == 6
    said = await store.append("lobby", NewMessage("alice", "again", "t", "r27"))
    assert said == (before[26], False)
    app = await store.find_ref("lobby", "bot", "r30", application=True)
    assert app is not None and app.text == "published"
    assert await store.find_ref("lobby", "alice", "r2") is None  # older than the ref window
    assert [m.id for m in await store.search("lobby", Query.parse("resume"), None, 5)] == [31]
    assert path.read_bytes() == file_bytes


def test_an_interrupted_copy_is_resumed_without_duplicates(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut after two batches, a second run goes on from where the first stopped: every
    message once."""
    path = tmp_path / "history.sqlite3"
    sqlite_history(path)
    monkeypatch.setattr(migrate, "BATCH", 7)
    real_store = migrate._store
    calls = [0]

    def cut(pg: psycopg.Connection[Any], *args: Any) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        real_store(pg, *args)

    monkeypatch.setattr(migrate, "_store", cut)
    assert migrate.main([str(path), pg_url]) == 1
    assert len(everything(pg_url)) == 5 + 7  # dev whole, then one batch of the lobby
    monkeypatch.setattr(migrate, "_store", real_store)
    assert migrate.main([str(path), pg_url]) == 0
    rows = everything(pg_url)
    assert len(rows) == 38 == len(set(rows))
    assert [r[1] for r in rows if r[0] == "lobby"] == list(range(1, 34))
    assert migrate.main([str(path), pg_url]) == 0
    assert everything(pg_url) == rows


def test_the_tool_has_help_and_refuses_a_password_in_the_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m wschat.migrate --help` says what it does; a URL with a password is refused
    before anything is read."""
    done = subprocess.run(
        [sys.executable, "-m", "wschat.migrate", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "SQLITE_PATH" in done.stdout.upper()
    assert "resumed" in done.stdout
    assert migrate.main([str(tmp_path / "x.sqlite3"), "postgresql://u:pw@h/db"]) == 1
    assert "password" in capsys.readouterr().err
