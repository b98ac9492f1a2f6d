"""One worker of the shared-budget benchmark: send as much as the limits allow, for a while.

Config: ``base_url``, ``model``, ``rpm`` (the worker's ``Limits.requests_per_minute``),
``redis_url`` (``None``: the worker's own in-process budget) and ``key``, ``start_at``
(epoch seconds, so that every worker starts together), ``duration`` and ``callers``
(tasks calling ``create()`` one after another). Prints the epoch time of each answered
request and the Embedder's counters (requests sent, 429s received).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from asyncembed import AsyncEmbedError, Embedder, Limiter, Limits, RedisLimiter
from benchmarks.peers._peer import config, emit


async def main() -> None:
    cfg = config()
    limiter: Limiter | None = None
    if cfg["redis_url"]:
        limiter = RedisLimiter(cfg["redis_url"], key=cfg["key"])
    answered: list[float] = []
    failed = 0
    async with Embedder(
        cfg["model"],
        base_url=cfg["base_url"],
        api_key="x",
        limits=Limits(requests_per_minute=cfg["rpm"]),
        limiter=limiter,
    ) as embedder:

        async def caller(k: int) -> None:
            nonlocal failed
            i = 0
            while True:
                try:
                    await embedder.create([f"worker text {k}-{i}"])
                    answered.append(time.time())
                except AsyncEmbedError:
                    failed += 1  # e.g. a 429 whose Retry-After outlasts the retry budget
                i += 1

        await asyncio.sleep(max(0.0, cfg["start_at"] - time.time()))
        tasks = [asyncio.create_task(caller(k)) for k in range(cfg["callers"])]
        await asyncio.sleep(cfg["duration"])
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        stats = embedder.stats
    if limiter is not None:
        await limiter.aclose()
    result: dict[str, Any] = {
        "answered": [round(t, 4) for t in answered],
        "requests": stats.requests,
        "rate_limited": stats.rate_limited,
        "failed": failed,
    }
    emit(peer="shared_budget", **result)


if __name__ == "__main__":
    asyncio.run(main())
