"""The chat's limits, and the policies that apply them across requests and connections."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from wschat.chat.ratelimit import TokenBucket


@dataclass(frozen=True, slots=True)
class Limits:
    history_size: int = 100
    rate_per_s: float = 5.0
    burst: int = 20
    max_rooms: int = 32
    # 0: no limit.
    max_members: int = 0
    # Above this many members a room's welcome carries no member list and its presence
    # batches only the count: the cost of a join must not grow with the room.
    member_list_limit: int = 1000
    presence_interval_s: float = 0.25
    # Messages a second one client address may send over all its connections (0: no limit),
    # and the burst above that: without it, one address with --max-connections-per-ip
    # connections may say 256 times `rate_per_s`.
    rate_per_ip_s: float = 0.0
    burst_per_ip: int = 100
    # Every other request (join, leave, who, kick, refresh) draws from a bucket of its own: a
    # join's welcome may weigh a MiB, so none comes free. The burst covers a client rejoining
    # all of its --max-rooms rooms at once after a reconnect.
    request_rate_per_s: float = 2.0
    request_burst: int = 40
    # A welcome's history, as sent, is at most this many bytes (the newest messages that fit):
    # with --history-size alone, 100 messages of 2,000 emoji made one join draw 800 KB.
    welcome_history_bytes: int = 1024 * 1024


class AddressCap:
    """How many connections each client address holds, refused beyond `limit` (0: none).

    Many people can share one address (NAT), so the default is generous; behind a reverse
    proxy that is not trusted every connection comes from the proxy's address, which is what
    `proxy_hint` is for.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._hinted = False

    def admit(self, address: str) -> bool:
        """Count one more connection from `address`, or refuse it (and count nothing)."""
        count = self._counts.get(address, 0)
        if self.limit and count >= self.limit:
            return False
        self._counts[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._counts.pop(address, 0) - 1
        if count > 0:
            self._counts[address] = count

    def proxy_hint(self, address: str) -> bool:
        """True once, for the first refusal of a loopback or private address: the likely cause
        is a reverse proxy in front whose forwarded addresses are not trusted."""
        if self._hinted:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.is_loopback or ip.is_private:
            self._hinted = True
            return True
        return False


class AddressRates:
    """One token bucket per client address, shared by all of its connections: the policy
    behind `rate_per_ip_s`. A bucket lives while its address holds a connection, so what is
    kept is bounded by the connections, not by every address ever seen. (An address that
    closes all of its connections and comes back starts with a full burst: it has paid a
    handshake per connection, which the per-address connection cap also bounds.)"""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._held: dict[str, tuple[TokenBucket, int]] = {}

    def hold(self, address: str, now_s: float) -> TokenBucket | None:
        """The bucket a new connection from `address` shares (None: no per-address limit)."""
        if not self.rate_per_s:
            return None
        bucket, count = self._held.get(address, (None, 0))
        if bucket is None:
            bucket = TokenBucket(self.rate_per_s, self.burst, now_s)
        self._held[address] = (bucket, count + 1)
        return bucket

    def release(self, address: str) -> None:
        """A connection from `address` is gone; its bucket goes with the last one."""
        held = self._held.get(address)
        if held is None:
            return
        bucket, count = held
        if count > 1:
            self._held[address] = (bucket, count - 1)
        else:
            del self._held[address]


class RefusalLog:
    """Which refusals of one connection are worth a log line: only the first of each kind
    (wire code) in a run, since a client sending bad frames in a loop would otherwise write a
    line per frame. A run ends when the connection is served anything else. `count` keeps
    the total, for the line at close."""

    __slots__ = ("_logged", "count")

    def __init__(self) -> None:
        self._logged: set[str] = set()
        self.count = 0

    def refused(self, code: str) -> bool:
        """A refusal with this wire code is being sent; True if it should be logged."""
        self.count += 1
        if code in self._logged:
            return False
        self._logged.add(code)
        return True

    def served(self) -> None:
        if self._logged:
            self._logged = set()
