"""LlamaIndex embeddings backed by asyncembed: ``AsyncembedEmbedding``.

Install with ``pip install 'asyncembed[llama-index]'``::

    from llama_index.core import Settings
    from asyncembed.llama_index import AsyncembedEmbedding

    Settings.embed_model = AsyncembedEmbedding("openai/text-embedding-3-small")
"""

from __future__ import annotations

from typing import Any, Unpack

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CallbackManager
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "asyncembed.llama_index needs LlamaIndex: pip install 'asyncembed[llama-index]'"
    ) from exc

from ._options import EmbedderOptions
from ._per_loop import ClosesItsEmbedders, PerLoop

__all__ = ["AsyncembedEmbedding"]

# LlamaIndex's ceiling for embed_batch_size. Its sync batch path sends one chunk after
# another, so small chunks cost one round trip each; asyncembed splits a chunk into
# requests of Batching.max_size itself and sends them concurrently.
MAX_BATCH = 2048


class AsyncembedEmbedding(ClosesItsEmbedders, BaseEmbedding):
    """A LlamaIndex ``BaseEmbedding`` whose calls are batched by asyncembed.

    Query and text embeddings made at the same time share requests: on one event
    loop (one Embedder per loop, created on its first call) or from many threads (one
    :class:`asyncembed.SyncEmbedder`). Batches go to ``embed_many``, which splits them
    into requests of ``Batching.max_size`` texts sent concurrently, so
    ``embed_batch_size`` defaults to LlamaIndex's maximum (2048) instead of 10; in
    the async batch path, which gathers its chunks at once, chunks smaller than one
    request are coalesced with each other.

    Nothing needs closing: each loop's Embedder closes when that loop shuts down, and
    the background thread stops when this object is collected or the interpreter
    exits. ``close()``, ``aclose()``, ``with`` and ``async with`` close everything now.

    Args:
        model: The model id, e.g. ``"openai/text-embedding-3-small"`` (also
            ``model_name``).
        embed_batch_size: Texts per call of LlamaIndex's batch methods (1 to 2048).
        callback_manager: LlamaIndex callbacks; ``None``: none.
        num_workers: LlamaIndex's concurrency for its async batch method.
        **options: Any keyword option of :class:`asyncembed.Embedder` (``api_key``,
            ``base_url``, ``batching``, ``limits``, ``retry``, ``dimensions``,
            ``cache``...), except ``session``. Kept out of the pydantic fields, so
            the key never reaches a dump, repr or instrumentation payload.

    Raises:
        ValueError: a bad option, as :class:`asyncembed.Embedder` raises it, or
            ``embed_batch_size`` out of range (pydantic's ``ValidationError``).
        TypeError: an unknown keyword, or ``session``.
    """

    embed_batch_size: int = Field(
        default=MAX_BATCH,
        description="Texts per call of the batch methods; asyncembed splits them further.",
        gt=0,
        le=MAX_BATCH,
    )
    _embedders: PerLoop = PrivateAttr()

    def __init__(
        self,
        model: str,
        *,
        embed_batch_size: int = MAX_BATCH,
        callback_manager: CallbackManager | None = None,
        num_workers: int | None = None,
        **options: Unpack[EmbedderOptions],
    ) -> None:
        fields: dict[str, Any] = {"model_name": model, "embed_batch_size": embed_batch_size}
        if callback_manager is not None:
            fields["callback_manager"] = callback_manager
        if num_workers is not None:
            fields["num_workers"] = num_workers
        super().__init__(**fields)
        self._embedders = PerLoop(model, options)

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's name for this class (used in serialized settings)."""
        return "AsyncembedEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        vector: list[float] = self._embedders.sync.embed(query).tolist()
        return vector

    async def _aget_query_embedding(self, query: str) -> list[float]:
        vector: list[float] = (await self._embedders.embed(query)).tolist()
        return vector

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_query_embedding(text)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await self._aget_query_embedding(text)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors: list[list[float]] = self._embedders.sync.embed_many(texts).tolist()
        return vectors

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        # LlamaIndex gathers its chunks at once: small ones share requests this way.
        return [vector.tolist() for vector in await self._embedders.embed_chunk(texts)]
