"""``EmbedderOptions``: the keyword options of :class:`Embedder`, as one type, for the
wrappers that build Embedders (SyncEmbedder and the framework integrations)."""

from __future__ import annotations

import os
from typing import TypedDict

from ._cache import Cache
from ._clock import Clock
from ._config import Batching, Limits, Retry, Timeouts
from ._limiter import Limiter
from ._models import ProviderPreferences
from ._transport import Transport
from ._types import EncodingFormat

__all__ = ["EmbedderOptions"]


class EmbedderOptions(TypedDict, total=False):
    """The keyword options of :class:`Embedder`, for the wrappers that build Embedders.

    ``session`` is left out on purpose: an ``aiohttp.ClientSession`` belongs to one
    event loop, and the wrappers run their Embedders on loops of their own.
    ``tests/test_sync.py`` checks that these keys are exactly Embedder's other
    keywords, so this list cannot drift from the real signature.
    """

    api_key: str | None
    base_url: str | None
    batching: Batching | None
    limits: Limits | None
    retry: Retry | None
    timeouts: Timeouts | None
    provider: ProviderPreferences | None
    dimensions: int | None
    encoding_format: EncodingFormat
    input_type: str | None
    user: str | None
    app_url: str | None
    app_title: str | None
    transport: Transport | None
    allow_insecure: bool
    cache: Cache | str | os.PathLike[str] | None
    clock: Clock | None
    limiter: Limiter | None
