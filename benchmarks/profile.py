"""``python -m benchmarks.profile [MODE] [--n N]``: where the client CPU goes.

Runs the asyncembed peer against the local server with cProfile around one extra round
and prints the functions with the most own time, with asyncembed's own code marked.
Not part of ``python -m benchmarks``: profiling inflates the cost of small functions.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.runner import MODEL, Server, run_peer


def main(argv: list[str] | None = None) -> None:
    """Profile one mode and print its top functions by own time."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument(
        "mode",
        nargs="?",
        default="embed",
        choices=["embed", "embed_many", "stream", "nosocket"],
        help="nosocket: embed() with a Transport returning a pre-built body (no server)",
    )
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    if args.mode == "nosocket":
        cfg = {"lib": "asyncembed", "n": args.n, "rounds": 1, "profile": True}
        line = run_peer("coalescers", {**cfg, "profile_top": args.top})
        _print(args.mode, args.n, line)
        return
    with Server(dimensions=1536) as server:
        line = run_peer(
            "asyncembed_client",
            {
                "base_url": server.base_url,
                "model": MODEL,
                "dimensions": 1536,
                "mode": args.mode,
                "n": args.n,
                "rounds": 1,
                "profile": True,
                "profile_top": args.top,
            },
        )
    _print(args.mode, args.n, line)


def _print(mode: str, n: int, line: dict[str, Any]) -> None:
    print(f"{mode}, {n:,} texts: {line['cpu_us_per_text']:.1f} µs/text unprofiled")
    print(f"{'own %':>6} {'cum %':>6} {'calls':>8}  function")
    own_total = 0.0
    for row in line["profile"]:
        mark = "*" if row["function"].startswith("asyncembed/") else " "
        if mark == "*":
            own_total += row["own_share"]
        print(
            f"{row['own_share'] * 100:6.1f} {row['cum_share'] * 100:6.1f} {row['calls']:8}"
            f" {mark}{row['function']}"
        )
    print(f"* asyncembed's own code among these: {own_total * 100:.1f}% of own time")


if __name__ == "__main__":
    main()
