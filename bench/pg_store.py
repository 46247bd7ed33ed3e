"""The PostgreSQL store alone: says/s and ack latency with N concurrent senders, each awaiting
its append before the next (as bench/say_client.py's senders await their ack), on a server of
its own (tests/pgkit.py) with PostgreSQL's durable defaults (fsync on, synchronous_commit on)
unless --synchronous-commit says otherwise.

    .venv/bin/python -m bench.pg_store --senders 32 --seconds 8 [--one-room]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from twisted.internet import defer, reactor

from tests.pgkit import PgServer
from wschat.chat.ports import NewMessage
from wschat.postgres.store import PostgresHistory, open_store
from wschat.postgres.url import conninfo

TEXT = "x" * 140


async def sender(
    store: PostgresHistory, room: str, n: int, until: float, latencies: list[float]
) -> None:
    i = 0
    while time.monotonic() < until:
        i += 1
        started = time.perf_counter()
        await store.append(room, NewMessage(f"s{n}", TEXT, "2026-01-01T00:00:00.000Z", f"r{i}"))
        latencies.append(time.perf_counter() - started)


async def measure(store: PostgresHistory, args: argparse.Namespace) -> dict[str, Any]:
    warm: list[float] = []
    rooms = [("lobby" if args.one_room else f"room{n}") for n in range(args.senders)]
    await defer.gatherResults(
        [
            defer.ensureDeferred(sender(store, rooms[n], n, time.monotonic() + 1.0, warm))
            for n in range(args.senders)
        ]
    )
    latencies: list[float] = []
    started = time.monotonic()
    cpu = time.process_time()
    await defer.gatherResults(
        [
            defer.ensureDeferred(sender(store, rooms[n], n, started + args.seconds, latencies))
            for n in range(args.senders)
        ]
    )
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "senders": args.senders,
        "one_room": args.one_room,
        "synchronous_commit": args.synchronous_commit,
        "says_per_s": round(len(latencies) / elapsed),
        "ack_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "ack_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "client_cpu_percent": round(100 * (time.process_time() - cpu) / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--one-room", action="store_true")
    parser.add_argument("--synchronous-commit", default="on")
    args = parser.parse_args()
    server = PgServer(
        {"fsync": "on", "full_page_writes": "on", "synchronous_commit": args.synchronous_commit}
    ).start()
    try:
        print(json.dumps(run_on(server, args)))
    finally:
        server.remove()


def run_on(server: PgServer, args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(conninfo(server.url(server.create_database())), "bench", reactor, 0)
    store.start()
    result: dict[str, Any] = {}

    async def run() -> None:
        try:
            result.update(await measure(store, args))
        finally:
            store.close()
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()))
    reactor.run()
    return result


if __name__ == "__main__":
    main()
