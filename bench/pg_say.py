"""`say` through a real `twistd wschat` node: SQLite against PostgreSQL (its durable defaults,
then synchronous_commit=off), in the same run. bench/say_client.py's 32 senders, each in a room
of its own, one say at a time; says/s, ack p50/p99, and the CPU % of wschat and PostgreSQL.

    .venv/bin/python -m bench.pg_say [--senders 32] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.e2e.process import ServerProcess
from tests.pgkit import PgServer

OPEN = ("--rate", "1000000", "--burst", "1000000", "--request-rate", "1000000")
SAY_CLIENT = Path(__file__).with_name("say_client.py")


def says(server: ServerProcess, senders: int, seconds: float, watch: dict[str, int]) -> Any:
    spec = {
        "url": server.ws_url,
        "senders": senders,
        "warmup": 1,
        "duration": seconds,
        "watch": watch,
    }
    done = subprocess.run(
        [sys.executable, str(SAY_CLIENT), json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wschat-pg-say-"))
    rows = []
    for label, settings in [
        ("sqlite", None),
        ("postgres", {"synchronous_commit": "on"}),
        ("postgres, synchronous_commit=off", {"synchronous_commit": "off"}),
    ]:
        pg = None
        extra: tuple[str, ...] = ()
        if settings is not None:
            pg = PgServer({"fsync": "on", "full_page_writes": "on", **settings}).start()
            extra = ("--history-db", pg.url(pg.create_database()))
        server = ServerProcess(work / label.split(",")[0], *OPEN, *extra).start()
        try:
            assert server.proc is not None
            watch = {"wschat": server.proc.pid}
            if pg is not None and pg.process is not None:
                watch["postgres"] = pg.process.pid  # the postmaster; backends are counted apart
            rows.append({"store": label, **says(server, args.senders, args.seconds, watch)})
        finally:
            server.stop()
            if pg is not None:
                pg.remove()
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
