# ruff: noqa: RUF001  (the tables use typographic multiplication signs and dashes)
"""The markdown tables of the single-server scenarios: each cell a median over the runs, with
the range."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from .fmt import busy_cell, fmt_ms, fmt_num, med_range, mib
from .multinode_tables import multinode_sections
from .settings import BIGROOM_PEERS, GEN_LABELS, SERVER_LABELS, Record

OkFn = Callable[[str, str], list[Record]]
RunsCellFn = Callable[[str, str], str]
GenNoteFn = Callable[..., list[str]]


def summarize(
    records: list[Record],
    servers: list[str],
    scenarios: list[str],
    s: dict[str, Any],
    nproc: int | None = None,
) -> str:
    """The results section: one table per scenario family, in a fixed order."""
    by: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        by.setdefault((r["scenario"], r["server"]), []).append(r)

    def ok(scen: str, srv: str) -> list[Record]:
        return [r for r in by.get((scen, srv), []) if r.get("ok")]

    def failed(scen: str, srv: str) -> int:
        return len(by.get((scen, srv), [])) - len(ok(scen, srv))

    def runs_cell(scen: str, srv: str) -> str:
        n_ok, n_bad = len(ok(scen, srv)), failed(scen, srv)
        return f"{n_ok}" + (f" (+{n_bad} failed)" if n_bad else "")

    def node_median(scen: str, key: str) -> float | None:
        rs = ok(scen, "node")
        vals = [r[key] for r in rs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def gen_note(*scens: str) -> list[str]:
        gens = sorted(
            {r.get("generator", "node") for sc in scens for srv in servers for r in ok(sc, srv)}
        )
        if not gens:
            return []
        return ["Load generator: " + ", ".join(GEN_LABELS.get(g, g) for g in gens) + ".", ""]

    lines: list[str] = []
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
                f"{med_range([r['rss_per_conn_kib'] for r in rs], two)} | "
                f"{med_range([r['rss_kib'] / 1024 if r['rss_kib'] else None for r in rs], mib)} | "
                f"{sum(r['failed'] for r in rs) if rs else '–'} |"
            )
        lines.append("")
    lines += bigroom_sections(scenarios, servers, s, ok, runs_cell, gen_note)
    if "multinode" in scenarios:
        lines += multinode_sections(records, s, nproc)
    return "\n".join(lines)


def bigroom_join_keys(scenarios: list[str]) -> list[str]:
    keys = [x for x in scenarios if x.startswith("bigroom_join")]
    return sorted(keys, key=lambda k: (k != "bigroom_join", k != "bigroom_join_max", k))


def bigroom_sections(
    scenarios: list[str],
    servers: list[str],
    s: dict[str, Any],
    ok: OkFn,
    runs_cell: RunsCellFn,
    gen_note: GenNoteFn,
) -> list[str]:
    lines: list[str] = []
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
                    f"{med_range([r['connect_seconds'] for r in rs], two)} | "
                    f"{med_range([r['connect_per_s'] for r in rs], k0)} | "
                    f"{med_range([r['rss_per_conn_kib'] for r in rs], two)} | "
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
                    f"{med_range([r['server_cpu_percent'] for r in rs], pct)} |"
                )
        lines.append("")
    if "bigroom_storm" in scenarios:
        st = s["bigroom_storm"]
        rs = ok("bigroom_storm", "wschat")
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
            f"{med_range([r['back_seconds_from_kill'] for r in rs], one)} | "
            f"{med_range([r['restart_seconds'] for r in rs], one)} | "
            f"{med_range([r['acked'] for r in rs], k0)} | "
            f"{sum(r['lost'] for r in rs) if rs else '–'} | "
            f"{sum(r['duplicates'] for r in rs) if rs else '–'} | "
            f"{sum(r['recovered_false'] for r in rs) if rs else '–'} | "
            f"{med_range([r['peak_rss_kib'] / 1024 for r in rs], mib)} | "
            f"{med_range([(r['rss_before_kib'] or 0) / 1024 for r in rs], mib)} |",
            "",
        ]
    return lines


def k0(v: float) -> str:
    return fmt_num(v)


def pct(v: float) -> str:
    return f"{v:.0f}"


def one(v: float) -> str:
    return f"{v:.1f}"


def two(v: float) -> str:
    return f"{v:.2f}"
