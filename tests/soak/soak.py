"""Soak: many clients chat for a long time while dropping and resuming their connections; at
the end every client's view of each of its rooms must equal the stored history.

    python -m tests.soak.soak                      # 1,000 clients for 10 minutes
    python -m tests.soak.soak --clients 100 --duration 20

Each client is in one room (a fifth of them in a second one) and says something every 1/--rate
seconds on average. About every --disconnect-every seconds it loses its connection in one of
three ways: a clean close, a dropped TCP connection, or a "ghost" (the old connection stays open
but unattended, as when a network path dies silently). It reconnects with `since` (the last id
it saw in each room) and the token from its last welcome (which takes a ghost's name over), and
resends every un-acked message with the same ref.

A client applies a room's live messages only after that room's welcome on the current
connection: a takeover hands the new connection all of the old one's rooms at once, and the
welcome that follows (with `since`) covers whatever was broadcast before it. Anything else
that arrives out of order is counted as a duplicate or reordering.

At the end each room's history is fetched with a fresh join with since=0 (the server keeps
--history-size 1,000,000 messages per room) and compared with every member's view: same
messages, same order, none missing, none twice. Every acked message must be stored exactly
once with its acked id. Exit status 0 when all of that holds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

if TYPE_CHECKING:
    from tests.e2e.process import ServerProcess

HISTORY_SIZE = 1_000_000
RECV_TIMEOUT_S = 30.0


@dataclass
class Config:
    clients: int = 1000
    duration_s: float = 600.0
    rooms: int = 10
    rate_per_s: float = 0.2
    disconnect_every_s: float = 60.0
    second_room_share: float = 0.2
    ramp_up_s: float = 10.0
    settle_timeout_s: float = 120.0
    seed: int = 1


@dataclass
class RoomView:
    """What one client saw of one room: a running hash instead of the messages themselves."""

    last_id: int = 0
    count: int = 0
    out_of_order: int = 0
    digest: hashlib.blake2b = field(default_factory=hashlib.blake2b)

    def add(self, message: dict[str, Any]) -> None:
        if message["id"] <= self.last_id:
            self.out_of_order += 1
        self.last_id = max(self.last_id, message["id"])
        self.count += 1
        self.digest.update(fingerprint(message))


def fingerprint(message: dict[str, Any]) -> bytes:
    return json.dumps([message["id"], message["name"], message["text"]]).encode() + b"\n"


@dataclass
class Stats:
    sent: int = 0
    resent: int = 0
    acked: int = 0
    delivered: int = 0
    connects: int = 0
    disconnects: Counter[str] = field(default_factory=Counter)
    not_recovered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    failed_connects: int = 0


class Client:
    def __init__(self, index: int, rooms: list[str], url: str, config: Config, stats: Stats):
        self.name = f"u{index}"
        self.rooms = rooms
        self.url = url
        self.config = config
        self.stats = stats
        self.rng = random.Random(config.seed * 1_000_003 + index)
        self.views = {room: RoomView() for room in rooms}
        self.token: str | None = None
        self.seq = 0
        # ref -> (room, text) of messages said but not acked yet.
        self.pending: dict[str, tuple[str, str]] = {}
        self.acked: dict[str, tuple[str, int, str]] = {}
        self.ws: ClientConnection | None = None
        self.receiving: asyncio.Task[None] | None = None
        self.welcomed: set[str] = set()
        self.ghosts: list[ClientConnection] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Chat until `stop`; then stay connected so the final messages arrive."""
        await asyncio.sleep(self.rng.uniform(0, self.config.ramp_up_s))
        while True:
            ws = await self.connect()
            receiving = asyncio.create_task(self.receive(ws))
            alive_until = time.monotonic() + self.rng.expovariate(
                1 / self.config.disconnect_every_s
            )
            while not stop.is_set() and not receiving.done():
                pause = self.rng.uniform(0.5, 1.5) / self.config.rate_per_s
                left = alive_until - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(stop.wait(), min(pause, left))
                except TimeoutError:
                    if pause < left:
                        await self.say_something()
            if stop.is_set() and not receiving.done():
                self.receiving = receiving
                return
            receiving.cancel()
            if receiving.done():
                # The server ended the connection (it should not have): just reconnect.
                self.stats.errors["connection_lost"] += 1
                ws.transport.abort()
            else:
                await self.disconnect(ws)

    async def connect(self) -> ClientConnection:
        while True:
            ws = None
            try:
                ws = await connect(
                    self.url, compression=None, max_size=None, open_timeout=30, max_queue=None
                )
                self.ws = ws
                self.welcomed = set()
                for room in self.rooms:
                    join: dict[str, Any] = {"type": "join", "room": room, "name": self.name}
                    join["since"] = self.views[room].last_id
                    if self.token is not None:
                        join["token"] = self.token
                    await ws.send(json.dumps(join))
                    await self.until_welcome(ws, room)
                self.stats.connects += 1
                for ref, (room, text) in list(self.pending.items()):
                    self.stats.resent += 1
                    await self.send_say(room, text, ref)
                return ws
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                self.stats.failed_connects += 1
                print(f"{self.name}: connect failed ({exc!r}); retrying", file=sys.stderr)
                if ws is not None:
                    ws.transport.abort()
                await asyncio.sleep(1)

    async def until_welcome(self, ws: ClientConnection, room: str) -> None:
        async with asyncio.timeout(RECV_TIMEOUT_S):
            while room not in self.welcomed:
                self.handle(json.loads(await ws.recv()))

    async def receive(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                self.handle(json.loads(frame))
        except ConnectionClosed:
            pass

    def handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "message":
            if event["room"] in self.welcomed:
                self.views[event["room"]].add(event)
                self.stats.delivered += 1
        elif kind == "welcome":
            room = event["room"]
            self.token = event["token"]
            if event.get("recovered") is not True:
                self.stats.not_recovered += 1
            for message in event["history"]:
                self.views[room].add(message)
                self.stats.delivered += 1
            self.welcomed.add(room)
        elif kind == "ack":
            ref = event["ref"]
            if ref in self.pending:
                room, text = self.pending.pop(ref)
                self.acked[ref] = (room, event["id"], text)
                self.stats.acked += 1
            elif ref in self.acked and self.acked[ref][1] != event["id"]:
                self.stats.errors["ack_id_changed"] += 1
        elif kind == "error":
            self.stats.errors[event["code"]] += 1
        elif kind != "presence":
            self.stats.errors[f"unexpected_{kind}"] += 1

    async def say_something(self) -> None:
        self.seq += 1
        ref = f"{self.name}.{self.seq}"
        room = self.rng.choice(self.rooms)
        text = f"{ref} says hello to {room} " + "x" * self.rng.randrange(0, 80)
        self.pending[ref] = (room, text)
        self.stats.sent += 1
        await self.send_say(room, text, ref)

    async def send_say(self, room: str, text: str, ref: str) -> None:
        assert self.ws is not None
        try:
            await self.ws.send(json.dumps({"type": "say", "room": room, "text": text, "ref": ref}))
        except ConnectionClosed:
            pass  # resent after the reconnect

    async def disconnect(self, ws: ClientConnection) -> None:
        how = self.rng.choice(["close", "drop", "ghost"])
        self.stats.disconnects[how] += 1
        if self.rng.random() < 0.5:
            # Gone before the ack comes back: the say may or may not be stored, and the
            # resend after the reconnect must be acked with its id either way.
            await self.say_something()
        if how == "close":
            await ws.close()
        elif how == "drop":
            ws.transport.abort()
            await ws.wait_closed()
        else:
            # Left open and unread: the reconnect with the token takes its name over and the
            # server closes it with 4001. Dropped later in any case, so that nothing leaks.
            self.ghosts.append(ws)
            asyncio.get_running_loop().call_later(15, ws.transport.abort)
        await asyncio.sleep(self.rng.uniform(0, 2))

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        for ghost in self.ghosts:
            ghost.transport.abort()


async def fetch_history(url: str, room: str) -> list[dict[str, Any]]:
    async with connect(url, compression=None, max_size=None, open_timeout=30) as ws:
        name = f"auditor-{time.monotonic_ns()}"
        await ws.send(json.dumps({"type": "join", "room": room, "name": name, "since": 0}))
        async with asyncio.timeout(RECV_TIMEOUT_S):
            while True:
                event = json.loads(await ws.recv())
                if event["type"] == "welcome":
                    assert event["recovered"] is True, "the history does not go back to id 1"
                    history = event["history"]
                    assert isinstance(history, list)
                    return history


@dataclass
class Report:
    config: Config
    stats: Stats
    stored: dict[str, int]
    problems: list[str]
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        s = self.stats
        lines = [
            f"soak: {self.config.clients} clients, {self.config.rooms} rooms, "
            f"{self.elapsed_s:.0f}s",
            f"  messages: sent {s.sent}, resent after reconnect {s.resent}, acked {s.acked}, "
            f"stored {sum(self.stored.values())}, delivered to views {s.delivered}",
            f"  stored per room: {dict(sorted(self.stored.items()))}",
            f"  connections: {s.connects} (failed attempts {s.failed_connects}); disconnects "
            f"{dict(s.disconnects)}; welcomes not recovered {s.not_recovered}",
            f"  errors from the server: {dict(s.errors) or 'none'}",
        ]
        if self.problems:
            lines.append(f"  PROBLEMS ({len(self.problems)}):")
            lines += [f"    {p}" for p in self.problems[:50]]
        else:
            lines.append("  every view equals the stored history: no loss, no duplicates, in order")
        return "\n".join(lines)


async def soak(url: str, config: Config) -> Report:
    rng = random.Random(config.seed)
    room_names = [f"soak{r}" for r in range(config.rooms)]
    stats = Stats()
    clients = []
    for i in range(config.clients):
        rooms = [room_names[i % config.rooms]]
        if config.rooms > 1 and rng.random() < config.second_room_share:
            rooms.append(rng.choice([r for r in room_names if r != rooms[0]]))
        clients.append(Client(i, rooms, url, config, stats))
    started = time.monotonic()
    stop = asyncio.Event()
    running = [asyncio.create_task(c.run(stop)) for c in clients]
    progress = asyncio.create_task(report_progress(stats, started))
    await asyncio.sleep(config.duration_s)
    stop.set()
    await asyncio.gather(*running)
    progress.cancel()

    problems: list[str] = []
    # Everything said must be acked: resends happened on reconnect, acks are on their way.
    deadline = time.monotonic() + config.settle_timeout_s
    while any(c.pending for c in clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    for c in clients:
        if c.pending:
            problems.append(f"{c.name}: never acked: {sorted(c.pending)}")

    histories = {room: await fetch_history(url, room) for room in room_names}
    last_ids = {room: (h[-1]["id"] if h else 0) for room, h in histories.items()}
    while time.monotonic() < deadline and any(
        c.views[r].last_id < last_ids[r] for c in clients for r in c.rooms
    ):
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - started

    digests = {}
    for room, history in histories.items():
        digest = hashlib.blake2b()
        for message in history:
            digest.update(fingerprint(message))
        digests[room] = digest.hexdigest()
        ids = [m["id"] for m in history]
        if ids != sorted(set(ids)):
            problems.append(f"{room}: stored ids are not strictly increasing")
    for c in clients:
        for room in c.rooms:
            view = c.views[room]
            if view.out_of_order:
                problems.append(f"{c.name}/{room}: {view.out_of_order} duplicates or reorderings")
            if view.count != len(histories[room]) or view.digest.hexdigest() != digests[room]:
                problems.append(
                    f"{c.name}/{room}: saw {view.count} messages up to id {view.last_id}, "
                    f"stored {len(histories[room])} up to id {last_ids[room]}, or not the same"
                )
    stored_ids = {(room, m["name"], m["text"]): m["id"] for room, h in histories.items() for m in h}
    said = set()
    for c in clients:
        for ref, (room, msg_id, text) in c.acked.items():
            said.add((room, c.name, text))
            if stored_ids.get((room, c.name, text)) != msg_id:
                problems.append(f"{c.name}: {ref} acked as {msg_id}, not stored with that id")
    if len(stored_ids) != sum(len(h) for h in histories.values()):
        problems.append("a message is stored twice")
    unknown = set(stored_ids) - said
    if unknown:
        problems.append(f"{len(unknown)} stored messages were never acked, e.g. {min(unknown)}")
    for c in clients:
        await c.close()
    stored = {room: len(h) for room, h in histories.items()}
    return Report(config, stats, stored, problems, elapsed)


async def report_progress(stats: Stats, started: float) -> None:
    while True:
        await asyncio.sleep(30)
        print(
            f"  {time.monotonic() - started:5.0f}s: sent {stats.sent}, acked {stats.acked}, "
            f"delivered {stats.delivered}, disconnects {sum(stats.disconnects.values())}",
            file=sys.stderr,
            flush=True,
        )


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))


