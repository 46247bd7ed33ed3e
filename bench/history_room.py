"""History of record in a big room: a `history` page, a `search` and a join, each timed from the
request's write to its answer's read, against a room of 1,000,000 messages (and a join into a
room of 100 for comparison), through a real `twistd wschat` on each store.

    .venv/bin/python -m bench.history_room --messages 1000000 --stores sqlite,postgres
    .venv/bin/python -m bench.history_room --messages 20000 --requests 200   # a quick look

The room is filled before the server starts, through the store's own `append` (so the search
index is the one the server keeps), with text drawn from a fixed vocabulary with a Zipf-like
spread: some words are in a third of the messages, most in a handful. Searches are timed by
kind, because a full-text index is fast for a rare word and slowest for two common words that
are seldom together (it intersects two long lists): `rare`, `mid`, `common`, `common2` (two
common words), `prefix` (a 3-letter prefix of a common word), and the mix of them all. One JSON
line per store goes to stdout, and a markdown table to stderr at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.e2e.process import ServerProcess

ROOM = "big"
SMALL_ROOM = "small"
SMALL_MESSAGES = 100
VOCABULARY = 20_000
SEED = 21
OPEN_LIMITS = (
    "--request-rate",
    "1000000",
    "--request-burst",
    "1000000",
    "--welcome-rate",
    "1000000000",
    "--welcome-burst",
    "1000000000",
    "--history-keep",
    "0",
)


def vocabulary(rng: random.Random) -> list[str]:
    """Made-up words (plus a few accented ones), the most frequent first."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    found: dict[str, None] = {"déployé": None, "résumé": None, "café": None}
    while len(found) < VOCABULARY:
        found["".join(rng.choice(letters) for _ in range(rng.randint(3, 10)))] = None
    return list(found)


def texts(rng: random.Random, words: list[str]) -> Iterator[str]:
    """Messages of 3-20 words, each word drawn with weight 1/rank."""
    weights = [1 / (rank + 1) for rank in range(len(words))]
    cumulative: list[float] = []
    total = 0.0
    for weight in weights:
        total += weight
        cumulative.append(total)
    while True:
        count = rng.randint(3, 20)
        yield " ".join(rng.choices(words, cum_weights=cumulative, k=count))


def fill(history_db: str, messages: int) -> float:
    """Fill the big and the small room through the store's append; the seconds it took."""
    from twisted.internet import defer, task

    from wschat.app.options import Options
    from wschat.app.wiring import make_store
    from wschat.chat.ports import NewMessage

    rng = random.Random(SEED)
    words = vocabulary(rng)
    source = texts(rng, words)

    async def run(reactor: Any) -> float:
        options = Options()
        options.parseOptions(["--history-db", history_db, "--history-keep", "0"])
        store = make_store(options, reactor)
        started = time.monotonic()
        in_flight = 64  # a store that batches (PostgreSQL) sees concurrent appends
        for room, count in ((ROOM, messages), (SMALL_ROOM, SMALL_MESSAGES)):
            done = 0
            while done < count:
                batch = min(in_flight, count - done)
                await defer.gatherResults(
                    [
                        defer.Deferred.fromCoroutine(
                            store.append(
                                room,
                                NewMessage(f"u{i % 50}", next(source), "2026-12-07T00:00:00.000Z"),
                            )
                        )
                        for i in range(done, done + batch)
                    ]
                )
                done += batch
                if done % 100_000 < batch:
                    print(f"filled {done} of {count} in {room}", file=sys.stderr)
        took = time.monotonic() - started
        store.close()
        return took

    result: list[float] = []

    def main(reactor: Any) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(run(reactor)).addCallback(result.append)

    try:
        task.react(main)
    except SystemExit as exc:
        if exc.code:
            raise
    return result[0]


def queries(messages: int) -> dict[str, list[str]]:
    """Search queries by kind, from the same vocabulary the room was filled with."""
    rng = random.Random(SEED)
    words = [w for w in vocabulary(rng) if w.isascii()]
    common, mid, rare = words[:20], words[200:400], words[5000:19000]
    pick = random.Random(SEED + 1)
    return {
        "rare": [pick.choice(rare) for _ in range(50)],
        "mid": [pick.choice(mid) for _ in range(50)],
        "common": [pick.choice(common) for _ in range(50)],
        "common2": [" ".join(pick.sample(common, 2)) for _ in range(50)],
        "prefix": [pick.choice(common)[:3] for _ in range(50)],
    }


def ask(ws: ClientConnection, frame: dict[str, Any], answer: str) -> tuple[float, dict[str, Any]]:
    """Milliseconds from sending `frame` to reading the frame of type `answer`."""
    started = time.perf_counter()
    ws.send(json.dumps(frame))
    while True:
        reply = json.loads(ws.recv(timeout=30))
        if reply["type"] == answer:
            return (time.perf_counter() - started) * 1000, reply
        if reply["type"] == "error":
            raise RuntimeError(f"{frame} -> {reply}")


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "n": len(ordered),
    }


