"""The Sender: one request, from a scheduler slot to a decoded response, retried.

For one request it strings the stages together: a scheduler slot (concurrency,
RPM/TPM windows, 429 pauses), the body encoded, the transport, the codec's checks,
retries with backoff, a 429's global pause and AIMD decrease, and the base64 → float
fallback for models that do not honour base64. Splitting batches is the batch
layer's job (``_batches.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NoReturn, overload

from ._clock import Clock
from ._codec import (
    Base64Unsupported,
    Embeddings,
    EmptyData,
    Rows,
    billed_usage,
    decode_response_async,
    encode_request,
)
from ._config import Retry
from ._exceptions import (
    APIStatusError,
    BadRequestError,
    ProtocolError,
    RateLimitError,
    UnprocessableEntityError,
    redact_secret,
)
from ._inputs import TokenEstimator
from ._models import EmbeddingRequest, ProviderPreferences, Usage
from ._retry import budget_end, retrying
from ._scheduler import LIVE, Scheduler, Slot
from ._stats import Counters
from ._transport import Transport
from ._types import EncodingFormat, Input

__all__ = ["Deadline", "RequestOptions", "Sender"]

logger = logging.getLogger("asyncembed")

_EMPTY_EVIDENCE = 2
"""Empty answers to base64 requests in a row that show the model ignores base64."""

Deadline = Callable[[], float | None]
"""Returns the latest ``clock.now()`` any caller waits for (``None``: no limit)."""


class _EncodingSwitched(Exception):
    """Internal: the model ignored base64; resend in float through a new slot."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestOptions:
    """The request fields every batch of one Embedder shares."""

    model: str
    dimensions: int | None = None
    input_type: str | None = None
    user: str | None = None
    provider: ProviderPreferences | None = None


