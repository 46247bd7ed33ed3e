"""A hub wired to in-memory fakes: sessions record what they are sent."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from twisted.internet.task import Clock

from wschat.chat.hub import Hub
from wschat.chat.limits import Limits
from wschat.chat.memory import LocalBroker, MemoryHistory
from wschat.chat.model import Event, Members, Presence, Welcome, Who
from wschat.chat.ports import HistoryStore, RoomEvent, Roster
from wschat.chat.session import Session

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that must finish without suspending (in-memory stores never wait)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("coroutine suspended")


class Peer:
    def __init__(self, label: str) -> None:
        self.label = label
        self.events: list[Event] = []
        self.replaced = False

    def take(self) -> list[Event]:
        events = list(self.events)
        self.events.clear()
        return events


class World:
    def __init__(
        self,
        limits: Limits = Limits(),
        store: HistoryStore | None = None,
        roster: Roster | None = None,
    ) -> None:
        self.now_s = 1_800_000_000.0
        self.tokens = 0
        self.store = store if store is not None else MemoryHistory(limits.history_size)
        self.fanouts = 0
        # Presence batches are timed on this clock; chat time (now_s) is set by hand.
        self.clock = Clock()
        self.limits = limits
        self.hub = Hub(
            self.store,
            LocalBroker(self.store),
            self._fanout,
            self._now,
            self._token,
            self.clock.callLater,
            limits,
            roster,
        )

    def _now(self) -> float:
        return self.now_s

    def _token(self) -> str:
        self.tokens += 1
        return f"token-{self.tokens}"

    def _fanout(self, sessions: Iterable[Session], event: RoomEvent) -> None:
        self.fanouts += 1
        for session in sessions:
            session.outbox.events.append(event)

    def batch(self) -> None:
        """Let one presence interval pass: every room with changes sends its batch."""
        self.clock.advance(self.limits.presence_interval_s)

    def connect(self, label: str = "peer", address: str | None = None) -> tuple[Session, Peer]:
        peer = Peer(label)

        def replaced() -> None:
            peer.replaced = True

        return self.hub.connect(peer, peer.events.append, replaced, address), peer

    def who(self, session: Session, room: str) -> list[str]:
        """The room's member list as `session` is shown it by a `who` (one page)."""
        self.hub.who(session, Who(room))
        page = session.outbox.events.pop()
        assert isinstance(page, Members) and page.next is None
        return page.names


def presences(peer: Peer) -> list[Presence]:
    return [e for e in peer.take() if isinstance(e, Presence)]


class View:
    """What a client knows of a room's members, built only from what it was sent, with the
    browser client's rule: a batch with lists while it holds none (the room came back under
    the limit) makes it page through `who` (`fetch`), then go on applying batches."""

    def __init__(self, fetch: Callable[[], list[str]] | None = None) -> None:
        self.names: set[str] | None = None
        self.count = 0
        self._fetch = fetch

    def apply(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Welcome):
                self.names = set(event.users) if event.users is not None else None
                self.count = event.count
            elif isinstance(event, Presence):
                self.count = event.count
                if event.joined is None or event.left is None:
                    self.names = None
                    continue
                if self.names is None and self._fetch is not None:
                    self.names = set(self._fetch())
                if self.names is not None:
                    self.names |= set(event.joined)
                    self.names -= set(event.left)
