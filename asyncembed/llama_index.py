"""LlamaIndex embeddings backed by asyncembed: ``AsyncembedEmbedding``.

Install with ``pip install 'asyncembed[llama-index]'``::

    from llama_index.core import Settings
    from asyncembed.llama_index import AsyncembedEmbedding

    Settings.embed_model = AsyncembedEmbedding("openai/text-embedding-3-small")
"""

from __future__ import annotations

import copy
from typing import Any, Self, Unpack

from ._exceptions import MissingExtraError

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import BaseModel, Field, PrivateAttr
    from llama_index.core.callbacks import CallbackManager
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise MissingExtraError(
        "asyncembed.llama_index needs LlamaIndex: pip install 'asyncembed[llama-index]'"
    ) from exc

from ._options import EmbedderOptions
from ._per_loop import ClosesItsEmbedders, PerLoop

__all__ = ["AsyncembedEmbedding"]

# LlamaIndex's ceiling for embed_batch_size. Its sync batch path sends one chunk after
# another, so small chunks cost one round trip each; asyncembed splits a chunk into
# requests of Batching.max_size itself and sends them concurrently.
MAX_BATCH = 2048
# Where a pickle or copy keeps the model id and options of its Embedders.
_OPTIONS = "asyncembed_options"


class AsyncembedEmbedding(ClosesItsEmbedders, BaseEmbedding):
    """A LlamaIndex ``BaseEmbedding`` whose calls are batched by asyncembed.

    Query and text embeddings made at the same time share requests: on one event
    loop (one Embedder per loop, created on its first call) or from many threads (one
    :class:`asyncembed.SyncEmbedder`). Batches go to ``embed_many``, which splits them
    into requests of ``Batching.max_size`` texts sent concurrently, so
    ``embed_batch_size`` defaults to LlamaIndex's maximum (2048) instead of 10; in
    the async batch path, which gathers its chunks at once, chunks smaller than one
    request are coalesced with each other.

    Copies and pickles (``copy``, ``model_copy()``, ``pickle``, as
    ``IngestionPipeline(num_workers=...)`` does) get Embedders of their own with the
    same options, the key included, so closing one leaves the other working; a
    ``cache`` given as a :class:`asyncembed.Cache` object is shared by them, and a
    pickle fails if an option cannot be pickled (a transport, a clock, a limiter).
    ``to_dict()``/``to_json()`` hold the model, batch size, ``base_url`` and
    ``dimensions`` but never the key: ``from_dict()`` takes ``$OPENROUTER_API_KEY``
    for OpenRouter's own URL, and any other server's key must be passed again, as
    ``AsyncembedEmbedding.from_dict(data, api_key=key)``.

    Nothing needs closing: each loop's Embedder closes when that loop shuts down, and
    the background thread stops when this object is collected or the interpreter
    exits. ``close()``, ``aclose()``, ``with`` and ``async with`` close everything now.

    Args:
        model: The model id, e.g. ``"openai/text-embedding-3-small"``.
        model_name: The same, under LlamaIndex's field name (what ``to_dict()`` holds);
            give one of the two.
        embed_batch_size: Texts per call of LlamaIndex's batch methods (1 to 2048).
        callback_manager: LlamaIndex callbacks; ``None``: none.
        num_workers: LlamaIndex's concurrency for its async batch method.
        embeddings_cache: LlamaIndex's own cache of vectors (a ``BaseKVStore``), or
            ``None``; asyncembed's is ``cache=``.
        **options: Any keyword option of :class:`asyncembed.Embedder` (``api_key``,
            ``base_url``, ``batching``, ``limits``, ``retry``, ``dimensions``,
            ``cache``...), except ``session``. Kept out of the pydantic fields, so
            the key never reaches a dump, repr or instrumentation payload.

    Raises:
        ValueError: a bad option, as :class:`asyncembed.Embedder` raises it, or
            ``embed_batch_size`` out of range (pydantic's ``ValidationError``).
        TypeError: an unknown keyword, ``session``, or neither or both of ``model``
            and ``model_name``.
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
        model: str | None = None,
        *,
        model_name: str | None = None,
        embed_batch_size: int = MAX_BATCH,
        callback_manager: CallbackManager | None = None,
        num_workers: int | None = None,
        embeddings_cache: Any = None,
        **options: Unpack[EmbedderOptions],
    ) -> None:
        if (model is None) == (model_name is None):
            raise TypeError("AsyncembedEmbedding takes a model id: model= or model_name=")
        model = model if model is not None else model_name
        assert model is not None
        fields: dict[str, Any] = {"model_name": model, "embed_batch_size": embed_batch_size}
        if callback_manager is not None:
            fields["callback_manager"] = callback_manager
        if num_workers is not None:
            fields["num_workers"] = num_workers
        if embeddings_cache is not None:
            fields["embeddings_cache"] = embeddings_cache
        super().__init__(**fields)
        self._embedders = PerLoop(model, options)

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's name for this class (used in serialized settings)."""
        return "AsyncembedEmbedding"

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """The fields, ``base_url`` and ``dimensions``, for ``from_dict``; never the key.

        Args:
            **kwargs: pydantic's ``model_dump`` options, as LlamaIndex passes them.
        """
        data: dict[str, Any] = super().to_dict(**kwargs)
        data["base_url"] = self._embedders.base_url
        if self._embedders.dimensions is not None:
            data["dimensions"] = self._embedders.dimensions
        return data

    # Pickles and copies rebuild their Embedders from the options: an Embedder, its
    # threads and its loops' tasks cannot be pickled, and must not be shared (closing
    # a copy would close the original). LlamaIndex's own __getstate__ drops what does
    # not pickle and its __setstate__ calls __init__ with the fields only.
    def __getstate__(self) -> dict[Any, Any]:
        state: dict[Any, Any] = BaseModel.__getstate__(self)
        private = dict(state.get("__pydantic_private__") or {})
        private.pop("_embedders", None)
        state["__pydantic_private__"] = private
        state[_OPTIONS] = (self._embedders.model, self._embedders.options)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        state = dict(state)
        model, options = state.pop(_OPTIONS)
        BaseModel.__setstate__(self, state)
        self._embedders = PerLoop(model, options)

    def __copy__(self) -> Self:
        clone = super().__copy__()
        clone._embedders = PerLoop(self._embedders.model, self._embedders.options)
        return clone

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        # The fields are copied deeply; the options (a Cache, a limiter) are shared.
        state = self.__getstate__()
        options = state.pop(_OPTIONS)
        clone = type(self).__new__(type(self))
        clone.__setstate__({**copy.deepcopy(state, memo), _OPTIONS: options})
        return clone

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
