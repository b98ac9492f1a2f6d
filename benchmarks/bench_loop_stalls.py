"""Event-loop stalls: the longest block while the largest responses are decoded."""

from __future__ import annotations

from typing import Any

from benchmarks.runner import MODEL, BenchResult, Options, Peer, Server, Table, fmt, ratio

NAME = "loop_stalls"
TITLE = "Event-loop stalls while decoding the largest responses"


def run(opts: Options) -> BenchResult:
    """A ticker task in the asyncembed peer, against the cost of decoding inline."""
    n = opts.size(2048, 256)
    dims = opts.size(3072, 1536)
    rounds = opts.size(3, 1)
    result = BenchResult(
        name=NAME,
        title=TITLE,
        question=(
            f"One `embed_many()` of {n:,} texts answered in a single {n:,} x {dims:,} "
            "response (`Batching(max_size=2048)`), float and base64, while a ticker task "
            "sleeps 1 ms in a loop and records the longest gap between its ticks: how long "
            "other coroutines (a web app's handlers) wait. The baseline is the time one "
            "call of the codec's `decode_response` takes on the same-sized body in-process: "
            "the stall if decoding ran on the loop in one go."
        ),
    )
    peers: dict[str, tuple[Peer, Peer]] = {}
    for encoding in ("base64", "float"):
        with Server(dimensions=dims) as server:
            inline = Peer(
                f"inline `decode_response`, {encoding}",
                "decode",
                {
                    "lib": "asyncembed",
                    "mode": "block",
                    "n": n,
                    "dims": [dims],
                    "encodings": [encoding],
                    "rounds": rounds,
                    "base_url": server.base_url,
                    "model": MODEL,
                },
            ).run()
            cfg: dict[str, Any] = {
                "base_url": server.base_url,
                "model": MODEL,
                "dimensions": dims,
                "mode": "stall",
                "n": n,
                "rounds": rounds,
                "encoding": encoding,
                "batching": {"max_size": 2048},
            }
            ticker = Peer(f"asyncembed `embed_many()`, {encoding}", "asyncembed_client", cfg).run(
                server
            )
        peers[encoding] = (inline, ticker)
    result.raw = {p.label: p.line or {"error": p.error} for pair in peers.values() for p in pair}
    table = Table(
        title=f"{n:,} x {dims:,} response, min of {rounds} rounds",
        columns=[
            "encoding",
            "body MB",
            "inline decode ms (baseline)",
            "longest loop block ms",
            "vs inline decode",
            "embed_many wall ms",
        ],
    )
    for encoding, (inline, ticker) in peers.items():
        decode_ms = (
            inline.line["results"][f"{encoding}-{dims}"] * 1e3 if inline.line else float("nan")
        )
        body_mb = inline.line["body_bytes"][f"{encoding}-{dims}"] / 2**20 if inline.line else 0
        if ticker.line is None:
            table.rows.append([encoding, fmt(body_mb), fmt(decode_ms), f"failed: {ticker.error}"])
            continue
        gap = ticker.line["max_gap_ms"]
        table.rows.append(
            [
                encoding,
                fmt(body_mb),
                fmt(decode_ms),
                fmt(gap),
                ratio(gap, decode_ms),
                fmt(ticker.line["wall_s"] * 1e3),
            ]
        )
    result.tables.append(table)
    result.notes += [
        "The inline baseline decodes the very body the local server sends for such a "
        "request (fetched once, then decoded in-process). The local server prints float32 "
        "values with float64 `repr` (~20 characters each), so its float bodies are about "
        "1.6x OpenAI's (10 decimals).",
        "The ticker's floor is its own 1 ms sleep; a gap near the inline decode time means "
        "decoding ran on the event loop in one piece.",
    ]
    return result
