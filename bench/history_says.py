"""What an ack costs on each store of record: says/s and ack latency with 32 senders (each in a
room of its own, one `say` at a time, the next when its ack is in; bench/say_client.py) through
real `twistd wschat` nodes:

- SQLite, one node (the default store: WAL, synchronous=NORMAL);
- PostgreSQL, one node (the server's durable defaults: fsync on, synchronous_commit on);
- PostgreSQL + Redis, two nodes (the senders take turns between them; each ack waits for the
  commit, then the message is announced on Redis).

    .venv/bin/python -m bench.history_says [--senders 32] [--seconds 10] [--runs 3]

PostgreSQL and redis-server are the benchmark's own (tests/pgkit.py, tests/e2e/process.py), on
free ports in temporary directories, unpinned. One JSON line per run on stdout, a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.e2e.process import RedisProcess, ServerProcess, stop_process
from tests.pgkit import PgServer

from .harness import pinned
from .multinode import SAY_CLIENT
from .settings import LOADGEN_CPU, SERVER_CPU, all_cpus

# A benchmark of what an ack guarantees: PostgreSQL's durable defaults, not the tests' fsync off.
DURABLE = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}
SETUPS = ("sqlite", "postgres", "postgres-redis")


def say_client(cfg: dict[str, Any], cpus: str) -> dict[str, Any]:
    out = subprocess.run(
        [*pinned(cpus), sys.executable, SAY_CLIENT, json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=cfg["maxSeconds"] + 60,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result.get("event") != "result":
        raise RuntimeError(f"say client: {result}")
    return result


def run_setup(setup: str, opts: argparse.Namespace, run: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="wschat-bench-says-"))
    pg = redis = None
    nodes: list[ServerProcess] = []
    wide = ("--rate", "1000000", "--burst", "1000000")
    try:
        if setup == "sqlite":
            db = str(work / "history.sqlite3")
        else:
            pg = PgServer(DURABLE).start()
            db = pg.url(pg.create_database())
        count = 1
        extra: list[str] = []
        if setup == "postgres-redis":
            binary = shutil.which("redis-server") or "redis-server"
            redis = RedisProcess(work / "redis", binary, log_path=work / "redis.log").start()
            extra = ["--redis", redis.url]
            count = 2
        for i in range(count):
            node_dir = work / f"n{i + 1}"
            node_dir.mkdir()
            node = ServerProcess(
                node_dir,
                "--history-db",
                db,
                *wide,
                *extra,
                *(("--node-name", f"n{i + 1}") if redis else ()),
                prefix=pinned(SERVER_CPU if i == 0 else LOADGEN_CPU),
                log_path=node_dir / "wschat.log",
            )
            nodes.append(node.start())
        watch = {f"n{i + 1}": n.proc.pid for i, n in enumerate(nodes) if n.proc}
        cfg = dict(
            urls=[n.ws_url for n in nodes],
            url=nodes[0].ws_url,
            senders=opts.senders,
            warmup=2.0,
            duration=opts.seconds,
            maxSeconds=opts.seconds + 40,
            room=f"says-{setup}-{run}",
            payload=140,
            watch=watch,
        )
        # One node: it has CPU 0, the senders CPU 1 (as bench/run.py's scenarios). Two: a core
        # each, and the senders, PostgreSQL and Redis share both (multinode does the same).
        result = say_client(cfg, LOADGEN_CPU if count == 1 else all_cpus())
        result.pop("event", None)
        return {"setup": setup, "run": run, "nodes": count, **result}
    finally:
        for node in nodes:
            node.stop()
        if redis is not None:
            stop_process(redis.proc)
        if pg is not None:
            pg.remove()


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| store | nodes | runs | says/s | ack p50 ms | ack p99 ms | errors | missing |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for setup in SETUPS:
        runs = [r for r in rows if r["setup"] == setup]
        if not runs:
            continue

        def med(key: str, sub: str | None = None, of: list[dict[str, Any]] = runs) -> str:
            values = [r[key][sub] if sub else r[key] for r in of]
            return f"{statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})"

        errors = sum(sum(r["errors"].values()) for r in runs)
        missing = sum(r["messages_missing"] for r in runs)
        lines.append(
            f"| {setup} | {runs[0]['nodes']} | {len(runs)} | {med('says_per_s')} | "
            f"{med('ack_ms', 'p50')} | {med('ack_ms', 'p99')} | {errors} | {missing} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--setups", default=",".join(SETUPS))
    opts = parser.parse_args()
    rows = []
    for run in range(opts.runs):
        for setup in opts.setups.split(","):
            rows.append(run_setup(setup, opts, run))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
