"""The processes of a run: the server under test and the load generators, each pinned to its
CPU, with the fd limit raised; and what /proc says about their CPU and memory.

wschat and redis-server start through tests/e2e/process.py, as in the end-to-end tests."""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from tests.e2e.process import ServerProcess, free_port, stop_process, wait_listening

from .settings import BENCH, LOADGEN_CPU, ROOT, SERVER_CPU, Record

PEERS = os.path.join(BENCH, "peers")
LOADGEN = os.path.join(BENCH, "loadgen.js")
CGEN_SRC = os.path.join(BENCH, "cgen", "loadgen.c")
CGEN = os.path.join(BENCH, "cgen", "loadgen")
# modes the C generator implements; connect (and idle_max) always use loadgen.js
CGEN_MODES = ("fanout", "steady")
START_TIMEOUT_S = 30.0
# after start-up, before the baseline RSS: let its allocations settle
SETTLE_S = 0.5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pinned(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu]


def raise_fd_limit_and_pin() -> int:
    """Children inherit the raised fd limit; this process stays off the server's CPU. Returns
    the limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    except OSError:
        pass
    return hard


# --------------------------------------------------------------------------- /proc


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tick
    except (OSError, IndexError, ValueError):
        return None


def cpu_times() -> dict[str, tuple[int, int]]:
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


def cpu_busy(a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Busy % per CPU between two cpu_times() samples (user, system and softirq alike)."""
    res = {}
    for cpu in a:
        if cpu in b and b[cpu][1] > a[cpu][1]:
            res[cpu] = round(100.0 * (b[cpu][0] - a[cpu][0]) / (b[cpu][1] - a[cpu][1]), 1)
    return res


def wait_quiet(opts: argparse.Namespace, tag: str) -> dict[str, float]:
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


# --------------------------------------------------------------------------- servers


class Server:
    """The server under test, fresh for every run: wschat (a ServerProcess) or a peer."""

    def __init__(
        self,
        name: str,
        opts: argparse.Namespace,
        tag: str,
        extra_args: Sequence[str] = (),
        cpu: str = SERVER_CPU,
    ) -> None:
        self.name = name
        self.opts = opts
        self.cpu = cpu
        self.tmp = Path(tempfile.mkdtemp(prefix=f"wschat-bench-{name}-"))
        self.logpath = os.path.join(opts.logdir, f"{tag}-server.log")
        self.node_name = ""
        self.baseline_kib: int | None = None
        self.wschat: ServerProcess | None = None
        self._peer: subprocess.Popen[bytes] | None = None
        if name == "wschat":
            self.wschat = ServerProcess(
                self.tmp,
                *("--rate", "1000000", "--burst", "1000000", *opts.wschat_extra, *extra_args),
                twistd=opts.twistd,
                prefix=pinned(cpu),
                log_path=Path(self.logpath),
            )
            self.port = self.wschat.port
            self.url = self.wschat.ws_url
            self.proto = "wschat"
        else:
            self.port = free_port()
            self.url = f"ws://127.0.0.1:{self.port}/"
            self.proto = "raw"

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.wschat.proc if self.wschat else self._peer

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def peer_argv(self) -> list[str]:
        o = self.opts
        scripts = {
            "node": (o.node, os.path.join(PEERS, "node_ws.js")),
            "null": (o.node, os.path.join(BENCH, "tools", "null_server.js")),
            "autobahn": (o.python, os.path.join(PEERS, "autobahn_naive.py")),
            "websockets": (o.python, os.path.join(PEERS, "websockets_broadcast.py")),
        }
        return [*pinned(self.cpu), *scripts[self.name], str(self.port)]

    def start(self) -> None:
        if self.wschat:
            proc = self.wschat.spawn()
        else:
            with open(self.logpath, "ab") as logf:
                proc = self._peer = subprocess.Popen(
                    self.peer_argv(),
                    cwd=self.tmp,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                )
        # Ready once it accepts connections, not once /healthz answers: the storm times a
        # restart to that moment, while thousands of clients reconnect.
        if not wait_listening(self.port, proc, START_TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"{self.name} did not start; see {self.logpath}")
        time.sleep(SETTLE_S)
        self.baseline_kib = rss_kib(proc.pid)

    def kill_and_restart(self) -> float:
        """SIGKILL, then start again at once on the same port and database (as systemd's
        Restart=always would); returns the monotonic time of the kill."""
        killed_at = time.monotonic()
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.start()
        return killed_at

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------- load generators


def build_cgen() -> bool:
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


def generator_for(opts: argparse.Namespace, mode: str) -> str:
    """Returns "c" or "node": the load generator used for this mode."""
    if mode in CGEN_MODES and opts.gen in ("auto", "c") and opts.cgen_ok:
        return "c"
    return "node"


class EventReader:
    """The JSON lines of a child's stdout, read by a thread into a queue."""

    def __init__(self, stdout: IO[str]) -> None:
        self.q: queue.Queue[Record] = queue.Queue()
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self.q.put(json.loads(line))
            except ValueError:
                self.q.put({"event": "junk", "line": line})
        self.q.put({"event": "eof"})


class LoadGen:
    """One load-generator process (C or Node), driven by lines on stdin, answering in JSON
    lines on stdout."""

    def __init__(
        self, opts: argparse.Namespace, cfg: dict[str, Any], tag: str, cpu: str = LOADGEN_CPU
    ) -> None:
        self.cfg = cfg
        self.generator = generator_for(opts, cfg["mode"])
        self.errpath = os.path.join(opts.logdir, f"{tag}-gen{cfg['gen']}.log")
        self.errf = open(self.errpath, "wb")  # closed in stop()
        if self.generator == "c":
            argv = [CGEN, json.dumps(cfg)]
        else:
            argv = [opts.node, LOADGEN, json.dumps(cfg)]
        self.proc = subprocess.Popen(
            [*pinned(cpu), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errf,
            text=True,
            bufsize=1,
        )
        assert self.proc.stdout is not None
        self.events = EventReader(self.proc.stdout)

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def wait_event(self, name: str, timeout: float) -> Record:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"load generator {self.cfg['gen']}: no '{name}' in {timeout:.0f} s"
                )
            try:
                ev = self.events.q.get(timeout=left)
            except queue.Empty:
                continue
            if ev.get("event") == name:
                return ev
            if ev.get("event") in ("fatal", "eof"):
                raise RuntimeError(
                    f"load generator {self.cfg['gen']} failed: {ev}; see {self.errpath}"
                )

    def stop(self) -> None:
        self.send("exit")
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.errf.close()


def split(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def start_gens(
    opts: argparse.Namespace,
    server: Server,
    mode: str,
    total_clients: int,
    gens: int,
    tag: str,
    extra: dict[str, Any],
    senders: int = 0,
    urls: list[str] | None = None,
    cpus: list[str] | None = None,
) -> list[LoadGen]:
    """One generator per part of the clients; `urls` and `cpus` (multinode) give each
    generator its own server and CPU list."""
    counts = split(total_clients, gens)
    sender_counts = split(senders, gens)
    out, offset, sid = [], 0, 0
    for g in range(gens):
        cfg: dict[str, Any] = dict(
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
        out.append(LoadGen(opts, cfg, tag, cpu=cpu))
        offset += counts[g]
        sid += sender_counts[g]
    return out


def connect_timeout(n: int) -> float:
    return 60 + n / 50.0
