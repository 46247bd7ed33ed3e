# ruff: noqa: RUF001  (the tables use typographic multiplication signs and dashes)
"""The markdown tables of the multinode scenario: which setup each number is (nodes, clients,
ONE room, senders, Redis persistence) and where each process ran."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any

from .fmt import busy_cell, fmt_ms, fmt_num, med_range
from .settings import (
    GEN_LABELS,
    LOADGEN_CPU,
    MULTINODE_SETUPS,
    REDIS_PERSISTENCE_LABELS,
    SAY_SETUPS,
    SERVER_CPU,
    Record,
    all_cpus,
    multinode_layout,
)

OkFn = Callable[[str, str], list[Record]]


def multinode_sections(
    records: list[Record], s: dict[str, Any], nproc: int | None = None
) -> list[str]:
    """The multinode tables, for a machine of `nproc` CPUs (by default this one's)."""
    nproc = nproc or os.cpu_count()
    m = s["multinode"]
    recs = [r for r in records if r["scenario"] == "multinode"]

    def runs(part: str, setup: str) -> list[Record]:
        return [r for r in recs if (r["part"], r["setup"]) == (part, setup)]

    def ok(part: str, setup: str) -> list[Record]:
        return [r for r in runs(part, setup) if r.get("ok")]

    def runs_cell(part: str, setup: str) -> str:
        n_all, n_ok = len(runs(part, setup)), len(ok(part, setup))
        return f"{n_ok}" + (f" (+{n_all - n_ok} failed)" if n_all > n_ok else "")

    def cpu(rs: list[Record], label: str) -> str:
        vals = [process_cpu(r, label) for r in rs]
        return med_range(vals, pct)

    def problems(part: str, setup: str) -> str:
        rs = runs(part, setup)
        if not rs:
            return "–"
        n = sum(r.get("log_problems", {}).get("before_stop", 0) for r in rs)
        at_stop = sum(r.get("log_problems", {}).get("at_stop", 0) for r in rs)
        return f"{n}" + (f" (+{at_stop} at stop)" if at_stop else "")

    def lost_cell(rs: list[Record]) -> str:
        if not rs:
            return "–"
        stalls = sum(r["stalls"] for r in rs)
        return f"{sum(r['lost'] for r in rs):,}" + (f" ({stalls} stalls)" if stalls else "")

    f, st, sy = m["fanout"], m["steady"], m["say"]
    one, two = multinode_layout(1, nproc), multinode_layout(2, nproc)
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
        f"unpinned (`taskset -c {two['redis']}`). This machine has {nproc} CPUs, so "
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

    def traffic_table(part: str) -> list[str]:
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
                f"{med_range([r['gen_cpu_percent_total'] for r in rs], pct)} | "
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
        f"{all_cpus(nproc)}`), a fresh redis-server and directory per row. Each sender is alone "
        "in a "
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
        errs: dict[str, int] = {}
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


def multinode_log_kinds(recs: list[Record]) -> list[str]:
    """Each kind of error/warning line of the node logs once, with where it was logged."""
    kinds: dict[str, dict[str, Any]] = {}
    seen: set[tuple[int, str]] = set()
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


def multinode_redis_limit(recs: list[Record], ok: OkFn) -> list[str]:
    """Redis's CPU per stored message, measured, and the linear extrapolation to one core."""
    rows: list[str] = []
    for part, setup, label, rate_key in (
        ("fanout", "1node-redis", "fan-out, 1 node (1 subscriber)", "messages_per_s"),
        ("fanout", "2nodes-redis", "fan-out, 2 nodes (2 subscribers)", "messages_per_s"),
        ("say_concurrent", "redis-none", "32 senders, no persistence", "says_per_s"),
        ("say_concurrent", "redis-everysec", "32 senders, `everysec`", "says_per_s"),
        ("say_concurrent", "redis-always", "32 senders, `always`", "says_per_s"),
    ):
        rs = ok(part, setup)
        pairs: list[tuple[float, float]] = []
        for r in rs:
            rate, c = r[rate_key], process_cpu(r, "redis")
            if rate and c is not None:
                pairs.append((rate, c))
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


def k0(v: float) -> str:
    return fmt_num(v)


def pct(v: float) -> str:
    return f"{v:.0f}"


def process_cpu(r: Record, label: str) -> float | None:
    """The CPU % of one watched process, under either key a multinode record may use."""
    by = r["cpu_percent_by_process"] if "cpu_percent_by_process" in r else r.get("cpu_percent", {})
    value: float | None = by.get(label)
    return value
