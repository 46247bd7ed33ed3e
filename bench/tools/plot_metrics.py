#!/usr/bin/env python3
"""Draw the panels of contrib/grafana/wschat.json from a soak run's scrapes of /metrics.

    python -m tests.soak.soak --clients 200 --duration 60 --metrics-out /tmp/scrapes.jsonl
    python bench/tools/plot_metrics.py /tmp/scrapes.jsonl docs/metrics-soak.png

A real Grafana is not needed to see what the dashboard shows: each panel here computes what
its PromQL does (rate() over the scrape interval, histogram_quantile over the buckets).
Needs matplotlib (bench/requirements.txt); wschat itself does not.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Scrape = tuple[float, dict[str, float]]


def load(path: Path) -> list[Scrape]:
    scrapes = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        scrapes.append((float(row["t"]), row["samples"]))
    return scrapes


def gauge(scrapes: list[Scrape], key: str) -> tuple[list[float], list[float]]:
    return [t for t, _ in scrapes], [s.get(key, 0.0) for _, s in scrapes]


def rate(scrapes: list[Scrape], match: str) -> tuple[list[float], list[float]]:
    """Per-second increase of the sum of every series whose key starts with `match`."""

    def total(samples: dict[str, float]) -> float:
        return sum(v for k, v in samples.items() if k == match or k.startswith(match + "{"))

    times, values = [], []
    for (t0, s0), (t1, s1) in itertools.pairwise(scrapes):
        times.append(t1)
        values.append(max(0.0, total(s1) - total(s0)) / (t1 - t0))
    return times, values


def quantile(scrapes: list[Scrape], name: str, q: float) -> tuple[list[float], list[float]]:
    """histogram_quantile(q, rate(name_bucket[interval])) between consecutive scrapes."""
    prefix = f'{name}_bucket{{le="'
    times, values = [], []
    for (_, s0), (t1, s1) in itertools.pairwise(scrapes):
        buckets = sorted(
            (float(k[len(prefix) : -2]), s1[k] - s0.get(k, 0.0)) for k in s1 if k.startswith(prefix)
        )
        count = buckets[-1][1] if buckets else 0.0
        if count <= 0:
            continue
        rank = q * count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in buckets:
            if cumulative >= rank:
                if bound == float("inf"):
                    value = lower_bound
                else:
                    span = cumulative - lower_count
                    frac = (rank - lower_count) / span if span else 1.0
                    value = lower_bound + (bound - lower_bound) * frac
                times.append(t1)
                values.append(value * 1000)
                break
            lower_bound, lower_count = bound, cumulative
    return times, values


def codes(scrapes: list[Scrape], name: str) -> list[str]:
    found: set[str] = set()
    for _, samples in scrapes:
        found.update(k for k in samples if k.startswith(name + "{"))
    return sorted(found)


def main(argv: list[str]) -> int:
    source, target = Path(argv[1]), Path(argv[2])
    scrapes = load(source)
    fig, axes = plt.subplots(3, 2, figsize=(13, 10), constrained_layout=True)
    fig.suptitle(f"wschat: {argv[3] if len(argv) > 3 else source.name} (the Grafana panels)")

    ax = axes[0][0]
    ax.plot(*gauge(scrapes, "wschat_connections"), label="wschat_connections")
    ax.plot(*gauge(scrapes, "wschat_rooms"), label="wschat_rooms")
    ax.set_title("Connections and rooms")
    ax.legend()

    ax = axes[0][1]
    ax.plot(*rate(scrapes, "wschat_messages_received_total"), label="received (says)")
    ax.plot(*rate(scrapes, "wschat_messages_delivered_total"), label="delivered (to members)")
    ax.set_title("Messages per second")
    ax.set_yscale("log")
    ax.legend()

    ax = axes[1][0]
    times, values = rate(scrapes, "wschat_bytes_sent_total")
    ax.plot(times, [v / 1e6 for v in values], label="wschat_bytes_sent_total")
    ax.set_title("Output, MB/s")
    ax.legend()

    ax = axes[1][1]
    ax.plot(*rate(scrapes, "wschat_connections_opened_total"), label="opened")
    for key in codes(scrapes, "wschat_connections_closed_total"):
        ax.plot(*rate(scrapes, key), label="closed " + key[key.index("{") :])
    ax.set_title("Connections opened and closed per second")
    ax.legend(fontsize="small")

    ax = axes[2][0]
    for q in (0.5, 0.99):
        ax.plot(*quantile(scrapes, "wschat_history_append_seconds", q), label=f"p{q * 100:g}")
    ax.set_title("History append, ms")
    ax.legend()

    ax = axes[2][1]
    lines = codes(scrapes, "wschat_errors_total")
    for key in lines:
        ax.plot(*rate(scrapes, key), label=key[key.index("{") :])
    ax.plot(*rate(scrapes, "wschat_slow_consumer_closes_total"), label="slow consumer closes")
    ax.set_title("Refusals and slow-consumer closes per second")
    ax.legend(fontsize="small")

    for row in axes:
        for ax in row:
            ax.set_xlabel("seconds into the soak")
            ax.grid(alpha=0.3)
    fig.savefig(target, dpi=80)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
