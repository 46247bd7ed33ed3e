# ruff: noqa: RUF001  (the page uses typographic dashes, multiplication signs and µ)
"""docs/benchmarks.md, rendered from a results file alone: the full run writes it through the
same function as `bench/run.py report`, so a page can be rendered again without a rerun."""

from __future__ import annotations

import json
import statistics
from typing import Any

from .settings import Record
from .tables import summarize
from .targets import targets

# Sections of the page below this line come from benchmarks of their own (bench/*.py run by
# hand), not from the suite: writing the page again keeps them as they are.
KEPT_MARK = "<!-- Kept by hand: bench/run.py keeps what follows when it writes this page. -->"

# Written into the settings line from the runs that first recorded them; older results ran
# with the defaults of their time, which these are.
DEFAULT_ADDRS = 100
DEFAULT_GEN_SPIN_US = 200

DOC_HEAD = """# Benchmarks

Produced by `{command}` on {date}. Raw results: `{results}` (one JSON object per run,
after a first line with the settings). Regenerate with `make bench` (full) or `make bench-quick`
(smaller sizes, one run, under two minutes; it does not rewrite this file); render it again from
the raw results, without a rerun, with
`python bench/run.py report --results {results} --docs docs/benchmarks.md`.

## Machine and versions

{machine}

## How it is measured

- Every server is started fresh for every run, pinned to CPU 0 with `taskset -c 0`; the load
  generator is pinned to CPU 1. {gen_text} Neither generator uses compression or UTF-8
  validation. Each table names the generator it used. Runs of the servers are interleaved
  (run 1 of every server, then run 2, …). Each cell is the median of the runs, with the min–max
  in parentheses. Steady load gets more runs than the rest (see each table's `runs`): one run's
  p99 varies by about ±1 ms here, for every server alike.
- wschat runs with its real protocol: every client sends `join`, senders send `say`; the server
  stores every message in SQLite before broadcasting it as a `message` JSON frame. It is started as
  `twistd -n wschat --listen tcp:PORT:interface=127.0.0.1 --history-db FILE --rate 1000000
  --burst 1000000` (the per-connection rate limit is lifted for the senders{wschat_extra}).
  The peers (`bench/peers/`) broadcast every text frame they get to all their clients.
- Every message is a 140-byte text starting with its send time (CLOCK_MONOTONIC, µs, shared by
  all processes) and its sender id; every receiver computes the delivery latency on receipt, into
  a histogram with 10 µs buckets. A delivery is one message received by one client; every message
  reaches every member, the sender included. `lost` = sent × members − received after a drain.
- fan-out: each sender keeps {inflight} messages in flight (it sends the next one when one of its
  own comes back). Deliveries/s are counted over {fo_dur:g} s after {fo_warm:g} s of warm-up.
- steady: each sender sends at a fixed rate, the senders staggered; latency over {st_dur:g} s.{spin}
- connect: {conc} handshakes in progress at a time until all are in (wschat: handshake + `join`
  answered by `welcome`, {room_size} members per room, since every join is broadcast to the room);
  then the connections stay idle 2 s and the server's RSS (`VmRSS`) minus its RSS right after
  start-up, divided by the connections held, is the RSS per connection. Client source addresses
  are spread over 127.0.0.2–127.0.0.{last_addr}.
- The load generator reports its own CPU use (`getrusage` / `process.cpuUsage()` over the
  measuring window); the fan-out is also run with the clients split over two generator processes.

## Results

"""

SPIN_TEXT = """
  The C generator keeps polling its sockets for {us} µs after any activity before it sleeps:
  it takes in a segment faster than a server writes the next, so otherwise it would sleep after
  almost every one, and waking it (an IPI, a VM exit here) would be charged to the server's CPU
  on every delivery, a cost that clients on other machines never put on a server. Its polling
  counts in its CPU use."""


