"""One node of several on Redis: its link, history, bus, roster and lease, made in order and
tied once; and the routing of what the link hears.

The history is the Redis stream (stream.py), or a store of record given to it (PostgreSQL):
either way the bus (bus.py) carries the room's messages between the nodes.

A room's channel carries both its messages and its roster changes (one channel, so that one
subscription per room keeps them in Redis's order): a payload with a `p` (the roster change's
number) goes to the roster, any other to the broker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorTime

from wschat.chat.ports import HistoryStore
from wschat.logger import NamedLogger
from wschat.redis.bus import BusStore, RedisBus
from wschat.redis.keys import channel_room
from wschat.redis.lease import NodeLease
from wschat.redis.link import RedisAddress, RedisLink
from wschat.redis.roster import RedisRoster
from wschat.redis.stream import RedisStream


@dataclass(frozen=True, slots=True)
class RedisNode:
    link: RedisLink
    store: HistoryStore
    broker: RedisBus
    roster: RedisRoster
    lease: NodeLease

    @property
    def services(self) -> list[IService]:
        """To start in this order (the connections first) and stop in reverse."""
        return [self.link, self.lease]


class _Router:
    # A bad payload was the broker's to report when it routed them.
    _log = NamedLogger("wschat.redis_broker.RedisBroker")

    def __init__(self, broker: RedisBus, roster: RedisRoster, lease: NodeLease) -> None:
        self._broker = broker
        self._roster = roster
        self._lease = lease

    def message(self, channel: str, payload: str) -> None:
        room = channel_room(channel)
        if room is None:
            return
        try:
            obj = json.loads(payload)
            if "p" in obj:
                self._roster.announced(room, obj)
            else:
                self._broker.announced(room, obj)
        except (ValueError, KeyError, TypeError):
            self._log.failure("bad announcement on {channel}", channel=channel)

    def subscribed(self) -> None:
        # The roster first: the renewal the lease sends now syncs its names.
        self._roster.on_subscribed()
        self._lease.on_subscribed()
        self._broker.on_subscribed()


def redis_node(
    address: RedisAddress,
    reactor: IReactorTime,
    node: str,
    keep: int,
    store: BusStore | None = None,
) -> RedisNode:
    """Make a node's Redis engine; its services are not started. Without a `store` the
    history is kept in Redis, `keep` messages a room (0: all)."""
    link = RedisLink(address, reactor, node)
    if store is None:
        stream = RedisStream(link, keep, reactor.seconds)
        history: HistoryStore = stream
        broker = RedisBus(link, stream, reactor, store_announces=True)
    else:
        history = store
        broker = RedisBus(link, store, reactor, store_announces=False)
    lease = NodeLease(link, reactor)
    roster = RedisRoster(link, lease)
    router = _Router(broker, roster, lease)
    link.listen(router.message, router.subscribed)
    return RedisNode(link, history, broker, roster, lease)
