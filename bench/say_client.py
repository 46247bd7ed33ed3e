#!/usr/bin/env python3
"""Ack latency of wschat's `say`, for the `multinode` scenario of bench/run.py (stdlib only).

Each sender is one connection in a room of its own (so that a say costs one store and one
delivery, not a fan-out) and sends `say` with a `ref` one at a time: the next when the ack of
the previous one is in. What is measured is the time from the write of the `say` to the read of
its `ack`, i.e. the store (SQLite commit, or the Redis script with its persistence) plus the
server's parsing and one round trip over loopback.

    python bench/say_client.py '{"url": "ws://127.0.0.1:8080/ws", "senders": 1, "says": 2000}'
    python bench/say_client.py '{"url": …, "senders": 32, "warmup": 1, "duration": 8}'

With `says`, each sender sends that many and all of them count; otherwise each sends for
`warmup` + `duration` seconds and the says sent inside the window count. `watch` ({label: pid})
adds the CPU % of those processes over the same window. One JSON line goes to stdout: the
result, or {"event": "fatal", ...}.
"""

import base64
import json
import os
import selectors
import socket
import struct
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

MAX_WAIT_S = 30.0  # handshake + join, and the drain after the last say


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, from /proc/<pid>/stat (as run.py does)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.3); the XOR is done on one big int, not per byte."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    keys = (key * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")
    return head + key + body


class Conn:
    """One blocking WebSocket connection; the selector only says when a recv will not block."""

    def __init__(self, url: str, idx: int, room: str, timeout: float) -> None:
        u = urllib.parse.urlsplit(url)
        self.idx = idx
        self.room = room
        self.name = f"s{idx}"
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            buf += chunk
        head, self.buf = buf.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(f"handshake refused: {status.decode(errors='replace')}")
        self.sock.settimeout(None)
        self.pending: tuple[str, int] | None = (
            None  # (ref, send time ns) of the say waiting for its ack
        )
        self.k = 0
        self.acks = 0
        self.own_messages = 0
        self.done = False
        self.closed: str | None = None

    def send_json(self, obj: dict[str, Any]) -> None:
        self.sock.sendall(mask_frame(0x1, json.dumps(obj).encode()))

    def frames(self) -> Iterator[dict[str, Any]]:
        """Reads what is there; yields the text frames' JSON, answers pings."""
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = self.closed or "eof"
            return
        self.buf += chunk
        while len(self.buf) >= 2:
            b0, b1 = self.buf[0], self.buf[1]
            n, pos = b1 & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, pos = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, pos = struct.unpack("!Q", self.buf[2:10])[0], 10
            if len(self.buf) < pos + n:
                return
            payload, self.buf = self.buf[pos : pos + n], self.buf[pos + n :]
            opcode = b0 & 0x0F
            if not b0 & 0x80:
                raise ValueError("fragmented frame (the server does not send them)")
            if opcode == 0x1:
                yield json.loads(payload)
            elif opcode == 0x9:
                self.sock.sendall(mask_frame(0xA, payload))
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.closed = f"close {code}"
                return


