"""Each embed() caller owns its vector: writable, not a view that pins its batch, no alias."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import numpy as np
import pytest

from asyncembed import Embedder
from asyncembed._types import EncodingFormat
from asyncembed.testing import LocalServer, expected_vector

pytestmark = pytest.mark.anyio

DIMS = 16
MODEL = "test/own"


@pytest.mark.parametrize("encoding", ["base64", "float"])
async def test_each_caller_owns_a_writable_vector_of_its_own(encoding: EncodingFormat) -> None:
    texts = [f"own {i}" for i in range(40)] + ["own 5", "own 5"]
    async with LocalServer(dimensions=DIMS) as server:
        async with Embedder(MODEL, base_url=server.base_url, encoding_format=encoding) as embedder:
            vectors = await asyncio.gather(*(embedder.embed(t) for t in texts))
            assert embedder.stats.requests == 1
    for text, vector in zip(texts, vectors, strict=True):
        np.testing.assert_array_equal(vector, expected_vector(MODEL, text, DIMS))
        assert vector.flags.writeable and vector.flags.c_contiguous
        # Its memory is its own vector's, not a row of the batch (which it would pin).
        owner: Any = vector if vector.base is None else vector.base
        assert memoryview(owner).nbytes == vector.nbytes
    for i, a in enumerate(vectors):
        for b in vectors[i + 1 :]:
            assert not np.shares_memory(a, b)
    first, second, third = vectors[5], vectors[-2], vectors[-1]
    first[0] += 1.0  # one caller changing its array in place changes nobody else's
    assert second[0] == third[0] == expected_vector(MODEL, "own 5", DIMS)[0]


async def test_a_dropped_vector_is_freed_at_once_not_by_the_garbage_collector() -> None:
    # Nothing of a finished batch may sit in a reference cycle (the retry loop is one):
    # its futures would keep every caller's vector until the collector's next pass.
    texts = [f"freed {i}" for i in range(40)]
    async with LocalServer(dimensions=DIMS) as server:
        async with Embedder(MODEL, base_url=server.base_url) as embedder:
            await embedder.embed("warm-up")
            gc.collect()
            gc.disable()
            try:
                # Tasks, not gather(): gather's own future is in a cycle that holds the results.
                tasks = [asyncio.create_task(embedder.embed(t)) for t in texts]
                vectors = [await task for task in tasks]
                del tasks
                assert embedder.stats.requests == 2
                refs = [weakref.ref(v) for v in vectors]
                # An array that owns its data: no memoryview for the collector to track.
                assert all(v.base is None for v in vectors)
                del vectors
                # One more request: the finished batch's task has wound down meanwhile.
                await embedder.embed("one more")
                assert sum(r() is not None for r in refs) == 0
            finally:
                gc.enable()
