"""The multinode scenario: wschat against itself, one node against two on one Redis, and the
cost of a `say` by what its ack waits for (SQLite, Redis with each persistence)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

from tests.e2e.process import RedisProcess, stop_process

from .fmt import short
from .harness import LOADGEN_CPU, Server, log, pinned, wait_quiet
from .scenarios import run_traffic
from .settings import (
    BENCH,
    MULTINODE_SETUPS,
    ROOT,
    SAY_SETUPS,
    SERVER_CPU,
    Record,
    all_cpus,
    multinode_layout,
)

SAY_CLIENT = os.path.join(BENCH, "say_client.py")


class Redis(RedisProcess):
    """A redis-server of the benchmark's own: a free port, a fresh directory (its AOF on the
    same disk as the SQLite history of the other runs), stopped and removed at the end."""

    def __init__(self, opts: argparse.Namespace, tag: str, persistence: str) -> None:
        super().__init__(
            Path(tempfile.mkdtemp(prefix="wschat-bench-redis-")),
            opts.redis_server,
            appendfsync=None if persistence == "none" else persistence,
            prefix=pinned(all_cpus()),
            log_path=Path(opts.logdir) / f"{tag}-redis.log",
            extra_args=["--maxmemory-policy", "noeviction", "--daemonize", "no"],
        )

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def wait_redis_up(node: Server, timeout: float = 15.0) -> None:
    """A node listens before its Redis link is up; its /healthz says when it is."""
    url = f"http://127.0.0.1:{node.port}/healthz"
    deadline = time.monotonic() + timeout
    last: Any = None
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


def log_kind(line: str) -> str:
    """A log line without its time stamp, with Redis URLs and numbers made alike, so that the
    same event logged in many phases is listed once."""
    text = line.strip().split(" ", 1)[-1][:300]
    text = re.sub(r"redis(s)?://\S+", "redis://…", text)
    return re.sub(r"\d+", "N", text)


def log_problems(paths: list[str]) -> dict[str, Any]:
    """Error and warning lines (and tracebacks) of the nodes' logs, those before the stop
    (SIGTERM) apart from those during it: lost messages or a dropped subscription show there.
    `kinds` counts them by log_kind (prefixed "stop|" or "run|"); `sample` keeps the first."""
    out: dict[str, Any] = dict(before_stop=0, at_stop=0, kinds={}, sample=[])
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


def start_nodes(
    opts: argparse.Namespace, tag: str, count: int, redis: Redis | None, cpus: list[str]
) -> list[Server]:
    """`count` wschat nodes n1, n2, … (on `redis` when given); returns those that started."""
    nodes: list[Server] = []
    try:
        for i in range(count):
            name = f"n{i + 1}"
            args = ["--redis", redis.url, "--node-name", name] if redis else []
            node = Server("wschat", opts, f"{tag}-{name}", args, cpu=cpus[i])
            node.node_name = name
            node.start()
            nodes.append(node)
            if redis:
                wait_redis_up(node)
    except Exception:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes: list[Server]) -> dict[str, int | None]:
    exits = {}
    for node in nodes:
        node.stop()
        exits[node.node_name] = node.proc.poll() if node.proc else None
    return exits


def multinode_rec(
    run_idx: int,
    part: str,
    setup: dict[str, Any],
    nodes: int,
    persistence: str | None,
    params: dict[str, Any],
    layout: dict[str, Any],
) -> Record:
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


def multinode_traffic(
    opts: argparse.Namespace,
    sz: dict[str, Any],
    part: str,
    setup: dict[str, Any],
    redis: Redis | None,
    run_idx: int,
) -> Record:
    """fanout or steady against 1 or 2 fresh nodes; with 2, one generator per node with half of
    the clients and senders each, all in ONE room: every message crosses Redis pub/sub."""
    tag = f"multinode-{run_idx}-{part}-{setup['key']}"
    lay = multinode_layout(setup["nodes"])
    persistence = "none" if setup["redis"] else None
    rec = multinode_rec(run_idx, part, setup, setup["nodes"], persistence, sz, lay)
    rec["cpu_busy_before_percent"] = wait_quiet(opts, tag)
    t0 = time.monotonic()
    nodes: list[Server] = []
    try:
        if not setup["redis"]:
            redis = None
        elif redis is None:
            raise RuntimeError("redis-server did not start")
        nodes = start_nodes(opts, tag, setup["nodes"], redis, lay["nodes"])
        watch = {n.node_name: n.pid for n in nodes}
        if redis and redis.proc:
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


def run_say_client(opts: argparse.Namespace, cfg: dict[str, Any], tag: str) -> Record:
    errpath = os.path.join(opts.logdir, f"{tag}-say.log")
    timeout = cfg.get("maxSeconds", 60) + 60
    with open(errpath, "wb") as errf:
        r = subprocess.run(
            [*pinned(LOADGEN_CPU), sys.executable, SAY_CLIENT, json.dumps(cfg)],
            stdout=subprocess.PIPE,
            stderr=errf,
            text=True,
            timeout=timeout,
        )
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError(f"say client: no result (exit {r.returncode}); see {errpath}")
    res: Record = json.loads(lines[-1])
    if res.get("event") != "result":
        raise RuntimeError(f"say client failed: {res.get('error')}; see {errpath}")
    return res


def multinode_say(
    opts: argparse.Namespace, sz: dict[str, Any], setup: dict[str, Any], run_idx: int
) -> list[Record]:
    """The ack latency of `say` on one node: one sender one say at a time, then `senders`
    senders at once (each in its own room, one say at a time), which shows how the store
    batches (Redis pipelines the scripts and fsyncs once per event-loop turn)."""
    tag = f"multinode-{run_idx}-say-{setup['key']}"
    lay: dict[str, Any] = dict(nodes=[SERVER_CPU], client=LOADGEN_CPU, redis=all_cpus())
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
    nodes: list[Server] = []
    recs: list[Record] = []
    exits: dict[str, int | None] = {}
    problems: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        if redis:
            redis.start()
        nodes = start_nodes(opts, tag, 1, redis, lay["nodes"])
        watch = {"n1": nodes[0].pid}
        if redis and redis.proc:
            watch["redis"] = redis.proc.pid
        for part, cfg in parts:
            rec = multinode_rec(run_idx, part, setup, 1, setup["persistence"], cfg, lay)
            rec["cpu_busy_before_percent"] = busy
            try:
                cfg = dict(
                    cfg, url=nodes[0].url, room=f"{part}-{run_idx}", payload=140, watch=watch
                )
                res = run_say_client(opts, cfg, f"{tag}-{part}")
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


def run_multinode(
    opts: argparse.Namespace, s: dict[str, Any], run_idx: int, outf: IO[str]
) -> list[Record]:
    """The whole multinode scenario in one run: 1 node (SQLite, then Redis) against 2 nodes on
    one Redis (fan-out and steady, one room), then the cost of a say by persistence."""
    m = s["multinode"]
    records: list[Record] = []

    try:
        rev: str | None = subprocess.run(
            ["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        rev = None

    def emit(rec: Record) -> None:
        rec["wschat_git"] = rev
        rec["redis_version"] = opts.redis_version
        rel = os.path.relpath(opts.logdir, ROOT)
        rec["logdir"] = opts.logdir if rel.startswith("..") else rel
        outf.write(json.dumps(rec) + "\n")
        outf.flush()
        log(f"  multinode-{rec['part']}-{rec['setup']}-{run_idx}: {short(rec)}")
        records.append(rec)

    # One Redis without persistence for the fan-out part; every phase gets fresh nodes and room.
    redis: Redis | None = None
    try:
        started = Redis(opts, f"multinode-{run_idx}-traffic", "none")
        try:
            redis = started.start()
        except Exception as e:
            log(f"  multinode: {e}")
            started.stop()
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
