#!/usr/bin/env python3
# ruff: noqa: RUF001  (the tables use typographic multiplication signs and dashes)
"""wschat benchmark orchestrator.

Runs wschat and the peer servers of bench/peers/ through the same scenarios, with the server
pinned to CPU 0 and the load generator pinned to CPU 1 (bench/cgen/loadgen, in C, for fanout and
steady when it is built or can be built with `cc`; else, and for connect / idle_max, the Node
generator bench/loadgen.js; see --gen), a fresh server per run, several runs per scenario.
Writes raw JSON lines to bench/results/, prints a markdown table, and with --docs writes
docs/benchmarks.md. The `multinode` scenario (only when named) runs wschat against itself: one
node against two on a redis-server of its own, and the cost of a `say` through Redis.

    python bench/run.py --quick                     # < 2 minutes
    python bench/run.py --docs docs/benchmarks.md   # the full suite
    python bench/run.py --servers wschat,node --scenarios fanout --runs 5
    python bench/run.py --servers wschat --scenarios multinode [--quick]

Only the standard library is used here; the peers need a Python with autobahn and websockets
(--python, by default the interpreter next to --twistd) and Node with `npm ci` done in bench/.
"""

import argparse
import datetime
import json
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
PEERS = os.path.join(BENCH, "peers")
LOADGEN = os.path.join(BENCH, "loadgen.js")
STORM = os.path.join(BENCH, "storm.js")
CGEN_SRC = os.path.join(BENCH, "cgen", "loadgen.c")
CGEN = os.path.join(BENCH, "cgen", "loadgen")
# modes the C generator implements; connect (and idle_max) always use loadgen.js
CGEN_MODES = ("fanout", "steady")
GEN_LABELS = {"c": "C (`bench/cgen/loadgen`)", "node": "Node (`bench/loadgen.js`, `ws`)"}

