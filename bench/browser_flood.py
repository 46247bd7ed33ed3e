"""A browser page left open in a busy room: does it keep up, and does its work stay flat?

    .venv/bin/python -m bench.browser_flood [--seconds 600] [--rate 100] [--interval 10]
    .venv/bin/python -m bench.browser_flood --seconds 60 --client-rev 0279d1d   # an older client

Starts a real `twistd -n wschat` (history in memory; the sender's rate limit lifted) on
SERVER_CPU and opens the chat in Debian's headless Chromium (/usr/bin/chromium through
Playwright, as the browser tests do) in the room `flood`; one sender says --rate messages a
second there for --seconds, 140 characters each. The page follows the bottom, as a person
watching the room would. Every --interval seconds it reads Chrome's own counters (the DevTools
Protocol's Performance.getMetrics): the time spent in layout, style recalculation, script and all
main-thread tasks, as milliseconds per second of that interval, the layouts per second and the
JS heap; the CPU time of the renderers' main threads and of all of Chromium (from /proc: unlike
the durations above it does not grow when other processes take the CPU); the messages the list
holds; and how far behind the page is: the last id acked to the sender minus the last id in the
list, and how long the page took to answer that question (its main thread's backlog). Chromium,
Playwright and the sender run on LOADGEN_CPU.

--client-rev serves the browser client of another commit (`git archive REV wschat/static`,
through Playwright's request routing) against today's server: the before of a before/after.
Rows are printed as a markdown table as they come, then a summary; every row is also written to
bench/results/<stamp>-browser_flood.jsonl.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from websockets.sync.client import ClientConnection, connect

from tests.e2e.browser import CHROMIUM_ARGS, CHROMIUM_PATH
from tests.e2e.process import ServerProcess

from .settings import BENCH, LOADGEN_CPU, ROOT, SERVER_CPU

ROOM = "flood"
TEXT_CHARS = 140
FILLER = "the quick brown fox jumps over the lazy dog " * 4
METRICS = ("LayoutDuration", "RecalcStyleDuration", "ScriptDuration", "TaskDuration")
# What the page is asked each interval: the id of the last message in its list, and how many
# messages the list holds.
LAST_SHOWN_JS = """() => {
    const items = document.querySelectorAll('#messages li[data-id]');
    return [items.length ? Number(items[items.length - 1].dataset.id) : 0, items.length];
}"""


@dataclass
class Row:
    """One interval of the run."""

    t_s: float
    sent: int
    acked_id: int
    shown_id: int
    behind: int
    answer_ms: float
    layout_ms_per_s: float
    style_ms_per_s: float
    script_ms_per_s: float
    task_ms_per_s: float
    layouts_per_s: float
    renderer_cpu_ms_per_s: float
    chromium_cpu_ms_per_s: float
    items: int
    heap_mb: float


class Sender:
    """One connection saying `rate` messages a second in ROOM, in a thread; remembers the last
    id acked."""

    def __init__(self, url: str, rate: float) -> None:
        # legacy=True: a plain connection object, closed by stop() (websockets >= 15).
        self.ws: ClientConnection = connect(url, max_size=None, legacy=True)
        self.ws.send(json.dumps({"type": "join", "room": ROOM, "name": "sender"}))
        while json.loads(self.ws.recv())["type"] != "welcome":
            pass
        self.rate = rate
        self.sent = 0
        self.acked_id = 0
        self.errors = 0
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._write, daemon=True),
            threading.Thread(target=self._read, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _write(self) -> None:
        started = time.monotonic()
        while not self.stopping.is_set():
            due = started + self.sent / self.rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            head = f"message {self.sent + 1} at {time.time():.3f}: "
            text = head + FILLER[: TEXT_CHARS - len(head)]
            self.ws.send(json.dumps({"type": "say", "room": ROOM, "text": text}))
            self.sent += 1

    def _read(self) -> None:
        try:
            for frame in self.ws:
                event = json.loads(frame)
                if event["type"] == "ack":
                    self.acked_id = max(self.acked_id, int(event["id"]))
                elif event["type"] == "error":
                    self.errors += 1
        except Exception:
            return  # the connection closes at the end of the run

    def stop(self) -> None:
        self.stopping.set()
        self.threads[0].join()
        self.ws.close()


def client_dir(rev: str, into: str) -> Path:
    """wschat/static as commit `rev` had it, unpacked under `into`."""
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", rev, "wschat/static"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return Path(into) / "wschat" / "static"


def serve_client_from(page: Any, static: Path) -> None:
    """Answer the page's requests for the client's files from `static`; the rest (the
    WebSocket, /config.json) go to the server."""

    def handle(route: Any) -> None:
        name = urlparse(route.request.url).path.lstrip("/") or "index.html"
        path = static / name
        if path.is_file():
            route.fulfill(path=str(path))
        else:
            route.continue_()

    page.route("**/*", handle)


def metrics(cdp: Any, chromium: list[int]) -> dict[str, float]:
    """Chrome's counters, and the CPU seconds its processes used (from /proc): the main threads
    of its renderers (`renderer_cpu`), all of Chromium (`chromium_cpu`). CPU time, unlike the
    counters' durations, does not grow when other processes keep the CPU busy."""
    got = {m["name"]: float(m["value"]) for m in cdp.send("Performance.getMetrics")["metrics"]}
    got["renderer_cpu"] = got["chromium_cpu"] = 0.0
    for pid in chromium:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            if b"chromium" not in cmdline:
                continue  # Playwright's driver
            renderer = b"--type=renderer" in cmdline
            got["chromium_cpu"] += process_cpu_s(f"/proc/{pid}/stat")
            if renderer:
                got["renderer_cpu"] += process_cpu_s(f"/proc/{pid}/task/{pid}/stat")
        except OSError:
            continue  # a helper process that has exited
    return got


