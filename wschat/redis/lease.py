"""This node's lease in Redis, and the reaping of nodes whose lease ended: node liveness, kept
apart from the names a node holds (roster.py lets go of those when asked).

Each node renews its lease every RENEW_S. Every node looks for leases that ended, every
RENEW_S once it has been connected for LEASE_S (so that after a Redis outage, which stops every
renewal, nobody is reaped before it could renew), and has its holder let go of what such a node
held: a node killed or cut off has its members leave within LEASE_S + RENEW_S (15 s;
docs/scaling.md).

If Redis came back without this node's lease (it lost its data), new names wait RESTORE_S: the
other nodes are claiming their members' names again meanwhile.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from wschat.chat.errors import Unavailable
from wschat.logger import NamedLogger
from wschat.redis.keys import NODES_KEY
from wschat.redis.link import RETRY_MAX_S, RedisLink, Script

LEASE_S = 12.0
RENEW_S = 3.0
# How long a reaper has to finish with a dead node before another one may start over.
REAP_RETRY_S = 30.0
# After Redis lost this node's lease (it came back empty), new names wait this long: the
# longest reconnect delay of the other nodes (link.RETRY_MAX_S) and a second more, so that
# each has claimed its members' names again before anyone may take them.
RESTORE_S = RETRY_MAX_S + 1.0

RENEW = Script.named("renew")
EXPIRED = Script.named("expired")


class LeaseHolder(Protocol):
    """What a node holds under its lease (its members' names)."""

    async def renewed(self, fresh: bool) -> None:
        """The lease was renewed; `fresh` if Redis had none for this node (first start, or
        Redis lost it, or the node was reaped meanwhile)."""

    async def let_go(self, node: str) -> None:
        """`node`'s lease ended: let go of what it held."""


class NodeLease(Service):
    # Its events are the roster's, as they were when the roster kept the lease.
    _log = NamedLogger("wschat.redis_roster.RedisRoster")

    def __init__(self, link: RedisLink, clock: IReactorTime) -> None:
        self._link = link
        self._clock = clock
        self.node = link.node
        link.preload(RENEW, EXPIRED)
        self._holder: LeaseHolder | None = None
        # Whether this node had a lease yet, and until when new claims wait after one was lost;
        # None: a (re)connect has not been confirmed by a renewal yet.
        self._had_lease = False
        self._subscribed = False
        self._claims_from: float | None = 0.0
        self._tick = LoopingCall(self._renew)
        self._tick.clock = clock

    def attach(self, holder: LeaseHolder) -> None:
        """Set, once, what this node holds under the lease (made after the lease, since it
        asks the lease whether claims are open)."""
        self._holder = holder

    def startService(self) -> None:
        super().startService()
        self._tick.start(RENEW_S, now=True)

    def stopService(self) -> None:
        if self._tick.running:
            self._tick.stop()
        super().stopService()

    def check_claims(self) -> None:
        """Unavailable while new names must wait: a reconnect not yet confirmed by a renewal,
        or names being restored after Redis lost the lease."""
        since = self._claims_from
        if since is None or self._clock.seconds() < since:
            raise Unavailable("the chat's shared store (Redis) is restoring names; try again soon")

    def on_subscribed(self) -> None:
        """The link is (back) up: renew now."""
        if self._subscribed:
            # A reconnect: until a renewal says whether Redis kept the lease, a name freed by
            # Redis losing everything may belong to a node not yet back.
            self._claims_from = None
        self._subscribed = True
        self._renew()

    def _renew(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._renew_async()).addErrback(
            self._log_unless_down, "renewing the lease of {node} failed", node=self.node
        )

    async def _renew_async(self) -> None:
        if not self._link.up:
            return
        fresh = int(await self._link.run(RENEW, [NODES_KEY], [self.node, int(LEASE_S * 1000)]))
        if self._claims_from is None:
            lost = fresh == 1 and self._had_lease
            self._claims_from = self._clock.seconds() + (RESTORE_S if lost else 0.0)
            if lost:
                self._log.warn(
                    "redis had lost the lease of {node}: restoring names, new ones wait {s}s",
                    node=self.node,
                    s=RESTORE_S,
                )
        self._had_lease = True
        if self._holder is not None:
            await self._holder.renewed(fresh == 1)
        up_since = self._link.up_since
        if up_since is not None and self._clock.seconds() - up_since >= LEASE_S:
            await self._reap()

    async def _reap(self) -> None:
        dead = await self._link.run(EXPIRED, [NODES_KEY], [self.node, int(REAP_RETRY_S * 1000)])
        for node in dead:
            if self._holder is not None:
                await self._holder.let_go(node)
            await self._link.call("ZREM", NODES_KEY, node)

    def _log_unless_down(self, failure: Failure, text: str, **fields: Any) -> None:
        if failure.check(Unavailable):
            return  # the link logs the outage; the next reconnect renews
        self._log.failure(text, failure, **fields)
