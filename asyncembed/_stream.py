"""Streaming a corpus of any size: read a window ahead, embed, yield in input order."""

from __future__ import annotations

import asyncio
import itertools
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

from ._types import Matrix

__all__ = ["stream_blocks"]

Check = Callable[[object, int | None, str], str]


async def _blocks_of(
    items: Iterable[Any] | AsyncIterable[Any], size: int
) -> AsyncIterator[list[Any]]:
    """The items in lists of ``size`` (the last may be shorter).

    A plain iterable is read ``size`` items at a time with ``islice``: an async
    generator step per item would cost more than the rest of the per-text work.
    """
    if isinstance(items, AsyncIterable):
        block: list[Any] = []
        async for item in items:
            block.append(item)
            if len(block) >= size:
                yield block
                block = []
        if block:
            yield block
    elif isinstance(items, str | bytes):
        raise TypeError("stream() expects an iterable of texts, not a single string")
    else:
        iterator = iter(items)
        while block := list(itertools.islice(iterator, size)):
            yield block


async def stream_blocks(
    items: Iterable[Any] | AsyncIterable[Any],
    *,
    embed_chunk: Callable[[list[str], int], Awaitable[Matrix]],
    check: Check,
    size: int,
    window: int,
) -> AsyncGenerator[tuple[Any, Matrix]]:
    """Yield ``(start, matrix)`` (texts) or ``(ids, matrix)`` (pairs) blocks in order.

    At most ``window`` blocks of ``size`` texts are in flight or waiting to be
    consumed; the input is not read further until the oldest is yielded, so memory
    stays bounded whatever the corpus size. Pending work is cancelled when the
    generator is closed.

    Raises:
        TypeError: an item is neither a str nor an ``(id, str)`` pair, or the kinds mix.
        InvalidInputError: an empty or over-long text (its ``index`` is its position).
    """
    pending: deque[tuple[Any, asyncio.Task[Matrix]]] = deque()
    pairs: bool | None = None
    start = 0
    try:
        async for block in _blocks_of(items, size):
            if pairs is None:
                pairs = isinstance(block[0], tuple) and len(block[0]) == 2
            if pairs:
                for i, item in enumerate(block):
                    if not (isinstance(item, tuple) and len(item) == 2):
                        raise TypeError(f"item {start + i} is not an (id, text) pair")
                ids = [item[0] for item in block]
                texts = [check(item[1], start + i, "item") for i, item in enumerate(block)]
            else:
                ids = []
                texts = [check(item, start + i, "item") for i, item in enumerate(block)]
            task = asyncio.ensure_future(embed_chunk(texts, start))
            pending.append((ids if pairs else start, task))
            start += len(block)
            while len(pending) >= window:
                key, head = pending.popleft()
                yield key, await head
        while pending:
            key, head = pending.popleft()
            yield key, await head
    finally:
        for _, task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*(task for _, task in pending), return_exceptions=True)
