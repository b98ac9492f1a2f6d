"""Memory: peak RSS while embedding 1,000,000 short texts into a ``.npy`` file."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from benchmarks.runner import MODEL, BenchResult, Options, Peer, Server, Table, fmt, ratio

NAME = "memory"
TITLE = "Memory: 1,000,000 texts to .npy"
TARGET_MB = 300


def run(opts: Options) -> BenchResult:
    """Peak RSS of the CLI and of ``stream()`` writing ``.npy``, beside the import floor."""
    n = opts.size(1_000_000, 20_000)
    dims = 1536
    result = BenchResult(
        name=NAME,
        title=TITLE,
        question=(
            f"Peak RSS (`ru_maxrss`) of a process that embeds {n:,} short texts "
            f"({dims}-d, base64, {n * dims * 4 / 2**30:.1f} GiB of output) into a `.npy` file: "
            "the bulk CLI (`asyncembed embed corpus.txt -o out.npy`, run in-process through "
            "`main(argv)`), and the library (`Embedder.stream` with each block appended to "
            "the file), beside an idle interpreter that has only imported them (the floor). "
            "One round each."
        ),
    )
    has_cli = importlib.util.find_spec("asyncembed._cli") is not None
    with (
        tempfile.TemporaryDirectory(prefix="asyncembed-bench-") as tmp,
        Server(dimensions=dims) as server,
    ):
        corpus = Path(tmp) / "corpus.txt"
        with corpus.open("w") as f:
            f.writelines(f"memory text {i} about the sea at night\n" for i in range(n))
        base = {"base_url": server.base_url, "model": MODEL, "n": n, "dimensions": dims}
        idle = Peer("idle interpreter, imports only (floor)", "idle", {}).run()
        peers = [idle]
        if has_cli:
            out = str(Path(tmp) / "cli.npy")
            cli = Peer(
                "CLI `asyncembed embed` -> .npy",
                "cli_npy",
                {**base, "input": str(corpus), "out": out},
            ).run(server)
            Path(out).unlink(missing_ok=True)
            peers.append(cli)
        out = str(Path(tmp) / "stream.npy")
        stream = Peer(
            "library `Embedder.stream` -> .npy",
            "asyncembed_client",
            {**base, "mode": "npy", "out": out, "rounds": 1},
        ).run(server)
        peers.append(stream)
    result.raw = {p.label: p.line or {"error": p.error} for p in peers}
    floor = idle.line["peak_rss_mb"] if idle.line else None
    table = Table(
        title=f"{n:,} texts, {dims}-d",
        columns=[
            "process",
            "peak RSS MB",
            "vs floor",
            "above floor MB",
            "texts/s",
            "client CPU µs/text",
        ],
    )
    for peer in peers:
        line = peer.line
        if line is None:
            table.rows.append([peer.label, f"failed: {peer.error}", "", "", "", ""])
            continue
        rss = line["peak_rss_mb"]
        table.rows.append(
            [
                peer.label,
                fmt(rss),
                ratio(rss, floor),
                fmt(rss - floor) if floor else "-",
                fmt(line["texts_per_s"]) if "texts_per_s" in line else "-",
                fmt(line["cpu_us_per_text"]) if "cpu_us_per_text" in line else "-",
            ]
        )
    result.tables.append(table)
    for peer in peers[1:]:
        if peer.line:
            rss = peer.line["peak_rss_mb"]
            result.target(
                f"peak RSS, {peer.label.split(' ')[0]}",
                f"{rss:.0f} MB",
                f"<= {TARGET_MB} MB",
                rss <= TARGET_MB,
            )
    if not has_cli:
        result.notes.append("`asyncembed._cli` was not found: only the library row ran.")
    result.notes += [
        "The library peer writes the `.npy` header and then appends each block with "
        "`file.write`; a `np.lib.format.open_memmap` output would count every written "
        "page of the output file in RSS (file-backed pages stay mapped), measuring the page "
        "cache rather than the client.",
        "The corpus file and outputs live in a temporary directory removed afterwards.",
    ]
    return result