class Sender:
    """Sends single requests for one Embedder; see the module docstring."""

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
        encoding_format: EncodingFormat,
        secret: str | None = None,
    ) -> None:
        self._transport = transport
        self._scheduler = scheduler
        self._estimator = estimator
        self._counters = counters
        self._clock = clock
        self.options = options
        self._retry = retry
        self.encoding_format: EncodingFormat = encoding_format
        self._secret = secret  # the API key, blanked out of the server's error texts
        self._empty_base64 = 0  # empty base64 answers in a row (see EmptyData)
        self.width: int | None = options.dimensions
        """The model's vector length: ``dimensions``, else that of the first good answer.

        An answer of another length is a retryable :class:`ProtocolError`, never
        delivered (a provider fallback can change it mid-run).
        """

    def _check_width(self, width: int) -> None:
        """One width per model: ``dimensions``, else the first good answer's.

        Raises:
            ProtocolError: ``width`` is not the model's (retried, never delivered).
        """
        if self.width is None:
            self.width = width
        elif width != self.width:
            raise ProtocolError(f"expected {self.width}-dimensional vectors, got {width}")

    def _use_float(self) -> None:
        if self.encoding_format != "float":
            logger.warning(
                "model %s does not honour base64; switching to float", self.options.model
            )
            self.encoding_format = "float"

    def _switch_to_float(self) -> NoReturn:
        """The model refused base64 (on evidence): use float from now on, and resend."""
        self._use_float()
        raise _EncodingSwitched from None

    @overload
    async def request(
        self,
        inputs: Input,
        *,
        priority: int = ...,
        deadline: Deadline | None = ...,
        encoding_format: EncodingFormat | None = ...,
        rows: Literal[False] = ...,
    ) -> Embeddings: ...
    @overload
    async def request(
        self,
        inputs: Input,
        *,
        priority: int = ...,
        deadline: Deadline | None = ...,
        encoding_format: EncodingFormat | None = ...,
        rows: bool,
    ) -> Embeddings | Rows: ...
    async def request(
        self,
        inputs: Input,
        *,
        priority: int = LIVE,
        deadline: Deadline | None = None,
        encoding_format: EncodingFormat | None = None,
        rows: bool = False,
    ) -> Embeddings | Rows:
        """One request, retried per the policy; no splitting.

        ``encoding_format`` forces an encoding (no fallback); ``None`` uses the
        Embedder's current one, falling back from base64 to float when needed.
        ``rows``: a base64 answer comes back as :class:`Rows` (one buffer per vector).

        Raises:
            APIStatusError, APIConnectionError, ProtocolError: the last error, once
                retrying cannot help or the budget is spent.
            BudgetExceededError: ``Limits.max_cost`` is reached.
        """
        counters = self._counters

        def on_retry(exc: BaseException, delay: float) -> None:
            counters.retries += 1
            if isinstance(exc, RateLimitError):
                # Pause everyone for what this request will actually wait (the server's
                # delay, or our backoff when it names none). A delay the policy will not
                # wait (past its budget or the callers' deadline) makes the request fail
                # at once instead, and pauses nobody: the pause never outlives a budget.
                self._scheduler.pause(delay)

        first_sent: list[float] = []
        created = self._clock.now()

        def wait_limit() -> float:
            """The latest time this request may wait for a slot through a 429 pause."""
            sent = first_sent[0] if first_sent else None
            return budget_end(self._retry, created, sent, deadline)

        while True:
            # The first attempt runs bare: most requests succeed at once, and tenacity's
            # loop is a reference cycle per request that would keep the batch (and every
            # caller's vector) alive until the garbage collector's next full pass.
            try:
                return await self._attempt(
                    inputs, priority, encoding_format, first_sent, wait_limit, rows
                )
            except _EncodingSwitched:
                continue  # resend at once in float, through a new slot (counted by limits)
            except Exception as exc:
                failed: BaseException | None = exc
            policy = retrying(
                self._retry,
                self._clock,
                created=created,
                deadline=deadline,
                started=lambda: first_sent[0] if first_sent else None,
                on_retry=on_retry,
            )
            try:
                async for attempt in policy:
                    with attempt:
                        if failed is not None:  # the first attempt's error: tenacity decides
                            error, failed = failed, None
                            raise error
                        return await self._attempt(
                            inputs, priority, encoding_format, first_sent, wait_limit, rows
                        )
            except _EncodingSwitched:
                continue
            raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _attempt(
        self,
        inputs: Input,
        priority: int,
        forced: EncodingFormat | None,
        first_sent: list[float],
        wait_limit: Callable[[], float],
        rows: bool = False,
    ) -> Embeddings | Rows:
        expected, texts = _shape(inputs)
        tokens = self._estimator.total(texts) if texts is not None else _token_count(inputs)
        counters = self._counters
        options = self.options
        async with self._scheduler.slot(tokens, priority, wait_limit) as slot:
            if not first_sent:
                first_sent.append(self._clock.now())
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
                try:
                    result = await decode_response_async(
                        raw.status,
                        raw.headers,
                        raw.content,
                        expected=expected,
                        encoding=encoding,
                        dimensions=options.dimensions,
                        rows=rows,
                    )
                except (APIStatusError, ProtocolError) as exc:
                    raise redact_secret(exc, self._secret)  # noqa: B904 - the same error
                vectors = result.vectors
                self._check_width(
                    len(vectors[0]) if isinstance(vectors, list) else vectors.shape[1]
                )
                if encoding == "base64":
                    self._empty_base64 = 0
                    if result.encoding == "float":
                        self._use_float()  # floats for base64: kept, and asked for from now
            except (BadRequestError, UnprocessableEntityError) as exc:
                counters.errors += 1
                if forced is None and encoding == "base64" and _names_encoding(exc.message):
                    self._switch_to_float()
                raise
            except EmptyData:
                counters.errors += 1
                if forced is None and encoding == "base64":
                    self._empty_base64 += 1
                    if self._empty_base64 >= _EMPTY_EVIDENCE:
                        self._switch_to_float()
                raise
            except Base64Unsupported:
                counters.errors += 1
                if forced is not None:
                    raise
                self._switch_to_float()
            except RateLimitError:
                counters.errors += 1
                counters.rate_limited += 1
                self._scheduler.on_rate_limited()
                raise
            except ProtocolError:
                counters.errors += 1
                if 200 <= raw.status < 300:
                    self._bill(billed_usage(raw.content), slot)  # refused, but paid for
                raise
            except Exception:
                counters.errors += 1
                raise
            usage = result.usage
            self._bill(usage, slot)  # within the slot: the spend is settled with its release
        self._scheduler.on_success()
        counters.inputs += expected
        counters.max_batch_size = max(counters.max_batch_size, expected)
        if texts is not None:
            self._estimator.calibrate(sum(map(len, texts)), usage.prompt_tokens)
        return result

    def _bill(self, usage: Usage | None, slot: Slot) -> None:
        """Count an answer's usage: in the stats and against the spending cap."""
        if usage is None:
            return
        counters = self._counters
        counters.prompt_tokens += int(usage.prompt_tokens)
        counters.total_tokens += int(usage.total_tokens)
        if usage.cost is not None:
            counters.cost += usage.cost
        slot.bill(usage.cost, int(usage.prompt_tokens))


def _names_encoding(message: str) -> bool:
    """Whether a 400/422's message is about the encoding (evidence base64 is refused)."""
    lowered = message.lower()
    return "base64" in lowered or "encoding_format" in lowered


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
