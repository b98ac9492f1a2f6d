"""asyncembed.llama_index: a VectorStoreIndex built offline with AsyncembedEmbedding,
request counts for LlamaIndex's batch and concurrent paths, and the class contract."""

from __future__ import annotations

import asyncio
import copy
import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores import SimpleVectorStore
from server_thread import ServerThread

from asyncembed import AuthenticationError, Batching, EmbedderClosedError
from asyncembed.llama_index import AsyncembedEmbedding
from asyncembed.testing import expected_vector

pytestmark = pytest.mark.anyio

DIMS = 16
MODEL = "test/llama-index"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def served() -> Iterator[ServerThread]:
    with ServerThread(dimensions=DIMS) as running:
        yield running


@pytest.fixture
def server(served: ServerThread, monkeypatch: pytest.MonkeyPatch) -> ServerThread:
    """The shared server with fresh counters, and no name resolution beyond loopback
    (LlamaIndex must not fetch a tokenizer or anything else from the internet)."""
    served.server.reset_stats()
    real = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"this test may not reach the network (tried {name!r})")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    return served


@pytest.fixture
def model(server: ServerThread) -> Iterator[AsyncembedEmbedding]:
    with AsyncembedEmbedding(MODEL, base_url=server.server.base_url) as embed_model:
        yield embed_model


def vector(text: str) -> list[float]:
    values: list[float] = expected_vector(MODEL, text, DIMS).tolist()
    return values


def documents(n: int) -> list[TextNode]:
    return [TextNode(text=f"document {i} about topic {i % 7}", id_=f"doc-{i}") for i in range(n)]


def test_vector_store_index_over_300_documents(
    server: ServerThread, model: AsyncembedEmbedding
) -> None:
    nodes = documents(300)
    index = VectorStoreIndex(nodes, embed_model=model)
    store = index.vector_store
    assert isinstance(store, SimpleVectorStore)
    for node in nodes[::37]:
        assert store.get(node.node_id) == vector(node.text)
    # 300 texts in one embed_many call: two requests of Batching.max_size (256).
    assert server.server.requests_count == 2
    (hit,) = index.as_retriever(similarity_top_k=1).retrieve(nodes[42].text)
    assert hit.node.node_id == "doc-42" and hit.score == pytest.approx(1.0)
    assert server.server.requests_count == 3  # the query


def test_vector_store_index_built_async(server: ServerThread, model: AsyncembedEmbedding) -> None:
    # LlamaIndex runs the build on the thread's current loop, which it never closes:
    # the test owns that loop, so that it can close it (warnings are errors here).
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        nodes = documents(300)
        index = VectorStoreIndex(nodes, embed_model=model, use_async=True)
        store = index.vector_store
        assert isinstance(store, SimpleVectorStore)
        assert store.get("doc-299") == vector(nodes[299].text)
        assert server.server.requests_count == 2
        model.close()  # the loop's Embedder too, although that loop is not running
        assert not asyncio.all_tasks(loop)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_a_batch_of_1000_texts_takes_at_most_20_requests(
    server: ServerThread, model: AsyncembedEmbedding
) -> None:
    texts = [f"text {i}" for i in range(1000)]
    assert model.get_text_embedding_batch(texts) == [vector(t) for t in texts]
    assert server.server.requests_count <= 20  # measured: 4 (1000 / 256)


async def test_async_batch_and_200_concurrent_queries(
    server: ServerThread, model: AsyncembedEmbedding
) -> None:
    texts = [f"async text {i}" for i in range(1000)]
    assert await model.aget_text_embedding_batch(texts) == [vector(t) for t in texts]
    assert server.server.requests_count <= 20  # measured: 4
    server.server.reset_stats()
    queries = [f"query {i}" for i in range(200)]
    got = await asyncio.gather(*(model.aget_query_embedding(q) for q in queries))
    assert got == [vector(q) for q in queries]
    assert server.server.requests_count <= 20  # measured: 1
    assert await model.aget_text_embedding("one") == vector("one")


def test_a_small_embed_batch_size_still_coalesces_async_chunks(server: ServerThread) -> None:
    # With LlamaIndex's old default of 10, its async path gathers 100 chunks at once.
    with AsyncembedEmbedding(
        MODEL, base_url=server.server.base_url, embed_batch_size=10
    ) as embed_model:
        texts = [f"chunk {i}" for i in range(1000)]
        got = asyncio.run(embed_model.aget_text_embedding_batch(texts))
    assert got == [vector(t) for t in texts]
    assert server.server.requests_count <= 20  # measured: 4, not 100


