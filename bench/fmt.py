# ruff: noqa: RUF001  (typographic dashes: for no value, and between the ends of a range)
"""How numbers read in the tables and in the progress log."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable

from .settings import LOADGEN_CPU, SERVER_CPU, Record


def fmt_num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" if v < 100 else f"{v:,.0f}"


def med_range(values: Iterable[float | None], fmt: Callable[[float], str]) -> str:
    """The median, with the range (min to max) in parentheses when there are several values."""
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    med = statistics.median(present)
    if len(present) == 1:
        return fmt(med)
    return f"{fmt(med)} ({fmt(min(present))}–{fmt(max(present))})"


def mib(v: float) -> str:
    return f"{v:.0f}"


def busy_cell(rs: list[Record]) -> str:
    c0 = [r.get("cpu_busy_percent", {}).get(SERVER_CPU) for r in rs]
    c1 = [r.get("cpu_busy_percent", {}).get(LOADGEN_CPU) for r in rs]
    c0 = [v for v in c0 if v is not None]
    c1 = [v for v in c1 if v is not None]
    if not c0 or not c1:
        return "–"
    return f"{statistics.median(c0):.0f} / {statistics.median(c1):.0f}"


def short(rec: Record) -> str:
    """One line on a finished run, for the progress log."""
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
