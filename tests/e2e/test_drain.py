"""SIGTERM against the real twistd with 200 chatting clients: a drain, not a cliff."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .abuse import run_async
from .client import Chat
from .conftest import ServerFactory
from .process import CLEAN_STOP_CODES, ServerProcess

pytestmark = pytest.mark.e2e

CLIENTS = 200
ROOMS = 10
DRAIN_S = 5.0
HEALTH_POLL_S = 0.1


@dataclass
class Client:
    name: str
    room: str
    acked: dict[str, int] = field(default_factory=dict)  # ref (which is also the text) -> id
    errors: list[dict[str, Any]] = field(default_factory=list)
    close: tuple[int, str] | None = None
    closed_at: float | None = None


@dataclass
class Health:
    at: float
    code: int
    status: str


def health(server: ServerProcess) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


async def chat(ws: ClientConnection, client: Client) -> None:
    """Say something about once a second; record every ack; end at the server's close."""

    async def say() -> None:
        n = 0
        while True:
            await asyncio.sleep(random.uniform(0.5, 1.5))
            n += 1
            ref = f"{client.name}-{n}"
            try:
                await ws.send(
                    json.dumps({"type": "say", "room": client.room, "text": ref, "ref": ref})
                )
            except ConnectionClosed:
                return

    writer = asyncio.create_task(say())
    try:
        async for raw in ws:
            event = json.loads(raw)
            if event["type"] == "ack":
                client.acked[event["ref"]] = event["id"]
            elif event["type"] == "error":
                client.errors.append(event)
    except ConnectionClosed:
        pass
    finally:
        client.closed_at = time.monotonic()
        writer.cancel()
    received = ws.protocol.close_rcvd
    if received is not None:
        client.close = (received.code, received.reason)


async def joined(url: str, client: Client) -> ClientConnection:
    ws = await connect(url, max_size=None, open_timeout=30, ping_interval=None)
    await ws.send(json.dumps({"type": "join", "room": client.room, "name": client.name}))
    while json.loads(await ws.recv())["type"] != "welcome":
        pass
    return ws


async def drain_under_load(
    server: ServerProcess, clients: list[Client]
) -> tuple[float, list[Health], int | None]:
    """Connect everyone, chat, SIGTERM; returns when the SIGTERM was sent, what /healthz said
    meanwhile, and the HTTP status an upgrade attempted during the drain got."""
    connections = await asyncio.gather(*(joined(server.ws_url, c) for c in clients))
    chats = [asyncio.create_task(chat(ws, c)) for ws, c in zip(connections, clients, strict=True)]
    await asyncio.sleep(1.5)
    polls: list[Health] = []

    async def poll() -> None:
        while server.running:
            try:
                code, body = await asyncio.to_thread(health, server)
            except OSError:
                return  # the listener has closed: the drain is over
            polls.append(Health(time.monotonic(), code, body["status"]))
            await asyncio.sleep(HEALTH_POLL_S)

    poller = asyncio.create_task(poll())
    assert server.proc is not None
    sigterm_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(1.0)
    refused = None
    try:
        late = await connect(server.ws_url, open_timeout=10)
        await late.close()
    except InvalidStatus as exc:
        refused = exc.response.status_code
    await asyncio.wait_for(asyncio.gather(*chats), timeout=DRAIN_S + 15)
    await asyncio.wait_for(poller, timeout=15)
    return sigterm_at, polls, refused


def test_sigterm_drains_200_clients_with_1012_spread_over_the_window(
    wschat_server: ServerFactory,
) -> None:
    """SIGTERM: 200 clients get 1012 spread over the drain, 503s meanwhile, every ack kept."""
    server = wschat_server("--history-size", "1000", "--drain-seconds", str(DRAIN_S))
    clients = [Client(f"user{i}", f"room{i % ROOMS}") for i in range(CLIENTS)]
    sigterm_at, polls, refused = run_async(drain_under_load(server, clients))
    assert server.stop() in CLEAN_STOP_CODES

    assert [c.close for c in clients] == [(1012, "service restart")] * CLIENTS
    assert not [e for c in clients for e in c.errors], "no request was refused"
    offsets = sorted((c.closed_at or 0.0) - sigterm_at for c in clients)
    spread = offsets[-1] - offsets[0]
    per_second = Counter(min(int(t), int(DRAIN_S) - 1) for t in offsets)
    print(f"closes: first {offsets[0]:.2f}s, last {offsets[-1]:.2f}s after SIGTERM; per second")
    print(f"  {[per_second[s] for s in range(int(DRAIN_S))]}")
    assert offsets[0] < 0.5
    assert DRAIN_S * 0.85 < spread < DRAIN_S + 1.0
    expected = CLIENTS / DRAIN_S
    assert all(0.6 * expected <= per_second[s] <= 1.4 * expected for s in range(int(DRAIN_S)))

    during = [p for p in polls if sigterm_at + 0.2 < p.at < sigterm_at + offsets[-1]]
    assert len(during) >= 10, polls
    assert {(p.code, p.status) for p in during} == {(503, "draining")}
    assert refused == 503
    log = server.log()
    assert f"closing {CLIENTS} with 1012 over {DRAIN_S}s" in log
    assert f"drained: {CLIENTS} connections closed in" in log
    assert "history database closed" in log

    server.start()
    acked = sum(len(c.acked) for c in clients)
    assert acked > CLIENTS, "the clients were chatting when the drain began"
    for room in {c.room for c in clients}:
        auditor = Chat(server.ws_url)
        stored = {m["text"]: m["id"] for m in auditor.join(room, "auditor")["history"]}
        auditor.close()
        for client in (c for c in clients if c.room == room):
            assert client.acked.items() <= stored.items(), client.name
