"""The floor of "N concurrent callers": no HTTP, no JSON, only asyncio.

``n`` coroutines under one ``asyncio.gather`` each await a future; a resolver sets the
futures 256 at a time with a copied 1536-d row, as a coalescer must at the least. What
this costs per text, any client answering ``n`` concurrent ``await``s pays too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from benchmarks.peers._peer import Rounds, config, emit


async def main() -> None:
    cfg = config()
    n, dims = cfg["n"], cfg.get("dimensions", 1536)
    block = np.zeros((256, dims), dtype=np.float32)
    loop = asyncio.get_running_loop()

    async def body(k: int) -> None:
        futures: list[asyncio.Future[Any]] = []

        async def caller() -> Any:
            future = loop.create_future()
            futures.append(future)
            return await future

        async def resolver() -> None:
            await asyncio.sleep(0)  # let every caller start and wait
            for start in range(0, len(futures), 256):
                for j, future in enumerate(futures[start : start + 256]):
                    future.set_result(block[j].copy())
                await asyncio.sleep(0)

        await asyncio.gather(resolver(), *(caller() for _ in range(n)))

    await body(0)
    rounds = await Rounds(n).run(cfg["rounds"], body)
    emit(peer="asyncio floor", mode="futures", **rounds.summary())


if __name__ == "__main__":
    asyncio.run(main())
