"""Says/s and ack latency with N senders: one node on SQLite, one node on PostgreSQL, and two
nodes on Redis + PostgreSQL (half the senders on each), same run, same machine.

With two nodes each sender's room also has a listener on the other node, so that every say
crosses the bus (committed and acked on one node, announced, handed to a member of the other);
the listeners check that each room's ids arrive in order without a hole. PostgreSQL runs with
its durable defaults (fsync on, synchronous_commit as --synchronous-commit), Redis without
persistence (it holds no history here).

    .venv/bin/python -m bench.redis_pg --senders 32 --seconds 8
"""

from __future__ import annotations

import argparse
import json
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.say_client import Conn
from tests.e2e.process import ServerProcess
from tests.e2e.redis import RedisServer
from tests.pgkit import PgServer

ROOT = Path(__file__).resolve().parent.parent
OPEN = ("--rate", "100000", "--burst", "100000", "--max-connections-per-ip", "10000")


class Listener(threading.Thread):
    """One connection in `rooms` on a node; counts each room's messages and their holes."""

    def __init__(self, url: str, rooms: list[str], name: str) -> None:
        super().__init__(daemon=True)
        self.conn = Conn(url, 0, rooms[0], 30)
        self.conn.name = name
        self.last: dict[str, int] = {}
        self.received = 0
        self.out_of_order = 0
        self.stop = threading.Event()
        for room in rooms:
            self.conn.send_json({"type": "join", "room": room, "name": name})

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.conn.sock, selectors.EVENT_READ)
        while not self.stop.is_set() and not self.conn.closed:
            if sel.select(timeout=0.1):
                for frame in self.conn.frames():
                    if frame.get("type") == "message":
                        room, msg_id = frame["room"], frame["id"]
                        if msg_id != self.last.get(room, 0) + 1:
                            self.out_of_order += 1
                        self.last[room] = msg_id
                        self.received += 1
                    elif frame.get("type") == "welcome":
                        history = frame.get("history") or []
                        self.last[frame["room"]] = history[-1]["id"] if history else 0


def say_clients(
    urls: list[str], senders: int, args: argparse.Namespace, watch: dict[str, int]
) -> list[dict[str, Any]]:
    """`senders` split over the nodes, each node's in rooms of their own; run at once. Each
    result has the CPU % of the `watch`ed processes over its window."""
    procs = []
    for n, url in enumerate(urls):
        cfg = {
            "url": url,
            "senders": senders // len(urls),
            "warmup": args.warmup,
            "duration": args.seconds,
            "room": f"n{n}",
            "watch": watch,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "say_client.py"), json.dumps(cfg)],
                stdout=subprocess.PIPE,
            )
        )
    return [json.loads(p.communicate()[0]) for p in procs]


def fill_room(url: str, room: str, count: int) -> Conn:
    """`count` messages said in `room`; the sayer stays in it (so the node watches the room)."""
    conn = Conn(url, 0, room, 30)
    conn.send_json({"type": "join", "room": room, "name": "filler"})
    acked = 0
    for i in range(count):
        conn.send_json({"type": "say", "room": room, "text": "x" * 140, "ref": f"f{i}"})
    while acked < count:
        for frame in conn.frames():
            acked += frame.get("type") == "ack"
    return conn


