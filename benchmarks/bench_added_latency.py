"""Added latency: what coalescing costs one caller, alone and under web-app-like load."""

from __future__ import annotations

from typing import Any

from benchmarks.runner import MODEL, BenchResult, Options, Peer, Server, Table, fmt

NAME = "added_latency"
WINDOW_LABEL = "asyncembed `embed()`, `flush_when_idle=False`"
TITLE = "Added latency: a lone call and a steady stream of callers"


def run(opts: Options) -> BenchResult:
    """p50/p99 of ``embed()`` vs one direct request, alone and with callers arriving."""
    n_lone = opts.size(300, 50)
    n_load = opts.size(1_000, 200)
    rate = 1_000.0
    result = BenchResult(
        name=NAME,
        title=TITLE,
        question=(
            f"Latency of one `embed()` call: {n_lone} calls one after another (a lone "
            f"caller), and {n_load:,} callers arriving at a steady {rate:,.0f}/s, each "
            "awaiting its own `embed()` (a web app). The baseline sends each text as its own "
            "request with a bare aiohttp client. Server without added latency, 1536-d, "
            "base64, asyncembed defaults (`max_wait` 5 ms, `flush_when_idle` on), and "
            "with `flush_when_idle` off (every batch waits the window)."
        ),
    )
    with Server(dimensions=1536) as server:
        base: dict[str, Any] = {"base_url": server.base_url, "model": MODEL, "dimensions": 1536}
        lone_raw = Peer(
            "direct request (raw aiohttp)", "raw_aiohttp", {**base, "mode": "lone", "n": n_lone}
        ).run(server)
        lone_ours = Peer(
            "asyncembed `embed()`", "asyncembed_client", {**base, "mode": "lone", "n": n_lone}
        ).run(server)
        window = {"batching": {"flush_when_idle": False}}
        lone_window = Peer(
            WINDOW_LABEL, "asyncembed_client", {**base, "mode": "lone", "n": n_lone, **window}
        ).run(server)
        load: dict[str, Any] = {**base, "mode": "arrivals", "n": n_load, "rate": rate}
        load_raw = Peer("direct request (raw aiohttp)", "raw_aiohttp", load).run(server)
        load_ours = Peer("asyncembed `embed()`", "asyncembed_client", load).run(server)
        load_window = Peer(WINDOW_LABEL, "asyncembed_client", {**load, **window}).run(server)
    lone, loaded = (lone_raw, lone_ours, lone_window), (load_raw, load_ours, load_window)
    result.raw = {f"lone: {p.label}": p.line or {"error": p.error} for p in lone} | {
        f"load: {p.label}": p.line or {"error": p.error} for p in loaded
    }
    table = Table(
        title="Latency per call, ms",
        columns=["scenario", "client", "p50", "p99", "max", "p50 added", "p99 added", "requests"],
    )
    for scenario, (raw, *ours) in (
        (f"lone caller, {n_lone} calls", lone),
        (f"{n_load:,} callers at {rate:,.0f}/s", loaded),
    ):
        for peer in (raw, *ours):
            line = peer.line
            if line is None:
                table.rows.append([scenario, peer.label, f"failed: {peer.error}"] + [""] * 5)
                continue
            base_line = raw.line
            added = (
                (
                    f"{line['p50_ms'] - base_line['p50_ms']:+.2f}",
                    f"{line['p99_ms'] - base_line['p99_ms']:+.2f}",
                )
                if base_line and peer is not raw
                else ("-", "-")
            )
            table.rows.append(
                [
                    scenario,
                    peer.label,
                    fmt(line["p50_ms"]),
                    fmt(line["p99_ms"]),
                    fmt(line["max_ms"]),
                    *added,
                    str(line.get("requests", line["n"] + 20)),
                ]
            )
    result.tables.append(table)
    result.notes += [
        "By default a call made while nothing is in flight is sent at once "
        "(`flush_when_idle`); with it off, a lone call waits `max_wait` (5 ms) for company "
        "and then goes alone: about 5 ms on top of one request.",
        "Under load, the direct client sends one request per caller (up to 100 "
        "connections, aiohttp's default); asyncembed sends one request per batch window.",
        "`requests` includes 20 warm-up calls.",
        "Under load something is always in flight, so both settings batch alike.",
    ]
    return result