SERVER_CPU = "0"
LOADGEN_CPU = "1"
# "Unpinned": every CPU. Explicit, because this process pins itself (and so its children) to
# LOADGEN_CPU.
ALL_CPUS = f"0-{(os.cpu_count() or 1) - 1}"
ALL_SERVERS = ["wschat", "node", "autobahn", "websockets", "null"]
# "null" (bench/tools/null_server.js) is no peer: it frames each message once and writes once per
# client per event-loop turn, to show what the load generator can take (fan-out) and the latency
# floor of the measurement (steady). Not run in the connect scenarios.
NULL_SCENARIOS = ("fanout", "fanout2", "steady")
# One room of 10,000 and more (issue: big rooms). bigroom_join_<N> scenarios are added by
# --bigroom-sizes for the sweep that shows the work per join not growing with the room.
BIGROOM_SCENARIOS = ["bigroom_join", "bigroom_join_max", "bigroom_fanout", "bigroom_storm"]
ALL_SCENARIOS = [
    "fanout",
    "fanout2",
    "steady",
    "connect",
    "idle_max",
    *BIGROOM_SCENARIOS,
    "multinode",
]
QUICK_SKIPS = ("fanout2", "idle_max", "bigroom_join_max", "bigroom_storm")
# Run only when named in --scenarios: multinode needs a redis-server and compares wschat with
# itself (one node against two on one Redis), not with the peers.
OPT_IN_SCENARIOS = ("multinode",)
# Only wschat has rooms, history and `since`; the storm needs all three.
WSCHAT_ONLY_SCENARIOS = ("bigroom_storm", "multinode")
# The peers have no rooms: their figures for a big-room fan-out are their fan-out to that many.
BIGROOM_PEERS = ("wschat", "node")
SERVER_LABELS = {
    "wschat": "wschat",
    "node": "Node.js ws (classic chat server)",
    "autobahn": "Autobahn naive broadcast",
    "websockets": "Python websockets + broadcast()",
    "null": "(null server: what the load generator can measure)",
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- settings


def settings(quick):
    """Scenario sizes. The full values are the ones the benchmark issue asks for."""
    if quick:
        return {
            "runs": 1,
            "runs_by_scenario": {},
            "fanout": dict(clients=500, senders=10, inflight=8, warmup=1.0, duration=2.0),
            "steady": dict(clients=500, senders=10, rate=5.0, warmup=1.0, duration=2.0),
            "connect": dict(clients=1000, room_size=100, concurrency=50),
            "idle_max": dict(clients=2000, room_size=100, concurrency=50),
            "bigroom_join": dict(clients=2000, room_size=2000, concurrency=50),
            "bigroom_join_max": dict(clients=4000, room_size=4000, concurrency=50),
            "bigroom_fanout": dict(clients=2000, senders=10, inflight=8, warmup=1.0, duration=2.0),
            "bigroom_storm": dict(clients=1000, senders=10, messages=20, concurrency=50),
            "multinode": dict(
                fanout=dict(clients=400, senders=10, inflight=8, warmup=1.0, duration=3.0),
                steady=dict(clients=400, senders=10, rate=5.0, warmup=1.0, duration=4.0),
                say=dict(says=500, serial_max_s=10.0, senders=32, warmup=1.0, duration=3.0),
            ),
        }
    return {
        "runs": 3,
        # One steady run's p99 varies by about ±1 ms on these VMs, for every server alike:
        # more than the differences it is there to show. Five runs steady the median.
        "runs_by_scenario": {"steady": 5},
        "fanout": dict(clients=1000, senders=10, inflight=8, warmup=2.0, duration=8.0),
        "steady": dict(clients=1000, senders=10, rate=5.0, warmup=2.0, duration=10.0),
        "connect": dict(clients=10000, room_size=100, concurrency=50),
        "idle_max": dict(clients=19000, room_size=100, concurrency=50),
        "bigroom_join": dict(clients=10000, room_size=10000, concurrency=50),
        "bigroom_join_max": dict(clients=19000, room_size=19000, concurrency=50),
        "bigroom_fanout": dict(clients=10000, senders=10, inflight=8, warmup=2.0, duration=8.0),
        "bigroom_storm": dict(clients=10000, senders=10, messages=20, concurrency=50),
        # Each phase about 10 s; one run of all 14 phases takes about 3 minutes here.
        "multinode": dict(
            fanout=dict(clients=1000, senders=10, inflight=8, warmup=2.0, duration=8.0),
            steady=dict(clients=1000, senders=10, rate=5.0, warmup=2.0, duration=10.0),
            say=dict(says=2000, serial_max_s=20.0, senders=32, warmup=1.0, duration=8.0),
        ),
    }


# --------------------------------------------------------------------------- processes


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tick
    except (OSError, IndexError, ValueError):
        return None


def cpu_times():
    """Per-CPU jiffies from /proc/stat: {cpu: (busy, total)}."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    parts = line.split()
                    vals = [int(x) for x in parts[1:]]
                    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
                    out[parts[0][3:]] = (sum(vals) - idle, sum(vals))
    except OSError:
        pass
    return out


def cpu_busy(a, b):
    """Busy % per CPU between two cpu_times() samples (user, system and softirq alike)."""
    res = {}
    for cpu in a:
        if cpu in b and b[cpu][1] > a[cpu][1]:
            res[cpu] = round(100.0 * (b[cpu][0] - a[cpu][0]) / (b[cpu][1] - a[cpu][1]), 1)
    return res


def stop_process(proc, timeout=3.0):
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Server:
    def __init__(self, name, opts, logdir, tag, extra_args=(), cpu=SERVER_CPU):
        self.name = name
        self.opts = opts
        self.extra_args = list(extra_args)
        self.cpu = cpu
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix=f"wschat-bench-{name}-")
        self.logpath = os.path.join(logdir, f"{tag}-server.log")
        self.proc = None
        self.baseline_kib = None
        if name == "wschat":
            self.url = f"ws://127.0.0.1:{self.port}/ws"
            self.proto = "wschat"
        else:
            self.url = f"ws://127.0.0.1:{self.port}/"
            self.proto = "raw"

    def argv(self):
        o = self.opts
        if self.name == "node":
            cmd = [o.node, os.path.join(PEERS, "node_ws.js"), str(self.port)]
        elif self.name == "null":
            cmd = [o.node, os.path.join(BENCH, "tools", "null_server.js"), str(self.port)]
        elif self.name == "autobahn":
            cmd = [o.python, os.path.join(PEERS, "autobahn_naive.py"), str(self.port)]
        elif self.name == "websockets":
            cmd = [o.python, os.path.join(PEERS, "websockets_broadcast.py"), str(self.port)]
        elif self.name == "wschat":
            cmd = [
                o.twistd,
                "-n",
                "--pidfile=",
                "wschat",
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1",
                "--history-db",
                os.path.join(self.tmp, "history.db"),
                "--rate",
                "1000000",
                "--burst",
                "1000000",
                *o.wschat_extra,
                *self.extra_args,
            ]
        else:
            raise ValueError(self.name)
        return ["taskset", "-c", self.cpu, *cmd]

    def start(self):
        self.logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=self.tmp,
            stdin=subprocess.DEVNULL,
            stdout=self.logf,
            stderr=subprocess.STDOUT,
        )
        if not wait_port(self.port, self.proc):
            self.stop()
            raise RuntimeError(f"{self.name} did not start; see {self.logpath}")
        time.sleep(0.5)  # let start-up allocations settle before the baseline
        self.baseline_kib = rss_kib(self.proc.pid)

    def kill_and_restart(self):
        """SIGKILL, then start again at once on the same port and database (as systemd's
        Restart=always would); returns the monotonic time of the kill."""
        killed_at = time.monotonic()
        self.proc.kill()
        self.proc.wait()
        self.logf.close()
        self.start()
        return killed_at

    def stop(self):
        stop_process(self.proc)
        self.logf.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def build_cgen():
    """Builds bench/cgen/loadgen if it is missing or older than its source; True if usable."""
    fresh = os.path.exists(CGEN) and (
        not os.path.exists(CGEN_SRC) or os.path.getmtime(CGEN) >= os.path.getmtime(CGEN_SRC)
    )
    if fresh:
        return True
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc or not os.path.exists(CGEN_SRC):
        return False
    log(f"bench: building {os.path.relpath(CGEN, ROOT)}")
    r = subprocess.run([cc, "-O2", "-o", CGEN, CGEN_SRC], capture_output=True, text=True)
    if r.returncode != 0:
        log(r.stderr)
        return False
    return True


def generator_for(opts, mode):
    """Returns "c" or "node": the load generator used for this mode."""
    if mode in CGEN_MODES and opts.gen in ("auto", "c") and opts.cgen_ok:
        return "c"
    return "node"


class LoadGen:
    def __init__(self, opts, cfg, logdir, tag, cpu=LOADGEN_CPU):
        self.cfg = cfg
        self.generator = generator_for(opts, cfg["mode"])
        self.errpath = os.path.join(logdir, f"{tag}-gen{cfg['gen']}.log")
        self.errf = open(self.errpath, "wb")
        if self.generator == "c":
            argv = [CGEN, json.dumps(cfg)]
        else:
            argv = [opts.node, LOADGEN, json.dumps(cfg)]
        self.proc = subprocess.Popen(
            ["taskset", "-c", cpu, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errf,
            text=True,
            bufsize=1,
        )
        self.q = queue.Queue()
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self.q.put(json.loads(line))
            except ValueError:
                self.q.put({"event": "junk", "line": line})
        self.q.put({"event": "eof"})

    def send(self, cmd):
        try:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def wait_event(self, name, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"load generator {self.cfg['gen']}: no '{name}' in {timeout:.0f} s"
                )
            try:
                ev = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if ev.get("event") == name:
                return ev
            if ev.get("event") in ("fatal", "eof"):
                raise RuntimeError(
                    f"load generator {self.cfg['gen']} failed: {ev}; see {self.errpath}"
                )

    def stop(self):
        self.send("exit")
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.errf.close()


# --------------------------------------------------------------------------- histograms


def merge_hist(results):
    buckets = {}
    for r in results:
        for lo, width, n in r.get("hist", []):
            key = (lo, width)
            buckets[key] = buckets.get(key, 0) + n
    return sorted(buckets.items())


def percentile(hist, p):
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


# --------------------------------------------------------------------------- scenarios


def split(n, parts):
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def start_gens(
    opts, server, mode, total_clients, gens, tag, extra, senders=0, urls=None, cpus=None
):
    """One generator per part of the clients; `urls` and `cpus` (multinode) give each
    generator its own server and CPU list."""
    counts = split(total_clients, gens)
    sender_counts = split(senders, gens)
    out, offset, sid = [], 0, 0
    for g in range(gens):
        cfg = dict(
            mode=mode,
            proto=server.proto,
            url=urls[g] if urls else server.url,
            gen=g,
            clients=counts[g],
            offset=offset,
            senders=list(range(sid, sid + sender_counts[g])),
            payload=140,
            room="bench",
            addrs=opts.addrs,
            concurrency=50,
        )
        cfg.update(extra)
        if mode == "connect":
            cfg["concurrency"] = max(1, extra.get("concurrency", 50) // gens)
        cpu = cpus[g] if cpus else LOADGEN_CPU
        out.append(LoadGen(opts, cfg, opts.logdir, f"{tag}", cpu=cpu))
        offset += counts[g]
        sid += sender_counts[g]
    return out


def connect_timeout(n):
    return 60 + n / 50.0


def run_traffic(opts, server, scen, s, gens, tag, layout=None):
    """fanout / steady: connect the room, then send; returns the merged record.

    `layout` (multinode): `urls` and `cpus` of the generators, `room`, `spin_us`, and `watch`,
    {label: pid} of processes whose CPU % is measured over the same window as the server's."""
    layout = layout or {}
    mode = "fanout" if scen in ("fanout", "fanout2", "bigroom_fanout") else "steady"
    extra = dict(warmup=s["warmup"], duration=s["duration"])
    if "room" in layout:
        extra["room"] = layout["room"]
    if mode == "fanout":
        extra["inflight"] = s["inflight"]
    else:
        extra["rate"] = s["rate"]
        extra["totalSenders"] = s["senders"]
        extra["spinUs"] = layout.get("spin_us", opts.gen_spin_us)
    watch = layout.get("watch", {})
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
        cpu0, t0, st0 = proc_cpu_seconds(server.proc.pid), time.monotonic(), cpu_times()
        w0 = {k: proc_cpu_seconds(pid) for k, pid in watch.items()}
        time.sleep(max(0.1, s["duration"] - 0.1))
        cpu1, t1, st1 = proc_cpu_seconds(server.proc.pid), time.monotonic(), cpu_times()
        w1 = {k: proc_cpu_seconds(pid) for k, pid in watch.items()}
        server_cpu = (
            (cpu1 - cpu0) / (t1 - t0) * 100 if cpu0 is not None and cpu1 is not None else None
        )
        watched_cpu = {
            k: round((w1[k] - w0[k]) / (t1 - t0) * 100, 1)
            if w0[k] is not None and w1[k] is not None
            else None
            for k in watch
        }
        results = [lg.wait_event("result", 60) for lg in lgs]
        rss = rss_kib(server.proc.pid)
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


def run_connect(opts, server, scen, s, gens, tag):
    """connect / idle_max: open (and join) N connections, hold them, measure server RSS."""
    extra = dict(roomSize=s["room_size"], concurrency=s["concurrency"], room="idle")
    lgs = start_gens(opts, server, "connect", s["clients"], gens, tag, extra)
    try:
        readies = [lg.wait_event("ready", connect_timeout(s["clients"])) for lg in lgs]
        time.sleep(2.0)  # idle: let the server settle (pending writes, garbage)
        rss = rss_kib(server.proc.pid)
        for lg in lgs:
            lg.send("status")
        statuses = [lg.wait_event("status", 30) for lg in lgs]
        alive = server.proc.poll() is None
    finally:
        for lg in lgs:
            lg.stop()
    connected = sum(r["connected"] for r in readies)
    start = min(r["connectStart"] for r in readies)
    end = max(r["connectEnd"] for r in readies)
    failures = {}
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


def run_storm(opts, server, s, tag):
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
            ["taskset", "-c", LOADGEN_CPU, opts.node, STORM, json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errf,
            text=True,
            bufsize=1,
        )
        events = queue.Queue()

        def reader():
            for line in proc.stdout:
                if line.strip():
                    events.put(json.loads(line))
            events.put({"event": "eof"})

        threading.Thread(target=reader, daemon=True).start()

        def wait(name, timeout):
            ev = events.get(timeout=timeout)
            if ev.get("event") != name:
                raise RuntimeError(f"storm: expected {name}, got {ev}; see {errpath}")
            return ev

        try:
            ready = wait("ready", connect_timeout(s["clients"]) + 60)
            if not ready["complete"]:
                raise RuntimeError(f"storm: phase 1 did not reach everyone: {ready}")
            time.sleep(1.0)
            rss_before = rss_kib(server.proc.pid)
            killed_at = server.kill_and_restart()
            restarted_at = time.monotonic()
            peak = rss_kib(server.proc.pid) or 0
            back = None
            deadline = time.monotonic() + 300
            while back is None and time.monotonic() < deadline:
                try:
                    back = wait("back", 0.05)
                except queue.Empty:
                    peak = max(peak, rss_kib(server.proc.pid) or 0)
            if back is None:
                raise TimeoutError("storm: not every client came back in 300 s")
            result = None
            while result is None:
                try:
                    result = wait("result", 0.05)
                except queue.Empty:
                    peak = max(peak, rss_kib(server.proc.pid) or 0)
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


# --------------------------------------------------------------------------- multinode

SAY_CLIENT = os.path.join(BENCH, "say_client.py")
# One node against two on one Redis (run without persistence): the fan-out and steady figures.
MULTINODE_SETUPS = [
    dict(key="1node-sqlite", label="1 node, SQLite (no Redis)", nodes=1, redis=False),
    dict(key="1node-redis", label="1 node + Redis", nodes=1, redis=True),
    dict(key="2nodes-redis", label="2 nodes + Redis", nodes=2, redis=True),
]
# What the ack of a `say` waits for. SQLite's commit (WAL, synchronous=NORMAL) does not fsync.
SAY_SETUPS = [
    dict(key="sqlite", label="SQLite (no Redis)", persistence=None),
    dict(key="redis-none", label="Redis, no persistence", persistence="none"),
    dict(key="redis-everysec", label="Redis, `appendfsync everysec`", persistence="everysec"),
    dict(key="redis-always", label="Redis, `appendfsync always`", persistence="always"),
]
REDIS_PERSISTENCE_ARGS = {
    "none": ["--appendonly", "no"],
    "everysec": ["--appendonly", "yes", "--appendfsync", "everysec"],
    "always": ["--appendonly", "yes", "--appendfsync", "always"],
}
REDIS_PERSISTENCE_LABELS = {
    None: "– (SQLite)",
    "none": "none (`--save '' --appendonly no`)",
    "everysec": "`appendonly yes`, `appendfsync everysec`",
    "always": "`appendonly yes`, `appendfsync always`",
}


def multinode_layout(nodes):
    """CPU lists (taskset -c) of each process. With 2 cores there is none to spare: one node
    gets CPU 0 and its generator CPU 1, as in the other scenarios; two nodes get a core each,
    and then the generators and Redis can only share the cores with them, so they are left to
    the scheduler (all CPUs) rather than put on one node's core."""
    if nodes == 1:
        return dict(nodes=[SERVER_CPU], gens=[LOADGEN_CPU], redis=ALL_CPUS)
    return dict(nodes=[SERVER_CPU, LOADGEN_CPU], gens=[ALL_CPUS, ALL_CPUS], redis=ALL_CPUS)


class Redis:
    """A redis-server of the benchmark's own: a free port, a fresh directory (its AOF on the
    same disk as the SQLite history of the other runs), stopped and removed at the end."""

    def __init__(self, opts, tag, persistence, cpu=ALL_CPUS):
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="wschat-bench-redis-")
        self.logpath = os.path.join(opts.logdir, f"{tag}-redis.log")
        self.persistence = persistence
        self.cpu = cpu
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.argv = [
            "taskset",
            "-c",
            cpu,
            opts.redis_server,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.tmp,
            "--save",
            "",
            *REDIS_PERSISTENCE_ARGS[persistence],
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
        ]
        self.proc = None
        self.logf = None

    def start(self):
        self.logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen(
            self.argv, cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf
        )
        if not wait_port(self.port, self.proc):
            self.stop()
            raise RuntimeError(f"redis-server did not start; see {self.logpath}")

    def stop(self):
        stop_process(self.proc)
        if self.logf:
            self.logf.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_redis_up(node, timeout=15.0):
    """A node listens before its Redis link is up; its /healthz says when it is."""
    url = f"http://127.0.0.1:{node.port}/healthz"
    deadline = time.monotonic() + timeout
    last = None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=2) as r:
                last = json.loads(r.read())
        except (OSError, ValueError) as e:
            last = str(e)
        if isinstance(last, dict) and last.get("redis") == "up":
            return
        time.sleep(0.1)
    raise RuntimeError(f"node on port {node.port}: Redis not up in {timeout:.0f} s ({last})")


