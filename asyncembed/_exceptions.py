"""The exception tree, the HTTP status → class map, and Retry-After parsing.

Over 400 lines on purpose: one tree in one file (mostly docstrings), so that every
error a user can catch is found in one place.

Every exception the package raises derives from :class:`AsyncEmbedError`::

    AsyncEmbedError
    ├── APIConnectionError              could not reach the server, or the body was cut
    │   └── APITimeoutError             (also a TimeoutError)
    ├── APIStatusError                  the server answered with an error
    │   ├── BadRequestError             400
    │   ├── AuthenticationError         401
    │   ├── PaymentRequiredError        402
    │   ├── PermissionDeniedError       403
    │   ├── NotFoundError               404
    │   ├── RequestTimeoutError         408
    │   ├── PayloadTooLargeError        413
    │   ├── UnprocessableEntityError    422
    │   ├── RateLimitError              429
    │   ├── InternalServerError         500 (and other 5xx without a class)
    │   ├── BadGatewayError             502
    │   ├── ServiceUnavailableError     503
    │   ├── GatewayTimeoutError         504, 524
    │   └── ProviderOverloadedError     529
    ├── ProtocolError                   a 200 whose body cannot be trusted
    ├── InvalidInputError               bad input at the call site (also a ValueError)
    │   └── InputTooLongError
    ├── BudgetExceededError             the Embedder's max_cost was reached
    ├── PartialResultError              some inputs of embed_many()/stream() failed
    ├── LimiterUnavailableError         the shared limiter (Redis) cannot be reached
    ├── EmbedderClosedError             the Embedder is closed (also a RuntimeError)
    ├── MissingExtraError               an optional dependency is missing (also an ImportError)
    │  the files of the cache and of the CLI's bulk job (all also ValueError but the last):
    ├── StoreError                      a cache or job-state file is unusable
    │   └── JobMismatchError            a state file records a different job
    ├── InputFileError                  the corpus is missing, unreadable or malformed
    ├── OutputFileError                 the output cannot be written where asked, or resumed
    └── JobIOError                      writing the output or the state failed (an OSError)

Wrong *types* at the call site raise the builtin :class:`TypeError`. No message
ever contains the API key: messages are built from the server's body, never from
request headers.
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncEmbedError",
    "AuthenticationError",
    "BadGatewayError",
    "BadRequestError",
    "BudgetExceededError",
    "EmbedderClosedError",
    "GatewayTimeoutError",
    "InputFileError",
    "InputTooLongError",
    "InternalServerError",
    "InvalidInputError",
    "JobIOError",
    "JobMismatchError",
    "LimiterUnavailableError",
    "MissingExtraError",
    "NotFoundError",
    "OutputFileError",
    "PayloadTooLargeError",
    "PaymentRequiredError",
    "PartialResultError",
    "PermissionDeniedError",
    "ProtocolError",
    "ProviderOverloadedError",
    "RateLimitError",
    "RequestTimeoutError",
    "ServiceUnavailableError",
    "StoreError",
    "UnprocessableEntityError",
    "error_for_status",
    "parse_retry_after",
]


class AsyncEmbedError(Exception):
    """Base class of every error raised by asyncembed.

    Every subclass pickles with its attributes (to cross a process, e.g. from a Ray
    worker or a process pool), although their constructors take keyword-only arguments.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _restore, (type(self), self.args, self.__dict__)


class APIConnectionError(AsyncEmbedError):
    """The request did not get a complete answer: refused, reset, DNS, or a truncated body.

    Retried by default; a server never reached (``unreachable``) only for
    ``Retry.unreachable_timeout``.

    Attributes:
        unreachable: No connection could be made (refused, unknown host, TLS failure)
            to a server that has not answered this client before: most likely a wrong
            URL or a server that is not running, rather than a passing fault.
    """

    unreachable: bool = False

    retryable = True


class APITimeoutError(APIConnectionError, TimeoutError):
    """The request, or a caller's own deadline, timed out."""


class ProtocolError(AsyncEmbedError):
    """An HTTP 200 whose body cannot be trusted.

    Examples: not JSON, ``data`` missing, short, or with duplicate/out-of-range
    ``index`` values, vectors of another length than the model's or with NaN/Inf.
    Retried like a 502, within the same attempts and time budget.
    """

    retryable = True


class InvalidInputError(AsyncEmbedError, ValueError):
    """An input was rejected at the call site (empty text, empty list...). Not retried.

    Attributes:
        index: The input's position in the list or stream, or ``None`` for a single
            text.
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class InputTooLongError(InvalidInputError):
    """An input's estimated token count is over ``Batching.max_input_tokens``."""


class BudgetExceededError(AsyncEmbedError):
    """``Limits.max_cost`` was reached: no new request is sent by this Embedder."""


