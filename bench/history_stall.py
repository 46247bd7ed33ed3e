"""How long `SqliteHistory.append` holds the calling thread (the reactor thread, in wschat),
with SQLite's own checkpoints inside the commits versus checkpoints handed to another thread.

    .venv/bin/python bench/history_stall.py [--messages 20000] [--blocks 4] [--dir DIR]

Both modes run on the same disk in the same run, alternating in blocks, so that the disk's
mood hits both alike. A checkpoint's fsync is the stall this measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from collections.abc import Callable

from wschat.chat.ports import NewMessage
from wschat.store.sqlite import SqliteHistory

TEXT = "x" * 140
# The store reads a say's stamp (the ref window counts from it).
STAMP = "2026-01-01T00:00:00.000Z"


def in_a_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, daemon=True).start()


def run(path: str, messages: int, threaded: bool) -> list[float]:
    store = SqliteHistory(path, 10_000, in_thread=in_a_thread if threaded else None)
    loop = asyncio.new_event_loop()
    took = []
    try:
        for i in range(messages):
            start = time.perf_counter()
            loop.run_until_complete(
                store.append("bench", NewMessage("alice", TEXT, STAMP, f"r{i}"))
            )
            took.append(time.perf_counter() - start)
    finally:
        loop.close()
        store.close()
    return took


def summary(label: str, took: list[float]) -> str:
    ordered = sorted(took)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000

    slow = sum(1 for t in took if t > 0.001)
    return (
        f"| {label} | {len(took):,} | {pct(0.5):.3f} | {pct(0.99):.3f} | {pct(0.999):.3f} | "
        f"{ordered[-1] * 1000:.2f} | {slow} | {sum(took):.2f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20_000, help="per mode")
    ap.add_argument("--blocks", type=int, default=4, help="alternations of the two modes")
    ap.add_argument("--dir", default=None, help="where the database goes (default: a temp dir)")
    opts = ap.parse_args()
    results: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(dir=opts.dir) as tmp:
        for block in range(opts.blocks):
            for threaded in (False, True):
                path = os.path.join(tmp, f"h-{block}-{threaded}.sqlite3")
                results[threaded] += run(path, opts.messages // opts.blocks, threaded)
    print("| checkpoints | appends | p50 ms | p99 ms | p99.9 ms | max ms | over 1 ms | total s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(summary("in the commit (SQLite's automatic)", results[False]))
    print(summary("in another thread", results[True]))


if __name__ == "__main__":
    main()