SERVER_ARGS = ("--history-size", str(HISTORY_SIZE), "--max-connections-per-ip", "0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Config()
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds")
    parser.add_argument("--rooms", type=int, default=defaults.rooms)
    parser.add_argument("--rate", type=float, default=defaults.rate_per_s, help="msg/s/client")
    parser.add_argument(
        "--disconnect-every",
        type=float,
        default=defaults.disconnect_every_s,
        help="mean seconds between a client's disconnects",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--metrics-out",
        type=Path,
        help="start the server with --metrics-listen and write a scrape of /metrics a second "
        "to this file (JSON lines; bench/tools/plot_metrics.py draws them)",
    )
    parser.add_argument(
        "--url", help="soak a running server (started with " + " ".join(SERVER_ARGS) + ")"
    )
    args = parser.parse_args(argv)
    config = Config(
        clients=args.clients,
        duration_s=args.duration,
        rooms=args.rooms,
        rate_per_s=args.rate,
        disconnect_every_s=args.disconnect_every,
        ramp_up_s=min(defaults.ramp_up_s, args.duration / 4),
        seed=args.seed,
    )
    raise_fd_limit(2 * config.clients + 256)
    if args.url:
        report = asyncio.run(soak(args.url, config))
        print(report.summary())
        return 0 if report.ok else 1

    from tests.e2e.process import ServerProcess

    with tempfile.TemporaryDirectory(prefix="wschat-soak-") as workdir:
        from tests.e2e.process import free_port

        extra: tuple[str, ...] = ()
        metrics_port = free_port()
        if args.metrics_out is not None:
            extra = ("--metrics-listen", f"tcp:{metrics_port}:interface=127.0.0.1")
        server = ServerProcess(Path(workdir), *SERVER_ARGS, *extra).start()
        scraper = None
        if args.metrics_out is not None:
            scraper = Scraper(f"http://127.0.0.1:{metrics_port}/metrics", args.metrics_out)
            scraper.start()
        try:
            report = asyncio.run(soak(server.ws_url, config))
            print(report.summary())
            print(f"  server: {server_summary(server)}")
        finally:
            if scraper is not None:
                scraper.stop()
            server.stop()
    return 0 if report.ok else 1


class Scraper:
    """Scrapes /metrics once a second in a thread, as Prometheus would, into JSON lines of
    {"t": seconds since the first scrape, "samples": {"name{labels}": value}}."""

    def __init__(self, url: str, out: Path, interval_s: float = 1.0) -> None:
        import threading

        self.url = url
        self.out = out
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        started = time.monotonic()
        with self.out.open("w") as out:
            while not self._stop.wait(self.interval_s):
                try:
                    with urllib.request.urlopen(self.url, timeout=5) as resp:
                        text = resp.read().decode()
                except OSError:
                    continue
                samples = {}
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                        key = f"{sample.name}{{{labels}}}" if labels else sample.name
                        samples[key] = sample.value
                line = {"t": round(time.monotonic() - started, 3), "samples": samples}
                out.write(json.dumps(line) + "\n")
                out.flush()


def server_summary(server: ServerProcess) -> str:
    log = server.log()
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as status:
        rss = next(line.split(None, 1)[1].strip() for line in status if line.startswith("VmRSS"))
    return (
        f"RSS {rss}; takeovers {log.count('by a reconnect with its token')}; "
        f"tracebacks {log.count('Traceback')}"
    )


if __name__ == "__main__":
    sys.exit(main())
