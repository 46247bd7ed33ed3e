"""Which refused attempts are worth a log line: one address repeating a refused upgrade or
request (a foreign origin, a full connection cap, another Host) would otherwise write a line
per attempt, and 1,000 attempts would make 1,000 lines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

# Each address and kind of refusal gets at most one line at once and one summary per window.
REFUSAL_WINDOW_S = 60.0
# The addresses followed at a time: past this many, refusals from new addresses are counted
# together under OTHER_ADDRESSES (one entry per kind), so an attacker rotating addresses
# grows neither the memory nor the log past this bound.
MAX_REFUSING_ADDRESSES = 1000
OTHER_ADDRESSES = "other addresses"

D = TypeVar("D")


@dataclass(slots=True)
class _Window(Generic[D]):
    start_s: float
    # Refusals since the window started that were not logged, and the latest of them.
    unlogged: int
    latest: D | None


@dataclass(frozen=True, slots=True)
class Summary(Generic[D]):
    """The refusals of one address and kind in one window that were not logged one by one."""

    address: str
    kind: str
    count: int
    latest: D
    window_s: float


class RefusalThrottle(Generic[D]):
    """Per (address, kind): the first refusal is logged at once, the rest of its window are
    only counted and come back from `due` as one summary when the window ends. A window with
    nothing to report ends the entry, so the next refusal is logged at once again. `D` is
    what the caller needs to write the summary (the latest refusal's log fields)."""

    def __init__(
        self, window_s: float = REFUSAL_WINDOW_S, max_addresses: int = MAX_REFUSING_ADDRESSES
    ) -> None:
        self.window_s = window_s
        self.max_addresses = max_addresses
        # In order of window start (an entry moves to the end when its window restarts), so
        # that `due` finds the ended windows at the front.
        self._windows: dict[tuple[str, str], _Window[D]] = {}
        # Entries of real addresses (not OTHER_ADDRESSES): what max_addresses bounds.
        self._tracked = 0

    def __len__(self) -> int:
        return len(self._windows)

    def refused(self, address: str, kind: str, detail: D, now_s: float) -> bool:
        """A refusal of this kind from `address`; True if it is to be logged now."""
        key = (address, kind)
        window = self._windows.get(key)
        if window is None and self._tracked >= self.max_addresses:
            key = (OTHER_ADDRESSES, kind)
            window = self._windows.get(key)
        if window is None:
            self._windows[key] = _Window(now_s, 0, None)
            if key[0] != OTHER_ADDRESSES:
                self._tracked += 1
            return True
        window.unlogged += 1
        window.latest = detail
        return False

    def next_due_s(self) -> float | None:
        """When the earliest window ends (None: nothing is followed)."""
        for window in self._windows.values():
            return window.start_s + self.window_s
        return None

    def due(self, now_s: float) -> list[Summary[D]]:
        """Summaries of the windows ended by `now_s` that have refusals not logged; such a
        window starts again (a steady attacker gets one line per window), a quiet one ends."""
        summaries: list[Summary[D]] = []
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if window.start_s + self.window_s > now_s:
                break
            del self._windows[key]
            if window.latest is None:
                if key[0] != OTHER_ADDRESSES:
                    self._tracked -= 1
                continue
            summaries.append(Summary(key[0], key[1], window.unlogged, window.latest, self.window_s))
            self._windows[key] = _Window(now_s, 0, None)
        return summaries
