"""/metrics of the real twistd, on its own listener."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import wschat

from .abuse import wait_for
from .client import Chat
from .conftest import ServerFactory
from .process import free_port

pytestmark = pytest.mark.e2e


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.headers["content-type"].startswith("text/plain; version=")
        text = resp.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_metrics_listener_counts_the_chat(wschat_server: ServerFactory) -> None:
    """--metrics-listen serves the Prometheus text on its own port (not on the chat's), with
    the connection, message, error, close and history figures following what clients do."""
    port = free_port()
    server = wschat_server("--metrics-listen", f"tcp:{port}:interface=127.0.0.1")
    with pytest.raises(urllib.error.HTTPError) as not_here:
        urllib.request.urlopen(server.http_url + "/metrics", timeout=5)
    assert not_here.value.code == 404
    not_here.value.close()
    alice, bob = Chat(server.ws_url), Chat(server.ws_url)
    alice.join("lobby", "alice")
    bob.join("lobby", "bob")
    for index in range(3):
        bob.say("lobby", f"hello {index}", ref=f"r{index}")
        bob.expect("message")
    bob.send(type="say", room="nowhere", text="x")
    assert bob.expect("error")["code"] == "not_in_room"
    for _ in range(3):
        alice.expect("message")
    seen = scrape(port)
    assert seen["wschat_connections"] == 2 and seen["wschat_rooms"] == 1
    assert seen["wschat_connections_opened_total"] == 2
    assert seen["wschat_messages_received_total"] == 4
    assert seen["wschat_messages_delivered_total"] >= 6  # 3 messages to 2 members, + presence
    assert seen['wschat_errors_total{code="not_in_room"}'] == 1
    assert seen["wschat_bytes_sent_total"] > 0
    assert seen["wschat_history_append_seconds_count"] == 3
    assert seen[f'wschat_build_info{{version="{wschat.__version__}"}}'] == 1
    assert seen["process_resident_memory_bytes"] > 0
    alice.close()
    bob.close()
    closed = 'wschat_connections_closed_total{code="1000"}'
    wait_for(lambda: scrape(port).get(closed) == 2, 10, "both closes counted")
    assert scrape(port)["wschat_connections"] == 0


def test_no_metrics_listener_by_default(wschat_server: ServerFactory) -> None:
    """Without --metrics-listen nothing serves metrics: /metrics is 404 on the chat port."""
    server = wschat_server()
    with pytest.raises(urllib.error.HTTPError) as not_here:
        urllib.request.urlopen(server.http_url + "/metrics", timeout=5)
    assert not_here.value.code == 404
    not_here.value.close()
