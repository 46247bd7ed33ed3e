"""What the adapters count for /metrics: plain integers, bumped once per event (a connection,
a request, a broadcast), never per recipient, and read only when /metrics is scraped
(wschat/server/metrics.py). Plain ints rather than prometheus_client counters: each of those
takes a lock per increment, which the write path need not pay."""

from __future__ import annotations

from collections import Counter

from wschat import wire

# The close codes that label wschat_connections_closed: RFC 6455's (1000-1015, which Autobahn
# also reports for closes it makes itself) and this server's own (docs/protocol.md). A client
# may close with any code of 3000-4999; each would be a series of its own, so all those others
# count as "other".
CLOSE_LABELS = frozenset(
    [str(code) for code in range(1000, 1016)]
    + [str(getattr(wire, name)) for name in dir(wire) if name.startswith("CLOSE_")]
)


def close_label(code: int | None) -> str:
    """The `code` label of a closed connection ("none": dropped without a close frame)."""
    if code is None:
        return "none"
    label = str(code)
    return label if label in CLOSE_LABELS else "other"


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
        # By close_label: the close code as a string, "none" or "other".
        self.closed: Counter[str] = Counter()
        # `say` requests received, whether stored or refused.
        self.messages_received = 0
        # Room events (messages, presence) queued to members: the sum of each fan-out's size.
        self.delivered = 0
        # Refusals by wire code (docs/protocol.md), "internal" included.
        self.errors: Counter[str] = Counter()
        self.slow_consumer_closes = 0
