"""The disk does not fill: the per-address rate, the bound on rooms and the TTL, against the
real twistd and its SQLite file."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .abuse import run_async, wait_for
from .client import Chat
from .conftest import ServerFactory

pytestmark = pytest.mark.e2e

FLOODERS = 200
FLOOD_S = 12.0
MAX_ROOMS = 100
RATE_PER_IP = 40
BURST_PER_IP = 40
# Between two sweeps (1 s apart) the flood may add what its address is allowed in that time.
SLACK_ROOMS = BURST_PER_IP + 2 * RATE_PER_IP
# The flood comes from one loopback address, the chatting clients from others (127/8 is
# all loopback on Linux: no configuration needed).
FLOOD_ADDRESS = "127.0.0.2"


def rooms_in(db: Path) -> int:
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        (count,) = reader.execute("SELECT count(DISTINCT room) FROM messages").fetchone()
    finally:
        reader.close()
    return int(count)


async def flooder(url: str, index: int, stop: asyncio.Event, refusals: list[int]) -> None:
    """Join a fresh random room, say something long there, leave; five times a second, the
    most --rate allows one connection."""
    ws: ClientConnection = await connect(
        url, local_addr=(FLOOD_ADDRESS, 0), open_timeout=30, max_size=None, compression=None
    )
    rng = random.Random(index)
    name = f"flood{index}"
    try:
        while not stop.is_set():
            room = f"spam-{rng.getrandbits(48):x}"
            await ws.send(json.dumps({"type": "join", "room": room, "name": name}))
            await ws.send(json.dumps({"type": "say", "room": room, "text": "x" * 1900}))
            await ws.send(json.dumps({"type": "leave", "room": room}))
            await asyncio.sleep(0.2)
            while True:
                try:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 0.001))
                except TimeoutError:
                    break
                if event["type"] == "error" and event["code"] == "rate_limited":
                    refusals[0] += 1
    except ConnectionClosed:
        pass
    finally:
        await ws.close()


async def chatter(url: str, address: str, name: str, stop: asyncio.Event) -> list[float]:
    """Say something in the lobby every 0.2 s; return how long each took to be acked."""
    ws = await connect(url, local_addr=(address, 0), open_timeout=30, compression=None)
    await ws.send(json.dumps({"type": "join", "room": "lobby", "name": name}))
    acks: list[float] = []
    try:
        number = 0
        while not stop.is_set():
            number += 1
            ref = f"{name}-{number}"
            sent = time.monotonic()
            await ws.send(json.dumps({"type": "say", "room": "lobby", "text": ref, "ref": ref}))
            async with asyncio.timeout(5):
                while True:
                    event: dict[str, Any] = json.loads(await ws.recv())
                    assert event["type"] != "error", event
                    if event["type"] == "ack" and event["ref"] == ref:
                        break
            acks.append(time.monotonic() - sent)
            await asyncio.sleep(0.2)
    finally:
        await ws.close()
    return acks


def test_a_flood_from_one_address_stays_under_the_bound(wschat_server: ServerFactory) -> None:
    """200 connections from one address flood random rooms: --rate-per-ip refuses most of it,
    the history never holds much more than --max-history-rooms rooms (and no more once a
    sweep has run), and two clients on other addresses keep chatting, every say acked."""
    server = wschat_server(
        "--max-history-rooms",
        str(MAX_ROOMS),
        "--rate-per-ip",
        str(RATE_PER_IP),
        "--burst-per-ip",
        str(BURST_PER_IP),
        "--history-size",
        "20",
    )
    samples: list[int] = []

    async def scenario() -> tuple[list[float], list[float], int]:
        stop_flood, stop_chat = asyncio.Event(), asyncio.Event()
        refusals = [0]
        chatting = [
            asyncio.create_task(chatter(server.ws_url, "127.0.0.3", "carol", stop_chat)),
            asyncio.create_task(chatter(server.ws_url, "127.0.0.4", "dave", stop_chat)),
        ]
        flooding = [
            asyncio.create_task(flooder(server.ws_url, index, stop_flood, refusals))
            for index in range(FLOODERS)
        ]
        started = time.monotonic()
        while time.monotonic() - started < FLOOD_S:
            await asyncio.sleep(0.5)
            samples.append(await asyncio.to_thread(rooms_in, server.db_path))
        # The flooders' frames still on their way are served (in order) before their close;
        # the lobby goes on being written until they are gone, as it was all along.
        stop_flood.set()
        await asyncio.gather(*flooding)
        stop_chat.set()
        carol, dave = await asyncio.gather(*chatting)
        return carol, dave, refusals[0]

    carol, dave, refused = run_async(scenario())
    assert refused > 1000, "the per-address rate never refused the flood"
    assert max(samples) > MAX_ROOMS / 2, f"the flood hardly wrote anything: {samples}"
    assert max(samples) <= MAX_ROOMS + SLACK_ROOMS, samples
    wait_for(lambda: rooms_in(server.db_path) <= MAX_ROOMS, 5, "a sweep to restore the bound")
    # Each chatting client said about five times a second all along, and was acked in time.
    for acks in (carol, dave):
        assert len(acks) >= FLOOD_S * 2, len(acks)
        assert max(acks) < 2.0, max(acks)
    # The lobby, written to all along, was never forgotten.
    reader = sqlite3.connect(server.db_path)
    try:
        rooms = {r for (r,) in reader.execute("SELECT DISTINCT room FROM messages")}
    finally:
        reader.close()
    assert "lobby" in rooms
    assert server.log().count("history sweep:") >= 1
    assert "Traceback" not in server.log()


def test_the_ttl_sweep_deletes_old_messages_from_the_file(wschat_server: ServerFactory) -> None:
    """With --history-ttl 2s the running server deletes messages once they are older than
    that, forgets the room, and logs the sweep; a newer message stays."""
    server = wschat_server("--history-ttl", "2s")
    alice = Chat(server.ws_url)
    alice.join("old", "alice")
    for index in range(5):
        alice.say("old", f"soon gone {index}")
        alice.expect("message")
    assert rooms_in(server.db_path) == 1
    wait_for(lambda: rooms_in(server.db_path) == 0, 10, "the TTL sweep")
    alice.join("new", "alice")
    alice.say("new", "fresh")
    alice.expect("message")
    late = Chat(server.ws_url)
    assert late.join("old", "bob")["history"] == []
    assert [m["text"] for m in late.join("new", "bob")["history"]] == ["fresh"]
    assert "history sweep: deleted 5 messages" in server.log()
    alice.close()
    late.close()
