"""The ceiling: a bare aiohttp client sending pre-formed request bodies.

No coalescing, validation, retries or limits: bodies are encoded before the clock
starts, and each answer is decoded with one msgspec Struct and ``np.frombuffer``.

Modes:
    ``batched``: ``n`` texts in pre-formed ``batch``-text requests, ``concurrency`` in flight.
    ``single``: one text per request, ``concurrency`` in flight.
    ``lone``: ``n`` single-text requests one after another; latency percentiles.
    ``arrivals``: ``n`` callers arriving at ``rate``/s, each sending its own request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import msgspec
import numpy as np

from benchmarks.peers._peer import Rounds, arrivals, config, emit, percentile, run, texts


class _Item(msgspec.Struct):
    embedding: bytes | list[float]


class _Response(msgspec.Struct):
    data: list[_Item]


_DECODER = msgspec.json.Decoder(_Response)
_ENCODER = msgspec.json.Encoder()


def _decode(content: bytes) -> np.ndarray[Any, Any]:
    data = _DECODER.decode(content).data
    first = data[0].embedding
    if isinstance(first, bytes):
        joined = b"".join([item.embedding for item in data])  # type: ignore[misc]
        return np.frombuffer(joined, dtype="<f4").reshape(len(data), -1)
    return np.array([item.embedding for item in data], dtype=np.float32)


async def main() -> None:
    cfg = config()
    url = cfg["base_url"] + "/embeddings"
    mode, n = cfg["mode"], cfg["n"]
    encoding = cfg.get("encoding", "base64")
    batch = cfg.get("batch", 256) if mode == "batched" else 1
    concurrency = cfg.get("concurrency", 16)
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency if mode != "arrivals" else 100)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def post(body: bytes) -> np.ndarray[Any, Any]:
            async with session.post(url, data=body) as response:
                content = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{response.status}: {content[:200]!r}")
            return _decode(content)

        def bodies(items: list[str]) -> list[tuple[int, bytes]]:
            return [
                (
                    start,
                    _ENCODER.encode(
                        {
                            "model": cfg["model"],
                            "input": items[start : start + batch],
                            "encoding_format": encoding,
                        }
                    ),
                )
                for start in range(0, len(items), batch)
            ]

        if mode in ("batched", "single"):
            prepared = [bodies(texts(n, f"r{k}-")) for k in range(cfg["rounds"] + 1)]
            out = np.empty((n, cfg["dimensions"]), dtype=np.float32)

            async def one_round(k: int) -> None:
                todo = iter(prepared[k])

                async def worker() -> None:
                    for start, body in todo:
                        matrix = await post(body)
                        out[start : start + len(matrix)] = matrix

                await asyncio.gather(*(worker() for _ in range(concurrency)))

            await one_round(cfg["rounds"])  # warm-up: connections, allocator
            rounds = await Rounds(n).run(cfg["rounds"], one_round)
            emit(peer="raw aiohttp", mode=mode, batch=batch, **rounds.summary())
            return

        latencies: list[float] = []
        items = [body for _, body in bodies(texts(n, "lat-"))]
        for body in items[:20]:  # warm-up
            await post(body)
        if mode == "lone":
            for body in items:
                t0 = time.perf_counter()
                await post(body)
                latencies.append(time.perf_counter() - t0)
        else:  # arrivals
            latencies = await arrivals(post, items, cfg["rate"])
        emit(
            peer="raw aiohttp",
            mode=mode,
            n=n,
            p50_ms=percentile(latencies, 50) * 1e3,
            p99_ms=percentile(latencies, 99) * 1e3,
            max_ms=max(latencies) * 1e3,
        )


if __name__ == "__main__":
    run(main, config().get("loop"))
