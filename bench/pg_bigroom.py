"""The PostgreSQL store on a room of 1,000,000 messages: `history` pages and searches through the
store (threads, round trips and all), p50/p99; and a welcome's read (the latest 100) there
against a room of 100. On a server of its own (tests/pgkit.py), PostgreSQL's defaults.

    .venv/bin/python -m bench.pg_bigroom [--messages 1000000] [--queries 500]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from twisted.internet import defer, reactor

from tests.pgkit import PgServer
from wschat.chat.search import Query
from wschat.postgres.link import connect
from wschat.postgres.store import PostgresHistory, open_store
from wschat.postgres.url import conninfo

# Words by frequency: each message has 12 words drawn from a vocabulary of 20,000 with a Zipf
# distribution (as in chat: a few words everywhere, most words rare), so that the searches meet
# words in most messages, in some, and in a handful.
VOCABULARY = 20_000
WORDS_PER_MESSAGE = 12


def fill(conn: psycopg.Connection[Any], room: str, count: int) -> None:
    """`count` messages in `room` (ids 1..count), with text and index as the store writes them."""
    conn.execute("SET statement_timeout = 0")
    step = 100_000
    for start in range(1, count + 1, step):
        conn.execute(
            "INSERT INTO messages (room, id, name, text, ts, tsv) "
            "SELECT %s, g, 'n' || (g %% 50), t.words, '2026-01-01T00:00:00.000Z', "
            "array_to_tsvector(string_to_array(t.words, ' ')) "
            "FROM generate_series(%s::bigint, %s::bigint) g, LATERAL ("
            "  SELECT string_agg('w' || greatest(1, floor(power(random(), 3) * %s))::int, ' ')"
            "  AS words FROM generate_series(1, %s) k WHERE g > 0) t",
            (room, start, min(start + step - 1, count), VOCABULARY, WORDS_PER_MESSAGE),
        )
    conn.execute(
        "INSERT INTO rooms (room, last_id) VALUES (%s, %s) "
        "ON CONFLICT (room) DO UPDATE SET last_id = excluded.last_id",
        (room, count),
    )
    conn.execute("VACUUM ANALYZE messages")


def share(conn: psycopg.Connection[Any], word: str, room: str) -> float:
    """The share of the room's messages holding `word` (from the index)."""
    row = conn.execute(
        "SELECT count(*) FROM messages WHERE room = %s AND tsv @@ %s::tsquery",
        (room, f"'{word}'"),
    ).fetchone()
    assert row is not None
    return float(row[0]) / 1_000_000


async def timed(count: int, call: Callable[[int], Awaitable[object]]) -> dict[str, float]:
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        await call(i)
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    return {
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
    }


def searcher(
    store: PostgresHistory, query: Query, messages: int
) -> Callable[[int], Awaitable[object]]:
    rng = random.Random(11)

    def search(i: int) -> Awaitable[object]:
        before = rng.randint(messages // 2, messages) if i % 2 else None
        return store.search("big", query, before, 21)

    return search


async def measure(store: PostgresHistory, messages: int, queries: int) -> dict[str, Any]:
    rng = random.Random(7)
    result: dict[str, Any] = {"messages": messages}
    result["page_before"] = await timed(
        queries, lambda i: store.page("big", rng.randint(2, messages), None, 51)
    )
    result["page_after"] = await timed(
        queries, lambda i: store.page("big", None, rng.randint(1, messages), 51)
    )
    result["welcome_latest_100_big"] = await timed(queries, lambda i: store.latest("big", 100))
    result["welcome_latest_100_small"] = await timed(queries, lambda i: store.latest("small", 100))
    # Every query's last word is a prefix (wN also finds wN0..wN9, wN00..): from words in most
    # messages to words in a handful, and none; half of them with a random `before`.
    for label, q in [
        ("common", "w1 w2"),
        ("mid", "w300"),
        ("rare", "w9000"),
        ("two_rare", "w9000 w8000"),
        ("absent", "nothing"),
    ]:
        result[f"search_{label}"] = await timed(queries, searcher(store, Query.parse(q), messages))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    server = PgServer({"fsync": "on", "full_page_writes": "on"}).start()
    try:
        print(json.dumps(run_on(server, args), indent=1))
    finally:
        server.remove()


def run_on(server: PgServer, args: argparse.Namespace) -> dict[str, Any]:
    info = conninfo(server.url(server.create_database()))
    store = open_store(info, "bench", reactor, 0)
    started = time.monotonic()
    with connect(info) as conn:
        fill(conn, "big", args.messages)
        fill(conn, "small", 100)
        shares = {w: round(share(conn, w, "big"), 5) for w in ("w1", "w40", "w9000")}
    filled_s = time.monotonic() - started
    store.start()
    result: dict[str, Any] = {"fill_s": round(filled_s, 1), "word_share": shares}

    async def run() -> None:
        try:
            result.update(await measure(store, args.messages, args.queries))
        finally:
            store.close()
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()))
    reactor.run()
    return result


if __name__ == "__main__":
    main()
