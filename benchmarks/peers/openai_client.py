"""The official ``openai`` client, default settings, one text per call.

``AsyncOpenAI(base_url=..., api_key="x", max_retries=0).embeddings.create(input=text,
model=...)``: it asks for base64 by default and decodes it to a list of floats. Its
default connection pool (httpx, 1,000 connections) is left as it is.

Modes:
    ``embed``: ``n`` calls; with ``concurrency``, that many callers each make their
        share one after another (so at most ``concurrency`` are in flight), else all
        ``n`` at once (``asyncio.gather``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from openai import AsyncOpenAI

from benchmarks.peers._peer import Rounds, config, emit, run, texts


async def main() -> None:
    cfg = config()
    n, rounds = cfg["n"], cfg["rounds"]
    concurrency = cfg.get("concurrency")
    async with AsyncOpenAI(base_url=cfg["base_url"], api_key="x", max_retries=0) as client:

        async def one(text: str) -> Any:
            response = await client.embeddings.create(input=text, model=cfg["model"])
            return response.data[0].embedding

        async def body(k: int) -> None:
            items = texts(n, f"r{k}-")
            if not concurrency:
                await asyncio.gather(*(one(t) for t in items))
                return
            todo = iter(items)

            async def caller() -> None:
                for text in todo:
                    await one(text)

            await asyncio.gather(*(caller() for _ in range(concurrency)))

        await body(rounds)  # warm-up: connection pool, pydantic validators
        summary = (await Rounds(n).run(rounds, body)).summary()
    emit(peer="openai", mode="embed", concurrency=concurrency, **summary)


if __name__ == "__main__":
    run(main, config().get("loop"))