def join_ms(url: str, room: str, joins: int) -> tuple[float, float]:
    """p50 and p99 of join -> welcome (the connection made beforehand), one join at a time."""
    took = []
    for i in range(joins):
        conn = Conn(url, i, room, 30)
        started = time.perf_counter()
        conn.send_json({"type": "join", "room": room, "name": f"j{i}"})
        welcomed = False
        while not welcomed:
            for frame in conn.frames():
                welcomed = welcomed or frame.get("type") == "welcome"
        took.append((time.perf_counter() - started) * 1000)
        conn.sock.close()
    took.sort()
    return took[len(took) // 2], took[int(len(took) * 0.99)]


def row(label: str, results: list[dict[str, Any]], joins: tuple[float, float], extra: str) -> str:
    says = sum(r["says_per_s"] for r in results)
    # CPU time per say of the wschat nodes, and of Redis (the first client's window).
    cpu = results[0]["cpu_percent"]
    nodes_us = sum(v for k, v in cpu.items() if k != "redis" and v) * 1e4 / says
    redis_us = (cpu.get("redis") or 0) * 1e4 / says
    p50 = " / ".join(f"{r['ack_ms']['p50']:.2f}" for r in results)
    p99 = " / ".join(f"{r['ack_ms']['p99']:.2f}" for r in results)
    errors = sum(sum(r["errors"].values()) for r in results)
    missing = sum(r["messages_missing"] for r in results)
    return (
        f"| {label} | {says:,.0f} | {p50} | {p99} | {nodes_us:.0f} / {redis_us:.0f} | "
        f"{errors} | {missing} | {joins[0]:.2f} / {joins[1]:.2f} | {extra} |"
    )


def measure(
    label: str, nodes: list[ServerProcess], args: argparse.Namespace, redis: RedisServer
) -> str:
    """The say run, then joins (through the last node) of a room of 100 said on the first."""
    listeners = []
    if len(nodes) == 2:
        # Each node's senders are in rooms n<i>-<k>; a listener on the other node joins them.
        half = args.senders // 2
        listeners = [
            Listener(nodes[1 - i].ws_url, [f"n{i}-{k}" for k in range(half)], f"listen{i}")
            for i in range(2)
        ]
        for listener in listeners:
            listener.start()
        time.sleep(1.0)
    watch = {f"node{i}": n.proc.pid for i, n in enumerate(nodes) if n.proc is not None}
    if len(nodes) == 2 and redis.proc is not None:
        watch["redis"] = redis.proc.pid
    results = say_clients([n.ws_url for n in nodes], args.senders, args, watch)
    extra = ""
    if listeners:
        time.sleep(2.0)
        for listener in listeners:
            listener.stop.set()
            listener.join(5)
        acked = sum(r["acks"] for r in results)
        received = sum(listener.received for listener in listeners)
        holes = sum(listener.out_of_order for listener in listeners)
        extra = f"{received:,} of {acked:,} acked, {holes} out of order"
    filler = fill_room(nodes[0].ws_url, "joined", 100)
    joins = join_ms(nodes[-1].ws_url, "joined", args.joins)
    filler.sock.close()
    for node in nodes:
        node.kill()
    return row(label, results, joins, extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--joins", type=int, default=300)
    parser.add_argument("--synchronous-commit", default="on")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wschat-bench-redispg-"))
    pg = PgServer(
        {"fsync": "on", "full_page_writes": "on", "synchronous_commit": args.synchronous_commit}
    ).start()
    redis = RedisServer(work / "redis").start()
    started: list[ServerProcess] = []

    def node(name: str, *extra: str) -> ServerProcess:
        server = ServerProcess(work / f"{name}{len(started)}", *OPEN, *extra)
        started.append(server)
        return server.start()

    def on_redis(*extra: str) -> list[ServerProcess]:
        redis.cli("FLUSHALL")
        return [node(n, "--redis", redis.url, "--node-name", n, *extra) for n in ("a", "b")]

    lines = [
        f"{args.senders} senders, {args.seconds:g} s; PostgreSQL fsync on, synchronous_commit="
        f"{args.synchronous_commit}; Redis without persistence",
        "",
        "| setup | says/s | ack p50 ms (per node) | ack p99 ms (per node) | CPU µs per say: "
        "nodes / Redis | errors | acked, not delivered | join p50 / p99 ms (room of 100) | "
        "to the other node |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    try:
        lines.append(measure("1 node, SQLite", [node("sqlite")], args, redis))
        pg_url = pg.url(pg.create_database())
        lines.append(
            measure("1 node, PostgreSQL", [node("pg", "--history-db", pg_url)], args, redis)
        )
        lines.append(measure("2 nodes, Redis alone", on_redis(), args, redis))
        pg_url = pg.url(pg.create_database())
        lines.append(
            measure("2 nodes, Redis + PostgreSQL", on_redis("--history-db", pg_url), args, redis)
        )
    finally:
        for server in started:
            if server.running:
                server.kill()
        redis.kill()
        pg.remove()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
