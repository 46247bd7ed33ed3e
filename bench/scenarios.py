"""The single-server scenarios: fan-out and steady (traffic), connect and idle_max, the big
rooms' reconnect storm; one run of one scenario against one fresh server is one record."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import queue
import statistics
import subprocess
import threading
import time
from typing import IO, Any

from .fmt import short
from .harness import (
    LoadGen,
    Server,
    connect_timeout,
    cpu_busy,
    cpu_times,
    log,
    pinned,
    proc_cpu_seconds,
    rss_kib,
    start_gens,
    wait_quiet,
)
from .settings import BENCH, LOADGEN_CPU, TRAFFIC_SCENARIOS, Record

STORM = os.path.join(BENCH, "storm.js")
Histogram = list[tuple[tuple[int, int], int]]


def merge_hist(results: list[Record]) -> Histogram:
    buckets: dict[tuple[int, int], int] = {}
    for r in results:
        for lo, width, n in r.get("hist", []):
            key = (lo, width)
            buckets[key] = buckets.get(key, 0) + n
    return sorted(buckets.items())


def percentile(hist: Histogram, p: float) -> float | None:
    total = sum(n for _, n in hist)
    if total == 0:
        return None
    want = total * p / 100.0
    acc = 0
    for (lo, width), n in hist:
        acc += n
        if acc >= want:
            return (lo + width) / 1000.0  # ms, bucket upper bound
    (lo, width), _ = hist[-1]
    return (lo + width) / 1000.0


def run_traffic(
    opts: argparse.Namespace,
    server: Server,
    scen: str,
    s: dict[str, Any],
    gens: int,
    tag: str,
    layout: dict[str, Any] | None = None,
) -> Record:
    """fanout / steady: connect the room, then send; returns the merged record.

    `layout` (multinode): `urls` and `cpus` of the generators, `room`, `spin_us`, and `watch`,
    {label: pid} of processes whose CPU % is measured over the same window as the server's."""
    layout = layout or {}
    mode = "fanout" if scen in ("fanout", "fanout2", "bigroom_fanout") else "steady"
    extra: dict[str, Any] = dict(warmup=s["warmup"], duration=s["duration"])
    if "room" in layout:
        extra["room"] = layout["room"]
    if mode == "fanout":
        extra["inflight"] = s["inflight"]
    else:
        extra["rate"] = s["rate"]
        extra["totalSenders"] = s["senders"]
        extra["spinUs"] = layout.get("spin_us", opts.gen_spin_us)
    watch: dict[str, int] = layout.get("watch", {})
    lgs = start_gens(
        opts,
        server,
        mode,
        s["clients"],
        gens,
        tag,
        extra,
        senders=s["senders"],
        urls=layout.get("urls"),
        cpus=layout.get("cpus"),
    )
    try:
        readies = [lg.wait_event("ready", connect_timeout(s["clients"])) for lg in lgs]
        time.sleep(0.5)  # let the last presence broadcasts drain
        for lg in lgs:
            lg.send("go")
        # server CPU over (about) the generators' measuring window
        time.sleep(s["warmup"] + 0.05)
        cpu0, t0, st0 = proc_cpu_seconds(server.pid), time.monotonic(), cpu_times()
        w0 = {k: proc_cpu_seconds(pid) for k, pid in watch.items()}
        time.sleep(max(0.1, s["duration"] - 0.1))
        cpu1, t1, st1 = proc_cpu_seconds(server.pid), time.monotonic(), cpu_times()
        w1 = {k: proc_cpu_seconds(pid) for k, pid in watch.items()}
        server_cpu = (
            (cpu1 - cpu0) / (t1 - t0) * 100 if cpu0 is not None and cpu1 is not None else None
        )
        watched_cpu = {}
        for k in watch:
            a, b = w0[k], w1[k]
            watched_cpu[k] = (
                round((b - a) / (t1 - t0) * 100, 1) if a is not None and b is not None else None
            )
        results = [lg.wait_event("result", 60) for lg in lgs]
        rss = rss_kib(server.pid)
    finally:
        for lg in lgs:
            lg.stop()
    window = statistics.mean(r["window"] for r in results)
    hist = merge_hist(results)
    connected = sum(r["connected"] for r in readies)
    sent = sum(r["sent"] for r in results)
    received = sum(r["received"] for r in results)
    rec = dict(
        clients=s["clients"],
        connected=connected,
        join_failures={k: v for r in readies for k, v in r["failures"].items()},
        deliveries_per_s=sum(r["deliveries"] for r in results) / window,
        messages_per_s=sum(r["sentInWindow"] for r in results) / window,
        latency_ms=dict(
            p50=percentile(hist, 50),
            p90=percentile(hist, 90),
            p99=percentile(hist, 99),
            max=percentile(hist, 100),
        ),
        sent=sent,
        received=received,
        lost=sent * connected - received,
        stalls=sum(r["stalls"] for r in results),
        closed=sum(r["closedEarly"] for r in results),
        close_codes=[r["closeCodes"] for r in results],
        gen_cpu_percent=[round(r["cpuPercent"], 1) for r in results],
        gen_cpu_percent_total=round(sum(r["cpuPercent"] for r in results), 1),
        gen_cpu_user_system_s=[[round(r["cpuUser"], 2), round(r["cpuSystem"], 2)] for r in results],
        gen_loop_delay_p99_ms=[round(r["loopDelayP99Ms"], 2) for r in results],
        # C generator: part of its CPU % spent polling with nothing to do (see loadgen.c)
        gen_spin_percent=[round(r["spinPercent"], 1) for r in results if "spinPercent" in r],
        # C generator: how long received data waited in the socket before it read it
        gen_lag_ms=[
            dict(p50=r["genLagP50Ms"], p99=r["genLagP99Ms"], max=r["genLagMaxMs"])
            for r in results
            if "genLagP99Ms" in r
        ],
        server_cpu_percent=round(server_cpu, 1) if server_cpu is not None else None,
        cpu_busy_percent=cpu_busy(st0, st1),
        server_rss_kib=rss,
        window_s=window,
    )
    rec["generator"] = lgs[0].generator
    if watch:
        rec["cpu_percent_by_process"] = watched_cpu
    if mode == "steady":
        rec["target_deliveries_per_s"] = s["senders"] * s["rate"] * s["clients"]
    return rec


