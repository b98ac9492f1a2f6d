"""Coalescers without sockets: asyncembed against aiodataloader, batchlet and the floor.

No HTTP at all, so only the coalescing machinery differs: every library gets the same
batch work (one pre-built base64 body of n x 1536 vectors decoded with msgspec and one
``np.frombuffer``), and 10,000 callers each await one text in their own task.
"""

from __future__ import annotations

from typing import Any

from benchmarks.peers._peer import median
from benchmarks.runner import BenchResult, Options, Peer, Table, fmt

NAME = "coalescers"
TITLE = "Coalescers without sockets: the machinery alone"

LIBS = [
    ("floor: tasks awaiting futures, set 256 at a time", "floor"),
    ("aiodataloader 0.4.3 `DataLoader(max_batch_size=256, cache=False)`", "aiodataloader"),
    ("batchlet 0.1.0 `AsyncBatcher` (256 items, 5 ms, 16 batches in flight)", "batchlet"),
    ("asyncembed `embed()` (defaults; a `Transport` returning the body)", "asyncembed"),
]
LOOPS = ["asyncio", "uvloop"]
TARGET_US = 2.0


def run(opts: Options) -> BenchResult:
    """Each library and loop in a fresh process per run; medians over the runs."""
    n = opts.size(10_000, 2_000)
    rounds = opts.size(7, 1)
    runs = opts.size(3, 1)
    result = BenchResult(
        name=NAME,
        title=TITLE,
        question=(
            f"{n:,} concurrent callers, each in its own task, each awaiting one text; "
            "batches of up to 256. Every library gets the same batch work: a pre-built "
            "OpenAI-shaped base64 body of n x 1536 vectors, decoded with one msgspec pass "
            "and one `np.frombuffer` (asyncembed: its `Transport` returns that body and its "
            "own codec decodes and checks it). The floor is no library: the tasks await "
            "plain futures that a resolver sets 256 at a time after the same decode. "
            f"A fresh process per library, loop and run; {runs} runs of {rounds} rounds "
            "(after a warm-up round); the figures are the median run's median round."
        ),
    )
    lines: dict[tuple[str, str], list[dict[str, Any]]] = {}
    errors: dict[tuple[str, str], str] = {}
    for _ in range(runs):  # interleaved, so a noisy minute hits every library alike
        for loop in LOOPS:
            for _label, lib in LIBS:
                peer = Peer(
                    lib,
                    "coalescers",
                    {"lib": lib, "loop": loop, "mode": "throughput", "n": n, "rounds": rounds},
                ).run()
                if peer.line is None:
                    errors[(lib, loop)] = peer.error
                else:
                    lines.setdefault((lib, loop), []).append(peer.line)
    behaviour = {
        lib: Peer(lib, "coalescers", {"lib": lib, "mode": "behaviour"}).run()
        for _label, lib in LIBS[1:]
    }
    result.raw = {
        "throughput": {f"{lib} {loop}": runs_ for (lib, loop), runs_ in lines.items()},
        "errors": {f"{lib} {loop}": e for (lib, loop), e in errors.items()},
        "behaviour": {lib: p.line or {"error": p.error} for lib, p in behaviour.items()},
    }
    cost = {
        key: median([line["cpu_us_per_text"] for line in runs_]) for key, runs_ in lines.items()
    }
    rate = {key: median([line["texts_per_s"] for line in runs_]) for key, runs_ in lines.items()}
    table = Table(
        title=f"{n:,} callers, µs of CPU per text (median of {runs} runs)",
        columns=[
            "coalescer",
            "loop",
            "µs/text",
            "above floor",
            "texts/s",
            "runs, µs/text",
            "peak RSS MB",
        ],
    )
    for loop in LOOPS:
        floor = cost.get(("floor", loop))
        for label, lib in LIBS:
            key = (lib, loop)
            if key not in cost:
                table.rows.append([label, loop, f"failed: {errors.get(key, '?')}", "", "", "", ""])
                continue
            above = "-" if lib == "floor" or floor is None else f"{cost[key] - floor:+.1f}"
            table.rows.append(
                [
                    label,
                    loop,
                    fmt(cost[key]),
                    above,
                    fmt(rate[key]),
                    ", ".join(fmt(line["cpu_us_per_text"]) for line in lines[key]),
                    fmt(max(line["peak_rss_mb"] for line in lines[key])),
                ]
            )
    result.tables.append(table)
    result.tables.append(_behaviour_table(behaviour))
    ours, floor = cost.get(("asyncembed", "asyncio")), cost.get(("floor", "asyncio"))
    if ours is not None and floor is not None:
        result.target(
            "asyncembed `embed()` above the floor (asyncio)",
            f"{ours - floor:+.1f} µs/text",
            f"<= {TARGET_US:g} µs/text",
            ours - floor <= TARGET_US,
        )
    uv = cost.get(("asyncembed", "uvloop"))
    if ours is not None and uv is not None:
        result.notes.append(
            f"uvloop: asyncembed `embed()` costs {uv:.1f} µs/text on uvloop against "
            f"{ours:.1f} on asyncio's own loop ({ours / uv:.2f}x)."
        )
    result.notes += [
        "The peers' batch functions return the rows of the decoded matrix (views: a kept "
        "vector keeps its whole 256 x 1536 batch alive); asyncembed gives every caller a "
        "vector of its own, and its codec also checks the body (index coverage, one width, "
        "finite values), so its figure includes work the others skip.",
        "aiodataloader dispatches every batch on the next loop turn, all at once (no bound "
        "on batches in flight); batchlet and asyncembed hold at most 16.",
        "Peers run with `OPENBLAS_NUM_THREADS=1` (see the method section).",
    ]
    return result


def _behaviour_table(behaviour: dict[str, Peer]) -> Table:
    table = Table(
        title="Behaviour, measured (one probe each, same batch work)",
        columns=[
            "coalescer",
            "one of 8 callers cancelled in flight: others answered",
            "a text asked twice at once: sent",
            "most batches in flight (24 batches of callers)",
        ],
    )
    names = {lib: label.split(" `")[0].split(" (")[0] for label, lib in LIBS}
    for lib, peer in behaviour.items():
        line = peer.line
        if line is None:
            table.rows.append([names[lib], f"failed: {peer.error}", "", ""])
            continue
        cancel = line["cancel"]
        harmed = f"{cancel['answered']} of {cancel['mates']}"
        if cancel["errors"]:
            harmed += f" ({', '.join(cancel['errors'])})"
        sent = line["duplicate_sent"]
        table.rows.append(
            [
                names[lib],
                harmed,
                "once" if sent == 1 else f"{sent} times",
                f"{line['max_in_flight']}"
                + (" (unbounded)" if line["max_in_flight"] >= line["batches"] else ""),
            ]
        )
    return table
