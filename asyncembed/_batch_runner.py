"""Batches: a list of inputs in, a float32 matrix (or per-input errors) out.

Above the single request (``_sender.py``) this layer adds what concerns a batch as
a whole: the cache in front of it, isolating the bad input of a batch the server
rejected (bisection) so that only its caller fails, and splitting a long list into
batches sent concurrently into one preallocated matrix.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio
import numpy as np

from ._cache import Cache
from ._codec import Rows
from ._config import Batching
from ._exceptions import (
    APIStatusError,
    BadRequestError,
    PartialResultError,
    PayloadTooLargeError,
    ProtocolError,
    UnprocessableEntityError,
)
from ._inputs import TokenEstimator, chunk
from ._outcome import Outcome
from ._scheduler import LIVE
from ._sender import Deadline, Sender
from ._stats import Counters
from ._types import Input, Matrix

__all__ = ["BatchRunner", "first_error"]

logger = logging.getLogger("asyncembed")

# Errors that one bad input in a batch can cause: split the batch to find it.
_ISOLATE = (BadRequestError, PayloadTooLargeError, UnprocessableEntityError)
Batch = Sequence[str] | Sequence[Sequence[int]]


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
        self._known_good: Any = None  # an input that got a vector (for _request_wide)
        self.learned_cap: int | None = None
        """The most inputs the server accepts in one request, once a size cap was seen."""

    async def run(
        self,
        inputs: Batch,
        *,
        priority: int = LIVE,
        deadline: Deadline | None = None,
        rows: bool = False,
    ) -> Outcome:
        """Embed one batch (cache first, when there is one); isolate bad inputs.

        ``rows``: the outcome may carry ``rows`` instead of ``vectors`` (a base64 answer
        to the whole batch at once, with no cache; split or bisected batches are joined).

        Raises:
            APIStatusError: a failure that concerns the whole batch (401, 402, 404,
                retries exhausted...).
            APIConnectionError, ProtocolError, BudgetExceededError: likewise.
        """
        if self._cache is None or not inputs or not isinstance(inputs[0], str):
            return await self._isolating(inputs, priority, deadline, rows)
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

        Returns the matrix in input order. Every batch runs to its end (each retried
        within its own budget) before a failure is raised, so that no request in flight
        is thrown away.

        Raises:
            PartialResultError: some inputs failed and others did not: it carries the
                vectors obtained and the failures (positions plus ``offset``).
            The failure itself when no input got a vector; a bad input's error carries a
                note with its position (``offset`` plus its index in ``items``).
        """
        unique: list[Any] = list(dict.fromkeys(items)) if isinstance(items[0], str) else items
        spans = list(chunk(unique, self._estimator, self._batching))
        # Each batch is copied into one preallocated matrix as it lands, so the
        # batches and the result are never all in memory at once.
        matrix: Matrix | None = None
        failed: dict[int, BaseException] = {}  # by position in `unique`

        async def one(start: int, end: int) -> None:
            nonlocal matrix
            try:
                outcome = await self.run(unique[start:end], priority=priority, deadline=deadline)
            except Exception as exc:
                failed.update(dict.fromkeys(range(start, end), exc))
                return
            failed.update({start + i: exc for i, exc in outcome.errors.items()})
            vectors = outcome.vectors
            if vectors is None:
                return
            if len(spans) == 1 and not outcome.errors:
                matrix = vectors
                return
            if matrix is None:
                matrix = np.full((len(unique), vectors.shape[1]), np.nan, np.float32)
            matrix[start:end] = vectors  # one width per model: the Sender checked it
            for i in outcome.errors:
                matrix[start + i] = np.nan

        if len(spans) == 1:
            await one(*spans[0])  # one batch (every stream block): no task group needed
        else:
            await _all([functools.partial(one, s, e) for s, e in spans])
        if len(unique) != len(items):
            self._counters.deduplicated += len(items) - len(unique)
        if failed:
            raise self._failure(items, unique, matrix, failed, offset)
        assert matrix is not None
        if len(unique) != len(items):
            position = {text: i for i, text in enumerate(unique)}
            matrix = matrix[[position[text] for text in items]]
        return matrix

    @staticmethod
    def _failure(
        items: list[Any],
        unique: list[Any],
        matrix: Matrix | None,
        failed: dict[int, BaseException],
        offset: int,
    ) -> BaseException:
        """The error for a list with failed inputs (see :meth:`embed_all`)."""
        if len(unique) != len(items):
            position = {text: i for i, text in enumerate(unique)}
            where = [position[text] for text in items]
        else:
            where = list(range(len(items)))
        errors = {offset + k: failed[u] for k, u in enumerate(where) if u in failed}
        first_at, first = min(errors.items())
        first.add_note(f"(input {first_at})")
        if matrix is None:
            return first
        vectors = matrix if len(unique) == len(items) else matrix[where]
        distinct = len({id(exc) for exc in errors.values()})
        error = PartialResultError(
            f"{len(errors)} of {len(items)} inputs failed ({distinct} distinct errors; "
            f"the first, at input {first_at}: {first}); the other vectors are in .vectors",
            vectors=vectors,
            errors=errors,
            start=offset,
        )
        error.__cause__ = first
        return error

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

    async def _isolating(
        self, inputs: Batch, priority: int, deadline: Deadline | None, rows: bool = False
    ) -> Outcome:
        tried = await self._try(inputs, priority, deadline, rows)
        if isinstance(tried, Outcome):
            return tried
        if len(inputs) == 1:
            return Outcome.failed(1, tried)
        return await self._bisect(inputs, tried, priority, deadline, _Probe())

    async def _split(
        self, inputs: Batch, size: int, priority: int, deadline: Deadline | None
    ) -> Outcome:
        """Send ``inputs`` in parts of ``size`` (a learned cap), concurrently."""
        parts = [inputs[s : s + size] for s in range(0, len(inputs), size)]
        outcomes: list[Outcome] = [Outcome.failed(0, ProtocolError("unset"))] * len(parts)

        async def part(k: int) -> None:
            outcomes[k] = await self._isolating(parts[k], priority, deadline)

        await _all([functools.partial(part, k) for k in range(len(parts))])
        return Outcome.join([(len(p), o) for p, o in zip(parts, outcomes, strict=True)])

    async def _send(
        self, inputs: Batch, priority: int, deadline: Deadline | None, rows: bool = False
    ) -> Outcome:
        batch: Input = list(inputs)  # type: ignore[assignment]
        result = await self._sender.request(batch, priority=priority, deadline=deadline, rows=rows)
        self._known_good = batch[0]
        if isinstance(result, Rows):
            return Outcome(None, rows=result.vectors)
        return Outcome(result.vectors)

    async def _try(
        self, inputs: Batch, priority: int, deadline: Deadline | None, rows: bool = False
    ) -> Outcome | APIStatusError:
        """A batch's outcome (split at the learned cap), or the error that splits it."""
        cap = self.learned_cap
        if cap is not None and len(inputs) > cap:
            return await self._split(inputs, cap, priority, deadline)
        try:
            return await self._send(inputs, priority, deadline, rows)
        except _ISOLATE as failure:
            return failure

    async def _bisect(
        self,
        inputs: Batch,
        exc: APIStatusError,
        priority: int,
        deadline: Deadline | None,
        probe: _Probe,
    ) -> Outcome:
        """Find the input(s) behind ``exc`` by halving, so every other input succeeds.

        The rule (docs/guides/reliability.md): an error fails every input only once it
        is shown to concern the request, not an input: when both halves fail with the
        very error of the whole, one input known to be good is sent alone, and if it
        fails the same way (an unknown model, a bad parameter) so does the batch,
        after a handful of requests. Otherwise halving goes on to single inputs, and
        only those that fail alone fail. When both halves of a failed batch succeed,
        the error was about its size: the half's size becomes the learned cap.
        """
        self._counters.splits += 1
        mid = len(inputs) // 2
        halves = (inputs[:mid], inputs[mid:])
        tried: list[Outcome | APIStatusError] = [exc, exc]

        async def attempt(k: int) -> None:
            tried[k] = await self._try(halves[k], priority, deadline)

        await _all([functools.partial(attempt, 0), functools.partial(attempt, 1)])
        if all(isinstance(t, APIStatusError) and _same(t, exc) for t in tried):
            if await probe.request_wide(lambda: self._request_wide(inputs, exc, priority)):
                return Outcome.failed(len(inputs), exc)
        elif all(isinstance(t, Outcome) and not t.errors for t in tried):
            self._learn_cap(max(map(len, halves)))
        results: list[Outcome | None] = [None, None]

        async def settle(k: int) -> None:
            t = tried[k]
            if isinstance(t, Outcome):
                results[k] = t
            elif len(halves[k]) == 1:
                results[k] = Outcome.failed(1, t)
            else:
                results[k] = await self._bisect(halves[k], t, priority, deadline, probe)

        await _all([functools.partial(settle, 0), functools.partial(settle, 1)])
        return Outcome.join(
            [(len(h), r) for h, r in zip(halves, results, strict=True) if r is not None]
        )

    async def _request_wide(self, inputs: Batch, exc: APIStatusError, priority: int) -> bool:
        """Whether ``exc`` concerns the request: an input known good fails the same way.

        With no input known good yet (of this kind), the batch's first, middle and last
        inputs are tried alone: all three failing the same way is taken as request-wide.
        """
        known = self._known_good
        if known is not None and isinstance(known, str) == isinstance(inputs[0], str):
            candidates: list[Any] = [known]
        else:
            candidates = [inputs[0], inputs[len(inputs) // 2], inputs[-1]]
        for candidate in candidates:
            outcome = await self._try([candidate], priority, None)
            if not (isinstance(outcome, APIStatusError) and _same(outcome, exc)):
                return False
        return True

    def _learn_cap(self, size: int) -> None:
        if self.learned_cap is None or size < self.learned_cap:
            self.learned_cap = size
            logger.warning(
                "the server refuses batches over %d inputs; sending at most %d from now on",
                size,
                size,
            )


class _Probe:
    """Whether one bisection's error is request-wide, found once for all its branches."""

    __slots__ = ("_done", "_result", "_started")

    def __init__(self) -> None:
        self._started = False
        self._done = anyio.Event()
        self._result = False

    async def request_wide(self, check: Callable[[], Coroutine[Any, Any, bool]]) -> bool:
        if not self._started:
            self._started = True
            try:
                self._result = await check()
            finally:
                self._done.set()
        await self._done.wait()
        return self._result


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