def measure(url: str, messages: int, requests: int) -> dict[str, Any]:
    rng = random.Random(SEED + 2)
    out: dict[str, Any] = {}
    with connect(url, subprotocols=["wschat.v1"], max_size=None) as ws:  # type: ignore[list-item]
        ask(ws, {"type": "join", "room": ROOM, "name": "bench"}, "welcome")
        ask(ws, {"type": "join", "room": SMALL_ROOM}, "welcome")
        timings = [
            ask(
                ws,
                {"type": "history", "room": ROOM, "before": rng.randint(2, messages), "limit": 50},
                "page",
            )[0]
            for _ in range(requests)
        ]
        out["page"] = percentiles(timings)
        out["page_newest"] = percentiles(
            [ask(ws, {"type": "history", "room": ROOM}, "page")[0] for _ in range(requests)]
        )
        every: list[float] = []
        found: dict[str, list[int]] = {}
        for kind, qs in queries(messages).items():
            taken: list[float] = []
            for q in (qs * (requests // len(qs) + 1))[: max(requests // 4, len(qs))]:
                ms, reply = ask(
                    ws, {"type": "search", "room": ROOM, "q": q, "limit": 20}, "results"
                )
                taken.append(ms)
                found.setdefault(kind, []).append(len(reply["messages"]))
            out[f"search_{kind}"] = percentiles(taken)
            every += taken
        out["search_all"] = percentiles(every)
        out["search_hits_median"] = {k: statistics.median(v) for k, v in found.items()}
        for room, key in ((ROOM, "join_big"), (SMALL_ROOM, "join_small")):
            joins = []
            for _ in range(requests // 2):
                ask(ws, {"type": "leave", "room": room}, "left")
                joins.append(ask(ws, {"type": "join", "room": room}, "welcome")[0])
            out[key] = percentiles(joins)
    return out


def one_store(
    label: str,
    history_db: Callable[[Path], str],
    messages: int,
    requests: int,
    args: list[str],
    after_fill: Callable[[str], None] = lambda db: None,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="wschat-bench-history-"))
    db = history_db(workdir)
    filled_s = fill(db, messages)
    after_fill(db)
    server = ServerProcess(workdir, "--history-db", db, *OPEN_LIMITS, *args)
    server.start()
    try:
        result = measure(server.ws_url, messages, requests)
    finally:
        server.stop()
    return {"store": label, "messages": messages, "fill_s": round(filled_s, 1), **result}


def table(rows: list[dict[str, Any]]) -> str:
    keys = ["page", "page_newest", "search_all", "search_rare", "search_mid"]
    keys += ["search_common", "search_common2", "search_prefix", "join_big", "join_small"]
    lines = ["| store | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
    for row in rows:
        cells = [f"{row[k]['p50_ms']:.2f} / {row[k]['p99_ms']:.2f}" for k in keys]
        lines.append(f"| {row['store']} ({row['messages']:,} msgs) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(p50 / p99, ms)"


def analyze(url: str) -> None:
    """A freshly filled table has no statistics until autovacuum gets to it."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=1000, help="timed pages per kind")
    parser.add_argument("--stores", default="sqlite", help="sqlite, postgres (comma-separated)")
    parser.add_argument(
        "--reuse",
        metavar="FILE",
        help="a SQLite file an earlier run filled with --messages (filling takes ~10 minutes)",
    )
    opts = parser.parse_args()
    rows = []
    for store in opts.stores.split(","):
        if store == "sqlite" and opts.reuse:
            server = ServerProcess(
                Path(tempfile.mkdtemp()), "--history-db", opts.reuse, *OPEN_LIMITS
            )
            server.start()
            try:
                measured = measure(server.ws_url, opts.messages, opts.requests)
            finally:
                server.stop()
            rows.append({"store": "SQLite", "messages": opts.messages, **measured})
        elif store == "sqlite":
            rows.append(
                one_store(
                    "SQLite", lambda d: str(d / "history.sqlite3"), opts.messages, opts.requests, []
                )
            )
        elif store == "postgres":
            from tests.pgkit import PgServer

            # PostgreSQL's durable defaults, not the tests' fsync off.
            pg = PgServer({"fsync": "on", "full_page_writes": "on"}).start()
            try:
                rows.append(
                    one_store(
                        "PostgreSQL",
                        lambda d, pg=pg: pg.url(pg.create_database()),  # type: ignore[misc]
                        opts.messages,
                        opts.requests,
                        [],
                        analyze,
                    )
                )
            finally:
                pg.remove()
        else:
            raise SystemExit(f"unknown store {store!r}")
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
