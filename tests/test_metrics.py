"""/metrics in memory: the counts the adapters keep, read through prometheus_client."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import cast

import treq
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

import wschat
from wschat.chat.memory import LocalBroker, MemoryHistory
from wschat.chat.model import Message
from wschat.chat.ports import NewMessage
from wschat.server.factory import ChatFactory
from wschat.server.metrics import Metrics, TimedBroker
from wschat.testing import OP_CLOSE, Client, client_frame, make_factory, text

from .chatkit import run


def scrape(metrics: Metrics) -> dict[str, float]:
    """GET /metrics on the metrics site; every sample as 'name{label="v"}' -> value."""
    stub = StubTreq(metrics.site().resource)
    responses: list[IResponse] = []
    stub.get("http://127.0.0.1:9108/metrics").addCallback(responses.append)  # type: ignore[attr-defined]
    stub.flush()
    [response] = responses
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    bodies: list[bytes] = []
    treq.content(response).addCallback(bodies.append)
    stub.flush()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(bodies[0].decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def with_metrics(factory: ChatFactory) -> Metrics:
    metrics = Metrics(factory, process=False)
    metrics.attach(factory.hub)
    return metrics


def test_counts_follow_connections_messages_errors_and_closes(clock: Clock) -> None:
    """Opened, closed by code, says, deliveries (one per member of a broadcast), bytes and
    refusals by code are counted; connections and rooms are read from the hub."""
    factory = make_factory(clock)
    metrics = with_metrics(factory)
    alice, bob = Client(factory), Client(factory)
    alice.join("lobby", "alice")
    bob.join("lobby", "bob")
    bob.send(text({"type": "say", "room": "lobby", "text": "hi", "ref": "c1"}))
    bob.send(text({"type": "say", "room": "elsewhere", "text": "hi", "ref": "c2"}))
    bob.events()
    alice.events()
    bytes_before = factory.output.bytes_queued
    seen = scrape(metrics)
    assert seen["wschat_connections"] == 2
    assert seen["wschat_rooms"] == 1
    assert seen["wschat_connections_opened_total"] == 2
    assert seen["wschat_messages_received_total"] == 2
    # The message to both members; presence batches have not been sent yet.
    assert seen["wschat_messages_delivered_total"] == 2
    assert seen['wschat_errors_total{code="not_in_room"}'] == 1
    assert seen["wschat_bytes_sent_total"] == bytes_before > 0
    # 2 welcomes, 1 ack, 1 error, the message twice.
    assert seen["wschat_frames_sent_total"] == 6
    assert seen['wschat_build_info{version="' + wschat.__version__ + '"}'] == 1
    assert seen["wschat_slow_consumer_closes_total"] == 0
    alice.protocol.sendClose(1000)
    alice.protocol.onClose(True, 1000, None)
    bob.protocol.onClose(False, None, None)
    after = scrape(metrics)
    assert after["wschat_connections"] == 0
    assert after['wschat_connections_closed_total{code="1000"}'] == 1
    assert after['wschat_connections_closed_total{code="none"}'] == 1


def test_close_codes_of_the_clients_own_count_as_other(clock: Clock) -> None:
    """Clients closing with 40 codes of their own (3000-3039) add one series, `other`; the
    codes of RFC 6455 and of wschat keep their own labels."""
    factory = make_factory(clock)
    metrics = with_metrics(factory)
    for code in [*range(3000, 3040), 1001, 4401]:
        client = Client(factory)
        client.send(client_frame(OP_CLOSE, struct.pack("!H", code) + b"bye"))
        client.protocol.connectionLost(Failure(ConnectionDone()))
    closed = {k: v for k, v in scrape(metrics).items() if k.startswith("wschat_connections_closed")}
    assert closed == {
        'wschat_connections_closed_total{code="other"}': 40,
        'wschat_connections_closed_total{code="1001"}': 1,
        'wschat_connections_closed_total{code="4401"}': 1,
    }


def test_labels_are_only_codes_and_version(clock: Clock) -> None:
    """No metric carries a room or user label: only close/error codes and the version."""
    factory = make_factory(clock)
    metrics = with_metrics(factory)
    client = Client(factory)
    client.join("room-with-a-name", "someone")
    client.send(text({"type": "say", "room": "nowhere", "text": "x"}))
    client.events()
    for key in scrape(metrics):
        assert "room-with-a-name" not in key and "someone" not in key
        if "{" in key:
            labels = {part.split("=")[0] for part in key[key.index("{") + 1 : -1].split(",")}
            assert labels <= {"code", "version", "le"}, key


def test_history_append_time_is_a_histogram(clock: Clock) -> None:
    """Each message is timed once into wschat_history_append_seconds, until it is stored
    (before the ack): delivering it to the members afterwards is not counted."""
    factory = make_factory(clock)
    metrics = with_metrics(factory)
    ticks = iter([10.0, 10.002, 99.0])
    store = MemoryHistory(5)
    broker = TimedBroker(LocalBroker(store), metrics.append_seconds.observe, lambda: next(ticks))
    delivered: list[Message] = []
    broker.attach(lambda room, event: delivered.append(cast(Message, event)), lambda room: None)
    acked: list[int] = []
    run(broker.publish("r", NewMessage("n", "t", "ts", None), lambda m, _: acked.append(m.id)))
    assert acked == [1] and [m.text for m in delivered] == ["t"]
    seen = scrape(metrics)
    assert seen["wschat_history_append_seconds_count"] == 1
    assert abs(seen["wschat_history_append_seconds_sum"] - 0.002) < 1e-9
    assert seen['wschat_history_append_seconds_bucket{le="0.0025"}'] == 1
    assert seen['wschat_history_append_seconds_bucket{le="0.001"}'] == 0


def test_a_scrape_counts_every_connection_on_the_reactor_thread(clock: Clock) -> None:
    """MetricsPage renders on the reactor thread, with the process collector, the figures of
    every open connection."""
    factory = make_factory(clock)
    metrics = Metrics(factory)
    metrics.attach(factory.hub)
    for index in range(200):
        Client(factory).join("lobby", f"user{index}")
    seen = scrape(metrics)
    assert seen["wschat_connections"] == 200 and seen["wschat_rooms"] == 1
    assert seen["process_resident_memory_bytes"] > 0


def test_the_grafana_dashboard_uses_only_metrics_we_export(clock: Clock) -> None:
    """Every wschat_ and process_ name in contrib/grafana/wschat.json is in a scrape."""
    factory = make_factory(clock)
    metrics = Metrics(factory)
    metrics.attach(factory.hub)
    client = Client(factory)
    client.join("lobby", "x")
    client.send(text({"type": "say", "room": "nowhere", "text": "x"}))
    client.protocol.onClose(True, 1000, None)
    timed = metrics.timed(LocalBroker(MemoryHistory(5)))
    timed.attach(lambda room, event: None, lambda room: None)
    run(timed.publish("r", NewMessage("n", "t", "ts")))
    exported = {key.split("{")[0] for key in scrape(metrics)}
    dashboard = json.loads(
        (Path(__file__).parent.parent / "contrib/grafana/wschat.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\b(?:wschat|process)_[a-z_]+", expr)}
    assert len(used) >= 12
    assert used <= exported, used - exported