class PartialResultError(AsyncEmbedError):
    """Some inputs of an ``embed_many()`` (or a ``stream()`` block) failed, others did not.

    Raised once every batch has finished (each retried within its own budget), so that
    nothing paid for is thrown away: retry only ``failed``. Its ``__cause__`` is the
    first failure.

    Attributes:
        vectors: float32 matrix, shape ``(n, d)``, in input order (row ``p - start``
            holds position ``p``); the rows of failed inputs are NaN.
        failed: The positions of the inputs that failed, ascending (in a stream,
            positions in the whole stream).
        errors: The error of each failed position.
        start: The position of the first input in the whole stream (0 for embed_many).
    """

    def __init__(
        self,
        message: str,
        *,
        vectors: Any,
        errors: Mapping[int, BaseException],
        start: int = 0,
    ) -> None:
        super().__init__(message)
        self.vectors = vectors
        self.errors: dict[int, BaseException] = dict(sorted(errors.items()))
        self.failed: list[int] = list(self.errors)
        self.start = start


class LimiterUnavailableError(AsyncEmbedError):
    """The shared limiter cannot be reached (e.g. Redis is down). Not retried.

    The limiter fails closed: no request is sent without the shared budget's consent,
    so workers never exceed the account's limits or the spending cap because their
    limiter is down. Requests already in flight finish; new ones fail at once with
    this error until the limiter is back (no restart needed).
    """


class EmbedderClosedError(AsyncEmbedError, RuntimeError):
    """The Embedder is not open (never entered, or already closed)."""


class StoreError(AsyncEmbedError, ValueError):
    """A state or cache file is unusable (missing folder, not an asyncembed database), or
    the job state is misused (progress recorded before ``begin()``, or going backwards)."""


class JobMismatchError(StoreError):
    """The state file records a different job (input, model, output...): not resumed."""


class InputFileError(AsyncEmbedError, ValueError):
    """The input corpus cannot be read: missing, undecodable, malformed or with an empty text.

    The message is one line naming the file and, when known, the 1-based line or record
    number, e.g. ``corpus.txt: line 3: empty text``.

    Attributes:
        path: The input file.
        line: The 1-based line (text, JSONL, CSV) or record (Parquet) number, or ``None``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        message: str,
        *,
        line: int | None = None,
        unit: str = "line",
    ) -> None:
        self.path = Path(path)
        self.line = line
        where = f"{self.path}: " if line is None else f"{self.path}: {unit} {line}: "
        super().__init__(where + message)


class OutputFileError(AsyncEmbedError, ValueError):
    """The output cannot be written where asked (missing folder, unknown suffix...) or resumed.

    Attributes:
        path: The output path the user asked for.
    """

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


class JobIOError(AsyncEmbedError, OSError):
    """Writing the output or recording progress failed (a full disk, an I/O error).

    What was recorded stays consistent (the output is flushed before its rows are
    recorded), so the same command resumes once the cause is fixed.

    Attributes:
        path: The file that could not be written.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        super().__init__(
            f"{self.path}: cannot write ({reason}); fix that (free some space?), then run "
            "the same command again to resume"
        )


