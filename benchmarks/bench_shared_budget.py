"""One budget across processes: four workers on one shared RedisLimiter vs four own budgets."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from asyncembed import Limits, RedisLimiter
from benchmarks.runner import MODEL, ROOT, BenchResult, Options, Peer, Server, Table, fmt

NAME = "shared_budget"
TITLE = "One budget across processes: shared through Redis vs per process"
ACCOUNT_RPM = 600
CLIENT_RPM = 594  # 1% below: the GCRA's slack (one request per window) plus jitter
PROCESSES = 4
CALLERS = 32
WINDOW = 60.0


def _redis_server() -> Any:
    """``tests/redis_server.py`` (the tests' real redis-server helper), loaded by path."""
    spec = importlib.util.spec_from_file_location(
        "redis_server", ROOT / "tests" / "redis_server.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(opts: Options) -> BenchResult:
    """Answers per window, 429s and silences of 4 workers, shared vs per-process budgets."""
    duration = opts.size(62, 2)
    result = BenchResult(
        name=NAME,
        title=TITLE,
        question=(
            f"The account allows {ACCOUNT_RPM} requests per minute: the local server "
            f"answers 429 beyond that (a sliding 60 s window, `Retry-After` until a slot "
            f"frees). {PROCESSES} worker processes, each with {CALLERS} callers sending one "
            f"text per request for {duration} s, each configured with "
            f"`Limits(requests_per_minute={CLIENT_RPM})` (1% of headroom, see the guide): "
            "once with one `RedisLimiter` shared by all four, once with the default "
            "in-process limiter (every worker believes it has the whole budget)."
        ),
    )
    helper = _redis_server()
    binary = helper.redis_server_binary()
    redis: AbstractContextManager[Any] = (
        helper.RedisServer(binary) if binary is not None else nullcontext(None)
    )
    table = Table(
        title=f"{PROCESSES} processes, account limit {ACCOUNT_RPM}/min, {duration} s",
        columns=[
            "budget",
            "requests sent",
            "answered",
            "429s received",
            f"answered in the busiest {WINDOW:.0f} s",
            "answered/s",
            "longest silence, s",
        ],
    )
    with redis as server:
        for label, url in (
            ("one shared budget (`RedisLimiter`)", server.url if server else None),
            ("a budget per process (default)", None),
        ):
            if label.startswith("one") and url is None:
                table.rows.append([label, "skipped: no redis-server"] + [""] * 5)
                continue
            row, raw = _scenario(url, duration)
            table.rows.append([label, *row])
            result.raw[label] = raw
            if url is not None:
                result.target(
                    "shared: no 429 from the account",
                    str(raw["rate_limited"]),
                    "0",
                    raw["rate_limited"] == 0,
                )
                result.target(
                    f"shared: answered in any {WINDOW:.0f} s",
                    str(raw["busiest"]),
                    f"<= {ACCOUNT_RPM}",
                    raw["busiest"] <= ACCOUNT_RPM,
                )
        result.tables.append(table)
        if server is not None:
            result.tables.append(_lua_cost(server.url, opts.size(2_000, 300)))
    result.notes += [
        "Per-process budgets: each worker sends its whole minute's budget at once, the "
        "account admits the first 600 and answers 429 to the rest; every worker then "
        "waits out a `Retry-After` of up to a minute (its own pause), and the storm "
        "repeats when the window frees.",
        f"Shared: the script spaces requests 60/{CLIENT_RPM} s apart across all workers "
        "(GCRA on Redis's clock), so the account never has to refuse one. With the "
        "clients at exactly the account's 600, one 429 per window can happen at the "
        "window's edge (the request that opens a window, plus delivery jitter): it "
        "pauses every worker for its `Retry-After`.",
        "Windows are counted on the workers' clocks when answers arrive, so a burst the "
        "server admitted over 60 s can show a few percent more in one 60 s window.",
        "The quick run (2 s) cannot show a whole window; the full run lasts one window "
        "and two seconds.",
    ]
    return result


def _scenario(redis_url: str | None, duration: float) -> tuple[list[str], dict[str, Any]]:
    with Server(dimensions=8, extra=("--rpm", str(ACCOUNT_RPM))) as server:
        start_at = time.time() + 3.0  # every worker imports and connects first
        config: dict[str, Any] = {
            "base_url": server.base_url,
            "model": MODEL,
            "rpm": CLIENT_RPM,
            "redis_url": redis_url,
            "key": f"bench-{uuid.uuid4().hex[:8]}",
            "start_at": start_at,
            "duration": duration,
            "callers": CALLERS,
        }
        peers = [Peer(f"worker {k}", "shared_budget", config) for k in range(PROCESSES)]
        with ThreadPoolExecutor(PROCESSES) as pool:
            list(pool.map(lambda p: p.run(), peers))
    lines = [p.line for p in peers if p.line is not None]
    if len(lines) < PROCESSES:
        error = next(p.error for p in peers if p.line is None)
        return [f"failed: {error}"] + [""] * 5, {"error": error}
    answered = sorted(t for line in lines for t in line["answered"])
    sent = sum(line["requests"] for line in lines)
    limited = sum(line["rate_limited"] for line in lines)
    busiest = _busiest(answered, WINDOW)
    edges = [start_at, *answered, start_at + duration]
    silence = max(b - a for a, b in itertools.pairwise(edges))
    raw = {
        "sent": sent,
        "answered": len(answered),
        "rate_limited": limited,
        "busiest": busiest,
        "answered_per_s": len(answered) / duration,
        "longest_silence_s": silence,
        "per_worker": [
            {k: v for k, v in line.items() if k != "answered"} | {"answered": len(line["answered"])}
            for line in lines
        ],
    }
    row = [
        f"{sent:,}",
        f"{len(answered):,}",
        f"{limited:,}",
        f"{busiest:,}",
        fmt(len(answered) / duration),
        fmt(silence),
    ]
    return row, raw


def _busiest(stamps: list[float], window: float) -> int:
    """The most stamps in one ``[t, t + window)`` (two pointers over sorted stamps)."""
    best, j = 0, 0
    for i, start in enumerate(stamps):
        while j < len(stamps) and stamps[j] < start + window:
            j += 1
        best = max(best, j - i)
    return best


def _lua_cost(url: str, calls: int) -> Table:
    """Microseconds per RedisLimiter call, one process, one call after another."""

    async def measure() -> list[tuple[str, float]]:
        import redis.asyncio as redis_asyncio  # only with a redis-server to measure

        limiter = RedisLimiter(url, key=f"lua-{uuid.uuid4().hex[:8]}")
        rates = Limits(requests_per_minute=10**9, tokens_per_minute=10**12)
        capped = Limits(requests_per_minute=10**9, tokens_per_minute=10**12, max_cost=10.0**9)
        found = []
        async with limiter:
            await limiter.reserve(100, rates)  # connect, load the script
            for what, limits in (
                ("reserve: RPM + TPM", rates),
                ("reserve: RPM + TPM + max_cost", capped),
            ):
                t0 = time.perf_counter()
                for _ in range(calls):
                    reservation = await limiter.reserve(100, limits)
                    if reservation.lease is not None:
                        limiter.settle(reservation, cost=1e-6, tokens=100)
                found.append((what, (time.perf_counter() - t0) / calls * 1e6))
            t0 = time.perf_counter()
            for _ in range(calls):
                await limiter.pause_left()
            found.append(
                (
                    "pause_left (before a request reserved ahead)",
                    (time.perf_counter() - t0) / calls * 1e6,
                )
            )
            client = redis_asyncio.Redis.from_url(url)
            t0 = time.perf_counter()
            for _ in range(calls):
                await client.ping()
            found.append(
                ("PING, for reference (the round trip)", (time.perf_counter() - t0) / calls * 1e6)
            )
            await client.aclose()
        return found

    table = Table(
        title=f"Cost of the Redis calls ({calls:,} in a row, one process, loopback)",
        columns=["call", "µs per request"],
    )
    for what, micros in asyncio.run(measure()):
        table.rows.append([what, fmt(micros)])
    return table
