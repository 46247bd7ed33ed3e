"""/metrics: the Prometheus text format, on a listener of its own (`--metrics-listen`).

The figures are read when scraped: the adapters keep plain integers (wschat/server/counts.py,
Output.frames_queued/bytes_queued) and the hub its counts, so that counting costs the chat
nothing but an integer addition per event. Only the history append time is a
prometheus_client Histogram, observed once per stored message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from wschat import __version__
from wschat.chat.hub import Hub
from wschat.chat.model import Message
from wschat.chat.ports import Broker, Deliver, NewMessage, Resync, Stored
from wschat.server.factory import ChatFactory

# From a few tens of microseconds (SQLite, WAL, synchronous=NORMAL) to Redis round trips
# and a disk that stalls.
APPEND_BUCKETS_S = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
METRICS_IDLE_TIMEOUT_S = 30


class ChatCollector(Collector):
    """Reads the counts and the hub at scrape time; no room or user labels (their number has
    no bound), only close and error codes (a fixed set)."""

    def __init__(self, factory: ChatFactory, hub: Hub) -> None:
        self._factory = factory
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        counts = self._factory.counts
        output = self._factory.output
        yield GaugeMetricFamily(
            "wschat_connections", "Open WebSocket connections.", value=self._hub.connection_count
        )
        yield GaugeMetricFamily(
            "wschat_rooms", "Rooms with at least one member here.", value=self._hub.room_count
        )
        yield CounterMetricFamily(
            "wschat_connections_opened", "WebSocket connections opened.", value=counts.opened
        )
        closed = CounterMetricFamily(
            "wschat_connections_closed",
            "WebSocket connections closed, by close code (none: dropped without one; other: "
            "a code of the client's own).",
            labels=["code"],
        )
        for code, count in sorted(counts.closed.items()):
            closed.add_metric([code], count)
        yield closed
        yield CounterMetricFamily(
            "wschat_messages_received",
            "say requests received (stored or refused).",
            value=counts.messages_received,
        )
        yield CounterMetricFamily(
            "wschat_messages_delivered",
            "Room events (messages, presence) queued to members.",
            value=counts.delivered,
        )
        yield CounterMetricFamily(
            "wschat_frames_sent",
            "WebSocket frames queued to connections (room events, welcomes, acks, errors).",
            value=output.frames_queued,
        )
        yield CounterMetricFamily(
            "wschat_bytes_sent",
            "Bytes of those frames (pings, pongs and close frames not included).",
            value=output.bytes_queued,
        )
        errors = CounterMetricFamily(
            "wschat_errors", "Refused requests, by wire code (docs/protocol.md).", labels=["code"]
        )
        for code, count in sorted(counts.errors.items()):
            errors.add_metric([code], count)
        yield errors
        yield CounterMetricFamily(
            "wschat_slow_consumer_closes",
            "Connections closed (4008) for not reading their output.",
            value=counts.slow_consumer_closes,
        )
        build = GaugeMetricFamily("wschat_build_info", "The running version.", labels=["version"])
        build.add_metric([__version__], 1)
        yield build


class TimedBroker:
    """A Broker that reports how long each message took to be stored (and, on Redis,
    announced): the time until the ack may go out. Delivering it to this node's members after
    that is not counted; neither are history reads."""

    def __init__(
        self,
        broker: Broker,
        observe: Callable[[float], None],
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._broker = broker
        self._observe = observe
        self._timer = timer

    def attach(self, deliver: Deliver, resync: Resync) -> None:
        self._broker.attach(deliver, resync)

    async def publish(
        self, room: str, new: NewMessage, stored: Stored | None = None
    ) -> tuple[Message, bool]:
        started = self._timer()
        observed = False

        def timed(msg: Message, fresh: bool) -> None:
            nonlocal observed
            observed = True
            self._observe(self._timer() - started)
            if stored is not None:
                stored(msg, fresh)

        try:
            return await self._broker.publish(room, new, timed)
        finally:
            if not observed:  # not stored: how long the failure took counts too
                self._observe(self._timer() - started)

    async def watch(self, room: str) -> None:
        await self._broker.watch(room)

    def unwatch(self, room: str) -> None:
        self._broker.unwatch(room)


class MetricsPage(Resource):
    """Rendered on the reactor thread, unlike prometheus_client's Twisted MetricsResource (a
    WSGIResource run in the reactor's thread pool). Rendering is pure Python and holds the
    GIL either way, so a thread would not take the work off the reactor, only add two thread
    handoffs; and our collector would then read the hub's and the counts' dicts while the
    reactor changes them ("dictionary changed size during iteration"). Rendering about forty
    series takes little next to a reactor turn."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self._registry)


class Metrics:
    """The registry of one server: its own (not prometheus_client's global REGISTRY), so that
    each makeService, as in the tests, starts from zero."""

    def __init__(self, factory: ChatFactory, process: bool = True) -> None:
        self._factory = factory
        self.registry = CollectorRegistry(auto_describe=False)
        if process:
            # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds...
            ProcessCollector(registry=self.registry)
        self.append_seconds = Histogram(
            "wschat_history_append_seconds",
            "Time to store a message in the history.",
            buckets=APPEND_BUCKETS_S,
            registry=self.registry,
        )

    def attach(self, hub: Hub) -> None:
        self.registry.register(ChatCollector(self._factory, hub))

    def timed(self, broker: Broker) -> TimedBroker:
        return TimedBroker(broker, self.append_seconds.observe)

    def site(self, reactor: object = None) -> Site:
        root = Resource()
        root.putChild(b"metrics", MetricsPage(self.registry))
        site = Site(root, timeout=METRICS_IDLE_TIMEOUT_S, reactor=reactor)
        site.displayTracebacks = False
        return site
