"""SyncEmbedder.stream(): blocks in order, early stops, errors, and an iterable read in
helper threads (a slow one must not hold up other threads' calls)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from server_thread import ServerThread

from asyncembed import Batching, InvalidInputError, SyncEmbedder
from asyncembed.testing import expected_vector, no_backoff

DIMS = 8
MODEL = "test/sync-stream"


@pytest.fixture(scope="module")
def served() -> Iterator[ServerThread]:
    with ServerThread(dimensions=DIMS) as running:
        yield running


@pytest.fixture
def embedder(served: ServerThread) -> Iterator[SyncEmbedder]:
    with SyncEmbedder(MODEL, base_url=served.server.base_url, retry=no_backoff(2)) as e:
        yield e


def vector(text: str) -> np.ndarray:
    return expected_vector(MODEL, text, DIMS)


def test_stream_yields_blocks_in_order(embedder: SyncEmbedder) -> None:
    texts = [f"doc {i}" for i in range(600)]
    blocks = list(embedder.stream(iter(texts), window=2))
    assert [start for start, _ in blocks] == [0, 256, 512]
    matrix = np.concatenate([m for _, m in blocks])
    assert np.array_equal(matrix, np.stack([vector(t) for t in texts]))
    pairs = list(embedder.stream((f"id{i}", t) for i, t in enumerate(texts[:3])))
    assert pairs[0][0] == ["id0", "id1", "id2"]


def test_stopping_a_stream_early_cancels_its_work(served: ServerThread) -> None:
    read = 0

    def corpus() -> Iterator[str]:
        nonlocal read
        for i in range(100_000):
            read += 1
            yield f"line {i}"

    with SyncEmbedder(
        MODEL, base_url=served.server.base_url, batching=Batching(max_size=10)
    ) as embedder:
        blocks = embedder.stream(corpus(), window=2)
        start, first = next(blocks)
        blocks.close()  # returns once the batches in flight are cancelled
        stats = embedder.stats
        assert stats.in_flight == 0 and stats.queued == 0
        assert (start, first.shape) == (0, (10, DIMS))
        assert read <= 40  # the window bounds what was read ahead
        assert np.array_equal(embedder.embed("still usable"), vector("still usable"))


def test_stream_errors_keep_their_types(embedder: SyncEmbedder) -> None:
    with pytest.raises(InvalidInputError, match=r"item\[2\]"):
        list(embedder.stream(["a", "b", ""]))
    with pytest.raises(TypeError):
        list(embedder.stream("not a list"))


def test_a_slow_iterable_does_not_delay_other_threads(embedder: SyncEmbedder) -> None:
    waiting, release, resumed = threading.Event(), threading.Event(), threading.Event()

    def cursor() -> Iterator[str]:
        yield "row 0"
        waiting.set()
        release.wait(20)  # a database cursor waiting for its next row
        resumed.set()
        yield "row 1"

    blocks: list[tuple[int, Any]] = []
    reader = threading.Thread(target=lambda: blocks.extend(embedder.stream(cursor())))
    reader.start()
    try:
        assert waiting.wait(10)
        # Served while the iterable still blocks (read on the loop thread, this waited).
        assert np.array_equal(embedder.embed("meanwhile"), vector("meanwhile"))
        assert not resumed.is_set()
    finally:
        release.set()
        reader.join(10)
    assert [start for start, _ in blocks] == [0]
    assert np.array_equal(blocks[0][1], np.stack([vector("row 0"), vector("row 1")]))


def test_the_iterable_may_call_the_embedder_itself(embedder: SyncEmbedder) -> None:
    def enriched() -> Iterator[str]:
        for i in range(3):
            # read in a helper thread, not on the loop thread: this call is served
            yield f"row {i} {embedder.embed(f'key {i}').shape[0]}"

    blocks = list(embedder.stream(enriched()))
    assert np.array_equal(blocks[0][1], np.stack([vector(f"row {i} {DIMS}") for i in range(3)]))