def percentile(sorted_vals: list[int], p: float) -> int:
    """The nearest-rank percentile of a sorted, non-empty list."""
    i = min(len(sorted_vals) - 1, max(0, round(p / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[i]


def cpu_share(before: float | None, after: float | None, wall: float) -> float | None:
    """CPU % over `wall` seconds between two proc_cpu_seconds() samples."""
    if not wall or before is None or after is None:
        return None
    return round((after - before) / wall * 100, 1)


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    senders = int(cfg.get("senders", 1))
    says = cfg.get("says")
    warmup = float(cfg.get("warmup", 0.0))
    duration = float(cfg.get("duration", 0.0))
    max_s = float(cfg.get("maxSeconds", 120.0))
    text = "x" * int(cfg.get("payload", 140))
    room = cfg.get("room", "say")
    watch = {k: int(v) for k, v in cfg.get("watch", {}).items()}

    conns = [Conn(cfg["url"], i, f"{room}-{i}", MAX_WAIT_S) for i in range(senders)]
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
        c.send_json({"type": "join", "room": c.room, "name": c.name})
    errors: dict[str, int] = {}
    join_errors: dict[str, int] = {}
    waiting = {c.idx for c in conns}
    deadline = time.monotonic() + MAX_WAIT_S
    while waiting and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            c = key.data
            for f in c.frames():
                if f.get("type") == "welcome":
                    waiting.discard(c.idx)
                elif f.get("type") == "error":
                    join_errors[f.get("code")] = join_errors.get(f.get("code"), 0) + 1
                    waiting.discard(c.idx)
                    c.done = True
            if c.closed:
                waiting.discard(c.idx)
                c.done = True
    if waiting:
        raise TimeoutError(f"{len(waiting)} senders got no welcome in {MAX_WAIT_S:.0f} s")

    def send_next(c: Conn, now_ns: int) -> None:
        c.k += 1
        ref = f"r{c.k}"
        c.pending = (ref, now_ns)
        c.send_json({"type": "say", "room": c.room, "text": text, "ref": ref})

    lat_ns = []
    in_window = 0  # acks that arrived inside the window (time mode)
    t0 = time.monotonic_ns()
    win_start = t0 + int(warmup * 1e9)
    win_end = win_start + int(duration * 1e9)
    hard_end = t0 + int(max_s * 1e9)
    cpu0 = cpu1 = None
    rus0 = rus1 = None
    t_cpu0 = t_cpu1 = None

    def snapshot() -> tuple[dict[str, float | None], os.times_result, float]:
        return {k: proc_cpu_seconds(p) for k, p in watch.items()}, os.times(), time.monotonic()

    if says is not None or warmup <= 0:
        cpu0, rus0, t_cpu0 = snapshot()
    for c in conns:
        if not c.done:
            send_next(c, time.monotonic_ns())
    while True:
        now = time.monotonic_ns()
        if cpu0 is None and now >= win_start:
            cpu0, rus0, t_cpu0 = snapshot()
        if says is None and cpu1 is None and now >= win_end:
            cpu1, rus1, t_cpu1 = snapshot()
        active = [c for c in conns if not c.done]
        if not active or now >= hard_end:
            break
        for key, _ in sel.select(timeout=0.05):
            c = key.data
            for f in c.frames():
                t = time.monotonic_ns()
                typ = f.get("type")
                if typ == "message":
                    c.own_messages += 1
                    continue
                if typ == "error":
                    errors[f.get("code")] = errors.get(f.get("code"), 0) + 1
                elif typ != "ack":
                    continue
                if c.pending is None or f.get("ref") != c.pending[0]:
                    continue
                sent_ns = c.pending[1]
                c.pending = None
                if typ == "ack":
                    c.acks += 1
                    if says is not None or win_start <= sent_ns < win_end:
                        lat_ns.append(t - sent_ns)
                    if says is None and win_start <= t < win_end:
                        in_window += 1
                if (says is not None and c.k >= says) or (says is None and t >= win_end):
                    c.done = True
                else:
                    send_next(c, t)
            if c.closed:
                c.done = True
    if cpu1 is None:
        cpu1, rus1, t_cpu1 = snapshot()
    # The copies of the own messages (each room has only its sender) are the end-to-end check:
    # every acked say must also come back as a `message`.
    drain_until = time.monotonic() + 2.0
    while time.monotonic() < drain_until and any(
        c.own_messages < c.acks and not c.closed for c in conns
    ):
        for key, _ in sel.select(timeout=0.05):
            c = key.data
            for f in c.frames():
                if f.get("type") == "message":
                    c.own_messages += 1
    for c in conns:
        c.sock.close()
    lat_ns.sort()
    # the window opens on the first pass of the loop, unless it ended before the warm-up did
    if cpu0 is None or rus0 is None or t_cpu0 is None:
        raise TimeoutError("the measuring window never opened")
    assert cpu1 is not None and rus1 is not None and t_cpu1 is not None
    wall = t_cpu1 - t_cpu0
    window_s = duration if says is None else (time.monotonic_ns() - t0) / 1e9
    acks = sum(c.acks for c in conns)
    return dict(
        event="result",
        senders=senders,
        says_per_sender=says,
        acks=acks,
        measured=len(lat_ns),
        says_per_s=(in_window / duration) if says is None else (acks / wall if wall else None),
        ack_ms=dict(
            p50=percentile(lat_ns, 50) / 1e6 if lat_ns else None,
            p90=percentile(lat_ns, 90) / 1e6 if lat_ns else None,
            p99=percentile(lat_ns, 99) / 1e6 if lat_ns else None,
            max=lat_ns[-1] / 1e6 if lat_ns else None,
        ),
        errors=errors,
        join_errors=join_errors,
        closed=[c.closed for c in conns if c.closed],
        messages_missing=sum(max(0, c.acks - c.own_messages) for c in conns),
        timed_out=time.monotonic_ns() >= hard_end,
        window_s=window_s,
        cpu_percent={k: cpu_share(cpu0[k], cpu1[k], wall) for k in watch},
        client_cpu_percent=round(
            ((rus1.user + rus1.system) - (rus0.user + rus0.system)) / wall * 100, 1
        )
        if wall
        else None,
    )


def main() -> int:
    cfg = json.loads(sys.argv[1])
    try:
        out = run(cfg)
    except Exception as e:  # the orchestrator records it as a failed run
        out = {"event": "fatal", "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
    return 0 if out["event"] == "result" else 1


if __name__ == "__main__":
    sys.exit(main())
