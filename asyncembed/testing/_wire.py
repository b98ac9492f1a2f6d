"""Request validation and response bodies of the local server, as the real service shapes them.

The request body is decoded with msgspec into a lenient struct whose fields are
``Any``, then checked by hand, because ``input`` is a union of list types that msgspec
cannot decode directly, and because each mistake needs its own 400 message.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from ._vectors import MAX_DIMENSIONS, embed_block

__all__ = [
    "BadRequest",
    "ParsedRequest",
    "RequestBody",
    "embeddings_body",
    "error_body",
    "parse_request",
]

_STATUS_MESSAGES = {
    400: "Bad request",
    401: "No auth credentials found",
    402: "Insufficient credits. Add more using https://openrouter.ai/credits",
    403: "This model is not available in your region",
    404: "No endpoints found for this model",
    408: "Request timed out",
    413: "Payload too large",
    422: "Unprocessable entity",
    429: "Rate limit exceeded",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "Service temporarily unavailable",
    504: "Upstream timed out",
    524: "Edge network timed out",
    529: "Provider is overloaded",
}
_ERROR_TYPES = {
    400: "invalid_request",
    401: "authentication",
    402: "payment_required",
    408: "timeout",
    413: "invalid_request",
    422: "invalid_request",
    429: "rate_limit_exceeded",
    500: "server",
    502: "provider_unavailable",
    503: "provider_overloaded",
    504: "timeout",
    524: "timeout",
    529: "provider_overloaded",
}
_AVAILABILITY_CODES = {
    400: "model_not_found",
    403: "region_restricted",
    404: "no_endpoints",
    429: "capacity_exhausted",
}


class RequestBody(msgspec.Struct):
    """The fields the server reads; every value is checked after decoding."""

    model: Any = msgspec.UNSET
    input: Any = msgspec.UNSET
    encoding_format: Any = None
    dimensions: Any = None


class BadRequest(Exception):
    """A request the service answers with 400 (or ``status``)."""

    def __init__(
        self, message: str, *, status: int = 400, availability: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.availability = availability


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A valid request: the inputs, and how to answer them."""

    model: str
    items: list[str] | list[list[int]]
    encoding_format: str | None
    dimensions: int | None


_MAX_TOKEN_ID = 2**31 - 1  # vocabularies are far smaller; bigger ids are a client bug
_DECODER = msgspec.json.Decoder(RequestBody)
_ENCODER = msgspec.json.Encoder()


def parse_request(
    raw: bytes,
    *,
    models: Mapping[str, int] | None,
    max_inputs: int | None,
    reject_inputs: Collection[str],
) -> ParsedRequest:
    """Decode and validate a ``POST /embeddings`` body.

    Raises:
        BadRequest: For malformed JSON, a missing or mistyped field, an empty input,
            an unknown model, too many inputs, or a rejected input text.
    """
    try:
        body = _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid request body (expected a JSON object): {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"Invalid JSON in request body: {exc}") from None
    model = body.model
    if model is msgspec.UNSET:
        raise BadRequest("'model' is required")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string")
    if models is not None and model not in models:
        # The real service's words, then what this one serves (it has no catalogue page).
        served = ", ".join(sorted(models)) or "none"
        raise BadRequest(
            f"{model} is not a valid model ID (this local server serves: {served})",
            availability={"code": "model_not_found", "retryable": False},
        )
    if body.input is msgspec.UNSET:
        raise BadRequest("'input' is required")
    items = _parse_input(body.input)
    if max_inputs is not None and len(items) > max_inputs:
        raise BadRequest(f"Too many inputs: {len(items)}, the maximum is {max_inputs}")
    if reject_inputs and isinstance(items[0], str):
        for position, text in enumerate(items):
            if text in reject_inputs:
                raise BadRequest(f"input[{position}] was rejected by the provider")
    encoding_format = body.encoding_format
    if encoding_format is not None and encoding_format not in ("float", "base64"):
        raise BadRequest(
            f"'encoding_format' must be 'float' or 'base64', got {_short(encoding_format)}"
        )
    dimensions = body.dimensions
    if dimensions is not None and (
        type(dimensions) is not int or not 1 <= dimensions <= MAX_DIMENSIONS
    ):
        raise BadRequest(
            f"'dimensions' must be an integer in 1..{MAX_DIMENSIONS}, got {_short(dimensions)}"
        )
    return ParsedRequest(model, items, encoding_format, dimensions)


def _parse_input(value: Any) -> list[str] | list[list[int]]:
    if isinstance(value, str):
        if not value:
            raise BadRequest("'input' must not be an empty string")
        return [value]
    if not isinstance(value, list):
        raise BadRequest(
            "'input' must be a string, a list of strings, or a list of token ids "
            f"(or of token-id lists), got {type(value).__name__}"
        )
    if not value:
        raise BadRequest("'input' must not be an empty list")
    first = value[0]
    if isinstance(first, str):
        # C-level scans: fast even for thousands of texts.
        if not all(type(item) is str for item in value):
            raise BadRequest("'input' mixes strings with other types")
        if "" in value:
            raise BadRequest(f"input[{value.index('')}] must not be an empty string")
        return value
    if type(first) is int:
        _check_tokens(value, "input")
        return [value]
    if isinstance(first, list):
        for position, tokens in enumerate(value):
            if not isinstance(tokens, list):
                raise BadRequest("'input' mixes token-id lists with other types")
            if not tokens:
                raise BadRequest(f"input[{position}] must not be an empty token list")
            _check_tokens(tokens, f"input[{position}]")
        return value
    if isinstance(first, dict):
        raise BadRequest("multimodal input is not supported by the local server")
    raise BadRequest(f"'input' items must be strings or token ids, got {type(first).__name__}")


