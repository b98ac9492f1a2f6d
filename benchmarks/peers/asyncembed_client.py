"""asyncembed through its public API against the local server.

Modes:
    ``embed``: ``n`` concurrent ``embed()`` calls (``asyncio.gather``), coalesced.
    ``embed_many``: one ``embed_many()`` of ``n`` texts.
    ``stream``: ``stream()`` of ``n`` texts, each block copied into one output matrix.
    ``lone``: ``n`` ``embed()`` calls one after another; latency percentiles.
    ``arrivals``: ``n`` callers arriving at ``rate``/s, each awaiting ``embed()``.
    ``stall``: ``embed_many()`` of ``n`` texts in one request while a ticker task
        measures the longest gap between its ticks (the longest event-loop block).
    ``npy``: ``stream()`` of ``n`` texts to a ``.npy`` file written block by block.
    ``profile``: ``mode=embed`` or ``embed_many`` once more under cProfile; the top
        functions by own time are added to the JSON line.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import time
from pathlib import Path
from typing import Any

import numpy as np

from asyncembed import Batching, Embedder, Limits
from benchmarks.peers._peer import Rounds, arrivals, config, emit, percentile, run, texts


async def main() -> None:
    cfg = config()
    mode = cfg["mode"]
    batching = Batching(**cfg.get("batching", {}))
    limits = Limits(**cfg.get("limits", {}))
    async with Embedder(
        cfg["model"],
        base_url=cfg["base_url"],
        api_key="x",
        batching=batching,
        limits=limits,
        encoding_format=cfg.get("encoding", "base64"),
    ) as embedder:
        if mode in ("embed", "embed_many", "stream"):
            await _throughput(embedder, cfg)
        elif mode in ("lone", "arrivals"):
            await _latency(embedder, cfg)
        elif mode == "stall":
            await _stall(embedder, cfg)
        elif mode == "npy":
            await _npy(embedder, cfg)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        stats = embedder.stats
    emit(peer="asyncembed", requests=stats.requests, **_RESULT)


_RESULT: dict[str, Any] = {}


def _job(embedder: Embedder, mode: str, n: int, dims: int) -> Any:
    out = np.empty((n, dims), dtype=np.float32) if mode == "stream" else None

    async def body(k: int) -> None:
        items = texts(n, f"r{k}-")
        if mode == "embed":
            await asyncio.gather(*(embedder.embed(t) for t in items))
        elif mode == "embed_many":
            await embedder.embed_many(items)
        else:
            assert out is not None
            async for start, block in embedder.stream(items):
                out[start : start + len(block)] = block

    return body


async def _throughput(embedder: Embedder, cfg: dict[str, Any]) -> None:
    mode, n, rounds = cfg["mode"], cfg["n"], cfg["rounds"]
    body = _job(embedder, mode, n, cfg["dimensions"])
    await body(rounds)  # warm-up: connections, token-estimate calibration
    summary = (await Rounds(n).run(rounds, body)).summary()
    _RESULT.update(mode=mode, **summary)
    if cfg.get("profile"):
        profiler = cProfile.Profile()
        profiler.enable()
        await body(rounds + 1)
        profiler.disable()
        _RESULT["profile"] = top_functions(profiler, cfg.get("profile_top", 25))


def top_functions(profiler: cProfile.Profile, limit: int) -> list[dict[str, Any]]:
    """The functions with the most own time: file:function, own and cumulative share.

    Args:
        profiler: A profiler that has run.
        limit: How many functions to keep.
    """
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    rows = []
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        path = Path(filename)
        where = f"{path.parent.name}/{path.name}:{line}:{name}" if filename != "~" else f"{name}"
        rows.append(
            {
                "function": where,
                "calls": ncalls,
                "own_share": tottime / total,
                "cum_share": cumtime / total,
            }
        )
    rows.sort(key=lambda r: -r["own_share"])
    return rows[:limit]


async def _latency(embedder: Embedder, cfg: dict[str, Any]) -> None:
    n = cfg["n"]
    items = texts(n, "lat-")
    for warm in texts(20, "warm-"):
        await embedder.embed(warm)
    latencies: list[float] = []
    if cfg["mode"] == "lone":
        for text in items:
            t0 = time.perf_counter()
            await embedder.embed(text)
            latencies.append(time.perf_counter() - t0)
    else:
        latencies = await arrivals(embedder.embed, items, cfg["rate"])
    _RESULT.update(
        mode=cfg["mode"],
        n=n,
        p50_ms=percentile(latencies, 50) * 1e3,
        p99_ms=percentile(latencies, 99) * 1e3,
        max_ms=max(latencies) * 1e3,
    )


async def _stall(embedder: Embedder, cfg: dict[str, Any]) -> None:
    """Longest gap between ticks of a 1 ms ticker while one huge response is decoded."""
    gaps: list[float] = []
    running = True

    async def ticker() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    walls = []
    worst = []
    for k in range(cfg["rounds"] + 1):
        items = texts(cfg["n"], f"s{k}-")
        gaps.clear()
        running = True
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        matrix = await embedder.embed_many(items)
        walls.append(time.perf_counter() - t0)
        running = False
        await tick
        worst.append(max(gaps))
        assert matrix.shape == (cfg["n"], cfg["dimensions"])
    # round 0 is a warm-up
    _RESULT.update(
        mode="stall",
        n=cfg["n"],
        max_gap_ms=min(worst[1:]) * 1e3,
        rounds_max_gap_ms=[round(g * 1e3, 2) for g in worst[1:]],
        wall_s=min(walls[1:]),
    )


async def _npy(embedder: Embedder, cfg: dict[str, Any]) -> None:
    """Stream ``n`` texts into a ``.npy`` file, appending each block as it comes."""
    n, dims = cfg["n"], cfg["dimensions"]
    path = Path(cfg["out"])
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    # Header then sequential writes, not a memmap: pages of a written memmap stay
    # mapped and count in RSS, which would measure the page cache, not the client.
    with path.open("wb") as f:  # noqa: ASYNC230 - a local file; writes are the sink
        header = {"descr": "<f4", "fortran_order": False, "shape": (n, dims)}
        np.lib.format.write_array_header_1_0(f, header)
        written = 0
        async for start, block in embedder.stream(
            f"memory text {i} about the sea at night" for i in range(n)
        ):
            assert start == written
            f.write(np.ascontiguousarray(block, dtype="<f4").data)
            written += len(block)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    check = np.load(path, mmap_mode="r")
    assert check.shape == (n, dims)
    _RESULT.update(
        mode="npy",
        n=n,
        wall_s=wall,
        cpu_s=cpu,
        texts_per_s=n / wall,
        cpu_us_per_text=cpu / n * 1e6,
        file_mb=path.stat().st_size / 2**20,  # noqa: ASYNC240
    )


if __name__ == "__main__":
    run(main, config().get("loop"))
