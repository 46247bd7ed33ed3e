#!/usr/bin/env python3
"""The hub's own work per join as a room grows: 1,000 to 20,000 members in one room.

Runs the real Hub (in-memory history, presence batched on a task.Clock) with a fan-out that
only counts what it is handed, so what is measured is the domain's work per join: the name
and limit checks, the member list, the welcome, and the share of presence batches. Joins
arrive at 2,000 a second of clock time (a batch every 500 joins at the default 0.25 s).
Reports microseconds per join over the last 1,000 joins before each size, and how many
frames each join made the fan-out queue.

    .venv/bin/python bench/join_cost.py [--sizes 1000,5000,10000,20000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Coroutine, Iterable
from typing import Any

from twisted.internet.task import Clock

from wschat.chat.hub import Hub
from wschat.chat.limits import Limits
from wschat.chat.memory import LocalBroker, MemoryHistory
from wschat.chat.model import Join
from wschat.chat.ports import RoomEvent
from wschat.chat.session import Session

JOINS_PER_S = 2000
WINDOW = 1000


def run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        coro.send(None)
    except StopIteration:
        return
    raise AssertionError("an in-memory join suspended")


def measure(sizes: list[int]) -> list[tuple[int, float, float]]:
    clock = Clock()
    frames = 0

    def fanout(sessions: Iterable[Session], event: RoomEvent) -> None:
        nonlocal frames
        for _ in sessions:
            frames += 1

    limits = Limits()
    hub = Hub(
        (store := MemoryHistory(limits.history_size)),
        LocalBroker(store),
        fanout,
        clock.seconds,
        lambda: "token",
        clock.callLater,
        limits,
    )
    rows = []
    joined = 0
    for size in sorted(sizes):
        while joined < size - WINDOW:
            join_one(hub, clock, joined)
            joined += 1
        frames_before = frames
        started = time.perf_counter()
        while joined < size:
            join_one(hub, clock, joined)
            joined += 1
        elapsed = time.perf_counter() - started
        rows.append((size, elapsed / WINDOW * 1e6, (frames - frames_before) / WINDOW))
    return rows


def join_one(hub: Hub, clock: Clock, i: int) -> None:
    session = hub.connect(None, lambda event: None, lambda: None)
    run(hub.join(session, Join("lobby", f"user{i:06d}")))
    clock.advance(1 / JOINS_PER_S)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--sizes", default="1000,5000,10000,20000", type=lambda v: [int(x) for x in v.split(",")]
    )
    opts = ap.parse_args()
    print("| members in the room | µs of hub work per join | frames queued per join |")
    print("| --- | --- | --- |")
    for size, us, per_join in measure(opts.sizes):
        print(f"| {size:,} | {us:.1f} | {per_join:.2f} |")


if __name__ == "__main__":
    main()
