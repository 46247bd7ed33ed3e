"""One client flooding joins against steady chatters: their say -> ack p99, quiet vs flooded.

    .venv/bin/python -m bench.join_flood [--chatters 20] [--rate 10] [--seconds 10]

Starts a real `twistd -n wschat` (history in memory), fills the room `big` with 100 messages
of 2,000 emoji (a welcome of about 800 KB), then measures the chatters, each saying --rate
messages a second in `steady`, for --seconds without the flood and --seconds with one client
sending `join big` as fast as its socket takes them (reading and dropping what comes back).
It does so twice: with the default request bucket and welcome budget, and with both opened
wide (what every server was before issue 20, item 2). As in bench/harness.py, the server runs on CPU
SERVER_CPU (`taskset`) and the load, chatters and flooder, on LOADGEN_CPU; the last column of
each row is the flooded p99 over the quiet one (issue 20 asks for under 2x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .settings import LOADGEN_CPU, ROOT, SERVER_CPU

TWISTD = os.path.join(ROOT, ".venv", "bin", "twistd")
BIG_TEXT = "😀" * 2000
# What the flooder sent and got back, by frame type (and `dropped` connections).
Counts = dict[str, int]
# The request bucket and the welcome budget opened wide: no join is ever refused or held.
WIDE_OPEN = [
    *("--request-rate", "1000000", "--request-burst", "1000000"),
    *("--welcome-rate", str(1 << 40), "--welcome-burst", str(1 << 40)),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu]


def start_server(port: int, extra: list[str], workdir: str) -> subprocess.Popen[bytes]:
    argv = [
        *pinned(SERVER_CPU),
        TWISTD,
        "-n",
        "--pidfile=",
        "wschat",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--history-db",
        ":memory:",
        # The chatters' says are no part of what is measured: never refused.
        "--rate",
        "1000",
        "--burst",
        "1000",
        *extra,
    ]
    log = open(os.path.join(workdir, f"server-{port}.log"), "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server did not listen on {port}")


async def recv_type(ws: ClientConnection, kind: str) -> dict[str, object]:
    while True:
        event = json.loads(await ws.recv())
        if event["type"] == kind:
            assert isinstance(event, dict)
            return event


async def fill_big_room(url: str) -> None:
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "join", "room": "big", "name": "writer"}))
        await recv_type(ws, "welcome")
        for _ in range(100):
            await ws.send(json.dumps({"type": "say", "room": "big", "text": BIG_TEXT}))
            await recv_type(ws, "ack")


async def chatter(url: str, index: int, rate: float, until: float, took: list[float]) -> None:
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "join", "room": "steady", "name": f"c{index}"}))
        await recv_type(ws, "welcome")
        period = 1.0 / rate
        while time.monotonic() < until:
            started = time.perf_counter()
            await ws.send(json.dumps({"type": "say", "room": "steady", "text": "tick"}))
            await recv_type(ws, "ack")
            took.append(time.perf_counter() - started)
            await asyncio.sleep(max(0.0, period - (time.perf_counter() - started)))


async def flooder(url: str, until: float, counts: Counts) -> None:
    """Joins as fast as the socket takes them; a connection the server drops (its output
    over --max-output-bytes) is opened again, as an attacker would."""
    while time.monotonic() < until:
        try:
            await flood_once(url, until, counts)
        except ConnectionClosed:
            counts["dropped"] = counts.get("dropped", 0) + 1


async def flood_once(url: str, until: float, counts: Counts) -> None:
    # A server that stops reading a client over its rate leaves its sends and its close
    # waiting in the kernel's buffers: neither may outlast the phase.
    async with connect(url, max_size=None, max_queue=None, close_timeout=1) as ws:
        await ws.send(json.dumps({"type": "join", "room": "big", "name": "flooder"}))
        await recv_type(ws, "welcome")

        async def drain() -> None:
            async for frame in ws:
                kind = json.loads(frame).get("type", "")
                counts[kind] = counts.get(kind, 0) + 1

        reader = asyncio.create_task(drain())
        try:
            frame = json.dumps({"type": "join", "room": "big"})
            while (left_s := until - time.monotonic()) > 0:
                try:
                    await asyncio.wait_for(ws.send(frame), left_s)
                except TimeoutError:
                    break
                counts["sent"] = counts.get("sent", 0) + 1
                await asyncio.sleep(0)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def phase(url: str, opts: argparse.Namespace, flood: bool) -> tuple[list[float], Counts]:
    """The chatters for --seconds; with `flood`, the flooder beside them in a process of its
    own (in this one it would starve the chatters' own event loop)."""
    until = time.monotonic() + opts.seconds
    took: list[float] = []
    flooding = None
    if flood:
        argv = [*pinned(LOADGEN_CPU), sys.executable, "-m", "bench.join_flood", "--flood", url]
        argv.append("--seconds")
        flooding = subprocess.Popen([*argv, str(opts.seconds)], cwd=ROOT, stdout=subprocess.PIPE)
    await asyncio.gather(*(chatter(url, i, opts.rate, until, took) for i in range(opts.chatters)))
    if flooding is None:
        return took, {}
    out, _ = flooding.communicate(timeout=opts.seconds + 30)
    counts: Counts = json.loads(out)
    return took, counts


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


async def measure(opts: argparse.Namespace, extra: list[str], label: str, workdir: str) -> None:
    port = free_port()
    proc = start_server(port, extra, workdir)
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        await fill_big_room(url)
        quiet, _ = await phase(url, opts, False)
        flooded, counts = await phase(url, opts, True)
    finally:
        proc.terminate()
        proc.wait()
    welcomes = counts.get("welcome", 0)
    refused = counts.get("error", 0)
    print(
        f"| {label} | {len(quiet):,} | {pct(quiet, 0.5):.1f} | {pct(quiet, 0.99):.1f} | "
        f"{len(flooded):,} | {pct(flooded, 0.5):.1f} | {pct(flooded, 0.99):.1f} | "
        f"{pct(flooded, 0.99) / pct(quiet, 0.99):.1f}x | {counts.get('sent', 0):,} | "
        f"{welcomes:,} | {refused:,} | {counts.get('dropped', 0)} |"
    )
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--chatters", type=int, default=20)
    ap.add_argument("--rate", type=float, default=10.0, help="says a second per chatter")
    ap.add_argument("--seconds", type=float, default=10.0, help="per phase")
    ap.add_argument("--flood", metavar="URL", help="be the flooder of one phase (internal)")
    opts = ap.parse_args()
    # The chatters (this process) share the load's CPU with the flooder, off the server's.
    os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    if opts.flood:
        counts: Counts = {}
        asyncio.run(flooder(opts.flood, time.monotonic() + opts.seconds, counts))
        print(json.dumps(counts))
        return
    print(
        "| request bucket, welcome budget | quiet says | p50 ms | p99 ms | flooded says | p50 ms "
        "| p99 ms | p99 flooded/quiet | joins sent | welcomes | refused | dropped |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as workdir:
        default = "default (--request-rate 2, --request-burst 40, --welcome-rate 256 KiB, 2 MiB)"
        asyncio.run(measure(opts, [], default, workdir))
        asyncio.run(measure(opts, WIDE_OPEN, "wide open (before item 2)", workdir))


if __name__ == "__main__":
    main()