def log_kind(line):
    """A log line without its time stamp, with Redis URLs and numbers made alike, so that the
    same event logged in many phases is listed once."""
    text = line.strip().split(" ", 1)[-1][:300]
    text = re.sub(r"redis(s)?://\S+", "redis://…", text)
    return re.sub(r"\d+", "N", text)


def log_problems(paths):
    """Error and warning lines (and tracebacks) of the nodes' logs, those before the stop
    (SIGTERM) apart from those during it: lost messages or a dropped subscription show there.
    `kinds` counts them by log_kind (prefixed "stop|" or "run|"); `sample` keeps the first."""
    out = dict(before_stop=0, at_stop=0, kinds={}, sample=[])
    for path in paths:
        stopping = False
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    if "Received SIGTERM" in line:
                        stopping = True
                    if not any(k in line for k in ("#error]", "#critical]", "#warn]", "Traceback")):
                        continue
                    out["at_stop" if stopping else "before_stop"] += 1
                    key = ("stop|" if stopping else "run|") + log_kind(line)
                    out["kinds"][key] = out["kinds"].get(key, 0) + 1
                    if len(out["sample"]) < 5:
                        out["sample"].append(f"{os.path.basename(path)}: {line.strip()[:300]}")
        except OSError:
            pass
    return out


def start_nodes(opts, tag, count, redis, cpus):
    """`count` wschat nodes n1, n2, … (on `redis` when given); returns those that started."""
    nodes = []
    try:
        for i in range(count):
            name = f"n{i + 1}"
            args = ["--redis", redis.url, "--node-name", name] if redis else []
            node = Server("wschat", opts, opts.logdir, f"{tag}-{name}", args, cpu=cpus[i])
            node.node_name = name
            node.start()
            nodes.append(node)
            if redis:
                wait_redis_up(node)
    except Exception:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes):
    exits = {}
    for node in nodes:
        node.stop()
        exits[node.node_name] = node.proc.poll() if node.proc else None
    return exits


