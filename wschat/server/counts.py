"""What the adapters count for /metrics: plain integers, bumped once per event (a connection,
a request, a broadcast), never per recipient, and read only when /metrics is scraped
(wschat/server/metrics.py). Plain ints rather than prometheus_client counters: each of those
takes a lock per increment, which the write path need not pay."""

from __future__ import annotations

from collections import Counter


class Counts:
    __slots__ = (
        "closed",
        "delivered",
        "errors",
        "messages_received",
        "opened",
        "slow_consumer_closes",
    )

    def __init__(self) -> None:
        self.opened = 0
        # By close code as a string; "none" when the connection dropped without a close frame.
        self.closed: Counter[str] = Counter()
        # `say` requests received, whether stored or refused.
        self.messages_received = 0
        # Room events (messages, presence) queued to members: the sum of each fan-out's size.
        self.delivered = 0
        # Refusals by wire code (docs/protocol.md), "internal" included.
        self.errors: Counter[str] = Counter()
        self.slow_consumer_closes = 0
