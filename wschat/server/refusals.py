"""The log lines of refused upgrades and requests, through the domain's RefusalThrottle: the
first of each address and kind at once, in its own format and namespace; the rest of a minute
as one line, the latest refusal's with what was not logged appended."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wschat.chat.refusals import RefusalThrottle

SUMMARY_SUFFIX = (
    " (and {refused_more} more such refusals from {refused_address}"
    " in the last {refused_window_s:g} s)"
)


@dataclass(frozen=True, slots=True)
class Line:
    """One refusal's log line, as it would have been written."""

    log: Logger
    format: str
    fields: dict[str, object]


class Refusals:
    """Where every refusal of an upgrade or a request is logged; one per server, shared by
    its WebSocket factory and its site."""

    def __init__(self, clock: IReactorTime, throttle: RefusalThrottle[Line] | None = None) -> None:
        self._clock = clock
        self.throttle: RefusalThrottle[Line] = throttle or RefusalThrottle()
        self._call: IDelayedCall | None = None

    def refused(self, log: Logger, address: str, kind: str, format: str, **fields: object) -> None:
        """Log `format` with `fields` on `log`, unless `address` was refused for `kind` earlier
        in the window: then it is counted, for the window's summary."""
        line = Line(log, format, fields)
        if self.throttle.refused(address, kind, line, self._clock.seconds()):
            log.info(format, **fields)
        self._arm()

    def _arm(self) -> None:
        if self._call is not None and self._call.active():
            return
        due_s = self.throttle.next_due_s()
        if due_s is not None:
            self._call = self._clock.callLater(max(0.0, due_s - self._clock.seconds()), self._due)

    def _due(self) -> None:
        self._call = None
        for summary in self.throttle.due(self._clock.seconds()):
            line = summary.latest
            line.log.info(
                line.format + SUMMARY_SUFFIX,
                **line.fields,
                refused_more=summary.count,
                refused_address=summary.address,
                refused_window_s=summary.window_s,
            )
        self._arm()
