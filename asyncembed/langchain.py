"""LangChain embeddings backed by asyncembed: ``AsyncembedEmbeddings``.

Install with ``pip install 'asyncembed[langchain]'``::

    from asyncembed.langchain import AsyncembedEmbeddings

    embeddings = AsyncembedEmbeddings("openai/text-embedding-3-small")
    vector = await embeddings.aembed_query("hello")  # concurrent calls share requests
"""

from __future__ import annotations

from typing import Unpack

try:
    from langchain_core.embeddings import Embeddings
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "asyncembed.langchain needs LangChain: pip install 'asyncembed[langchain]'"
    ) from exc

from ._options import EmbedderOptions
from ._per_loop import ClosesItsEmbedders, PerLoop

__all__ = ["AsyncembedEmbeddings"]


class AsyncembedEmbeddings(ClosesItsEmbedders, Embeddings):
    """A LangChain ``Embeddings`` whose calls are batched by asyncembed.

    ``aembed_query`` calls made at the same time on one event loop share requests (one
    Embedder per event loop, created on its first call); ``embed_query`` calls made at
    the same time from many threads share requests too (one :class:`SyncEmbedder`).
    The sync methods work from inside a running event loop as well, blocking it until
    they return. Vectors are lists of plain Python floats.

    Nothing needs closing: each loop's Embedder closes when that loop shuts down, and
    the background thread stops when this object is collected or the interpreter
    exits. ``close()``, ``aclose()``, ``with`` and ``async with`` close everything now.

    Args:
        model: The model id, e.g. ``"openai/text-embedding-3-small"``.
        **options: Any keyword option of :class:`asyncembed.Embedder` (``api_key``,
            ``base_url``, ``batching``, ``limits``, ``retry``, ``dimensions``,
            ``cache``...), except ``session``. ``base_url`` and the key are settled
            from the environment now, once.

    Attributes:
        model: The model id.

    Raises:
        ValueError: a bad option, as :class:`asyncembed.Embedder` raises it.
        TypeError: an unknown keyword, or ``session``.
    """

    def __init__(self, model: str, **options: Unpack[EmbedderOptions]) -> None:
        self.model = model
        self._embedders = PerLoop(model, options)

    @property
    def base_url(self) -> str:
        """The API root in force."""
        return self._embedders.base_url

    @property
    def dimensions(self) -> int | None:
        """The ``dimensions`` asked for, or ``None``."""
        return self._embedders.dimensions

    def __repr__(self) -> str:
        return f"<AsyncembedEmbeddings model={self.model!r} base_url={self.base_url!r}>"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents, in batches sent concurrently (blocking).

        Args:
            texts: The texts; an empty list gives an empty list.

        Returns:
            One list of floats per text, in order.

        Raises:
            PartialResultError: some texts failed, others did not.
            The errors of :meth:`asyncembed.SyncEmbedder.embed_many`.
        """
        if not texts:
            return []
        vectors: list[list[float]] = self._embedders.sync.embed_many(texts).tolist()
        return vectors

    def embed_query(self, text: str) -> list[float]:
        """Embed one query (blocking); concurrent calls from other threads share requests.

        Raises:
            The errors of :meth:`asyncembed.SyncEmbedder.embed`.
        """
        vector: list[float] = self._embedders.sync.embed(text).tolist()
        return vector

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents on the running loop, in batches sent concurrently.

        A list shorter than one request (``Batching.max_size``) shares requests with
        the other calls in flight, as :meth:`aembed_query` does; a longer one is sent
        as its own batches (:meth:`asyncembed.Embedder.embed_many`).

        Raises:
            The errors of :meth:`asyncembed.Embedder.embed` (short lists) or
            :meth:`asyncembed.Embedder.embed_many` (long ones).
        """
        return [vector.tolist() for vector in await self._embedders.embed_chunk(texts)]

    async def aembed_query(self, text: str) -> list[float]:
        """Embed one query on the running loop; concurrent calls share requests.

        Raises:
            The errors of :meth:`asyncembed.Embedder.embed`.
        """
        vector: list[float] = (await self._embedders.embed(text)).tolist()
        return vector