def multinode_rec(run_idx, part, setup, nodes, persistence, params, layout):
    return dict(
        scenario="multinode",
        server="wschat",
        run=run_idx,
        part=part,
        setup=setup["key"],
        label=setup["label"],
        nodes=nodes,
        redis_persistence=persistence,
        params=params,
        pinning=layout,
        time=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


def multinode_traffic(opts, sz, part, setup, redis, run_idx):
    """fanout or steady against 1 or 2 fresh nodes; with 2, one generator per node with half of
    the clients and senders each, all in ONE room: every message crosses Redis pub/sub."""
    tag = f"multinode-{run_idx}-{part}-{setup['key']}"
    lay = multinode_layout(setup["nodes"])
    persistence = "none" if setup["redis"] else None
    rec = multinode_rec(run_idx, part, setup, setup["nodes"], persistence, sz, lay)
    rec["cpu_busy_before_percent"] = wait_quiet(opts, tag)
    t0 = time.monotonic()
    nodes = []
    try:
        if not setup["redis"]:
            redis = None
        elif redis is None:
            raise RuntimeError("redis-server did not start")
        nodes = start_nodes(opts, tag, setup["nodes"], redis, lay["nodes"])
        watch = {n.node_name: n.proc.pid for n in nodes}
        if redis:
            watch["redis"] = redis.proc.pid
        layout = dict(
            urls=[n.url for n in nodes],
            cpus=lay["gens"],
            # a fresh room per run: a room that Redis kept would send its history on every join
            room=f"mn-{run_idx}-{part}-{setup['key']}",
            # the C generator's spinning would take CPU from a node it shares a core with
            spin_us=0,
            watch=watch,
        )
        rec.update(run_traffic(opts, nodes[0], part, sz, len(nodes), tag, layout))
        rec["ok"] = True
    except Exception as e:  # keep going: one failed phase must not lose the others
        rec["ok"] = False
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        rec["node_exit"] = stop_nodes(nodes)
        rec["log_problems"] = log_problems([n.logpath for n in nodes])
    rec["elapsed_s"] = round(time.monotonic() - t0, 2)
    return rec


def run_say_client(opts, node, cfg, tag):
    errpath = os.path.join(opts.logdir, f"{tag}-say.log")
    timeout = cfg.get("maxSeconds", 60) + 60
    with open(errpath, "wb") as errf:
        r = subprocess.run(
            ["taskset", "-c", LOADGEN_CPU, sys.executable, SAY_CLIENT, json.dumps(cfg)],
            stdout=subprocess.PIPE,
            stderr=errf,
            text=True,
            timeout=timeout,
        )
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError(f"say client: no result (exit {r.returncode}); see {errpath}")
    res = json.loads(lines[-1])
    if res.get("event") != "result":
        raise RuntimeError(f"say client failed: {res.get('error')}; see {errpath}")
    return res


def multinode_say(opts, sz, setup, run_idx):
    """The ack latency of `say` on one node: one sender one say at a time, then `senders`
    senders at once (each in its own room, one say at a time), which shows how the store
    batches (Redis pipelines the scripts and fsyncs once per event-loop turn)."""
    tag = f"multinode-{run_idx}-say-{setup['key']}"
    lay = dict(nodes=[SERVER_CPU], client=LOADGEN_CPU, redis=ALL_CPUS)
    parts = [
        ("say_serial", dict(senders=1, says=sz["says"], maxSeconds=sz["serial_max_s"])),
        (
            "say_concurrent",
            dict(
                senders=sz["senders"],
                warmup=sz["warmup"],
                duration=sz["duration"],
                maxSeconds=sz["warmup"] + sz["duration"] + 30,
            ),
        ),
    ]
    busy = wait_quiet(opts, tag)
    redis = Redis(opts, tag, setup["persistence"]) if setup["persistence"] else None
    nodes, recs = [], []
    t0 = time.monotonic()
    try:
        if redis:
            redis.start()
        nodes = start_nodes(opts, tag, 1, redis, lay["nodes"])
        watch = {"n1": nodes[0].proc.pid}
        if redis:
            watch["redis"] = redis.proc.pid
        for part, cfg in parts:
            rec = multinode_rec(run_idx, part, setup, 1, setup["persistence"], cfg, lay)
            rec["cpu_busy_before_percent"] = busy
            try:
                cfg = dict(
                    cfg, url=nodes[0].url, room=f"{part}-{run_idx}", payload=140, watch=watch
                )
                res = run_say_client(opts, nodes[0], cfg, f"{tag}-{part}")
                res.pop("event", None)
                rec.update(res)
                rec["ok"] = True
            except Exception as e:
                rec["ok"] = False
                rec["error"] = f"{type(e).__name__}: {e}"
            recs.append(rec)
    except Exception as e:
        for part, cfg in parts[len(recs) :]:
            rec = multinode_rec(run_idx, part, setup, 1, setup["persistence"], cfg, lay)
            rec.update(ok=False, error=f"{type(e).__name__}: {e}", cpu_busy_before_percent=busy)
            recs.append(rec)
    finally:
        exits = stop_nodes(nodes)
        problems = log_problems([n.logpath for n in nodes])
        if redis:
            redis.stop()
    for rec in recs:
        rec["node_exit"] = exits
        rec["log_problems"] = problems
        rec["elapsed_s"] = round(time.monotonic() - t0, 2)
    return recs


def run_multinode(opts, s, run_idx, outf):
    """The whole multinode scenario in one run: 1 node (SQLite, then Redis) against 2 nodes on
    one Redis (fan-out and steady, one room), then the cost of a say by persistence."""
    m = s["multinode"]
    records = []

    try:
        rev = subprocess.run(
            ["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        rev = None

    def emit(rec):
        rec["wschat_git"] = rev
        rec["redis_version"] = opts.redis_version
        rel = os.path.relpath(opts.logdir, ROOT)
        rec["logdir"] = opts.logdir if rel.startswith("..") else rel
        outf.write(json.dumps(rec) + "\n")
        outf.flush()
        log(f"  multinode-{rec['part']}-{rec['setup']}-{run_idx}: {short(rec)}")
        records.append(rec)

    # One Redis without persistence for the fan-out part; every phase gets fresh nodes and room.
    redis = Redis(opts, f"multinode-{run_idx}-traffic", "none")
    try:
        try:
            redis.start()
        except Exception as e:
            log(f"  multinode: {e}")
            redis = None
        for setup in MULTINODE_SETUPS:
            for part in ("fanout", "steady"):
                emit(multinode_traffic(opts, m[part], part, setup, redis, run_idx))
    finally:
        if redis:
            redis.stop()
    for setup in SAY_SETUPS:
        for rec in multinode_say(opts, m["say"], setup, run_idx):
            emit(rec)
    return records


def redis_version(path):
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def wait_quiet(opts, tag):
    """Waits (up to --wait-idle seconds) for the other processes on the machine to quieten
    down; returns how busy each CPU was in the last 0.5 s, and warns when it stayed busy."""
    deadline = time.monotonic() + opts.wait_idle
    while True:
        before = cpu_times()
        time.sleep(0.5)
        busy = cpu_busy(before, cpu_times())
        if max(busy.values(), default=0) <= 15 or time.monotonic() > deadline:
            break
    if max(busy.values(), default=0) > 15:
        log(
            f"  warning: the machine was busy before {tag}: {busy} % "
            "(other processes share the CPUs; numbers will be noisy)"
        )
    return busy


def run_one(opts, server_name, scen, s, run_idx, outf):
    tag = f"{scen}-{server_name}-{run_idx}"
    gens = max(2, opts.gens) if scen == "fanout2" else opts.gens
    sz = s["fanout"] if scen == "fanout2" else s[scen]
    # The storm's phase 2 is said while the others reconnect: their `since` must reach back
    # over all of it.
    extra = ["--history-size", "1000"] if scen == "bigroom_storm" else []
    server = Server(server_name, opts, opts.logdir, tag, extra)
    t0 = time.monotonic()
    rec = dict(
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
        if scen in ("fanout", "fanout2", "steady", "bigroom_fanout"):
            rec.update(run_traffic(opts, server, scen, sz, gens, tag))
        elif scen == "bigroom_storm":
            rec.update(run_storm(opts, server, sz, tag))
        else:
            rec.update(run_connect(opts, server, scen, sz, gens, tag))
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


def short(rec):
    if not rec.get("ok"):
        return "FAILED " + rec.get("error", "")
    if rec["scenario"] == "multinode":
        probs = rec.get("log_problems", {}).get("before_stop")
        tail = f" CPU % {rec.get('cpu_percent_by_process', rec.get('cpu_percent'))}"
        tail += f" log errors/warnings {probs} ({rec['elapsed_s']} s)"
        if rec["part"].startswith("say"):
            lat = rec["ack_ms"]
            return (
                f"{rec['acks']} acks, {fmt_num(rec['says_per_s'])} says/s, ack p50 "
                f"{fmt_ms(lat['p50'])} p99 {fmt_ms(lat['p99'])} ms, errors {rec['errors']}, "
                f"messages missing {rec['messages_missing']}" + tail
            )
        lat = rec["latency_ms"]
        return (
            f"{rec['deliveries_per_s']:,.0f} deliveries/s p50 {fmt_ms(lat['p50'])} "
            f"p99 {fmt_ms(lat['p99'])} ms lost {rec['lost']}" + tail
        )
    if rec["scenario"] == "bigroom_storm":
        return (
            f"{rec['clients']} back {rec['back_seconds_from_kill']:.1f} s after the kill, "
            f"lost {rec['lost']}, duplicates {rec['duplicates']}, recovered:false "
            f"{rec['recovered_false']}, peak RSS {rec['peak_rss_kib'] / 1024:.0f} MiB "
            f"({rec['elapsed_s']} s)"
        )
    if "deliveries_per_s" in rec:
        lat = rec["latency_ms"]
        return (
            f"[{rec.get('generator', 'node')} gen] "
            f"{rec['deliveries_per_s']:,.0f} deliveries/s p50 {fmt_ms(lat['p50'])} "
            f"p99 {fmt_ms(lat['p99'])} ms lost {rec['lost']} gen CPU {rec['gen_cpu_percent']} % "
            f"server CPU {rec['server_cpu_percent']} % ({rec['elapsed_s']} s)"
            + "".join(
                f" gen lag p50/p99 {g['p50']:.2f}/{g['p99']:.2f} ms"
                for g in rec.get("gen_lag_ms", [])
            )
        )
    return (
        f"{rec['held']}/{rec['clients']} held, {fmt_num(rec['connect_per_s'])} conn/s, "
        f"{fmt_num(rec['rss_per_conn_kib'], 2)} KiB/conn ({rec['elapsed_s']} s)"
    )


# --------------------------------------------------------------------------- reporting


def fmt_num(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def fmt_ms(v):
    if v is None:
        return "–"
    return f"{v:.2f}" if v < 100 else f"{v:,.0f}"


def med_range(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med)
    return f"{fmt(med)} ({fmt(min(values))}–{fmt(max(values))})"


def mib(v):
    return f"{v:.0f}"


def busy_cell(rs):
    c0 = [r.get("cpu_busy_percent", {}).get(SERVER_CPU) for r in rs]
    c1 = [r.get("cpu_busy_percent", {}).get(LOADGEN_CPU) for r in rs]
    c0 = [v for v in c0 if v is not None]
    c1 = [v for v in c1 if v is not None]
    if not c0 or not c1:
        return "–"
    return f"{statistics.median(c0):.0f} / {statistics.median(c1):.0f}"


def summarize(records, servers, scenarios, s):
    by = {}
    for r in records:
        by.setdefault((r["scenario"], r["server"]), []).append(r)

    def ok(scen, srv):
        return [r for r in by.get((scen, srv), []) if r.get("ok")]

    def failed(scen, srv):
        return len(by.get((scen, srv), [])) - len(ok(scen, srv))

    def runs_cell(scen, srv):
        n_ok, n_bad = len(ok(scen, srv)), failed(scen, srv)
        return f"{n_ok}" + (f" (+{n_bad} failed)" if n_bad else "")

    def node_median(scen, key):
        rs = ok(scen, "node")
        vals = [r[key] for r in rs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def gen_note(*scens):
        gens = sorted(
            {r.get("generator", "node") for sc in scens for srv in servers for r in ok(sc, srv)}
        )
        if not gens:
            return []
        return ["Load generator: " + ", ".join(GEN_LABELS.get(g, g) for g in gens) + ".", ""]

    lines = []
    k0 = lambda v: fmt_num(v)  # noqa: E731
    pct = lambda v: f"{v:.0f}"  # noqa: E731
    if "fanout" in scenarios:
        f = s["fanout"]
        node_med = node_median("fanout", "deliveries_per_s")
        lines += [
            f"### Fan-out: {f['clients']:,} clients in one room, {f['senders']} senders × "
            f"{f['inflight']} messages in flight, 140-byte text",
            "",
            *gen_note("fanout"),
            "| server | runs | deliveries/s | × Node ws | latency p50 ms | latency p99 ms | lost | "
            "server CPU % | load-gen CPU % | CPU 0 / CPU 1 busy % |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for srv in servers:
            rs = ok("fanout", srv)
            d = [r["deliveries_per_s"] for r in rs]
            ratio = (
                f"{statistics.median(d) / node_med:.2f}"
                if d and node_med and srv != "null"
                else "–"
            )
            lines.append(
                f"| {SERVER_LABELS[srv]} | {runs_cell('fanout', srv)} | "
                f"{med_range(d, k0)} | {ratio} | "
                f"{med_range([r['latency_ms']['p50'] for r in rs], fmt_ms)} | "
                f"{med_range([r['latency_ms']['p99'] for r in rs], fmt_ms)} | "
                f"{sum(r['lost'] for r in rs) if rs else '–'} | "
                f"{med_range([r['server_cpu_percent'] for r in rs], pct)} | "
                f"{med_range([r['gen_cpu_percent_total'] for r in rs], pct)} | "
                f"{busy_cell(rs)} |"
            )
        lines.append("")
    if "fanout2" in scenarios:
        lines += [
            "### Fan-out with the load split over 2 generator processes (both on CPU 1)",
            "",
            "If the load generator were the bottleneck, a second process would raise the figure.",
            "",
            *gen_note("fanout2"),
            "| server | runs | deliveries/s, 1 process | deliveries/s, 2 processes | "
            "load-gen CPU % per process (2 processes) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for srv in servers:
            r1, r2 = ok("fanout", srv), ok("fanout2", srv)
            per = [p for r in r2 for p in r["gen_cpu_percent"]]
            lines.append(
                f"| {SERVER_LABELS[srv]} | {runs_cell('fanout2', srv)} | "
                f"{med_range([r['deliveries_per_s'] for r in r1], k0)} | "
                f"{med_range([r['deliveries_per_s'] for r in r2], k0)} | "
                f"{med_range(per, pct)} |"
            )
        lines.append("")
    if "steady" in scenarios:
        st = s["steady"]
        target = st["senders"] * st["rate"] * st["clients"]
        lines += [
            f"### Latency under steady load: {st['senders']} senders × {st['rate']:g} msg/s to "
            f"{st['clients']:,} members = {target:,.0f} deliveries/s",
            "",
            *gen_note("steady"),
            "| server | runs | deliveries/s | p50 ms | p99 ms | max ms | lost | server CPU % | "
            "load-gen CPU % | CPU 0 / CPU 1 busy % |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for srv in servers:
            rs = ok("steady", srv)
            lines.append(
                f"| {SERVER_LABELS[srv]} | {runs_cell('steady', srv)} | "
                f"{med_range([r['deliveries_per_s'] for r in rs], k0)} | "
                f"{med_range([r['latency_ms']['p50'] for r in rs], fmt_ms)} | "
                f"{med_range([r['latency_ms']['p99'] for r in rs], fmt_ms)} | "
                f"{med_range([r['latency_ms']['max'] for r in rs], fmt_ms)} | "
                f"{sum(r['lost'] for r in rs) if rs else '–'} | "
                f"{med_range([r['server_cpu_percent'] for r in rs], pct)} | "
                f"{med_range([r['gen_cpu_percent_total'] for r in rs], pct)} | "
                f"{busy_cell(rs)} |"
            )
        lines.append("")
    for scen in ("connect", "idle_max"):
        if scen not in scenarios:
            continue
        c = s[scen]
        title = (
            "Connect rate and idle memory"
            if scen == "connect"
            else "As many connections as the fd limit allows"
        )
        lines += [
            f"### {title}: {c['clients']:,} connections (wschat: joined, rooms of "
            f"{c['room_size']}), {c['concurrency']} handshakes in progress at a time",
            "",
            *gen_note(scen),
            "| server | runs | held | connects (+ join)/s | server RSS KiB per connection | "
            "server RSS MiB | failed |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for srv in servers:
            if srv == "null":
                continue
            rs = ok(scen, srv)
            lines.append(
                f"| {SERVER_LABELS[srv]} | {runs_cell(scen, srv)} | "
                f"{med_range([r['held'] for r in rs], k0)} | "
                f"{med_range([r['connect_per_s'] for r in rs], k0)} | "
                f"{med_range([r['rss_per_conn_kib'] for r in rs], lambda v: f'{v:.2f}')} | "
                f"{med_range([r['rss_kib'] / 1024 if r['rss_kib'] else None for r in rs], mib)} | "
                f"{sum(r['failed'] for r in rs) if rs else '–'} |"
            )
        lines.append("")
    lines += bigroom_sections(scenarios, servers, s, ok, runs_cell, gen_note)
    if "multinode" in scenarios:
        lines += multinode_sections(records, s)
    return "\n".join(lines)


def bigroom_join_keys(scenarios):
    keys = [x for x in scenarios if x.startswith("bigroom_join")]
    return sorted(keys, key=lambda k: (k != "bigroom_join", k != "bigroom_join_max", k))


def bigroom_sections(scenarios, servers, s, ok, runs_cell, gen_note):
    lines = []
    k0 = lambda v: fmt_num(v)  # noqa: E731
    joins = bigroom_join_keys(scenarios)
    if joins:
        rows = (["connect"] if "connect" in scenarios else []) + joins
        lines += [
            "### Big rooms: connect and join N clients into one room "
            f"(beside `connect`: rooms of {s['connect']['room_size']})",
            "",
            "Each client joins once its handshake is done, "
            f"{s['connect']['concurrency']} handshakes in progress at a time. For the peers, which "
            "have no rooms, the figure is their connect rate for the same number.",
            "",
            *gen_note(*rows),
            "| scenario | clients | room size | server | runs | held | seconds to join all | "
            "joins/s | server RSS KiB per connection | failed |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for scen in rows:
            c = s[scen]
            for srv in servers:
                if srv not in BIGROOM_PEERS:
                    continue
                rs = ok(scen, srv)
                if not rs and not runs_cell(scen, srv).strip("0"):
                    continue
                lines.append(
                    f"| {scen} | {c['clients']:,} | {c['room_size']:,} | {SERVER_LABELS[srv]} | "
                    f"{runs_cell(scen, srv)} | {med_range([r['held'] for r in rs], k0)} | "
                    f"{med_range([r['connect_seconds'] for r in rs], lambda v: f'{v:.2f}')} | "
                    f"{med_range([r['connect_per_s'] for r in rs], k0)} | "
                    f"{med_range([r['rss_per_conn_kib'] for r in rs], lambda v: f'{v:.2f}')} | "
                    f"{sum(r['failed'] for r in rs) if rs else '–'} |"
                )
        lines.append("")
    if "bigroom_fanout" in scenarios:
        f = s["bigroom_fanout"]
        lines += [
            f"### Fan-out in one room of {f['clients']:,}: {f['senders']} senders × "
            f"{f['inflight']} messages in flight, 140-byte text",
            "",
            *gen_note("bigroom_fanout"),
            "| server | room | runs | deliveries/s | latency p50 ms | latency p99 ms | lost | "
            "server CPU % |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for scen in ("fanout", "bigroom_fanout"):
            if scen not in scenarios:
                continue
            for srv in servers:
                if srv not in BIGROOM_PEERS:
                    continue
                rs = ok(scen, srv)
                lines.append(
                    f"| {SERVER_LABELS[srv]} | {s[scen]['clients']:,} | {runs_cell(scen, srv)} | "
                    f"{med_range([r['deliveries_per_s'] for r in rs], k0)} | "
                    f"{med_range([r['latency_ms']['p50'] for r in rs], fmt_ms)} | "
                    f"{med_range([r['latency_ms']['p99'] for r in rs], fmt_ms)} | "
                    f"{sum(r['lost'] for r in rs) if rs else '–'} | "
                    f"{med_range([r['server_cpu_percent'] for r in rs], lambda v: f'{v:.0f}')} |"
                )
        lines.append("")
    if "bigroom_storm" in scenarios:
        st = s["bigroom_storm"]
        rs = ok("bigroom_storm", "wschat")
        sec = lambda v: f"{v:.1f}"  # noqa: E731
        lines += [
            f"### Reconnect storm: {st['clients']:,} in one room, the server killed (SIGKILL) and "
            "started again at once",
            "",
            "Every client comes back by itself with the browser client's backoff (equal jitter, "
            "1 s doubling to 30 s) and `join` with `since` and its token (`bench/storm.js`). "
            f"{st['senders']} senders say {st['messages']} messages each before the kill and "
            f"{st['messages']} more each as soon as they are back, while the others still "
            "reconnect; every client must end with every acked message. Duplicates: ids a client "
            "received twice (live while its join was answered, and again in the welcome's "
            "history); the browser client drops them by id.",
            "",
            "| server | runs | back after the kill, s | restart, s | acked | lost | duplicates | "
            "recovered: false | peak RSS MiB | RSS before the kill MiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| wschat | {runs_cell('bigroom_storm', 'wschat')} | "
            f"{med_range([r['back_seconds_from_kill'] for r in rs], sec)} | "
            f"{med_range([r['restart_seconds'] for r in rs], sec)} | "
            f"{med_range([r['acked'] for r in rs], k0)} | "
            f"{sum(r['lost'] for r in rs) if rs else '–'} | "
            f"{sum(r['duplicates'] for r in rs) if rs else '–'} | "
            f"{sum(r['recovered_false'] for r in rs) if rs else '–'} | "
            f"{med_range([r['peak_rss_kib'] / 1024 for r in rs], mib)} | "
            f"{med_range([(r['rss_before_kib'] or 0) / 1024 for r in rs], mib)} |",
            "",
        ]
    return lines


def multinode_sections(records, s):
    """The multinode tables: which setup each number is (nodes, clients, ONE room, senders,
    Redis persistence) and where each process ran."""
    m = s["multinode"]
    recs = [r for r in records if r["scenario"] == "multinode"]

    def runs(part, setup):
        return [r for r in recs if (r["part"], r["setup"]) == (part, setup)]

    def ok(part, setup):
        return [r for r in runs(part, setup) if r.get("ok")]

    def runs_cell(part, setup):
        n_all, n_ok = len(runs(part, setup)), len(ok(part, setup))
        return f"{n_ok}" + (f" (+{n_all - n_ok} failed)" if n_all > n_ok else "")

    def cpu(rs, label):
        vals = [r.get("cpu_percent_by_process", r.get("cpu_percent", {})).get(label) for r in rs]
        return med_range(vals, lambda v: f"{v:.0f}")

    def problems(part, setup):
        rs = runs(part, setup)
        if not rs:
            return "–"
        n = sum(r.get("log_problems", {}).get("before_stop", 0) for r in rs)
        at_stop = sum(r.get("log_problems", {}).get("at_stop", 0) for r in rs)
        return f"{n}" + (f" (+{at_stop} at stop)" if at_stop else "")

    def lost_cell(rs):
        if not rs:
            return "–"
        stalls = sum(r["stalls"] for r in rs)
        return f"{sum(r['lost'] for r in rs):,}" + (f" ({stalls} stalls)" if stalls else "")

    k0 = lambda v: fmt_num(v)  # noqa: E731
    f, st, sy = m["fanout"], m["steady"], m["say"]
    one, two = multinode_layout(1), multinode_layout(2)
    about = sorted({(r.get("wschat_git"), r.get("redis_version")) for r in recs})
    gens = ", ".join(
        GEN_LABELS.get(g, g) for g in sorted({r["generator"] for r in recs if "generator" in r})
    )
    lines = [
        "### Several nodes on one Redis (`multinode`)",
        "",
        *[f"wschat `{git}`; `{ver}`; fan-out and steady: {gens}." for git, ver in about],
        "",
        f"Every client is in ONE room. One node: the node on CPU {one['nodes'][0]} "
        f"(`taskset -c {one['nodes'][0]}`), its load generator on CPU {one['gens'][0]}, Redis "
        f"unpinned (`taskset -c {one['redis']}`). Two nodes (`--node-name n1`/`n2`, the same "
        f"`--redis`): n1 on CPU {two['nodes'][0]}, n2 on CPU {two['nodes'][1]}, one generator "
        f"per node with half of the clients and half of the senders, the generators and Redis "
        f"unpinned (`taskset -c {two['redis']}`). This machine has {os.cpu_count()} CPUs, so "
        "Redis and the generators share the cores with the nodes: the two-node figures are "
        "what two cores give with everything on them, not what two nodes on their own machines "
        "would. Each message reaches the other node through Redis pub/sub. Redis in these two "
        f"tables: {REDIS_PERSISTENCE_LABELS['none']}. Fresh nodes (and a fresh room) for every "
        "row; the steady generators do not spin (`spinUs` 0, unlike the `steady` scenario), "
        "since spinning would take CPU from a node on the same core.",
        "",
        f"#### Fan-out: {f['clients']:,} clients in ONE room, {f['senders']} senders × "
        f"{f['inflight']} messages in flight, 140-byte text, {f['warmup']:g} s warm-up + "
        f"{f['duration']:g} s",
        "",
    ]

    def traffic_table(part):
        out = [
            "| setup | nodes | clients / senders per node | Redis persistence | runs | "
            "deliveries/s | messages/s | "
            "p50 ms | p99 ms | max ms | lost | n1 CPU % | n2 CPU % | Redis CPU % | "
            "generators CPU % | CPU 0 / CPU 1 busy % | node log errors/warnings |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | "
            "--- | --- | --- | --- |",
        ]
        for setup in MULTINODE_SETUPS:
            rs = ok(part, setup["key"])
            sz = m[part]
            n = setup["nodes"]
            per = f"{sz['clients'] // n:,} / {sz['senders'] // n}"
            out.append(
                f"| {setup['label']} | {n} | {per} | {'none' if setup['redis'] else '–'} | "
                f"{runs_cell(part, setup['key'])} | "
                f"{med_range([r['deliveries_per_s'] for r in rs], k0)} | "
                f"{med_range([r['messages_per_s'] for r in rs], k0)} | "
                f"{med_range([r['latency_ms']['p50'] for r in rs], fmt_ms)} | "
                f"{med_range([r['latency_ms']['p99'] for r in rs], fmt_ms)} | "
                f"{med_range([r['latency_ms']['max'] for r in rs], fmt_ms)} | "
                f"{lost_cell(rs)} | "
                f"{cpu(rs, 'n1')} | {cpu(rs, 'n2') if n > 1 else '–'} | "
                f"{cpu(rs, 'redis') if setup['redis'] else '–'} | "
                f"{med_range([r['gen_cpu_percent_total'] for r in rs], lambda v: f'{v:.0f}')} | "
                f"{busy_cell(rs)} | {problems(part, setup['key'])} |"
            )
        return [*out, ""]

    lines += traffic_table("fanout")
    target = st["senders"] * st["rate"] * st["clients"]
    lines += [
        f"#### Steady: {st['senders']} senders × {st['rate']:g} msg/s to {st['clients']:,} "
        f"members of ONE room = {target:,.0f} deliveries/s, {st['warmup']:g} s warm-up + "
        f"{st['duration']:g} s",
        "",
    ]
    lines += traffic_table("steady")
    lines += [
        "#### The cost of a `say` by what its ack waits for",
        "",
        f"One node (no `--node-name` peer), on CPU {SERVER_CPU}; the client "
        f"(`bench/say_client.py`) on CPU {LOADGEN_CPU}; Redis unpinned (`taskset -c "
        f"{ALL_CPUS}`), a fresh redis-server and directory per row. Each sender is alone in a "
        "room of its own and sends the next `say` (140 characters, with a `ref`) when the ack "
        f"of the previous one is in. One sender: {sy['says']:,} says (or "
        f"{sy['serial_max_s']:g} s, whichever comes first). {sy['senders']} senders: "
        f"{sy['warmup']:g} s warm-up + {sy['duration']:g} s; there the store can batch (Redis "
        "takes the scripts of all the senders in one event-loop turn and, with `always`, "
        "fsyncs once per turn). Ack latency = write of the `say` to read of its `ack`. SQLite "
        "runs in WAL mode with `synchronous=NORMAL` (an ack survives the process, not the "
        "host: no fsync per commit); the directories are on the same disk.",
        "",
        "| history (ack after) | runs | 1 sender: says | ack p50 ms | ack p99 ms | "
        f"{sy['senders']} senders: says/s | ack p50 ms | ack p99 ms | node CPU % "
        f"(1 / {sy['senders']} senders) | Redis CPU % (1 / {sy['senders']} senders) | "
        "errors, acked but not delivered |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for setup in SAY_SETUPS:
        a, b = ok("say_serial", setup["key"]), ok("say_concurrent", setup["key"])
        errs = {}
        for r in a + b:
            for k, v in {**r.get("errors", {}), **r.get("join_errors", {})}.items():
                errs[k] = errs.get(k, 0) + v
        missing = sum(r["messages_missing"] for r in a + b)
        err_cell = ", ".join(f"{k} {v}" for k, v in sorted(errs.items())) or "0"
        redis_cell = "–"
        if setup["persistence"]:
            redis_cell = f"{cpu(a, 'redis')} / {cpu(b, 'redis')}"
        lines.append(
            f"| {setup['label']} | {runs_cell('say_serial', setup['key'])} + "
            f"{runs_cell('say_concurrent', setup['key'])} | "
            f"{med_range([r['measured'] for r in a], k0)} | "
            f"{med_range([r['ack_ms']['p50'] for r in a], fmt_ms)} | "
            f"{med_range([r['ack_ms']['p99'] for r in a], fmt_ms)} | "
            f"{med_range([r['says_per_s'] for r in b], k0)} | "
            f"{med_range([r['ack_ms']['p50'] for r in b], fmt_ms)} | "
            f"{med_range([r['ack_ms']['p99'] for r in b], fmt_ms)} | "
            f"{cpu(a, 'n1')} / {cpu(b, 'n1')} | {redis_cell} | {err_cell}, {missing} |"
        )
    lines.append("")
    lines += multinode_redis_limit(recs, ok)
    fails = [r for r in recs if not r.get("ok")]
    if fails:
        lines += ["**Failed phases:**", ""]
        lines += [f"- {r['part']} / {r['setup']} run {r['run']}: {r.get('error')}" for r in fails]
        lines.append("")
    lines += multinode_log_kinds(recs)
    return lines


def multinode_log_kinds(recs):
    """Each kind of error/warning line of the node logs once, with where it was logged."""
    kinds, seen = {}, set()
    for r in recs:
        # the two say parts of a setup share one node, and so one log
        phase = f"{'say' if r['part'].startswith('say') else r['part']} / {r['setup']}"
        if (r["run"], phase) in seen:
            continue
        seen.add((r["run"], phase))
        for key, n in r.get("log_problems", {}).get("kinds", {}).items():
            k = kinds.setdefault(key, dict(lines=0, phases={}))
            k["lines"] += n
            k["phases"][phase] = k["phases"].get(phase, 0) + 1
    if not kinds:
        return []
    runs = len({r["run"] for r in recs})
    out = [
        f"Error and warning lines in the node logs over the {runs} run(s) (numbers shown as N; "
        f"the logs are in `{recs[0].get('logdir')}/`), and the phases (× runs) they were "
        "logged in:",
        "",
    ]
    for key in sorted(kinds, key=lambda k: (k.startswith("stop|"), k)):
        when, text = key.split("|", 1)
        k = kinds[key]
        where = ", ".join(f"{p} × {n}" for p, n in sorted(k["phases"].items()))
        out.append(
            f"- {'during the stop (SIGTERM)' if when == 'stop' else 'while running'}: "
            f"`{text}`: {k['lines']} line(s); {where}"
        )
    out.append("")
    return out


def multinode_redis_limit(recs, ok):
    """Redis's CPU per stored message, measured, and the linear extrapolation to one core."""
    rows = []
    for part, setup, label, rate_key in (
        ("fanout", "1node-redis", "fan-out, 1 node (1 subscriber)", "messages_per_s"),
        ("fanout", "2nodes-redis", "fan-out, 2 nodes (2 subscribers)", "messages_per_s"),
        ("say_concurrent", "redis-none", "32 senders, no persistence", "says_per_s"),
        ("say_concurrent", "redis-everysec", "32 senders, `everysec`", "says_per_s"),
        ("say_concurrent", "redis-always", "32 senders, `always`", "says_per_s"),
    ):
        rs = ok(part, setup)
        pairs = [
            (r[rate_key], r.get("cpu_percent_by_process", r.get("cpu_percent", {})).get("redis"))
            for r in rs
        ]
        pairs = [(rate, c) for rate, c in pairs if rate and c is not None]
        if not pairs:
            continue
        rate = statistics.median(p[0] for p in pairs)
        c = statistics.median(p[1] for p in pairs)
        us = statistics.median(p[1] / 100 / p[0] * 1e6 for p in pairs)
        core = f"{1e6 / us:,.0f}" if us else "–"
        rows.append(f"| {label} | {rate:,.0f} | {c:.0f} | {us:.1f} | {core} |")
    if not rows:
        return []
    return [
        "#### Where one Redis becomes the limit",
        "",
        "Redis's own CPU (all its threads, from `/proc/<pid>/stat`) over the measuring window, "
        "per message stored (one `EVALSHA` of the say script: the ref check, `INCR`, `XADD`, "
        "the trims and the `PUBLISH` to every subscribed node). The last column is a linear "
        "extrapolation, not a measurement: the messages/s one Redis core would take at that "
        "cost per message if it had the core to itself (here it shared the cores with the "
        "nodes). The cost per message falls as the rate rises (Redis then reads several "
        "commands per `read` and answers them in one `write`), so an extrapolation from a low "
        "rate understates what a core carries. Each extra node subscribed to a room adds one "
        "pub/sub delivery per message.",
        "",
        "| phase | messages (says)/s | Redis CPU % | Redis CPU µs per message | "
        "messages/s at 100 % of one core (extrapolated) |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]


def targets(records):
    """The requirements of the benchmark issue, checked against this run's wschat medians."""

    def med(scen, srv, get):
        vals = [
            get(r) for r in records if r.get("ok") and (r["scenario"], r["server"]) == (scen, srv)
        ]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    fan = med("fanout", "wschat", lambda r: r["deliveries_per_s"])
    fan_node = med("fanout", "node", lambda r: r["deliveries_per_s"])
    p99 = med("steady", "wschat", lambda r: r["latency_ms"]["p99"])
    p99_node = med("steady", "node", lambda r: r["latency_ms"]["p99"])
    rss = med("connect", "wschat", lambda r: r["rss_per_conn_kib"])
    held = med("idle_max", "wschat", lambda r: r["held"])
    idle_runs = [r for r in records if (r["scenario"], r["server"]) == ("idle_max", "wschat")]
    failed = sum(r.get("failed", 0) if r.get("ok") else 1 for r in idle_runs)
    rows = []
    if fan is not None:
        rows.append(("fan-out: at least 250,000 deliveries/s", f"{fan:,.0f}", fan >= 250_000))
        if fan_node:
            rows.append(
                ("fan-out: at least 2 × Node ws", f"{fan / fan_node:.2f} ×", fan >= 2 * fan_node)
            )
    if p99 is not None:
        rows.append(("steady: p99 under 10 ms", f"{p99:.2f} ms", p99 < 10))
        if p99_node is not None:
            rows.append(
                (
                    f"steady: p99 below Node ws's ({p99_node:.2f} ms)",
                    f"{p99:.2f} ms",
                    p99 < p99_node,
                )
            )
    if rss is not None:
        rows.append(
            ("at most 8 KiB RSS per joined connection at 10,000", f"{rss:.2f} KiB", rss <= 8)
        )
    if held is not None:
        rows.append(
            (
                "19,000 connections held without errors",
                f"{held:,.0f}, {failed} failed",
                held >= 19_000 and not failed,
            )
        )
    rows += bigroom_targets(med, records)
    if not rows:
        return ""
    lines = [
        "",
        "### Targets",
        "",
        "wschat's medians from this run against the requirements of the benchmark issue.",
        "",
        "| target | wschat | met |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {what} | {value} | {'yes' if met else '**no**'} |" for what, value, met in rows]
    return "\n".join(lines) + "\n"


def bigroom_targets(med, records):
    rows = []
    big = med("bigroom_join", "wschat", lambda r: r["connect_seconds"])
    small = med("connect", "wschat", lambda r: r["connect_seconds"])
    rate = med("bigroom_join", "wschat", lambda r: r["connect_per_s"])
    if big is not None and small:
        rows.append(
            (
                "big room: 10,000 joins into one room in at most 1.5 × rooms of 100",
                f"{big:.2f} s vs {small:.2f} s ({big / small:.2f} ×)",
                big <= 1.5 * small,
            )
        )
    if rate is not None:
        rows.append(("big room: at least 2,000 joins/s", f"{rate:,.0f}", rate >= 2000))
    rss = med("bigroom_join", "wschat", lambda r: r["rss_per_conn_kib"])
    if rss is not None:
        rows.append(
            (
                "big room: at most 8 KiB RSS per connection, 10,000 in one room",
                f"{rss:.2f} KiB",
                rss <= 8,
            )
        )
    held = med("bigroom_join_max", "wschat", lambda r: r["held"])
    if held is not None:
        runs = [
            r for r in records if (r["scenario"], r["server"]) == ("bigroom_join_max", "wschat")
        ]
        failed = sum(r.get("failed", 0) if r.get("ok") else 1 for r in runs)
        rows.append(
            (
                "big room: 19,000 members in one room held without errors",
                f"{held:,.0f}, {failed} failed",
                held >= 19_000 and not failed,
            )
        )
    storms = [r for r in records if r["scenario"] == "bigroom_storm"]
    if storms:
        good = [r for r in storms if r.get("ok")]
        lost = sum(r["lost"] for r in good)
        bad = sum(r["recovered_false"] for r in good)
        rows.append(
            (
                "storm: every client back with `since` recovery, no acked message lost",
                f"{len(good)}/{len(storms)} runs, lost {lost}, recovered:false {bad}",
                len(good) == len(storms) and not lost and not bad,
            )
        )
    return rows


def versions(opts, servers):
    v = {
        "python (orchestrator)": platform.python_version(),
        "kernel": platform.release(),
    }
    try:
        v["node"] = subprocess.run(
            [opts.node, "--version"], capture_output=True, text=True
        ).stdout.strip()
        with open(os.path.join(BENCH, "node_modules", "ws", "package.json")) as f:
            v["ws (npm)"] = json.load(f)["version"]
    except OSError:
        pass
    probe = (
        "import sys, importlib.metadata as m\n"
        "out = {'python (servers)': sys.version.split()[0]}\n"
        "for p in ('twisted', 'autobahn', 'websockets', 'wschat'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except Exception: pass\n"
        "import json; print(json.dumps(out))\n"
    )
    try:
        r = subprocess.run([opts.python, "-c", probe], capture_output=True, text=True, timeout=30)
        v.update(json.loads(r.stdout))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    try:
        r = subprocess.run(
            [
                opts.python,
                "-c",
                "import autobahn.websocket as w; print(getattr(w, 'USES_NVX', None))",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        v["autobahn USES_NVX"] = r.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        # Without its C write loop (no compiler at install), wschat runs the Python one.
        r = subprocess.run(
            [opts.python, "-c", "import wschat._sendmany"], capture_output=True, timeout=30
        )
        v["wschat C write loop (wschat.server._sendmany)"] = "built" if r.returncode == 0 else "missing"
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        rev = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        if rev:
            v["wschat git"] = rev
    except OSError:
        pass
    return v


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory": mem,
        "fd limit (soft/hard)": "/".join(map(str, resource.getrlimit(resource.RLIMIT_NOFILE))),
    }


DOC_HEAD = """# Benchmarks

Produced by `{command}` on {date}. Raw results: `{results}` (one JSON object per run,
after a first line with the settings). Regenerate with `make bench` (full) or `make bench-quick`
(smaller sizes, one run, under two minutes; it does not rewrite this file).

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


def write_docs(path, opts, servers, scenarios, s, records, results_name, command):
    m = machine()
    v = versions(opts, servers)
    mach = "\n".join(f"- {k}: {val}" for k, val in m.items())
    mach += "\n" + "\n".join(f"- {k}: {val}" for k, val in v.items())
    if generator_for(opts, "steady") == "c":
        gen_text = (
            "Fan-out and steady use `bench/cgen/loadgen` (C, one epoll loop, 64 KiB reads, the\n"
            "  time stamp found with `memmem`; the Node generator's ~10 µs per incoming segment\n"
            "  would put a ~10 ms floor under the steady p99); connect uses `bench/loadgen.js`\n"
            "  (Node with the `ws` package)."
        )
    else:
        gen_text = "All scenarios use `bench/loadgen.js` (Node with the `ws` package)."
    head = DOC_HEAD.format(
        gen_text=gen_text,
        command=command,
        date=datetime.date.today().isoformat(),
        results=results_name,
        machine=mach,
        wschat_extra=(", and `" + " ".join(opts.wschat_extra) + "`") if opts.wschat_extra else "",
        inflight=s["fanout"]["inflight"],
        fo_dur=s["fanout"]["duration"],
        fo_warm=s["fanout"]["warmup"],
        st_dur=s["steady"]["duration"],
        conc=s["connect"]["concurrency"],
        room_size=s["connect"]["room_size"],
        last_addr=1 + opts.addrs,
        spin=SPIN_TEXT.format(us=opts.gen_spin_us)
        if opts.gen_spin_us and generator_for(opts, "steady") == "c"
        else "",
    )
    notes = []
    for r in records:
        if not r.get("ok"):
            notes.append(
                f"- {r['scenario']} / {r['server']} run {r['run']} failed: {r.get('error')}"
            )
    body = summarize(records, servers, scenarios, s)
    if not opts.quick:
        body += targets(records)
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
    with open(path, "w") as f:
        f.write(head + body + "\n")
        if opts.skipped:
            f.write("\n## Not run\n\n" + "\n".join(f"- {x}" for x in opts.skipped) + "\n")
        if notes:
            f.write("\n## Failed runs\n\n" + "\n".join(notes) + "\n")


# --------------------------------------------------------------------------- main


def check_python(py, modules):
    try:
        r = subprocess.run(
            [py, "-c", "import " + ", ".join(modules)], capture_output=True, timeout=60
        )
        return r.returncode == 0
    except OSError:
        return False


def wschat_extra_args(twistd):
    """Options wschat needs lifted for the benchmark, if this version of it has them."""
    try:
        r = subprocess.run([twistd, "wschat", "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    # --max-members and --max-connections default to no limit. A version that drains on stop
    # is told to stop at once, as before the drain existed (stop_process waits 3 s), so that
    # older versions can be measured by the same script.
    return ["--drain-seconds", "0"] if "--drain-seconds" in r.stdout else []


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, one run each (< 2 minutes)")
    ap.add_argument(
        "--twistd",
        default=os.path.join(ROOT, ".venv", "bin", "twistd"),
        help="twistd of a venv with wschat installed (default: .venv/bin/twistd)",
    )
    ap.add_argument(
        "--python",
        default=None,
        help="Python with autobahn and websockets for the peers "
        "(default: the python next to --twistd, else this one)",
    )
    ap.add_argument("--node", default=shutil.which("node") or "node")
    ap.add_argument("--servers", default=",".join(ALL_SERVERS))
    ap.add_argument(
        "--scenarios",
        default=None,
        help="comma-separated; default: all (quick: fanout, steady, connect)",
    )
    ap.add_argument("--runs", type=int, default=None, help="runs per scenario and server")
    ap.add_argument(
        "--gens",
        type=int,
        default=1,
        help="load-generator processes (all on CPU 1) for every scenario; fanout2 uses at least 2",
    )
    ap.add_argument(
        "--gen",
        choices=["auto", "c", "node"],
        default="auto",
        help="load generator for fanout/fanout2/steady: c (bench/cgen/loadgen, built with cc "
        "if missing or stale), node (bench/loadgen.js), auto (default: c if it builds, else node); "
        "connect and idle_max always use node",
    )
    ap.add_argument(
        "--gen-spin-us",
        type=int,
        default=200,
        help="steady, C generator: keep polling this long after any activity before blocking, "
        "so that waking the generator (an IPI) is not charged to the server's CPU "
        "(default 200; 0: off)",
    )
    ap.add_argument(
        "--clients", type=int, default=None, help="override the idle_max connection count"
    )
    ap.add_argument(
        "--addrs", type=int, default=100, help="source addresses 127.0.0.2.. to spread over"
    )
    ap.add_argument(
        "--bigroom-sizes",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[],
        help="also join this many into one room, each a scenario bigroom_join_<N> "
        "(the sweep: 1000,5000,10000,19000)",
    )
    ap.add_argument(
        "--wschat-arg",
        action="append",
        default=[],
        help="extra argument for `twistd wschat` (repeatable)",
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=None,
        help="before each run, wait up to this many seconds for the CPUs to be idle "
        "(default 20; quick: 2)",
    )
    ap.add_argument(
        "--redis-server",
        default=shutil.which("redis-server") or "/usr/bin/redis-server",
        help="redis-server for the multinode scenario (it starts its own on a free port)",
    )
    ap.add_argument("--out", default=os.path.join(BENCH, "results"))
    ap.add_argument("--docs", default=None, help="write this markdown file (docs/benchmarks.md)")
    opts = ap.parse_args()

    # Children inherit the raised fd limit; this process stays off the server's CPU.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    except OSError:
        pass

    if not os.path.exists(os.path.join(BENCH, "node_modules", "ws", "package.json")):
        log("bench: npm ci")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BENCH, check=True)

    opts.cgen_ok = opts.gen != "node" and build_cgen()
    if opts.gen == "c" and not opts.cgen_ok:
        ap.error(f"--gen c: {CGEN} is missing and could not be built from {CGEN_SRC}")
    if opts.gen == "auto" and not opts.cgen_ok:
        log("bench: the C load generator is not available; using bench/loadgen.js everywhere")

    if opts.wait_idle is None:
        opts.wait_idle = 2.0 if opts.quick else 20.0
    s = settings(opts.quick)
    if opts.runs:
        s["runs"] = opts.runs
        s["runs_by_scenario"] = {}
    if opts.clients:
        s["idle_max"]["clients"] = opts.clients
    servers = [x for x in opts.servers.split(",") if x]
    if opts.scenarios:
        scenarios = [x for x in opts.scenarios.split(",") if x]
    else:
        scenarios = [
            x
            for x in ALL_SCENARIOS
            if x not in OPT_IN_SCENARIOS and not (opts.quick and x in QUICK_SKIPS)
        ]
    for size in opts.bigroom_sizes:
        key = f"bigroom_join_{size}"
        s[key] = dict(clients=size, room_size=size, concurrency=50)
        scenarios.append(key)
        ALL_SCENARIOS.append(key)
    for x in servers:
        if x not in ALL_SERVERS:
            ap.error(f"unknown server {x}")
    for x in scenarios:
        if x not in ALL_SCENARIOS:
            ap.error(f"unknown scenario {x}")

    opts.twistd = os.path.abspath(opts.twistd)
    if opts.python is None:
        cand = os.path.join(os.path.dirname(opts.twistd), "python")
        opts.python = cand if os.path.exists(cand) else sys.executable
    opts.skipped = []
    if "wschat" in servers:
        extra = wschat_extra_args(opts.twistd) if os.path.exists(opts.twistd) else None
        if extra is None:
            opts.skipped.append(
                f"wschat: `{opts.twistd} wschat --help` does not work "
                "(no venv with wschat installed?)"
            )
            servers.remove("wschat")
        else:
            opts.wschat_extra = extra + opts.wschat_arg
    opts.wschat_extra = getattr(opts, "wschat_extra", opts.wschat_arg)
    for srv, mods in (("autobahn", ["autobahn", "twisted"]), ("websockets", ["websockets"])):
        if srv in servers and not check_python(opts.python, mods):
            opts.skipped.append(
                f"{srv}: {opts.python} cannot import {', '.join(mods)} "
                "(pip install -r bench/requirements.txt)"
            )
            servers.remove(srv)
    opts.redis_version = None
    if "multinode" in scenarios:
        opts.redis_version = redis_version(opts.redis_server)
        if opts.redis_version is None or "wschat" not in servers:
            opts.skipped.append(
                "multinode: needs wschat and a redis-server "
                f"(`{opts.redis_server} --version` does not work; --redis-server)"
            )
            scenarios.remove("multinode")
    for x in opts.skipped:
        log("bench: skipped " + x)
    if not servers:
        log("bench: no server to run")
        return 2

    os.makedirs(opts.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    kind = "quick" if opts.quick else "full"
    results_name = f"{stamp}-{kind}.jsonl"
    opts.logdir = os.path.join(opts.out, "logs", f"{stamp}-{kind}")
    os.makedirs(opts.logdir, exist_ok=True)
    command = "python bench/run.py " + " ".join(sys.argv[1:])
    log(
        f"bench: {kind}, servers {servers}, scenarios {scenarios}, {s['runs']} run(s); "
        f"fd limit {hard}; results {os.path.join(opts.out, results_name)}"
    )

    t0 = time.monotonic()
    records = []
    with open(os.path.join(opts.out, results_name), "w") as outf:
        outf.write(
            json.dumps(
                {
                    "meta": True,
                    "command": command,
                    "machine": machine(),
                    "versions": versions(opts, servers),
                    "settings": s,
                    "wschat_args": opts.wschat_extra,
                    "generator": {
                        m: generator_for(opts, m) for m in ("fanout", "steady", "connect")
                    },
                    "skipped": opts.skipped,
                    "redis_server": opts.redis_version,
                }
            )
            + "\n"
        )
        for scen in scenarios:
            log(f"bench: scenario {scen}")
            for run_idx in range(s["runs_by_scenario"].get(scen, s["runs"])):
                for srv in servers:
                    if srv == "null" and scen not in NULL_SCENARIOS:
                        continue
                    if scen in WSCHAT_ONLY_SCENARIOS and srv != "wschat":
                        continue
                    if scen.startswith("bigroom") and srv not in BIGROOM_PEERS:
                        continue
                    if scen == "multinode":
                        records += run_multinode(opts, s, run_idx, outf)
                        continue
                    records.append(run_one(opts, srv, scen, s, run_idx, outf))
    table = summarize(records, servers, scenarios, s)
    with open(os.path.join(opts.out, f"{stamp}-{kind}.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    if opts.skipped:
        print("Not run: " + "; ".join(opts.skipped))
    log(
        f"bench: done in {time.monotonic() - t0:.0f} s; "
        f"raw results in {os.path.join(opts.out, results_name)}"
    )
    if opts.docs:
        # keep the raw results of the documented run next to the others, under a fixed name
        # that is not git-ignored
        latest = os.path.join(opts.out, f"latest-{kind}.jsonl")
        shutil.copyfile(os.path.join(opts.out, results_name), latest)
        write_docs(
            opts.docs, opts, servers, scenarios, s, records, os.path.relpath(latest, ROOT), command
        )
        log(f"bench: wrote {opts.docs}")
    return 0 if all(r.get("ok") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