class MissingExtraError(AsyncEmbedError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class APIStatusError(AsyncEmbedError):
    """The server answered with an error status (or an error body inside a 200).

    Attributes:
        status: The HTTP status, or the body's ``error.code`` for an error inside a 200.
        message: The server's message, as sent.
        metadata: ``error.metadata`` (provider name, raw upstream error...), or ``{}``.
        request_id: The response's request id header or body ``id``, when known.
        retry_after: The delay in seconds the server asked for, or ``None``.
        retryable: Whether asyncembed retries this error.
    """

    status_code: int = 0
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.status = self.status_code if status is None else status
        self.message = message
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.request_id = request_id
        self.retry_after = retry_after
        if retryable is not None:
            self.retryable = retryable
        super().__init__(f"{self.status} {message}" if message else str(self.status))


class BadRequestError(APIStatusError):
    """400: the request (or one input in it) is invalid. Not retried; batches are bisected."""

    status_code = 400


class AuthenticationError(APIStatusError):
    """401: the API key is missing or invalid. Not retried."""

    status_code = 401


class PaymentRequiredError(APIStatusError):
    """402: the account or key is out of credits. Not retried: add credits."""

    status_code = 402


class PermissionDeniedError(APIStatusError):
    """403: the key may not use this model or region. Not retried."""

    status_code = 403


class NotFoundError(APIStatusError):
    """404: unknown model or no endpoint serves it. Not retried."""

    status_code = 404


class RequestTimeoutError(APIStatusError):
    """408: the server timed out waiting. Retried."""

    status_code = 408
    retryable = True


class PayloadTooLargeError(APIStatusError):
    """413: the request body is too large. Not retried; batches are bisected."""

    status_code = 413


class UnprocessableEntityError(APIStatusError):
    """422: the request is well-formed but rejected. Not retried; batches are bisected."""

    status_code = 422


class RateLimitError(APIStatusError):
    """429: rate limited. Retried after ``retry_after`` seconds, pausing all dispatch."""

    status_code = 429
    retryable = True


class InternalServerError(APIStatusError):
    """500, or another 5xx without its own class. Retried."""

    status_code = 500
    retryable = True


class BadGatewayError(APIStatusError):
    """502: the upstream provider failed. Retried."""

    status_code = 502
    retryable = True


class ServiceUnavailableError(APIStatusError):
    """503: no provider available right now. Retried."""

    status_code = 503
    retryable = True


class GatewayTimeoutError(APIStatusError):
    """504 or 524: the upstream timed out. Retried."""

    status_code = 504
    retryable = True


class ProviderOverloadedError(APIStatusError):
    """529: the provider is overloaded. Retried."""

    status_code = 529
    retryable = True


_BY_STATUS: dict[int, type[APIStatusError]] = {
    cls.status_code: cls
    for cls in (
        BadRequestError,
        AuthenticationError,
        PaymentRequiredError,
        PermissionDeniedError,
        NotFoundError,
        RequestTimeoutError,
        PayloadTooLargeError,
        UnprocessableEntityError,
        RateLimitError,
        InternalServerError,
        BadGatewayError,
        ServiceUnavailableError,
        GatewayTimeoutError,
        ProviderOverloadedError,
    )
}
_BY_STATUS[524] = GatewayTimeoutError

_HINTS = {
    401: (
        " (check the API key: Embedder(api_key=...);"
        " $OPENROUTER_API_KEY is sent only to openrouter.ai)"
    ),
    402: " (out of credits: add credits or raise the key's limit; retrying will not help)",
}


def redact_secret(exc: BaseException, secret: str | None) -> BaseException:
    """``exc`` with ``secret`` blanked out of its message and metadata, in place.

    Servers echo the ``Authorization`` header in error texts, plainly or JSON-escaped:
    the decoded message and metadata are where either surfaces. Keys under 8 characters
    are not searched for: they cannot be told from ordinary text, and no real key is
    so short.
    """
    if not secret or len(secret) < 8:
        return exc
    mark = "[redacted]"
    exc.args = tuple(a.replace(secret, mark) if isinstance(a, str) else a for a in exc.args)
    if isinstance(exc, APIStatusError):
        exc.message = exc.message.replace(secret, mark)
        raw = msgspec.json.encode(exc.metadata)
        if secret.encode() in raw:
            exc.metadata = msgspec.json.decode(raw.replace(secret.encode(), mark.encode()))
    return exc


def error_for_status(
    status: int,
    message: str,
    *,
    metadata: Mapping[str, Any] | None = None,
    request_id: str | None = None,
    retry_after: float | None = None,
    retryable: bool | None = None,
) -> APIStatusError:
    """Build the typed exception for an HTTP status (or an error code inside a 200).

    Unknown 5xx statuses become :class:`InternalServerError` (retried); other unknown
    statuses become a plain, non-retried :class:`APIStatusError`.
    """
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InternalServerError if 500 <= status < 600 else APIStatusError
    return cls(
        message + _HINTS.get(status, ""),
        status=status,
        metadata=metadata,
        request_id=request_id,
        retry_after=retry_after,
        retryable=retryable,
    )


def parse_retry_after(
    headers: Mapping[str, str], *, body_delay: float | None = None, now: float | None = None
) -> float | None:
    """The delay, in seconds, a response asks for; ``None`` if it names none.

    Looks, in order, at ``retry-after-ms``, ``Retry-After`` (seconds or an HTTP date),
    the body's ``error.availability.retry_after`` (``body_delay``), and
    ``X-RateLimit-Reset`` (epoch milliseconds; epoch seconds are accepted too).
    ``headers`` must be case-insensitive (aiohttp's are) or use canonical names.
    ``now`` is the wall-clock time in epoch seconds (default ``time.time()``).
    """
    wall = time.time() if now is None else now
    ms = _number(headers.get("retry-after-ms"))
    if ms is not None:
        return max(0.0, ms / 1000.0)
    raw = headers.get("Retry-After") or headers.get("retry-after")
    if raw:
        seconds = _number(raw)
        if seconds is not None:
            return max(0.0, seconds)
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            return max(0.0, when.timestamp() - wall)
    if body_delay is not None and body_delay >= 0:
        return float(body_delay)
    reset = _number(headers.get("X-RateLimit-Reset") or headers.get("x-ratelimit-reset"))
    if reset is not None:
        # OpenRouter sends epoch milliseconds; a value that small is epoch seconds.
        epoch = reset / 1000.0 if reset > 1e11 else reset
        return max(0.0, epoch - wall)
    return None


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def _restore(cls: type[AsyncEmbedError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    """Unpickle an error without calling its (keyword-only) constructor."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc
