"""asyncembed on uvloop: coalescing, cancellation and bulk work as on asyncio's own loop.

(The whole suite passes on uvloop too, checked by hand when this file was written; these
few keep the claim in docs/benchmarks.md honest on every run.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from asyncembed import Batching, Embedder, Limits
from asyncembed.testing import LocalServer, expected_vector, wait_until

pytest.importorskip("uvloop")
pytestmark = pytest.mark.anyio

DIMS = 8
MODEL = "test/uvloop"


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("asyncio", {"use_uvloop": True})


async def test_runs_on_uvloop_and_coalesces_each_caller_its_own_vector() -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    async with LocalServer(dimensions=DIMS) as server:
        async with Embedder(MODEL, base_url=server.base_url) as embedder:
            texts = [f"uvloop text {i}" for i in range(600)] + ["uvloop text 7"]
            vectors = await asyncio.gather(*(embedder.embed(t) for t in texts))
            stats = embedder.stats
    for text, vector in zip(texts, vectors, strict=True):
        np.testing.assert_array_equal(vector, expected_vector(MODEL, text, DIMS))
    assert vectors[7] is not vectors[-1]  # the repeated text: one send, two vectors
    assert stats.requests <= 4 and stats.deduplicated == 1


async def test_cancelling_one_caller_in_flight_leaves_its_batch_mates_answered() -> None:
    async with LocalServer(dimensions=DIMS, latency=0.05) as server:
        async with Embedder(
            MODEL, base_url=server.base_url, batching=Batching(max_wait=0.001)
        ) as embedder:
            tasks = [asyncio.create_task(embedder.embed(f"mate {i}")) for i in range(8)]
            await wait_until(lambda: embedder.stats.in_flight == 1)  # the batch is sent
            tasks[3].cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[3], asyncio.CancelledError)
    for i, vector in enumerate(done):
        if i != 3:
            np.testing.assert_array_equal(vector, expected_vector(MODEL, f"mate {i}", DIMS))
    assert server.stats.requests == 1


async def test_embed_many_and_stream_on_uvloop() -> None:
    async with LocalServer(dimensions=DIMS) as server:
        async with Embedder(
            MODEL,
            base_url=server.base_url,
            batching=Batching(max_size=64),
            limits=Limits(max_concurrency=4),
        ) as embedder:
            texts = [f"bulk {i}" for i in range(500)]
            matrix = await embedder.embed_many(texts)
            streamed = [block async for _, block in embedder.stream(texts)]
    expected = np.stack([expected_vector(MODEL, t, DIMS) for t in texts])
    np.testing.assert_array_equal(matrix, expected)
    np.testing.assert_array_equal(np.concatenate(streamed), expected)
