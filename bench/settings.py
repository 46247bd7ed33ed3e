"""What the benchmark runs: the servers, the scenarios, their sizes, and the CPUs they get."""

from __future__ import annotations

import os
from typing import Any

# One run's (or the settings line's) JSON object, as written to bench/results/*.jsonl.
Record = dict[str, Any]

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)

SERVER_CPU = "0"
LOADGEN_CPU = "1"
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
TRAFFIC_SCENARIOS = ("fanout", "fanout2", "steady", "bigroom_fanout")
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
GEN_LABELS = {"c": "C (`bench/cgen/loadgen`)", "node": "Node (`bench/loadgen.js`, `ws`)"}


def all_cpus(nproc: int | None = None) -> str:
    """`taskset -c` for every CPU ("unpinned"). Explicit, because the orchestrator pins itself
    (and so its children) to LOADGEN_CPU."""
    return f"0-{(nproc or os.cpu_count() or 1) - 1}"


# One node against two on one Redis (run without persistence): the fan-out and steady figures.
MULTINODE_SETUPS: list[dict[str, Any]] = [
    dict(key="1node-sqlite", label="1 node, SQLite (no Redis)", nodes=1, redis=False),
    dict(key="1node-redis", label="1 node + Redis", nodes=1, redis=True),
    dict(key="2nodes-redis", label="2 nodes + Redis", nodes=2, redis=True),
]
# What the ack of a `say` waits for. SQLite's commit (WAL, synchronous=NORMAL) does not fsync.
SAY_SETUPS: list[dict[str, Any]] = [
    dict(key="sqlite", label="SQLite (no Redis)", persistence=None),
    dict(key="redis-none", label="Redis, no persistence", persistence="none"),
    dict(key="redis-everysec", label="Redis, `appendfsync everysec`", persistence="everysec"),
    dict(key="redis-always", label="Redis, `appendfsync always`", persistence="always"),
]
REDIS_PERSISTENCE_LABELS = {
    None: "– (SQLite)",  # noqa: RUF001 (a dash for "no Redis")
    "none": "none (`--save '' --appendonly no`)",
    "everysec": "`appendonly yes`, `appendfsync everysec`",
    "always": "`appendonly yes`, `appendfsync always`",
}


def multinode_layout(nodes: int, nproc: int | None = None) -> dict[str, Any]:
    """CPU lists (taskset -c) of each process. With 2 cores there is none to spare: one node
    gets CPU 0 and its generator CPU 1, as in the other scenarios; two nodes get a core each,
    and then the generators and Redis can only share the cores with them, so they are left to
    the scheduler (all CPUs) rather than put on one node's core."""
    every = all_cpus(nproc)
    if nodes == 1:
        return dict(nodes=[SERVER_CPU], gens=[LOADGEN_CPU], redis=every)
    return dict(nodes=[SERVER_CPU, LOADGEN_CPU], gens=[every, every], redis=every)


def runs_here(server: str, scenario: str) -> bool:
    """Whether `server` takes part in `scenario`."""
    if server == "null" and scenario not in NULL_SCENARIOS:
        return False
    if scenario in WSCHAT_ONLY_SCENARIOS and server != "wschat":
        return False
    return not (scenario.startswith("bigroom") and server not in BIGROOM_PEERS)


def settings(quick: bool) -> dict[str, Any]:
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
