"""The Sender: one batch of inputs in, one float32 matrix (or per-input errors) out.

It strings the stages together for one batch: a scheduler slot, the request
encoded, the transport, the codec's checks, retries with backoff, a 429's global
pause, the base64 → float fallback, and bisection of a batch the server rejected
so that only the bad input fails.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from ._clock import Clock
from ._codec import Base64Unsupported, Embeddings, decode_response, encode_request
from ._config import Batching, Limits, Retry
from ._exceptions import (
    BadRequestError,
    BudgetExceededError,
    PayloadTooLargeError,
    ProtocolError,
    RateLimitError,
    UnprocessableEntityError,
)
from ._inputs import TokenEstimator, chunk
from ._models import EmbeddingRequest, ProviderPreferences
from ._retry import retrying
from ._scheduler import LIVE, Scheduler
from ._stats import Counters
from ._store import Cache
from ._transport import Transport
from ._types import EncodingFormat, Input, Matrix

__all__ = ["Outcome", "RequestOptions", "Sender", "first_error"]

logger = logging.getLogger("asyncembed")

# Errors that a single bad input in a coalesced batch can cause: split and resend.
_ISOLATE = (BadRequestError, PayloadTooLargeError, UnprocessableEntityError)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestOptions:
    """The request fields every batch of one Embedder shares."""

    model: str
    dimensions: int | None = None
    input_type: str | None = None
    user: str | None = None
    provider: ProviderPreferences | None = None


@dataclass(slots=True)
class Outcome:
    """A batch's result: row ``i`` of ``vectors`` is input ``i``, unless ``i`` is in ``errors``.

    ``vectors`` is ``None`` when every input failed.
    """

    vectors: Matrix | None
    errors: dict[int, BaseException] = field(default_factory=dict)

    @staticmethod
    def join(left: Outcome, right: Outcome, offset: int, total: int) -> Outcome:
        """The outcome of a bisected batch from its two halves."""
        errors = dict(left.errors)
        errors.update({offset + i: exc for i, exc in right.errors.items()})
        parts = [left.vectors, right.vectors]
        dim = next((p.shape[1] for p in parts if p is not None), None)
        if dim is None:
            return Outcome(None, errors)
        sizes = (offset, total - offset)
        filled = [
            p if p is not None else np.zeros((n, dim), np.float32)
            for p, n in zip(parts, sizes, strict=True)
        ]
        return Outcome(np.concatenate(filled), errors)


class Sender:
    """Sends batches for one Embedder; see the module docstring."""

    def __init__(
        self,
        *,
        transport: Transport,
        scheduler: Scheduler,
        estimator: TokenEstimator,
        counters: Counters,
        clock: Clock,
        options: RequestOptions,
        retry: Retry,
        limits: Limits,
        batching: Batching,
        encoding_format: EncodingFormat,
        cache: Cache | None = None,
    ) -> None:
        self._cache = cache
        self._transport = transport
        self._scheduler = scheduler
        self._estimator = estimator
        self._counters = counters
        self._clock = clock
        self._options = options
        self._retry = retry
        self._max_cost = limits.max_cost
        self._batching = batching
        self.encoding_format: EncodingFormat = encoding_format

    async def run(
        self,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        *,
        priority: int = LIVE,
        deadline: float | None = None,
    ) -> Outcome:
        """Embed one batch (cache first, when there is one); isolate bad inputs.

        Raises:
            APIStatusError: a failure that concerns the whole batch (401, 402, 404,
                retries exhausted...).
            APIConnectionError, ProtocolError, BudgetExceededError: likewise.
        """
        if self._cache is None or not inputs or not isinstance(inputs[0], str):
            return await self._run(inputs, priority, deadline)
        texts: list[str] = list(inputs)  # type: ignore[arg-type]
        return await self._run_cached(self._cache, texts, priority, deadline)

    async def _run_cached(
        self, cache: Cache, texts: list[str], priority: int, deadline: float | None
    ) -> Outcome:
        model, dims = self._options.model, self._options.dimensions
        # SQLite is blocking I/O: keep it off the event loop.
        found = await anyio.to_thread.run_sync(cache.get_many, model, dims, texts)
        missing = [i for i, vector in enumerate(found) if vector is None]
        self._counters.cache_hits += len(texts) - len(missing)
        self._counters.cache_misses += len(missing)
        if not missing:
            return Outcome(np.stack(found))  # type: ignore[arg-type]
        fresh = await self._run([texts[i] for i in missing], priority, deadline)
        if fresh.vectors is None:
            return Outcome(None, {missing[k]: exc for k, exc in fresh.errors.items()})
        good = [k for k in range(len(missing)) if k not in fresh.errors]
        await anyio.to_thread.run_sync(
            cache.put_many, model, dims, [texts[missing[k]] for k in good], fresh.vectors[good]
        )
        if len(missing) == len(texts):
            return fresh
        matrix = np.zeros((len(texts), fresh.vectors.shape[1]), np.float32)
        matrix[missing] = fresh.vectors
        for i, vector in enumerate(found):
            if vector is not None:
                matrix[i] = vector
        return Outcome(matrix, {missing[k]: exc for k, exc in fresh.errors.items()})

    async def _run(
        self,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        priority: int,
        deadline: float | None,
    ) -> Outcome:
        try:
            batch: Input = list(inputs)  # type: ignore[assignment]
            result = await self.request(batch, priority=priority, deadline=deadline)
            return Outcome(result.vectors)
        except _ISOLATE as exc:
            if len(inputs) == 1:
                return Outcome(None, {0: exc})
            self._counters.splits += 1
            mid = len(inputs) // 2
            halves: list[Outcome] = [Outcome(None), Outcome(None)]

            async def half(k: int, part: Sequence[str] | Sequence[Sequence[int]]) -> None:
                halves[k] = await self._run(part, priority, deadline)

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(half, 0, inputs[:mid])
                    tg.start_soon(half, 1, inputs[mid:])
            except BaseExceptionGroup as group:
                raise first_error(group) from None
            return Outcome.join(halves[0], halves[1], mid, len(inputs))

    async def request(
        self,
        inputs: Input,
        *,
        priority: int = LIVE,
        deadline: float | None = None,
        encoding_format: EncodingFormat | None = None,
    ) -> Embeddings:
        """One request, retried per the policy; no splitting.

        ``encoding_format`` forces an encoding (no fallback); ``None`` uses the
        Embedder's current one, falling back from base64 to float when needed.

        Raises:
            APIStatusError, APIConnectionError, ProtocolError: the last error, once
                retrying cannot help or the budget is spent.
            BudgetExceededError: ``Limits.max_cost`` is reached.
        """
        counters = self._counters

        def on_retry(exc: BaseException, delay: float) -> None:
            counters.retries += 1
            if isinstance(exc, RateLimitError) and exc.retry_after is None:
                self._scheduler.pause(delay)  # no server delay: pause for our backoff

        first_sent: list[float] = []
        policy = retrying(
            self._retry,
            self._clock,
            deadline=deadline,
            started=lambda: first_sent[0] if first_sent else None,
            on_retry=on_retry,
        )
        async for attempt in policy:
            with attempt:
                return await self._attempt(inputs, priority, encoding_format, first_sent)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _attempt(
        self,
        inputs: Input,
        priority: int,
        forced: EncodingFormat | None,
        first_sent: list[float],
    ) -> Embeddings:
        if self._max_cost is not None and self._counters.cost >= self._max_cost:
            raise BudgetExceededError(
                f"spending cap reached: {self._counters.cost:.6f} >= max_cost={self._max_cost}"
            )
        expected, texts = _shape(inputs)
        tokens = self._estimator.total(texts) if texts is not None else _token_count(inputs)
        counters = self._counters
        options = self._options
        async with self._scheduler.slot(tokens, priority):
            if not first_sent:
                first_sent.append(self._clock.now())
            while True:
                encoding = forced or self.encoding_format
                body = encode_request(
                    EmbeddingRequest(
                        input=inputs,
                        model=options.model,
                        encoding_format=encoding,
                        dimensions=options.dimensions,
                        input_type=options.input_type,
                        user=options.user,
                        provider=options.provider,
                    )
                )
                counters.requests += 1
                try:
                    raw = await self._transport.post(body)
                    result = decode_response(
                        raw.status,
                        raw.headers,
                        raw.content,
                        expected=expected,
                        encoding=encoding,
                        dimensions=options.dimensions,
                    )
                except Base64Unsupported:
                    counters.errors += 1
                    if forced is not None:
                        raise
                    # Some models ignore base64 (empty data, or floats): use float from now on.
                    logger.warning(
                        "model %s does not honour base64; switching to float", options.model
                    )
                    self.encoding_format = "float"
                    continue
                except RateLimitError as exc:
                    counters.errors += 1
                    counters.rate_limited += 1
                    self._scheduler.on_rate_limited(exc.retry_after)
                    raise
                except Exception:
                    counters.errors += 1
                    raise
                break
        self._scheduler.on_success()
        usage = result.usage
        counters.inputs += expected
        counters.max_batch_size = max(counters.max_batch_size, expected)
        counters.prompt_tokens += int(usage.prompt_tokens)
        counters.total_tokens += int(usage.total_tokens)
        if usage.cost is not None:
            counters.cost += usage.cost
        if texts is not None:
            self._estimator.calibrate(sum(map(len, texts)), usage.prompt_tokens)
        return result

    async def embed_all(
        self, items: list[Any], *, priority: int = LIVE, deadline: float | None = None
    ) -> Matrix:
        """Embed validated items in concurrent batches, repeats sent once.

        Returns the matrix in input order.

        Raises:
            The first failure of any batch (a bad input carries a note with its index).
        """
        if isinstance(items[0], str):
            unique: list[Any] = list(dict.fromkeys(items))
        else:
            unique = items
        spans = list(chunk(unique, self._estimator, self._batching))
        # Each batch is copied into one preallocated matrix as it lands, so the
        # batches and the result are never all in memory at once.
        matrix: Matrix | None = None

        async def one(start: int, end: int) -> None:
            nonlocal matrix
            outcome = await self.run(unique[start:end], priority=priority, deadline=deadline)
            if outcome.errors:
                i, exc = min(outcome.errors.items())
                exc.add_note(f"(input {items.index(unique[start + i])} of the batch)")
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

        try:
            async with anyio.create_task_group() as tg:
                for start, end in spans:
                    tg.start_soon(one, start, end)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        assert matrix is not None
        if len(unique) != len(items):
            self._counters.deduplicated += len(items) - len(unique)
            position = {text: i for i, text in enumerate(unique)}
            matrix = matrix[[position[text] for text in items]]
        return matrix


def _shape(inputs: Input) -> tuple[int, list[str] | None]:
    """How many vectors a request's input asks for, and its texts (``None``: tokens)."""
    if isinstance(inputs, str):
        return 1, [inputs]
    if inputs and isinstance(inputs[0], int):
        return 1, None
    if inputs and isinstance(inputs[0], str):
        return len(inputs), inputs
    return len(inputs), None


def _token_count(inputs: Input) -> int:
    if inputs and isinstance(inputs[0], int):
        return len(inputs)
    return sum(len(item) for item in inputs if not isinstance(item, int))


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
