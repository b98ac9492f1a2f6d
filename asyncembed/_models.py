"""Wire structs: the JSON bodies of ``POST /embeddings``, as msgspec Structs.

msgspec is used for the wire only. Requests are encoded with ``omit_defaults`` so
that an unset field never reaches the server; responses tolerate unknown fields,
because OpenRouter adds keys (``provider``, ``cost_details``...) without notice.
"""

from typing import Any, Literal

import msgspec

from ._types import Input

__all__ = [
    "Availability",
    "EmbeddingItem",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "ErrorBody",
    "ErrorDetail",
    "MaxPrice",
    "Percentiles",
    "ProviderPreferences",
    "ProviderSort",
    "Usage",
]

_WIRE = {"kw_only": True, "omit_defaults": True, "frozen": True}


class _Checked(msgspec.Struct, **_WIRE):
    """A request struct whose fields are type-checked when it is built.

    msgspec checks types when decoding, not in ``__init__``; these structs are built
    by users, so a wrong value (``order="openai"``, ``zdr="yes"``) must fail here with
    the field's name, not reach the server as is.
    """

    def __post_init__(self) -> None:
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            try:
                msgspec.convert(msgspec.to_builtins(value), field.type)
            except (msgspec.ValidationError, TypeError):
                raise ValueError(
                    f"{type(self).__name__}.{field.name}: expected "
                    f"{_describe(field.type)}, got {value!r}"
                ) from None


def _describe(annotation: Any) -> str:
    """A user-facing name for a field's type: ``list[str]``, ``'allow' or 'deny'``..."""
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    origin = getattr(annotation, "__origin__", None)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if args and origin is not list:  # a union: name its members
        return " or ".join(_describe(a) for a in args)
    return getattr(annotation, "__name__", str(annotation)) if origin is None else str(annotation)


class MaxPrice(_Checked, **_WIRE):
    """Highest price a provider may charge, in USD (``prompt``/``completion`` per 1M tokens).

    Values are numbers or decimal strings, passed through unchanged.
    """

    prompt: float | str | None = None
    completion: float | str | None = None
    image: float | str | None = None
    audio: float | str | None = None
    request: float | str | None = None


class Percentiles(_Checked, **_WIRE):
    """Per-percentile thresholds for ``preferred_min_throughput`` / ``preferred_max_latency``."""

    p50: float | None = None
    p75: float | None = None
    p90: float | None = None
    p99: float | None = None


class ProviderSort(_Checked, **_WIRE):
    """The object form of ``provider.sort``: ``{"by": "price", "partition": "model"}``."""

    by: str
    partition: Literal["model", "none"] | None = None


class ProviderPreferences(_Checked, **_WIRE):
    """OpenRouter provider routing preferences (the request's ``provider`` object).

    Every field is optional; unset fields are not sent, so OpenRouter's defaults apply.

    Args:
        order: Provider slugs to try in order (e.g. ``["openai", "azure"]``).
        only: Allow-list of provider slugs.
        ignore: Deny-list of provider slugs.
        allow_fallbacks: Whether other providers may serve the request (default ``True``
            on the server).
        require_parameters: Only use providers that honour every parameter sent. Set it
            with ``dimensions`` so the parameter cannot be dropped silently.
        data_collection: ``"allow"`` or ``"deny"`` providers that store data.
        zdr: Zero-data-retention endpoints only.
        enforce_distillable_text: Only models whose output may be distilled.
        quantizations: Allowed quantizations (``"fp16"``, ``"int8"``...).
        sort: ``"price"``, ``"throughput"``, ``"latency"``, or a :class:`ProviderSort`.
        max_price: A :class:`MaxPrice` ceiling.
        preferred_min_throughput: Tokens/s, or :class:`Percentiles`.
        preferred_max_latency: Seconds, or :class:`Percentiles`.
    """

    order: list[str] | None = None
    only: list[str] | None = None
    ignore: list[str] | None = None
    allow_fallbacks: bool | None = None
    require_parameters: bool | None = None
    data_collection: Literal["allow", "deny"] | None = None
    zdr: bool | None = None
    enforce_distillable_text: bool | None = None
    quantizations: list[str] | None = None
    sort: str | ProviderSort | None = None
    max_price: MaxPrice | None = None
    preferred_min_throughput: float | Percentiles | None = None
    preferred_max_latency: float | Percentiles | None = None


class EmbeddingRequest(msgspec.Struct, **_WIRE):
    """The body of ``POST /embeddings``.

    ``input`` takes the four forms of the spec: a string, a list of strings, one list of
    token ids, or a list of token-id lists. Fields left at ``None`` are omitted.
    """

    input: Input
    model: str
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None
    input_type: str | None = None
    user: str | None = None
    provider: ProviderPreferences | None = None


class Usage(msgspec.Struct, kw_only=True, frozen=True):
    """Token counts and cost of one response. ``cost`` is in OpenRouter credits (USD)."""

    prompt_tokens: int | float = 0
    total_tokens: int | float = 0
    cost: float | None = None


class EmbeddingItem(msgspec.Struct, kw_only=True, frozen=True):
    """One vector of a response.

    ``embedding`` is decoded from base64 straight into ``bytes`` (raw little-endian
    float32), or kept as floats; some gateways send an object with numeric keys.
    """

    embedding: list[float] | bytes | dict[str, float]
    index: int | None = None
    object: str = "embedding"


class Availability(msgspec.Struct, kw_only=True, frozen=True):
    """OpenRouter's ``error.availability``: why a model was not served, and whether to retry."""

    code: str | None = None
    retryable: bool | None = None
    retry_after: float | None = None


class ErrorDetail(msgspec.Struct, kw_only=True, frozen=True):
    """The ``error`` object of an error envelope (also seen inside HTTP 200 bodies)."""

    code: int | str | None = None
    message: str = ""
    metadata: dict[str, Any] | None = None
    availability: Availability | None = None


class ErrorBody(msgspec.Struct, kw_only=True, frozen=True):
    """An error response: ``{"error": {...}}`` (OpenRouter/OpenAI) or ``{"detail": ...}``."""

    error: ErrorDetail | None = None
    detail: Any = None


class EmbeddingResponse(msgspec.Struct, kw_only=True, frozen=True):
    """A ``200`` body. ``error`` is set when the service reports an error inside the 200."""

    data: list[EmbeddingItem] = msgspec.field(default_factory=list)
    model: str = ""
    object: str = "list"
    id: str | None = None
    usage: Usage | None = None
    provider: str | None = None
    error: ErrorDetail | None = None
