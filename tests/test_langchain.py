"""asyncembed.langchain: LangChain's standard embeddings suites, plus coalescing and
lifecycle, against a LocalServer served from a background thread (the sync methods
block the calling thread, and may be called from inside the test's own loop)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests
from server_thread import ServerThread

from asyncembed import Batching, EmbedderClosedError
from asyncembed.langchain import AsyncembedEmbeddings
from asyncembed.testing import expected_vector

pytestmark = pytest.mark.anyio

DIMS = 16
MODEL = "test/langchain"
ROOT = Path(__file__).resolve().parent.parent
_SERVED: list[ServerThread] = []


@pytest.fixture(scope="module", autouse=True)
def served() -> Iterator[ServerThread]:
    with ServerThread(dimensions=DIMS) as running:
        _SERVED.append(running)
        yield running
        _SERVED.clear()


@pytest.fixture
def server(served: ServerThread) -> ServerThread:
    served.server.reset_stats()
    return served


def sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("asyncembed-sync-")]


class TestStandardUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return AsyncembedEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": MODEL}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        url = "http://127.0.0.1:9/api/v1"
        return {"OPENROUTER_BASE_URL": url}, {"model": MODEL}, {"base_url": url, "model": MODEL}


class TestStandardIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return AsyncembedEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": MODEL, "base_url": _SERVED[0].server.base_url}


def vector(text: str, dims: int = DIMS) -> list[float]:
    values: list[float] = expected_vector(MODEL, text, dims).tolist()
    return values


async def test_200_concurrent_queries_share_a_few_requests(server: ServerThread) -> None:
    embeddings = AsyncembedEmbeddings(MODEL, base_url=server.server.base_url)
    queries = [f"question {i}" for i in range(200)]
    results = await asyncio.gather(*(embeddings.aembed_query(q) for q in queries))
    assert results == [vector(q) for q in queries]
    assert type(results[0][0]) is float
    assert server.server.requests_count <= 3  # measured: 1
    # And again once the loop's Embedder is open and something is in flight.
    server.server.reset_stats()
    more = await asyncio.gather(*(embeddings.aembed_query(f"{q}?") for q in queries))
    assert more[7] == vector("question 7?")
    assert server.server.requests_count <= 3
    await embeddings.aclose()


async def test_concurrent_short_document_lists_share_requests(server: ServerThread) -> None:
    async with AsyncembedEmbeddings(MODEL, base_url=server.server.base_url) as embeddings:
        lists = [[f"doc {i}a", f"doc {i}b"] for i in range(100)]
        results = await asyncio.gather(*(embeddings.aembed_documents(d) for d in lists))
        long = [f"long {i}" for i in range(600)]
        assert await embeddings.aembed_documents(long) == [vector(t) for t in long]
    assert results[42] == [vector("doc 42a"), vector("doc 42b")]
    assert server.server.requests_count <= 2 + 3  # measured: 1 + 3 (600 = 256 + 256 + 88)


def test_queries_from_many_threads_share_requests(server: ServerThread) -> None:
    with AsyncembedEmbeddings(
        MODEL, base_url=server.server.base_url, batching=Batching(max_wait=0.05)
    ) as embeddings:
        barrier = threading.Barrier(100)
        results: dict[int, list[float]] = {}

        def ask(i: int) -> None:
            barrier.wait()
            results[i] = embeddings.embed_query(f"thread {i}")

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(results[i] == vector(f"thread {i}") for i in range(100))
    assert server.server.requests_count <= 10


async def test_sync_methods_work_inside_a_running_loop(server: ServerThread) -> None:
    async with AsyncembedEmbeddings(MODEL, base_url=server.server.base_url) as embeddings:
        assert embeddings.embed_query("blocking") == vector("blocking")
        assert embeddings.embed_documents(["a", "b"]) == [vector("a"), vector("b")]
        assert await embeddings.aembed_documents(["c"]) == [vector("c")]
        assert embeddings.embed_documents([]) == [] and await embeddings.aembed_documents([]) == []


def test_one_object_serves_successive_event_loops(server: ServerThread) -> None:
    embeddings = AsyncembedEmbeddings(MODEL, base_url=server.server.base_url)
    for run in range(3):
        # Each asyncio.run() closes its loop's Embedder on the way out: no warning
        # (warnings are errors here), no task left behind.
        assert asyncio.run(embeddings.aembed_query(f"run {run}")) == vector(f"run {run}")
        assert not embeddings._embedders._hosts
    assert server.server.requests_count == 3


def test_options_reach_the_embedder(server: ServerThread) -> None:
    with AsyncembedEmbeddings(
        MODEL, base_url=server.server.base_url, dimensions=4, api_key="sk-lc-secret"
    ) as embeddings:
        assert "sk-lc-secret" not in repr(embeddings)
        assert embeddings.dimensions == 4
        assert embeddings.embed_query("short") == vector("short", 4)
        assert asyncio.run(embeddings.aembed_query("short")) == vector("short", 4)
    assert {r.dimensions for r in server.server.requests} == {4}


async def test_aclose_closes_the_embedders_of_other_running_loops(server: ServerThread) -> None:
    embeddings = AsyncembedEmbeddings(MODEL, base_url=server.server.base_url)
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever)
    thread.start()
    try:
        coro = embeddings.aembed_query("elsewhere")
        assert asyncio.run_coroutine_threadsafe(coro, other).result(10) == vector("elsewhere")
        (host,) = embeddings._embedders._hosts.values()
        assert await embeddings.aembed_query("here") == vector("here")
        embeddings.embed_query("sync")
        await embeddings.aclose()
        assert host.task.done() and not embeddings._embedders._hosts and not sync_threads()
        with pytest.raises(EmbedderClosedError):
            await embeddings.aembed_query("late")
        with pytest.raises(EmbedderClosedError):
            embeddings.embed_query("late")
        await embeddings.aclose()  # idempotent
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join()
        other.close()


def test_close_from_a_plain_thread(server: ServerThread) -> None:
    embeddings = AsyncembedEmbeddings(MODEL, base_url=server.server.base_url)
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever)
    thread.start()
    try:
        coro = embeddings.aembed_query("x")
        asyncio.run_coroutine_threadsafe(coro, other).result(10)
        (host,) = embeddings._embedders._hosts.values()
        embeddings.close()
        assert host.task.done()
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join()
        other.close()


def test_close_reaches_a_loop_kept_for_later_calls(server: ServerThread) -> None:
    embeddings = AsyncembedEmbeddings(MODEL, base_url=server.server.base_url)
    kept = asyncio.new_event_loop()  # run_until_complete() now and then, never closed yet
    try:
        assert kept.run_until_complete(embeddings.aembed_query("p")) == vector("p")
        (host,) = embeddings._embedders._hosts.values()
        embeddings.close()
        # Its Embedder was closed on that loop: no task left pending for loop.close().
        assert host.task.done() and not asyncio.all_tasks(kept)
        with pytest.raises(EmbedderClosedError):
            kept.run_until_complete(embeddings.aembed_query("after close"))
    finally:
        kept.close()


async def test_aclose_reaches_a_loop_kept_for_later_calls(server: ServerThread) -> None:
    embeddings = AsyncembedEmbeddings(MODEL, base_url=server.server.base_url)
    kept = asyncio.new_event_loop()
    try:
        # A plain thread drives the kept loop: this one already runs the test's loop.
        got = await asyncio.to_thread(kept.run_until_complete, embeddings.aembed_query("p"))
        assert got == vector("p")
        (host,) = embeddings._embedders._hosts.values()
        await embeddings.aclose()
        assert host.task.done() and not asyncio.all_tasks(kept)
        with pytest.raises(EmbedderClosedError):
            await embeddings.aembed_query("after close")
    finally:
        kept.close()


def test_dropped_without_close_stops_quietly(server: ServerThread) -> None:
    embeddings = AsyncembedEmbeddings(MODEL, base_url=server.server.base_url)
    embeddings.embed_query("x")
    (thread,) = sync_threads()
    del embeddings
    gc.collect()  # no ResourceWarning (warnings are errors here): frameworks never close
    thread.join(10)
    assert not thread.is_alive()


def test_bad_options_raise_at_construction() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        AsyncembedEmbeddings(MODEL, dimensions=-1)


def test_missing_langchain_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['langchain_core'] = None\n"
        "import asyncembed\n"
        "try:\n"
        "    import asyncembed.langchain\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert "pip install 'asyncembed[langchain]'" in out.stdout


def test_import_asyncembed_does_not_import_the_frameworks() -> None:
    code = (
        "import sys, asyncembed\n"
        "print(sorted(m for m in ('langchain_core', 'llama_index') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


def test_vectors_are_plain_floats(server: ServerThread) -> None:
    with AsyncembedEmbeddings(MODEL, base_url=server.server.base_url) as embeddings:
        (row,) = embeddings.embed_documents(["x"])
    assert all(type(v) is float for v in row)
    assert np.isclose(np.linalg.norm(row), 1.0)
