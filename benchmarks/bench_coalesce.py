"""Coalescing over loopback: 10,000 concurrent single-text ``embed()`` calls, 1536-d, base64.

asyncembed ``embed()`` against the official ``openai`` client (one request per text, at
16, 64 and 256 calls in flight: the best is the baseline) and against a raw aiohttp
client that sends pre-formed 256-text batches (the ceiling); asyncio and uvloop.
"""

from __future__ import annotations

from typing import Any

from benchmarks.runner import (
    MODEL,
    BenchResult,
    Options,
    Peer,
    Server,
    Table,
    fmt,
    throughput_table,
)

NAME = "coalesce"
TITLE = "Coalescing: concurrent single-text calls"
SWEEP = (16, 64, 256)


def run(opts: Options) -> BenchResult:
    """Run the peers against one server and compare them."""
    n = opts.size(10_000, 2_000)
    n_openai = opts.size(1_000, 100)
    rounds = opts.size(5, 1)
    openai_rounds = opts.size(3, 1)
    result = BenchResult(
        name=NAME,
        title=TITLE,
        question=(
            f"{n:,} concurrent `await embedder.embed(text)` calls (1536-d, base64), "
            "against the official `openai` client making one request per text (its default "
            f"settings, at {', '.join(map(str, SWEEP))} calls in flight; the best is the "
            "baseline), and a raw aiohttp client sending pre-formed 256-text batches (the "
            "ceiling: no coalescing, checks or retries). asyncembed and the raw client keep "
            "16 requests in flight (asyncembed's default `max_concurrency`). asyncio's own "
            "event loop, and uvloop."
        ),
    )
    with Server(dimensions=1536) as server:
        base: dict[str, Any] = {
            "base_url": server.base_url,
            "model": MODEL,
            "dimensions": 1536,
            "rounds": rounds,
        }
        ceiling = Peer(
            "raw aiohttp, 256-text batches (ceiling)",
            "raw_aiohttp",
            {**base, "mode": "batched", "n": n, "batch": 256},
        ).run(server)
        ours = Peer(
            "asyncembed `embed()`", "asyncembed_client", {**base, "mode": "embed", "n": n}
        ).run(server)
        ceiling_uv = Peer(
            "raw aiohttp, 256-text batches, uvloop",
            "raw_aiohttp",
            {**base, "mode": "batched", "n": n, "batch": 256, "loop": "uvloop"},
        ).run(server)
        ours_uv = Peer(
            "asyncembed `embed()`, uvloop",
            "asyncembed_client",
            {**base, "mode": "embed", "n": n, "loop": "uvloop"},
        ).run(server)
        sweep = [
            Peer(
                f"openai `embeddings.create`, 1 text/call, {c} in flight",
                "openai_client",
                {**base, "mode": "embed", "n": n_openai, "concurrency": c, "rounds": openai_rounds},
            ).run(server)
            for c in SWEEP
        ]
        floor = Peer(
            "asyncio only: gather of awaits, no I/O (floor)",
            "asyncio_floor",
            {**base, "mode": "futures", "n": n},
        ).run()
    ran = [p for p in sweep if p.line is not None]
    best = max(ran, key=lambda p: p.line["texts_per_s"] if p.line else 0.0) if ran else sweep[1]
    peers = [ceiling, ours, ceiling_uv, ours_uv, best, floor]
    result.raw = {p.label: p.line or {"error": p.error} for p in [*peers, *sweep]}
    result.tables.append(
        throughput_table(
            f"{n:,} concurrent calls ({n_openai:,} for openai, its best of the sweep), "
            f"min of {rounds} rounds",
            peers,
            [("ceiling", ceiling), ("openai", best)],
            rounds=rounds,
        )
    )
    result.tables.append(_sweep_table(sweep, n_openai, openai_rounds))
    if ours.line and ceiling.line:
        share = ours.line["texts_per_s"] / ceiling.line["texts_per_s"]
        result.target("asyncembed texts/s vs ceiling", f"{share:.2f}x", ">= 0.8x", share >= 0.8)
    if ours.line and best.line:
        speedup = ours.line["texts_per_s"] / best.line["texts_per_s"]
        result.target(
            "asyncembed texts/s vs openai at its best",
            f"{speedup:,.0f}x",
            ">= 60x",
            speedup >= 60,
        )
    if ours.line:
        result.notes.append(f"asyncembed sent {ours.line['requests']} requests (warm-up included).")
    if ceiling.line and floor.line and ours.line:
        both = ceiling.line["cpu_us_per_text"] + floor.line["cpu_us_per_text"]
        result.notes.append(
            f"{n:,} tasks awaiting futures cost {floor.line['cpu_us_per_text']:.1f} µs/text "
            "with no I/O at all (the floor row): any client serving that many concurrent "
            "`await`s pays it, while the raw ceiling, which sends pre-formed batches, does "
            f"not. Ceiling + floor = {both:.1f} µs/text; asyncembed's `embed()` costs "
            f"{ours.line['cpu_us_per_text']:.1f}. The `coalescers` benchmark measures the "
            "machinery alone, without sockets."
        )
    result.notes += [
        f"openai made {n_openai:,} calls per round instead of {n:,}: at about a thousand "
        "requests/s the full count takes too long. Figures are per text, so they compare "
        "directly. With all 1,000 calls in flight at once it saturates (a few hundred "
        "texts/s, and past ~1,000 its 5 s connect timeout fires), so the baseline is the "
        "best of the sweep, not that.",
        "Client CPU is `time.process_time()` of the peer process around the timed rounds "
        "(all its threads). Server CPU is the server process's CPU time over the whole peer "
        "run (warm-up included) per text; on 2 cores client and server compete.",
    ]
    return result


def _sweep_table(sweep: list[Peer], n: int, rounds: int) -> Table:
    table = Table(
        title=f"openai client, {n:,} calls, by calls in flight (min of {rounds} rounds)",
        columns=["in flight", "texts/s", "client CPU µs/text", "peak RSS MB"],
    )
    for concurrency, peer in zip(SWEEP, sweep, strict=True):
        if peer.line is None:
            table.rows.append([str(concurrency), f"failed: {peer.error}", "", ""])
            continue
        table.rows.append(
            [
                str(concurrency),
                fmt(peer.line["texts_per_s"]),
                fmt(peer.line["cpu_us_per_text"]),
                fmt(peer.line["peak_rss_mb"]),
            ]
        )
    return table
