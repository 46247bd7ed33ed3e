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
    python bench/run.py report --results bench/results/latest-full.jsonl --docs docs/benchmarks.md

`report` renders the page from saved results, as the run that wrote them did. Only the standard
library is used here; the peers need a Python with autobahn and websockets (--python, by default
the interpreter next to --twistd) and Node with `npm ci` done in bench/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from .docs import kept_sections, load_results, render_docs
from .harness import CGEN, CGEN_SRC, build_cgen, generator_for, log, raise_fd_limit_and_pin
from .multinode import run_multinode
from .probe import check_python, machine, redis_version, versions, wschat_extra_args
from .scenarios import run_one
from .settings import (
    ALL_SCENARIOS,
    ALL_SERVERS,
    BENCH,
    OPT_IN_SCENARIOS,
    QUICK_SKIPS,
    ROOT,
    Record,
    runs_here,
    settings,
)
from .tables import summarize


def run_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bench/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    return ap


def report_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bench/run.py report",
        description="Render docs/benchmarks.md from a results file, without running anything.",
    )
    ap.add_argument("--results", required=True, help="a results file (bench/results/*.jsonl)")
    ap.add_argument("--docs", required=True, help="the markdown file to write")
    return ap


def report(argv: Sequence[str]) -> int:
    opts = report_parser().parse_args(argv)
    meta, records = load_results(opts.results)
    name = os.path.relpath(os.path.abspath(opts.results), ROOT)
    page = render_docs(meta, records, name) + kept_sections(opts.docs)
    with open(opts.docs, "w") as f:
        f.write(page)
    log(f"bench: wrote {opts.docs} from {opts.results}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return report(argv[1:])
    return run(argv)


def select(
    ap: argparse.ArgumentParser, opts: argparse.Namespace, s: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """The servers and scenarios to run, less those this machine cannot (in opts.skipped)."""
    servers = [x for x in opts.servers.split(",") if x]
    if opts.scenarios:
        scenarios = [x for x in opts.scenarios.split(",") if x]
    else:
        scenarios = [
            x
            for x in ALL_SCENARIOS
            if x not in OPT_IN_SCENARIOS and not (opts.quick and x in QUICK_SKIPS)
        ]
    known = list(ALL_SCENARIOS)
    for size in opts.bigroom_sizes:
        key = f"bigroom_join_{size}"
        s[key] = dict(clients=size, room_size=size, concurrency=50)
        scenarios.append(key)
        known.append(key)
    for x in servers:
        if x not in ALL_SERVERS:
            ap.error(f"unknown server {x}")
    for x in scenarios:
        if x not in known:
            ap.error(f"unknown scenario {x}")

    opts.skipped = []
    opts.wschat_extra = opts.wschat_arg
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
    return servers, scenarios


def run(argv: Sequence[str]) -> int:
    ap = run_parser()
    opts = ap.parse_args(argv)
    hard = raise_fd_limit_and_pin()

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
    opts.twistd = os.path.abspath(opts.twistd)
    if opts.python is None:
        cand = os.path.join(os.path.dirname(opts.twistd), "python")
        opts.python = cand if os.path.exists(cand) else sys.executable
    servers, scenarios = select(ap, opts, s)
    for x in opts.skipped:
        log("bench: skipped " + x)
    if not servers:
        log("bench: no server to run")
        return 2

    os.makedirs(opts.out, exist_ok=True)
    started = datetime.datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    kind = "quick" if opts.quick else "full"
    results_path = os.path.join(opts.out, f"{stamp}-{kind}.jsonl")
    opts.logdir = os.path.join(opts.out, "logs", f"{stamp}-{kind}")
    os.makedirs(opts.logdir, exist_ok=True)
    command = "python bench/run.py " + " ".join(argv)
    log(
        f"bench: {kind}, servers {servers}, scenarios {scenarios}, {s['runs']} run(s); "
        f"fd limit {hard}; results {results_path}"
    )

    t0 = time.monotonic()
    meta: Record = {
        "meta": True,
        "command": command,
        "date": started.date().isoformat(),
        "quick": opts.quick,
        "servers": servers,
        "scenarios": scenarios,
        "machine": machine(),
        "versions": versions(opts),
        "settings": s,
        "wschat_args": opts.wschat_extra,
        "generator": {m: generator_for(opts, m) for m in ("fanout", "steady", "connect")},
        "addrs": opts.addrs,
        "gen_spin_us": opts.gen_spin_us,
        "skipped": opts.skipped,
        "redis_server": opts.redis_version,
    }
    records: list[Record] = []
    with open(results_path, "w") as outf:
        outf.write(json.dumps(meta) + "\n")
        for scen in scenarios:
            log(f"bench: scenario {scen}")
            for run_idx in range(s["runs_by_scenario"].get(scen, s["runs"])):
                for srv in servers:
                    if not runs_here(srv, scen):
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
    log(f"bench: done in {time.monotonic() - t0:.0f} s; raw results in {results_path}")
    if opts.docs:
        # keep the raw results of the documented run next to the others, under a fixed name
        # that is not git-ignored
        latest = os.path.join(opts.out, f"latest-{kind}.jsonl")
        shutil.copyfile(results_path, latest)
        page = render_docs(meta, records, os.path.relpath(latest, ROOT)) + kept_sections(opts.docs)
        with open(opts.docs, "w") as f:
            f.write(page)
        log(f"bench: wrote {opts.docs}")
    return 0 if all(r.get("ok") for r in records) else 1