def _check_tokens(tokens: list[Any], where: str) -> None:
    if not all(type(token) is int for token in tokens):
        raise BadRequest(f"'{where}' must contain only integer token ids")
    if min(tokens) < 0 or max(tokens) > _MAX_TOKEN_ID:
        raise BadRequest(f"'{where}' token ids must be in 0..{_MAX_TOKEN_ID}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def error_body(
    status: int,
    message: str | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
    availability: Mapping[str, Any] | bool | None = None,
    retry_after: float | None = None,
    retryable: bool = False,
) -> dict[str, Any]:
    """OpenRouter's error envelope: ``{"error": {"code", "message", "metadata"}}``.

    Args:
        status: The code (equal to the HTTP status, except for errors inside a 200).
        message: The message; ``None`` uses a standard one for the status.
        metadata: ``error.metadata``; ``None`` adds ``{"error_type": ...}`` when known.
        availability: An ``error.availability`` object, or ``True`` for a standard one.
        retry_after: Copied into a standard ``availability`` object.
        retryable: Copied into a standard ``availability`` object.
    """
    if metadata is None and status in _ERROR_TYPES:
        metadata = {"error_type": _ERROR_TYPES[status]}
    error: dict[str, Any] = {
        "code": status,
        "message": message or _STATUS_MESSAGES.get(status, f"HTTP {status}"),
        "metadata": dict(metadata) if metadata is not None else None,
    }
    if availability is True:
        standard: dict[str, Any] = {
            "code": _AVAILABILITY_CODES.get(status, "temporarily_unavailable"),
            "retryable": retryable,
        }
        if retry_after is not None:
            standard["retry_after"] = retry_after
        error["availability"] = standard
    elif isinstance(availability, Mapping):
        error["availability"] = dict(availability)
    return {"error": error}


class _Item(msgspec.Struct):
    object: str
    embedding: Any  # list of floats, or bytes/memoryview that msgspec writes as base64
    index: int


class _Usage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int
    cost: float


class _Response(msgspec.Struct):
    id: str
    object: str
    model: str
    data: list[_Item]
    usage: _Usage


def embeddings_body(
    parsed: ParsedRequest,
    *,
    response_id: str,
    dimensions: int,
    base64: bool,
    empty: bool,
    fault: str | None,
    tokens: int,
    cost: float,
    rng: random.Random,
) -> bytes:
    """The JSON of a 200 answer, altered as the fault kind says.

    Args:
        parsed: The request.
        response_id: The body's ``id``.
        dimensions: The vector length.
        base64: Send base64 strings (raw little-endian float32) instead of float arrays.
        empty: Send ``data: []``.
        fault: ``"nan"``, ``"shuffled"``, ``"bad_index"``, ``"missing_item"`` alter the
            data; others do not.
        tokens: ``usage.prompt_tokens`` and ``usage.total_tokens``.
        cost: ``usage.cost``.
        rng: The seeded RNG that shuffles the data.
    """
    data = [] if empty else _items(parsed, dimensions, base64=base64, fault=fault, rng=rng)
    usage = _Usage(prompt_tokens=tokens, total_tokens=tokens, cost=cost)
    response = _Response(id=response_id, object="list", model=parsed.model, data=data, usage=usage)
    return _ENCODER.encode(response)


def _items(
    parsed: ParsedRequest, dims: int, *, base64: bool, fault: str | None, rng: random.Random
) -> list[_Item]:
    n = len(parsed.items)
    block = embed_block(parsed.model, parsed.items, dims)
    vectors: list[Any]
    if base64:
        if fault == "nan":
            block[0, 0] = np.nan
        # One buffer for the whole block, sliced per row: msgspec writes each as base64.
        raw = memoryview(block.astype("<f4", copy=False).tobytes())
        row = dims * 4
        vectors = [raw[i * row : (i + 1) * row] for i in range(n)]
    else:
        vectors = block.tolist()
        if fault == "nan":
            vectors[0][0] = None  # JSON has no NaN; a null is what gateways send
    items = [_Item(object="embedding", embedding=v, index=i) for i, v in enumerate(vectors)]
    if fault == "shuffled" and n > 1:
        order = list(range(n))
        rng.shuffle(order)
        if order == sorted(order):
            order = order[1:] + order[:1]
        items = [items[i] for i in order]
    elif fault == "bad_index":
        # A duplicate index, so the last one is missing (or out of range for one item).
        items[-1].index = items[0].index if n > 1 else 1
    elif fault == "missing_item":
        items.pop()
    return items
