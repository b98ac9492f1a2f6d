"""Paid work is kept: a failing batch of embed_many()/stream() does not discard the others."""

from __future__ import annotations

import numpy as np
import pytest

import asyncembed
from asyncembed import Batching, Embedder, PartialResultError, Retry
from asyncembed.testing import LocalServer, expected_vector

MODEL = "test/partial"
DIMS = 8
pytestmark = pytest.mark.anyio


def want(texts: list[str]) -> np.ndarray:
    return np.stack([expected_vector(MODEL, t, DIMS) for t in texts])


async def test_embed_many_keeps_every_vector_it_got_and_names_the_failures() -> None:
    texts = [f"text {i}" for i in range(200)]
    poison = {texts[7], texts[150]}
    async with LocalServer(dimensions=DIMS, reject_inputs=poison) as server:
        async with Embedder(MODEL, base_url=server.base_url, batching=Batching(max_size=50)) as e:
            with pytest.raises(PartialResultError) as info:
                await e.embed_many([*texts, texts[7]])  # a repeat of a bad text fails too
    err = info.value
    assert err.failed == [7, 150, 200] and err.start == 0
    assert all(isinstance(x, asyncembed.BadRequestError) for x in err.errors.values())
    assert isinstance(err.__cause__, asyncembed.BadRequestError)
    good = [i for i in range(200) if i not in (7, 150)]
    np.testing.assert_array_equal(err.vectors[good], want([texts[i] for i in good]))
    assert np.isnan(err.vectors[[7, 150, 200]]).all()
    # Retrying only the failures is all that is left to do.
    assert server.stats.embedded == 198


async def test_a_batch_that_exhausts_its_retries_fails_alone() -> None:
    texts = [f"line {i}" for i in range(120)]
    # Two batches in flight; the second (by arrival) gets three 503s: its retry budget.
    script = ["ok", "503", "503", "503"]
    async with LocalServer(dimensions=DIMS, script=script) as server:
        retry = Retry(attempts=3, initial_delay=0.0)
        batching = Batching(max_size=60)
        async with Embedder(MODEL, base_url=server.base_url, batching=batching, retry=retry) as e:
            with pytest.raises(PartialResultError) as info:
                await e.embed_many(texts)
            assert server.requests_count == 4  # nothing finished was sent again
    err = info.value
    assert len(err.failed) == 60 and err.failed in (list(range(60)), list(range(60, 120)))
    kept = [i for i in range(120) if i not in err.errors]
    np.testing.assert_array_equal(err.vectors[kept], want([texts[i] for i in kept]))


async def test_when_nothing_was_obtained_the_error_itself_is_raised() -> None:
    async with LocalServer(dimensions=DIMS, script=["401"]) as server:
        async with Embedder(MODEL, base_url=server.base_url) as e:
            with pytest.raises(asyncembed.AuthenticationError) as info:
                await e.embed_many(["a", "b"])
    assert "(input 0)" in info.value.__notes__


async def test_stream_names_failures_by_stream_position() -> None:
    texts = [f"s {i}" for i in range(100)]
    async with LocalServer(dimensions=DIMS, reject_inputs={texts[75]}) as server:
        async with Embedder(MODEL, base_url=server.base_url, batching=Batching(max_size=25)) as e:
            got = 0
            with pytest.raises(PartialResultError) as info:
                async for start, block in e.stream(texts, window=50):
                    np.testing.assert_array_equal(block, want(texts[start : start + len(block)]))
                    got += len(block)
    err = info.value
    assert err.failed == [75] and got == err.start  # every block before it was delivered
    assert err.start <= 75 < err.start + len(err.vectors)
    assert np.isnan(err.vectors[75 - err.start]).all()