def process_cpu_s(stat_path: str) -> float:
    """utime + stime of a /proc stat file, in seconds."""
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """The processes under `root` (not itself)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def run(opts: argparse.Namespace, workdir: str) -> list[Row]:
    from playwright.sync_api import sync_playwright

    server = ServerProcess(
        Path(workdir) / "server",
        *("--history-db", ":memory:", "--rate", "100000", "--burst", "100000"),
        prefix=["taskset", "-c", SERVER_CPU],
    ).start()
    # Chromium and its helpers, Playwright's driver and the sender inherit this.
    os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    rows: list[Row] = []
    try:
        with sync_playwright() as driver:
            args = list(CHROMIUM_ARGS)
            if opts.client_rev:
                # A document Playwright answers has no address, so Chromium takes it for a
                # public site and would refuse its WebSocket to 127.0.0.1.
                args.append("--disable-features=LocalNetworkAccessChecks")
            browser = driver.chromium.launch(
                executable_path=CHROMIUM_PATH, headless=True, args=args
            )
            page = browser.new_page(viewport={"width": 1000, "height": 680})
            if opts.client_rev:
                serve_client_from(page, client_dir(opts.client_rev, workdir))
            page.add_init_script("localStorage.setItem('wschat.name', 'watcher')")
            page.goto(f"{server.http_url}/#/{ROOM}")
            page.wait_for_selector("#status[data-state=online]")
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable", {"timeDomain": "timeTicks"})
            assert server.proc is not None
            server_side = {server.proc.pid, *descendants(server.proc.pid)}
            chromium = [pid for pid in descendants(os.getpid()) if pid not in server_side]
            sender = Sender(server.ws_url, opts.rate)
            start = time.monotonic()
            last = metrics(cdp, chromium)
            last_t = start
            header()
            try:
                while (now := time.monotonic()) - start < opts.seconds:
                    time.sleep(max(0.0, min(opts.interval, start + opts.seconds - now)))
                    asked = time.monotonic()
                    shown, items = page.evaluate(LAST_SHOWN_JS)
                    answer_ms = (time.monotonic() - asked) * 1000
                    got = metrics(cdp, chromium)
                    t = time.monotonic()
                    span_s = t - last_t
                    rows.append(
                        row(t - start, span_s, sender, (shown, items), answer_ms, last, got)
                    )
                    print(format_row(rows[-1]), flush=True)
                    last, last_t = got, t
            finally:
                sender.stop()
            browser.close()
    finally:
        server.kill()
    return rows


def row(
    t_s: float,
    span_s: float,
    sender: Sender,
    page: tuple[int, int],
    answer_ms: float,
    before: dict[str, float],
    after: dict[str, float],
) -> Row:
    per_s = {k: (after[k] - before[k]) * 1000 / span_s for k in METRICS}
    shown, items = page
    return Row(
        t_s=round(t_s, 1),
        sent=sender.sent,
        acked_id=sender.acked_id,
        shown_id=shown,
        behind=max(0, sender.acked_id - shown),
        answer_ms=round(answer_ms, 1),
        layout_ms_per_s=round(per_s["LayoutDuration"], 1),
        style_ms_per_s=round(per_s["RecalcStyleDuration"], 1),
        script_ms_per_s=round(per_s["ScriptDuration"], 1),
        task_ms_per_s=round(per_s["TaskDuration"], 1),
        layouts_per_s=round((after["LayoutCount"] - before["LayoutCount"]) / span_s, 1),
        renderer_cpu_ms_per_s=round(
            (after["renderer_cpu"] - before["renderer_cpu"]) * 1000 / span_s
        ),
        chromium_cpu_ms_per_s=round(
            (after["chromium_cpu"] - before["chromium_cpu"]) * 1000 / span_s
        ),
        items=items,
        heap_mb=round(after["JSHeapUsedSize"] / 2**20, 1),
    )


def header() -> None:
    print(
        "| t (s) | sent | behind (ids) | answer (ms) | layout (ms/s) | style (ms/s) "
        "| script (ms/s) | tasks (ms/s) | layouts/s | renderer CPU (ms/s) | Chromium CPU (ms/s) "
        "| messages in the list | JS heap (MB) |"
    )
    print("|" + " ---: |" * 13)


def format_row(r: Row) -> str:
    return (
        f"| {r.t_s:.0f} | {r.sent:,} | {r.behind:,} | {r.answer_ms:,.0f} | {r.layout_ms_per_s:.1f} "
        f"| {r.style_ms_per_s:.1f} | {r.script_ms_per_s:.1f} | {r.task_ms_per_s:.1f} "
        f"| {r.layouts_per_s:.1f} | {r.renderer_cpu_ms_per_s:.0f} | {r.chromium_cpu_ms_per_s:.0f} "
        f"| {r.items:,} | {r.heap_mb:.1f} |"
    )


def mean(rows: list[Row], field: str) -> float:
    return sum(float(getattr(r, field)) for r in rows) / len(rows) if rows else 0.0


def summary(rows: list[Row], opts: argparse.Namespace) -> str:
    """The first minute against the last (or the first and last fifth of a shorter run)."""
    span = max(1, min(len(rows) // 5, int(60 / opts.interval)))
    first, final = rows[:span], rows[-span:]
    parts = [
        f"{len(rows)} intervals of {opts.interval:g} s at {opts.rate:g} messages/s"
        f" (client: {opts.client_rev or 'this tree'})",
        f"behind at the end: {rows[-1].behind:,} ids; most behind: {max(r.behind for r in rows):,}",
    ]
    fields = ("layout_ms_per_s", "style_ms_per_s", "script_ms_per_s", "task_ms_per_s")
    for field in (*fields, "layouts_per_s", "renderer_cpu_ms_per_s", "chromium_cpu_ms_per_s"):
        parts.append(f"{field}: first {mean(first, field):.1f}, last {mean(final, field):.1f}")
    parts.append(
        f"messages in the list at the end: {rows[-1].items:,}; JS heap {rows[-1].heap_mb} MB"
    )
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="how long the sender says")
    ap.add_argument("--rate", type=float, default=100.0, help="messages a second")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between readings")
    ap.add_argument("--client-rev", default=None, help="serve the client of this commit")
    ap.add_argument("--out", default=None, help="JSON lines (default bench/results/<stamp>-…)")
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="wschat-browser-flood-") as workdir:
        rows = run(opts, workdir)
    print()
    print(summary(rows, opts))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = opts.out or os.path.join(BENCH, "results", f"{stamp}-browser_flood.jsonl")
    with open(out, "w") as f:
        f.write(json.dumps({"meta": True, "command": " ".join(sys.argv), **vars(opts)}) + "\n")
        for r in rows:
            f.write(json.dumps(asdict(r)) + "\n")
    print(f"rows written to {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
