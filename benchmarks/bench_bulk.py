"""Bulk: ``embed_many`` and ``stream`` on 100,000 texts against the raw batched ceiling."""

from __future__ import annotations

from typing import Any

from benchmarks.runner import MODEL, BenchResult, Options, Peer, Server, throughput_table

NAME = "bulk"
TITLE = "Bulk: embed_many and stream"


def run(opts: Options) -> BenchResult:
    """Run the ceiling, ``embed_many`` and ``stream`` against one server."""
    n = opts.size(100_000, 5_000)
    rounds = opts.size(3, 1)
    result = BenchResult(
        name=NAME,
        title=TITLE,
        question=(
            f"{n:,} texts (1536-d, base64) through `embed_many` (one matrix) and `stream` "
            "(blocks copied into one preallocated matrix), against a raw aiohttp client "
            "sending pre-formed 256-text batches, 16 in flight, each copied into one "
            "preallocated matrix (the ceiling). Defaults everywhere: 256 texts per request, "
            "16 requests in flight."
        ),
    )
    with Server(dimensions=1536) as server:
        base: dict[str, Any] = {
            "base_url": server.base_url,
            "model": MODEL,
            "dimensions": 1536,
            "rounds": rounds,
            "n": n,
        }
        ceiling = Peer(
            "raw aiohttp, 256-text batches (ceiling)",
            "raw_aiohttp",
            {**base, "mode": "batched", "batch": 256},
        ).run(server)
        many = Peer(
            "asyncembed `embed_many()`", "asyncembed_client", {**base, "mode": "embed_many"}
        ).run(server)
        stream = Peer("asyncembed `stream()`", "asyncembed_client", {**base, "mode": "stream"}).run(
            server
        )
    peers = [ceiling, many, stream]
    result.raw = {p.label: p.line or {"error": p.error} for p in peers}
    result.tables.append(
        throughput_table(
            f"{n:,} texts, min of {rounds} rounds", peers, [("ceiling", ceiling)], rounds=rounds
        )
    )
    for peer in (many, stream):
        if peer.line is None:
            continue
        name = peer.label.split("`")[1]
        if ceiling.line:
            share = peer.line["texts_per_s"] / ceiling.line["texts_per_s"]
            result.target(f"{name} texts/s vs ceiling", f"{share:.2f}x", ">= 0.95x", share >= 0.95)
        cpu = peer.line["cpu_us_per_text"]
        result.target(f"{name} client CPU per text", f"{cpu:.1f} µs", "<= 11 µs", cpu <= 11)
    result.notes += [
        "Client and server share the machine's 2 cores, so texts/s is bounded by their sum "
        "of CPU per text as much as by either one; the client-CPU ratio is the steadier "
        "figure on a noisy machine.",
        "The warm-up round (not timed) uses the full size too.",
    ]
    return result