C_GEN_TEXT = (
    "Fan-out and steady use `bench/cgen/loadgen` (C, one epoll loop, 64 KiB reads, the\n"
    "  time stamp found with `memmem`; the Node generator's ~10 µs per incoming segment\n"
    "  would put a ~10 ms floor under the steady p99); connect uses `bench/loadgen.js`\n"
    "  (Node with the `ws` package)."
)
NODE_GEN_TEXT = "All scenarios use `bench/loadgen.js` (Node with the `ws` package)."


def load_results(path: str) -> tuple[Record, list[Record]]:
    """The settings line and the run records of a results file."""
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if not lines or not lines[0].get("meta"):
        raise ValueError(f"{path}: the first line is not the settings line")
    return lines[0], lines[1:]


def kept_sections(path: str) -> str:
    """What the page at `path` holds from KEPT_MARK on (with it), or nothing."""
    try:
        with open(path) as f:
            page = f.read()
    except FileNotFoundError:
        return ""
    at = page.find(KEPT_MARK)
    return "\n" + page[at:] if at >= 0 else ""


def in_order(records: list[Record], key: str) -> list[str]:
    """The values of `key` in the order they were first run."""
    return list(dict.fromkeys(r[key] for r in records))


def render_docs(meta: Record, records: list[Record], results_name: str) -> str:
    """The whole page for the run that `meta` (the settings line) and `records` describe."""
    s: dict[str, Any] = meta["settings"]
    servers = meta.get("servers") or in_order(records, "server")
    scenarios = meta.get("scenarios") or in_order(records, "scenario")
    quick = meta.get("quick", "--quick" in meta["command"].split())
    date = meta.get("date") or (records[0]["time"][:10] if records else "?")
    spin_us = meta.get("gen_spin_us", DEFAULT_GEN_SPIN_US)
    c_gen = meta["generator"].get("steady") == "c"
    wschat_args = meta.get("wschat_args") or []
    mach = "\n".join(f"- {k}: {val}" for k, val in meta["machine"].items())
    mach += "\n" + "\n".join(f"- {k}: {val}" for k, val in meta["versions"].items())
    head = DOC_HEAD.format(
        gen_text=C_GEN_TEXT if c_gen else NODE_GEN_TEXT,
        command=meta["command"],
        date=date,
        results=results_name,
        machine=mach,
        wschat_extra=(", and `" + " ".join(wschat_args) + "`") if wschat_args else "",
        inflight=s["fanout"]["inflight"],
        fo_dur=s["fanout"]["duration"],
        fo_warm=s["fanout"]["warmup"],
        st_dur=s["steady"]["duration"],
        conc=s["connect"]["concurrency"],
        room_size=s["connect"]["room_size"],
        last_addr=1 + meta.get("addrs", DEFAULT_ADDRS),
        spin=SPIN_TEXT.format(us=spin_us) if spin_us and c_gen else "",
    )
    before = [
        max(r["cpu_busy_before_percent"].values())
        for r in records
        if r.get("cpu_busy_before_percent")
    ]
    if before:
        head += (
            f"Background load: the busier CPU was {statistics.median(before):.0f} % busy "
            f"(median; max {max(before):.0f} %) in the 0.5 s before each run, with no "
            "benchmark process running.\n\n"
        )
        if statistics.median(before) > 15:
            head += (
                "**Warning: other processes kept the CPUs busy during this run, so these numbers "
                "are distorted (and runs taken at different moments are not comparable). Run "
                "`make bench` again on an otherwise idle machine.**\n\n"
            )
    body = summarize(records, servers, scenarios, s, meta["machine"].get("nproc"))
    if not quick:
        body += targets(records)
    page = head + body + "\n"
    if meta.get("skipped"):
        page += "\n## Not run\n\n" + "\n".join(f"- {x}" for x in meta["skipped"]) + "\n"
    notes = [
        f"- {r['scenario']} / {r['server']} run {r['run']} failed: {r.get('error')}"
        for r in records
        if not r.get("ok")
    ]
    if notes:
        page += "\n## Failed runs\n\n" + "\n".join(notes) + "\n"
    return page
