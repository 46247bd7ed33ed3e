"""One connection as the domain sees it, and the callables through which events reach it."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from wschat.chat.identity import Identity
from wschat.chat.model import Event
from wschat.chat.ports import RoomEvent
from wschat.chat.ratelimit import TokenBucket


class Session:
    """A connection: its name, rooms and rate buckets, and callables instead of the protocol.

    `outbox` is opaque here; only the fan-out function (Fanout) knows what it is.
    """

    __slots__ = (
        "address",
        "address_bucket",
        "bucket",
        "close_replaced",
        "guest",
        "identity",
        "name",
        "outbox",
        "requests",
        "resume_token",
        "rooms",
        "send",
    )

    def __init__(
        self,
        outbox: Any,
        send: Callable[[Event], None],
        close_replaced: Callable[[], None],
        bucket: TokenBucket,
        requests: TokenBucket,
        address: str | None = None,
        address_bucket: TokenBucket | None = None,
    ) -> None:
        self.outbox = outbox
        self.send = send
        self.close_replaced = close_replaced
        self.name: str | None = None
        self.resume_token: str | None = None
        self.rooms: set[str] = set()
        # `say` draws from `bucket`, every other request from `requests`.
        self.bucket = bucket
        self.requests = requests
        # The client's address and the bucket all of its connections share (limits.py).
        self.address = address
        self.address_bucket = address_bucket
        # Signed in (chat/identity.py sign_in), or a guest of --auth optional; neither in the
        # open chat of --auth off.
        self.identity: Identity | None = None
        self.guest = False

    @property
    def user(self) -> str | None:
        """The signed user's `sub` (the JWT subject), not the display name: that is `name`."""
        return self.identity.sub if self.identity is not None else None


# Sends one room event to many sessions (the server prepares the frame once).
Fanout = Callable[[Collection[Session], RoomEvent], None]
# reactor.callLater, or task.Clock's in tests.
Schedule = Callable[[float, Callable[[], None]], object]
