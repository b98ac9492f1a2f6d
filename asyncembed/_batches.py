"""Batches: a list of inputs in, a float32 matrix (or per-input errors) out.

Above the single request (``_sender.py``) this layer adds what concerns a batch as
a whole: the cache in front of it, isolating the bad input of a batch the server
rejected (bisection) so that only its caller fails, and splitting a long list into
batches sent concurrently into one preallocated matrix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from ._config import Batching
from ._exceptions import (
    APIStatusError,
    BadRequestError,
    PayloadTooLargeError,
    ProtocolError,
    UnprocessableEntityError,
)
from ._inputs import TokenEstimator, chunk
from ._scheduler import LIVE
from ._sender import Deadline, Sender
from ._stats import Counters
from ._store import Cache
from ._types import Input, Matrix

__all__ = ["BatchRunner", "Outcome", "first_error"]

# Errors that one bad input in a batch can cause: split the batch to find it.
_ISOLATE = (BadRequestError, PayloadTooLargeError, UnprocessableEntityError)
Batch = Sequence[str] | Sequence[Sequence[int]]


@dataclass(slots=True)
class Outcome:
    """A batch's result: row ``i`` of ``vectors`` is input ``i``, unless ``i`` is in ``errors``.

    ``vectors`` is ``None`` when every input failed.
    """

    vectors: Matrix | None
    errors: dict[int, BaseException] = field(default_factory=dict)

    @staticmethod
    def failed(size: int, exc: BaseException) -> Outcome:
        """Every one of ``size`` inputs failed with ``exc``."""
        return Outcome(None, dict.fromkeys(range(size), exc))

    @staticmethod
    def join(parts: Sequence[tuple[int, Outcome]]) -> Outcome:
        """One outcome from consecutive ``(size, outcome)`` parts.

        Raises:
            ProtocolError: the parts' vectors differ in length.
        """
        dims = {p.vectors.shape[1] for _, p in parts if p.vectors is not None}
        if len(dims) > 1:
            raise ProtocolError(f"vectors of one batch came back with lengths {sorted(dims)}")
        errors: dict[int, BaseException] = {}
        offset = 0
        for size, part in parts:
            errors.update({offset + i: exc for i, exc in part.errors.items()})
            offset += size
        if not dims:
            return Outcome(None, errors)
        dim = dims.pop()
        blocks = [
            p.vectors if p.vectors is not None else np.zeros((n, dim), np.float32) for n, p in parts
        ]
        return Outcome(np.concatenate(blocks), errors)


class BatchRunner:
    """Runs batches for one Embedder; see the module docstring.

    Args:
        sender: Sends each request.
        batching: How long lists are split.
        estimator: Token estimates for the split.
        counters: Cache hits/misses, splits, deduplicated inputs.
        cache: Answers known inputs first, when given.
    """

    def __init__(
        self,
        sender: Sender,
        *,
        batching: Batching,
        estimator: TokenEstimator,
        counters: Counters,
        cache: Cache | None = None,
    ) -> None:
        self._sender = sender
        self._batching = batching
        self._estimator = estimator
        self._counters = counters
        self._cache = cache

    async def run(
        self, inputs: Batch, *, priority: int = LIVE, deadline: Deadline | None = None
    ) -> Outcome:
        """Embed one batch (cache first, when there is one); isolate bad inputs.

        Raises:
            APIStatusError: a failure that concerns the whole batch (401, 402, 404,
                retries exhausted...).
            APIConnectionError, ProtocolError, BudgetExceededError: likewise.
        """
        if self._cache is None or not inputs or not isinstance(inputs[0], str):
            return await self._isolating(inputs, priority, deadline)
        texts: list[str] = list(inputs)  # type: ignore[arg-type]
        return await self._cached(self._cache, texts, priority, deadline)

    async def embed_all(
        self,
        items: list[Any],
        *,
        priority: int = LIVE,
        deadline: Deadline | None = None,
        offset: int = 0,
    ) -> Matrix:
        """Embed validated items in concurrent batches, repeats sent once.

        Returns the matrix in input order.

        Raises:
            The first failure of any batch; a bad input's error carries a note with its
            position (``offset`` plus its index in ``items``).
        """
        unique: list[Any] = list(dict.fromkeys(items)) if isinstance(items[0], str) else items
        spans = list(chunk(unique, self._estimator, self._batching))
        # Each batch is copied into one preallocated matrix as it lands, so the
        # batches and the result are never all in memory at once.
        matrix: Matrix | None = None

        async def one(start: int, end: int) -> None:
            nonlocal matrix
            outcome = await self.run(unique[start:end], priority=priority, deadline=deadline)
            if outcome.errors:
                i, exc = min(outcome.errors.items())
                exc.add_note(f"(input {offset + items.index(unique[start + i])})")
                raise exc
            vectors = outcome.vectors
            assert vectors is not None
            if len(spans) == 1:
                matrix = vectors
                return
            if matrix is None:
                matrix = np.empty((len(unique), vectors.shape[1]), np.float32)
            elif vectors.shape[1] != matrix.shape[1]:
                raise ProtocolError(
                    f"vectors changed length between batches: {matrix.shape[1]} "
                    f"then {vectors.shape[1]}"
                )
            matrix[start:end] = vectors

        if len(spans) == 1:
            await one(*spans[0])  # one batch (every stream block): no task group needed
        else:
            await _all([functools.partial(one, s, e) for s, e in spans])
        assert matrix is not None
        if len(unique) != len(items):
            self._counters.deduplicated += len(items) - len(unique)
            position = {text: i for i, text in enumerate(unique)}
            matrix = matrix[[position[text] for text in items]]
        return matrix

    async def _cached(
        self, cache: Cache, texts: list[str], priority: int, deadline: Deadline | None
    ) -> Outcome:
        options = self._sender.options
        model, dims = options.model, options.dimensions
        # SQLite is blocking I/O: keep it off the event loop.
        found = await anyio.to_thread.run_sync(cache.get_many, model, dims, texts)
        missing = [i for i, vector in enumerate(found) if vector is None]
        self._counters.cache_hits += len(texts) - len(missing)
        self._counters.cache_misses += len(missing)
        if not missing:
            return Outcome(np.stack(found))  # type: ignore[arg-type]
        fresh = await self._isolating([texts[i] for i in missing], priority, deadline)
        errors = {missing[k]: exc for k, exc in fresh.errors.items()}
        if fresh.vectors is None:
            return Outcome(None, errors)
        good = [k for k in range(len(missing)) if k not in fresh.errors]
        await anyio.to_thread.run_sync(
            cache.put_many, model, dims, [texts[missing[k]] for k in good], fresh.vectors[good]
        )
        if len(missing) == len(texts):
            return fresh
        hits = [i for i, vector in enumerate(found) if vector is not None]
        stacked = np.stack([found[i] for i in hits])  # type: ignore[misc]
        if stacked.shape[1] != fresh.vectors.shape[1]:
            raise ProtocolError(
                f"cached vectors have {stacked.shape[1]} dimensions, "
                f"the server's now {fresh.vectors.shape[1]}"
            )
        matrix = np.empty((len(texts), stacked.shape[1]), np.float32)
        matrix[missing] = fresh.vectors
        matrix[hits] = stacked
        return Outcome(matrix, errors)

    async def _isolating(self, inputs: Batch, priority: int, deadline: Deadline | None) -> Outcome:
        try:
            return await self._send(inputs, priority, deadline)
        except _ISOLATE as exc:
            if len(inputs) == 1:
                return Outcome.failed(1, exc)
            return await self._bisect(inputs, exc, priority, deadline, same_levels=0)

    async def _send(self, inputs: Batch, priority: int, deadline: Deadline | None) -> Outcome:
        batch: Input = list(inputs)  # type: ignore[assignment]
        result = await self._sender.request(batch, priority=priority, deadline=deadline)
        return Outcome(result.vectors)

    async def _bisect(
        self,
        inputs: Batch,
        exc: APIStatusError,
        priority: int,
        deadline: Deadline | None,
        *,
        same_levels: int,
    ) -> Outcome:
        """Find the input(s) behind ``exc`` by halving, so every other input succeeds.

        When both halves fail with the very error of the whole, twice in a row (four
        quarters), the error is about the request rather than an input (a bad model,
        ``dimensions``...): every input fails with it, after 7 requests instead of
        the 2n - 1 of a full bisection.
        """
        self._counters.splits += 1
        mid = len(inputs) // 2
        halves = (inputs[:mid], inputs[mid:])
        tried: list[Outcome | APIStatusError] = [exc, exc]

        async def attempt(k: int) -> None:
            try:
                tried[k] = await self._send(halves[k], priority, deadline)
            except _ISOLATE as failure:
                tried[k] = failure

        await _all([functools.partial(attempt, 0), functools.partial(attempt, 1)])
        both_same = all(isinstance(t, APIStatusError) and _same(t, exc) for t in tried)
        if both_same and same_levels >= 1:
            return Outcome.failed(len(inputs), exc)
        level = same_levels + 1 if both_same else 0
        results: list[Outcome | None] = [None, None]

        async def settle(k: int) -> None:
            t = tried[k]
            if isinstance(t, Outcome):
                results[k] = t
            elif len(halves[k]) == 1:
                results[k] = Outcome.failed(1, t)
            else:
                results[k] = await self._bisect(halves[k], t, priority, deadline, same_levels=level)

        await _all([functools.partial(settle, 0), functools.partial(settle, 1)])
        return Outcome.join(
            [(len(h), r) for h, r in zip(halves, results, strict=True) if r is not None]
        )


def _same(a: APIStatusError, b: APIStatusError) -> bool:
    return a.status == b.status and a.message == b.message


async def _all(jobs: Sequence[Callable[[], Coroutine[Any, Any, None]]]) -> None:
    """Run jobs concurrently; the first failure is raised as itself, not as a group."""
    try:
        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(job)
    except BaseExceptionGroup as group:
        raise first_error(group) from None


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to raise for a failed task group: its first non-cancellation leaf.

    Callers see the typed error they would see without concurrency, not a group.
    """
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if isinstance(exc, Exception):
            return exc
    return group.exceptions[0]
