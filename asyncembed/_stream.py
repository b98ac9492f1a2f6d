"""Streaming a corpus of any size: read a window ahead, embed, yield in input order."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
)
from typing import Any

from ._config import Batching
from ._types import Matrix

__all__ = ["stream_blocks"]


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    elif isinstance(items, str | bytes):
        raise TypeError("stream() expects an iterable of texts, not a single string")
    else:
        for item in items:
            yield item


async def stream_blocks(
    items: Iterable[Any] | AsyncIterable[Any],
    *,
    embed_chunk: Callable[[list[str], int], Awaitable[Matrix]],
    check: Callable[[object, str], str],
    batching: Batching,
    window: int,
) -> AsyncGenerator[tuple[Any, Matrix]]:
    """Yield ``(start, matrix)`` (texts) or ``(ids, matrix)`` (pairs) blocks in order.

    At most ``window`` blocks of ``batching.max_size`` texts are in flight or waiting
    to be consumed; the input is not read further until the oldest is yielded, so
    memory stays bounded whatever the corpus size. Pending work is cancelled when
    the generator is closed.

    Raises:
        TypeError: an item is neither a str nor an ``(id, str)`` pair, or the kinds mix.
        InvalidInputError: an empty or over-long text (its position is in the message).
    """
    pending: deque[tuple[Any, asyncio.Task[Matrix]]] = deque()
    pairs: bool | None = None
    ids: list[Any] = []
    texts: list[str] = []
    start = position = 0
    size = batching.max_size

    def launch() -> None:
        nonlocal ids, texts, start
        key = ids if pairs else start
        pending.append((key, asyncio.ensure_future(embed_chunk(texts, start))))
        start += len(texts)
        ids, texts = [], []

    try:
        async for item in _aiter(items):
            is_pair = isinstance(item, tuple) and len(item) == 2
            if pairs is None:
                pairs = is_pair
            elif is_pair != pairs:
                raise TypeError(f"item {position} mixes (id, text) pairs with plain texts")
            if pairs:
                ids.append(item[0])
                texts.append(check(item[1], f"item {position}"))
            else:
                texts.append(check(item, f"item {position}"))
            position += 1
            if len(texts) >= size:
                launch()
                while len(pending) >= window:
                    key, task = pending.popleft()
                    yield key, await task
        if texts:
            launch()
        while pending:
            key, task = pending.popleft()
            yield key, await task
    finally:
        for _, task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*(task for _, task in pending), return_exceptions=True)
