"""The history sweeps that keep the disk from filling (the ref window, --history-ttl,
--max-history-rooms).

Every SWEEP_INTERVAL_S a sweep runs on the reactor thread as a series of small batches, each
its own short transaction, with a reactor turn between two batches (callLater(0)): the chat
is served between them, as it is between two messages. A sweep first forgets the refs older
than the idempotency window (store/refs.py), then deletes the messages older than the TTL,
then, while the store holds more than the bound of rooms, deletes the histories of the rooms
written to least recently; it ends with at most one log line (forgetting refs is routine and
logs nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall

from wschat.chat.model import format_ts
from wschat.logger import NamedLogger
from wschat.store.refs import REF_WINDOW_S
from wschat.store.sqlite import Swept

SWEEP_INTERVAL_S = 1.0
# A few milliseconds of work each: one batch deletes this many refs or messages (a message
# with its search index entry).
BATCH_MESSAGES = 500


class Sweepable(Protocol):
    def forget_refs(self, before_ts: str, batch: int) -> Swept: ...

    def expire(self, before_ts: str, batch: int) -> Swept: ...

    def evict(self, max_rooms: int, batch: int) -> Swept: ...


_NOTHING = Swept(0, 0, False)


class HistorySweeper(Service):
    _log = NamedLogger("wschat.sweep.HistorySweeper")

    def __init__(
        self,
        store: Sweepable,
        clock: IReactorTime,
        ttl_s: float | None,
        max_rooms: int,
        now_s: Callable[[], float] | None = None,
        interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self._store = store
        self._clock = clock
        self._ttl_s = ttl_s
        self._max_rooms = max_rooms
        self._now_s = now_s if now_s is not None else clock.seconds
        self._interval_s = interval_s
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = clock
        self._next_batch: IDelayedCall | None = None
        self._sweeping = False
        self.sweeps = 0

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval_s, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._next_batch is not None and self._next_batch.active():
            self._next_batch.cancel()
        self._next_batch = None
        self._sweeping = False

    def sweep(self) -> None:
        """Start a sweep, unless the previous one is still going through its batches."""
        if self._sweeping:
            return
        self._sweeping = True
        now_s = self._now_s()
        refs_cutoff = format_ts(now_s - REF_WINDOW_S)
        cutoff = None if self._ttl_s is None else format_ts(now_s - self._ttl_s)
        self._batch(refs_cutoff, cutoff, _NOTHING, _NOTHING, _NOTHING)

    def _batch(
        self,
        refs_cutoff: str,
        cutoff: str | None,
        refs: Swept,
        expired: Swept,
        evicted: Swept,
    ) -> None:
        self._next_batch = None
        try:
            if not refs.done:
                refs = _add(refs, self._store.forget_refs(refs_cutoff, BATCH_MESSAGES))
            elif cutoff is not None and not expired.done:
                expired = _add(expired, self._store.expire(cutoff, BATCH_MESSAGES))
            elif self._max_rooms and not evicted.done:
                evicted = _add(evicted, self._store.evict(self._max_rooms, BATCH_MESSAGES))
            else:
                self._finish(expired, evicted)
                return
        except Exception:
            self._log.failure("history sweep failed; the next one tries again")
            self._finish(expired, evicted)
            return
        self._next_batch = self._clock.callLater(
            0, self._batch, refs_cutoff, cutoff, refs, expired, evicted
        )

    def _finish(self, expired: Swept, evicted: Swept) -> None:
        self._sweeping = False
        self.sweeps += 1
        if expired.messages or expired.rooms or evicted.rooms:
            self._log.info(
                "history sweep: deleted {expired} messages older than {ttl_s}s and forgot "
                "{expired_rooms} rooms left empty; forgot {evicted_rooms} more rooms "
                "({evicted} messages) over --max-history-rooms {max_rooms}",
                expired=expired.messages,
                ttl_s=self._ttl_s,
                expired_rooms=expired.rooms,
                evicted_rooms=evicted.rooms,
                evicted=evicted.messages,
                max_rooms=self._max_rooms,
            )


def _add(total: Swept, step: Swept) -> Swept:
    return Swept(total.messages + step.messages, total.rooms + step.rooms, step.done)