def test_queries_from_many_threads_share_requests(server: ServerThread) -> None:
    with AsyncembedEmbedding(
        MODEL, base_url=server.server.base_url, batching=Batching(max_wait=0.05)
    ) as embed_model:
        barrier = threading.Barrier(50)
        results: dict[int, list[float]] = {}

        def ask(i: int) -> None:
            barrier.wait()
            results[i] = embed_model.get_query_embedding(f"thread {i}")

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert embed_model.get_text_embedding("single") == vector("single")
    assert all(results[i] == vector(f"thread {i}") for i in range(50))
    assert server.server.requests_count <= 10
    with pytest.raises(EmbedderClosedError):
        embed_model.get_query_embedding("late")


def test_all_six_methods_are_asyncembeds() -> None:
    assert issubclass(AsyncembedEmbedding, BaseEmbedding)
    for name in (
        "_get_query_embedding",
        "_aget_query_embedding",
        "_get_text_embedding",
        "_aget_text_embedding",
        "_get_text_embeddings",
        "_aget_text_embeddings",
    ):
        assert getattr(AsyncembedEmbedding, name) is not getattr(BaseEmbedding, name), name


def test_fields_and_secrets(server: ServerThread) -> None:
    embed_model = AsyncembedEmbedding(
        MODEL, base_url=server.server.base_url, api_key="sk-li-secret", dimensions=4
    )
    assert embed_model.model_name == MODEL and embed_model.embed_batch_size == 2048
    for shown in (
        repr(embed_model),
        str(embed_model.to_dict()),
        embed_model.to_json(),
        str(embed_model.to_payload()),
    ):
        assert "sk-li-secret" not in shown
    assert len(embed_model.get_query_embedding("short")) == 4
    assert embed_model.get_text_embedding_batch([]) == []
    embed_model.close()
    embed_model.close()


KEY = "sk-li-copy-secret"


@pytest.fixture(scope="module")
def keyed() -> Iterator[ServerThread]:
    with ServerThread(dimensions=DIMS, api_key=KEY) as running:
        yield running


def test_pickles_and_copies_get_embedders_of_their_own(
    keyed: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    original = AsyncembedEmbedding(MODEL, base_url=keyed.server.base_url, api_key=KEY)
    original.get_query_embedding("warm")  # a running background thread, not picklable
    copies = {
        "pickle": pickle.loads(pickle.dumps(original)),  # IngestionPipeline(num_workers=2)
        "copy": copy.copy(original),
        "deepcopy": copy.deepcopy(original),
        "model_copy": original.model_copy(),
        "model_copy deep": original.model_copy(deep=True),
    }
    original.close()
    assert not caplog.records  # LlamaIndex logs each attribute its pickling drops
    for name, clone in copies.items():
        with clone:
            # the key travelled with the copy (this server requires it)
            assert clone.get_query_embedding(name) == vector(name), name
            assert asyncio.run(clone.aget_query_embedding(name)) == vector(name), name
            assert clone.model_name == MODEL and clone.embed_batch_size == 2048
        with pytest.raises(EmbedderClosedError):
            clone.get_query_embedding("late")


def test_from_dict_needs_the_key_again(keyed: ServerThread) -> None:
    with AsyncembedEmbedding(
        MODEL, base_url=keyed.server.base_url, api_key=KEY, dimensions=4, embed_batch_size=64
    ) as original:
        data = original.to_json()
    assert KEY not in data
    with AsyncembedEmbedding.from_json(data) as keyless:
        assert keyless.model_name == MODEL and keyless.embed_batch_size == 64
        with pytest.raises(AuthenticationError):
            keyless.get_query_embedding("x")
    with AsyncembedEmbedding.from_json(data, api_key=KEY) as restored:
        assert restored.get_query_embedding("x") == expected_vector(MODEL, "x", 4).tolist()


def test_the_model_is_given_once() -> None:
    with pytest.raises(TypeError, match="model"):
        AsyncembedEmbedding()
    with pytest.raises(TypeError, match="model"):
        AsyncembedEmbedding(MODEL, model_name=MODEL)
    with AsyncembedEmbedding(model_name=MODEL) as embed_model:
        assert embed_model.model_name == MODEL


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError):
        AsyncembedEmbedding(MODEL, embed_batch_size=4096)
    with pytest.raises(ValueError, match="dimensions"):
        AsyncembedEmbedding(MODEL, dimensions=0)


async def test_async_with_closes(server: ServerThread) -> None:
    async with AsyncembedEmbedding(MODEL, base_url=server.server.base_url) as embed_model:
        assert await embed_model.aget_query_embedding("x") == vector("x")
    with pytest.raises(EmbedderClosedError):
        await embed_model.aget_query_embedding("late")


def test_missing_llama_index_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['llama_index.core.base.embeddings.base'] = None\n"
        "try:\n"
        "    import asyncembed.llama_index\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert "pip install 'asyncembed[llama-index]'" in out.stdout
