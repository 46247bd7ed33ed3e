# ruff: noqa: RUF001  (the table uses typographic multiplication signs)
"""The Targets table: wschat's medians against the requirements of the benchmark issue."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from .settings import Record

Row = tuple[str, str, bool]
MedianFn = Callable[[str, str, Callable[[Record], float | None]], float | None]


def targets(records: list[Record]) -> str:
    """The requirements of the benchmark issue, checked against this run's wschat medians."""

    def med(scen: str, srv: str, get: Callable[[Record], float | None]) -> float | None:
        vals = [
            get(r) for r in records if r.get("ok") and (r["scenario"], r["server"]) == (scen, srv)
        ]
        present = [v for v in vals if v is not None]
        return statistics.median(present) if present else None

    fan = med("fanout", "wschat", lambda r: r["deliveries_per_s"])
    fan_node = med("fanout", "node", lambda r: r["deliveries_per_s"])
    p99 = med("steady", "wschat", lambda r: r["latency_ms"]["p99"])
    p99_node = med("steady", "node", lambda r: r["latency_ms"]["p99"])
    rss = med("connect", "wschat", lambda r: r["rss_per_conn_kib"])
    held = med("idle_max", "wschat", lambda r: r["held"])
    idle_runs = [r for r in records if (r["scenario"], r["server"]) == ("idle_max", "wschat")]
    failed = sum(r.get("failed", 0) if r.get("ok") else 1 for r in idle_runs)
    rows: list[Row] = []
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


def bigroom_targets(med: MedianFn, records: list[Record]) -> list[Row]:
    rows: list[Row] = []
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
