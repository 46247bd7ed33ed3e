"""The write path: what a connection is sent during a reactor turn goes out in one write.

A frame is queued in the connection's Outbox; the first frame of a turn puts the outbox in
the dirty list, and at the end of the turn (callLater(0) runs before the next poll) every
dirty outbox is written once: under load several messages share one system call, and a lone
message still goes out in the same turn. A broadcast queues the same bytes for every member.

The rules, kept here and nowhere else:
- `pending` goes from None to a frame only in `Output.broadcast`, which then lists the outbox
  as dirty; a dirty outbox is written (and `pending` set back to None) by `Output.flush`.
- `fd` is the socket's descriptor only while nothing but our own direct sends has been
  written since `flush` last saw Twisted's buffer empty, else -1. Only `flush` sets it to a
  descriptor; whatever writes through Twisted or drops the socket sets it to -1. A
  connection that is paused, closing or closed has fd -1, since each of those wrote through
  Twisted or dropped the socket: so fd >= 0 also means "open and keeping up".
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wschat.private import idle_tcp_socket

try:
    from wschat.server._sendmany import flush_many
except ImportError:  # installed without a C compiler: Output.flush writes each one

    def flush_many(outboxes: list[Any]) -> list[tuple[Any, int]]:
        return [(out, 0) for out in outboxes]


# A module-level Logger keeps the namespace given (a Logger as a class attribute takes its
# class's name instead), which operators' log filters and the e2e tests match.
_log = Logger(namespace="wschat.output.Output")


class Sink(Protocol):
    """The connection an Outbox belongs to, as the write path sees it."""

    transport: Any

    def admit_output(self, size: int) -> bool:
        """Whether a frame of `size` bytes may still be queued (False once closing)."""

    def output_open(self) -> bool:
        """Whether frames may be written straight to its socket."""

    def output_failed(self) -> None:
        """Writing its output raised: drop the connection without disturbing the others."""


class Outbox:
    """A connection's output of one reactor turn, and all that a broadcast reads and writes
    per member: a small object of its own. A protocol's ~75 attributes are too many for
    CPython's compact instance layout and live in a full dict, probed for each one looked up;
    with the caches cold after the previous broadcast's sends, queueing a frame for 1,000
    members through them took several times as long as through these slots.

    One frame is kept as bytes, which the garbage collector does not track: a tracked list
    per recipient per message made it run full collections (50 ms pauses with 1,000
    connections) every few seconds under steady traffic. Only a connection with several
    frames in one turn gets a list. (A bytearray grown by += copied too much under fan-out:
    it grows by 1/8 at a time.)
    """

    __slots__ = ("fd", "pending", "sink")

    def __init__(self, sink: Sink) -> None:
        # Cleared when the connection is lost, so that the two form no reference cycle.
        self.sink: Sink | None = sink
        self.pending: bytes | list[bytes] | None = None
        self.fd = -1


class Addressee(Protocol):
    """Anything a frame is addressed to: a hub's Session, or the connection itself."""

    @property
    def outbox(self) -> Outbox: ...


class Output:
    """Queues frames per connection and writes each connection's output once per turn."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._dirty: list[Outbox] = []
        self._flush_call: IDelayedCall | None = None
        # What was queued, for /metrics (wschat/server/metrics.py reads them when scraped): added
        # once per broadcast, not per recipient.
        self.frames_queued = 0
        self.bytes_queued = 0

    def broadcast(self, addressees: Collection[Addressee], frame: bytes) -> int:
        """Queue the same framed bytes for each addressee (one is a broadcast of one);
        returns to how many it was queued."""
        dirty = self._dirty
        queued = len(addressees)
        # This loop runs once per recipient of every message: the common case, a member
        # whose socket keeps up (fd >= 0), costs no call at all.
        for addressee in addressees:
            out = addressee.outbox
            if out.fd < 0:
                sink = out.sink
                if sink is None or not sink.admit_output(len(frame)):
                    queued -= 1
                    continue
            pending = out.pending
            if pending is None:
                out.pending = frame
                dirty.append(out)
            elif isinstance(pending, bytes):
                out.pending = [pending, frame]
            else:
                pending.append(frame)
        if dirty and self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush_all)
        self.frames_queued += queued
        self.bytes_queued += queued * len(frame)
        return queued

    def _flush_all(self) -> None:
        self._flush_call = None
        dirty, self._dirty = self._dirty, []
        # The common case, a connection whose socket keeps up, in C: one call for all.
        try:
            leftovers = flush_many(dirty)
        except Exception:
            # Out of memory inside the C loop: what it did not send is back in `pending`
            # (see _sendmany.c), so writing every connection from Python loses nothing.
            _log.failure("the C write loop failed; writing this turn from Python")
            leftovers = [(out, 0) for out in dirty]
        for out, sent in leftovers:
            try:
                self.flush(out, sent)
            except Exception:
                # One connection's failure must not stall the others' output of this turn.
                _log.failure("writing a connection's output failed; dropping it")
                out.pending = None
                out.fd = -1
                sink = out.sink
                if sink is not None:
                    sink.output_failed()

    def flush(self, out: Outbox, skip: int = 0) -> None:
        """Write what `out` queued this turn, but its first `skip` bytes, which flush_many
        has already sent."""
        pending, out.pending = out.pending, None
        out.fd = -1
        sink = out.sink
        if not pending or sink is None or sink.transport is None:
            return
        transport = sink.transport
        data = pending if isinstance(pending, bytes) else b"".join(pending)
        if skip:
            data = data[skip:]
        # Nothing waits in Twisted's own buffer, so writing directly keeps the byte order.
        sock = idle_tcp_socket(transport)
        if sock is not None:
            # Twisted's write() would buffer, register the socket for writing, send on the
            # next poll and unregister it: three extra system calls per delivery when the
            # socket could take the data right now. Only what does not fit is buffered; an
            # error is left for Twisted to find when it writes the rest.
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                if sink.output_open():
                    # Until something else writes, flush_many may send to the socket itself.
                    out.fd = sock.fileno()
                return
            data = data[sent:]
        transport.write(data)

    def before_transport_write(self, out: Outbox) -> None:
        """Something else (Autobahn's pongs and close frames) is about to write through
        Twisted's buffer: what was queued goes first, and flush_many must not write past it."""
        if out.pending is not None:
            self.flush(out)
        out.fd = -1