def run_connect(
    opts: argparse.Namespace, server: Server, s: dict[str, Any], gens: int, tag: str
) -> Record:
    """connect / idle_max: open (and join) N connections, hold them, measure server RSS."""
    extra = dict(roomSize=s["room_size"], concurrency=s["concurrency"], room="idle")
    lgs: list[LoadGen] = start_gens(opts, server, "connect", s["clients"], gens, tag, extra)
    try:
        readies = [lg.wait_event("ready", connect_timeout(s["clients"])) for lg in lgs]
        time.sleep(2.0)  # idle: let the server settle (pending writes, garbage)
        rss = rss_kib(server.pid)
        for lg in lgs:
            lg.send("status")
        statuses = [lg.wait_event("status", 30) for lg in lgs]
        alive = server.proc is not None and server.proc.poll() is None
    finally:
        for lg in lgs:
            lg.stop()
    connected = sum(r["connected"] for r in readies)
    start = min(r["connectStart"] for r in readies)
    end = max(r["connectEnd"] for r in readies)
    failures: dict[str, int] = {}
    for r in readies:
        for k, v in r["failures"].items():
            failures[k] = failures.get(k, 0) + v
    held = sum(st["open"] for st in statuses)
    per_conn = None
    if rss is not None and server.baseline_kib is not None and held:
        per_conn = (rss - server.baseline_kib) / held
    return dict(
        generator=lgs[0].generator,
        clients=s["clients"],
        connected=connected,
        failed=sum(r["failed"] for r in readies),
        failures=failures,
        held=held,
        server_alive=alive,
        connect_per_s=connected / (end - start) if end > start else None,
        connect_seconds=end - start,
        gen_connect_cpu_percent=[round(r["connectCpuPercent"], 1) for r in readies],
        baseline_rss_kib=server.baseline_kib,
        rss_kib=rss,
        rss_per_conn_kib=per_conn,
        gen_errors=[st["errorKinds"] for st in statuses],
        close_codes=[st["closeCodes"] for st in statuses],
    )


def run_storm(opts: argparse.Namespace, server: Server, s: dict[str, Any], tag: str) -> Record:
    """bigroom_storm: N in one room; SIGKILL and restart; every client comes back by itself."""
    cfg = dict(
        url=server.url,
        clients=s["clients"],
        senders=s["senders"],
        messages=s["messages"],
        room="storm",
        addrs=opts.addrs,
        concurrency=s["concurrency"],
        payload=140,
    )
    errpath = os.path.join(opts.logdir, f"{tag}-storm.log")
    with open(errpath, "wb") as errf:
        proc = subprocess.Popen(
            [*pinned(LOADGEN_CPU), opts.node, STORM, json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errf,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None and proc.stdin is not None
        events: queue.Queue[Record] = queue.Queue()

        def reader(stdout: IO[str]) -> None:
            for line in stdout:
                if line.strip():
                    events.put(json.loads(line))
            events.put({"event": "eof"})

        threading.Thread(target=reader, args=(proc.stdout,), daemon=True).start()

        def wait(name: str, timeout: float) -> Record:
            ev = events.get(timeout=timeout)
            if ev.get("event") != name:
                raise RuntimeError(f"storm: expected {name}, got {ev}; see {errpath}")
            return ev

        try:
            ready = wait("ready", connect_timeout(s["clients"]) + 60)
            if not ready["complete"]:
                raise RuntimeError(f"storm: phase 1 did not reach everyone: {ready}")
            time.sleep(1.0)
            rss_before = rss_kib(server.pid)
            killed_at = server.kill_and_restart()
            restarted_at = time.monotonic()
            peak = rss_kib(server.pid) or 0
            back = None
            deadline = time.monotonic() + 300
            while back is None and time.monotonic() < deadline:
                try:
                    back = wait("back", 0.05)
                except queue.Empty:
                    peak = max(peak, rss_kib(server.pid) or 0)
            if back is None:
                raise TimeoutError("storm: not every client came back in 300 s")
            result = None
            while result is None:
                try:
                    result = wait("result", 0.05)
                except queue.Empty:
                    peak = max(peak, rss_kib(server.pid) or 0)
        finally:
            try:
                proc.stdin.write("exit\n")
                proc.stdin.flush()
            except OSError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
    return dict(
        generator="node-storm",
        clients=s["clients"],
        joined=ready["joined"],
        join_seconds=ready["joinSeconds"],
        phase1_acked=ready["acked"],
        restart_seconds=restarted_at - killed_at,
        # loadgen times are CLOCK_MONOTONIC microseconds, as time.monotonic() is
        back_seconds_from_kill=back["lastWelcomeUs"] / 1e6 - killed_at,
        back_seconds_from_first_close=back["backSeconds"],
        recovered_false=back["recoveredFalse"],
        welcomes_without_recovered=back["welcomesWithoutRecovered"],
        connect_failures=back["connectFailures"],
        attempts=back["attemptsHist"],
        acked=result["acked"],
        lost=result["lost"],
        duplicates=result["duplicates"],
        clients_with_duplicates=result["clientsWithDuplicates"],
        join_errors=result["joinErrors"],
        rss_before_kib=rss_before,
        peak_rss_kib=peak,
    )


def run_one(
    opts: argparse.Namespace,
    server_name: str,
    scen: str,
    s: dict[str, Any],
    run_idx: int,
    outf: IO[str],
) -> Record:
    """One run of `scen` against a fresh `server_name`; the record is appended to `outf`."""
    tag = f"{scen}-{server_name}-{run_idx}"
    gens = max(2, opts.gens) if scen == "fanout2" else opts.gens
    sz = s["fanout"] if scen == "fanout2" else s[scen]
    # The storm's phase 2 is said while the others reconnect: their `since` must reach back
    # over all of it.
    extra = ["--history-size", "1000"] if scen == "bigroom_storm" else []
    server = Server(server_name, opts, tag, extra)
    t0 = time.monotonic()
    rec: Record = dict(
        scenario=scen,
        server=server_name,
        run=run_idx,
        gens=gens,
        params=sz,
        time=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    rec["cpu_busy_before_percent"] = wait_quiet(opts, tag)
    try:
        server.start()
        if scen in TRAFFIC_SCENARIOS:
            rec.update(run_traffic(opts, server, scen, sz, gens, tag))
        elif scen == "bigroom_storm":
            rec.update(run_storm(opts, server, sz, tag))
        else:
            rec.update(run_connect(opts, server, sz, gens, tag))
        rec["ok"] = True
    except Exception as e:  # keep going: one failed run must not lose the others
        rec["ok"] = False
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        if server.proc is not None:
            rec["server_exit"] = server.proc.poll()
        server.stop()
    rec["elapsed_s"] = round(time.monotonic() - t0, 2)
    outf.write(json.dumps(rec) + "\n")
    outf.flush()
    log(f"  {tag}: {short(rec)}")
    return rec
