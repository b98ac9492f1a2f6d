"""Bytes ↔ structs ↔ float32 matrices, and every check a good answer must pass.

Error answers become exceptions in ``_error_answers.py``; ``embed()``'s one-vector-per-input
form of a base64 answer is in ``_rows.py``.

One Encoder and one Decoder per type are built at import (msgspec perf-tips). base64
vectors stay ``bytes`` (msgspec decodes base64 itself) until one ``np.frombuffer`` over
the joined rows builds the matrix: about a fourteenth of the cost of float JSON.

Decoding holds the event loop (msgspec keeps the GIL, so a thread would not help).
A body over :data:`LARGE_BODY` is therefore decoded in steps: one quick pass that
leaves each vector as raw JSON (``msgspec.Raw``), then the vectors a chunk at a time,
and :func:`decode_response_async` yields to the loop between chunks.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

import anyio
import msgspec
import numpy as np

from ._error_answers import detail_error, error_in_200, excerpt, status_error
from ._exceptions import ProtocolError
from ._models import EmbeddingRequest, EmbeddingResponse, ErrorDetail
from ._models import Usage as Usage
from ._rows import _ROWS, Rows, _RowResponse, _rows
from ._types import EncodingFormat, Matrix

__all__ = [
    "LARGE_BODY",
    "Base64Unsupported",
    "Embeddings",
    "EmptyData",
    "Rows",
    "billed_usage",
    "decode_response",
    "decode_response_async",
    "encode_request",
]

LARGE_BODY = 4 << 20
"""Float bodies larger than this (bytes) are decoded in steps (see the module docstring).

base64 bodies get four times as much: they decode about four times faster per byte, and
stepping costs them more (so a default batch of 256 base64 vectors is never stepped).
"""
_CHUNK_BYTES = 1 << 20  # raw JSON per decoding step: a few ms of event-loop time


class _LazyItem(msgspec.Struct):
    embedding: msgspec.Raw
    index: int | None = None


class _LazyResponse(msgspec.Struct):
    data: list[_LazyItem] = msgspec.field(default_factory=list)
    model: str = ""
    id: str | None = None
    usage: Usage | None = None
    provider: str | None = None
    error: ErrorDetail | None = None


class _UsageOnly(msgspec.Struct):
    usage: Usage | None = None


_ENCODER = msgspec.json.Encoder()
_USAGE_ONLY = msgspec.json.Decoder(_UsageOnly)
_RESPONSE = msgspec.json.Decoder(EmbeddingResponse)


_LAZY = msgspec.json.Decoder(_LazyResponse)
_FLOAT_ROWS = msgspec.json.Decoder(list[list[float]])
_BASE64_ROWS = msgspec.json.Decoder(list[bytes])
_NO_USAGE = Usage()


class Base64Unsupported(ProtocolError):
    """Evidence that the model cannot answer base64: empty base64 strings.

    Internal signal: the Embedder switches the model to float and resends. A short or
    empty ``data`` list is no such evidence (it is a plain :class:`ProtocolError`), and
    float arrays in a base64 answer are decoded as they are (``Embeddings.encoding``).
    """


class EmptyData(ProtocolError):
    """A 200 with an empty ``data`` list. Retried; repeated for base64, it is evidence.

    One empty answer is no evidence that a model ignores base64 (a provider hiccup looks
    the same), but some OpenRouter models answer every base64 request so: the Sender
    switches to float after two in a row.
    """


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One decoded response.

    Attributes:
        vectors: float32 matrix, shape ``(n, d)``, rows in input order (placed by ``index``).
        model: The model that answered.
        usage: Token counts and cost (zeros when the server sent none).
        id: The response id, when sent.
        provider: The upstream provider, when OpenRouter names it.
        encoding: How the vectors came: ``"float"`` also when base64 was asked for and
            the model answered float arrays (some OpenRouter models do).
    """

    vectors: Matrix
    model: str
    usage: Usage
    id: str | None = None
    provider: str | None = None
    encoding: EncodingFormat = "float"


def encode_request(request: EmbeddingRequest) -> bytes:
    """Serialize a request body (unset fields omitted)."""
    return _ENCODER.encode(request)


def decode_response(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    expected: int,
    encoding: EncodingFormat,
    dimensions: int | None = None,
) -> Embeddings:
    """Turn one HTTP answer into :class:`Embeddings` or raise its typed error.

    Args:
        status: The HTTP status.
        headers: The response headers (case-insensitive mapping).
        content: The raw body.
        expected: How many inputs the request carried.
        encoding: The ``encoding_format`` that was requested.
        dimensions: The vector length the caller requires, or ``None``.

    Raises:
        APIStatusError: a non-2xx status, or an error body inside a 200 (by its code).
        Base64Unsupported: base64 was asked for and the vectors are empty strings.
        EmptyData: ``data`` is empty (a :class:`ProtocolError`).
        ProtocolError: a 200 body that is not JSON, or whose ``data`` does not cover the
            inputs exactly once, or has vectors of mixed length, wrong length or NaN/Inf.
    """
    steps = _decode(status, headers, content, expected, encoding, dimensions, rows=False)
    while (result := _step(steps)) is None:
        pass
    assert isinstance(result, Embeddings)
    return result


@overload
async def decode_response_async(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    expected: int,
    encoding: EncodingFormat,
    dimensions: int | None = None,
    rows: Literal[False] = False,
) -> Embeddings: ...
@overload
async def decode_response_async(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    expected: int,
    encoding: EncodingFormat,
    dimensions: int | None = None,
    rows: bool,
) -> Embeddings | Rows: ...
async def decode_response_async(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    expected: int,
    encoding: EncodingFormat,
    dimensions: int | None = None,
    rows: bool = False,
) -> Embeddings | Rows:
    """:func:`decode_response`, yielding to the event loop between the steps of a
    large body so that other coroutines are not blocked for its whole decode.

    With ``rows``, a base64 answer decoded in one go comes back as :class:`Rows` (a
    float answer, or a body large enough to be decoded in steps, is still one matrix).

    Raises:
        The errors of :func:`decode_response`.
    """
    steps = _decode(status, headers, content, expected, encoding, dimensions, rows=rows)
    while (result := _step(steps)) is None:  # a small body is done in the first step
        await anyio.lowlevel.checkpoint()
    return result


def billed_usage(content: bytes) -> Usage | None:
    """The ``usage`` of a 200 that was refused (short, NaN, another width...): servers
    bill such answers, so the spending cap must count them. ``None`` if it names none."""
    try:
        return _USAGE_ONLY.decode(content).usage
    except msgspec.DecodeError:
        return None


def _step(steps: Generator[None, None, Embeddings | Rows]) -> Embeddings | Rows | None:
    """Run the decode to its next pause; its result once it is done."""
    try:
        next(steps)
    except StopIteration as done:
        result: Embeddings | Rows = done.value
        return result
    return None


def _decode(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    expected: int,
    encoding: EncodingFormat,
    dimensions: int | None,
    *,
    rows: bool,
) -> Generator[None, None, Embeddings | Rows]:
    """The decode, as steps: it yields between chunks of a large body.

    With ``rows``, a base64 answer decoded in one go comes back as :class:`Rows`.
    """
    if not 200 <= status < 300:
        raise status_error(status, headers, content)
    try:
        decoder = _ROWS if rows else _RESPONSE
        body = (_LAZY if _stepwise(content, encoding) else decoder).decode(content)
    except msgspec.DecodeError as exc:
        error = error_in_200(content)
        if error is not None:
            raise detail_error(status, error, headers, None) from None
        raise ProtocolError(f"invalid response body ({exc}): {excerpt(content)}") from None
    if body.error is not None:
        raise detail_error(status, body.error, headers, body.id)
    if not body.data:
        raise EmptyData(f"response has 0 embeddings for {expected} inputs")
    if isinstance(body, _LazyResponse) and _raw_kinds(body) <= {b'"', b"["}:
        vectors = yield from _lazy_matrix(body, expected, encoding, dimensions)
        return _embeddings(body, vectors, "base64" if _raw_kinds(body) == {b'"'} else "float")
    if isinstance(body, _LazyResponse):  # odd vectors (objects...): decode in one go
        body = _RESPONSE.decode(content)
    data = body.data
    embeddings = [item.embedding for item in data]
    kinds = set(map(type, embeddings))
    if encoding == "base64" and kinds == {bytes} and not any(embeddings):
        raise Base64Unsupported("the model answered a base64 request with empty vectors")
    if len(data) != expected:
        raise ProtocolError(f"response has {len(data)} embeddings for {expected} inputs")
    ordered = _in_index_order(data, embeddings)
    if rows and kinds == {bytes}:
        return Rows(_rows(ordered, dimensions), body.model, body.usage or _NO_USAGE)
    matrix = _matrix(ordered, kinds, dimensions)
    return _embeddings(body, matrix, "base64" if kinds == {bytes} else "float")


def _embeddings(
    body: EmbeddingResponse | _LazyResponse | _RowResponse,
    vectors: Matrix,
    encoding: EncodingFormat,
) -> Embeddings:
    return Embeddings(
        vectors=vectors,
        model=body.model,
        usage=body.usage or _NO_USAGE,
        id=body.id,
        provider=body.provider,
        encoding=encoding,
    )


def _stepwise(content: bytes, encoding: EncodingFormat) -> bool:
    return len(content) > (LARGE_BODY * 4 if encoding == "base64" else LARGE_BODY)


def _lazy_matrix(
    body: _LazyResponse, expected: int, encoding: EncodingFormat, dimensions: int | None
) -> Generator[None, None, Matrix]:
    """The matrix of a large body, its raw vectors decoded a chunk at a time."""
    raws = [item.embedding for item in body.data]
    kinds = _raw_kinds(body)
    if encoding == "base64" and all(bytes(raw) == b'""' for raw in raws):
        raise Base64Unsupported("the model answered a base64 request with empty vectors")
    if len(raws) != expected:
        raise ProtocolError(f"response has {len(raws)} embeddings for {expected} inputs")
    if len(kinds) > 1:
        raise ProtocolError("response mixes base64 and float vectors")
    ordered: list[msgspec.Raw] = _in_index_order(body.data, raws)
    base64 = kinds == {b'"'}
    decoder = _BASE64_ROWS if base64 else _FLOAT_ROWS
    per_chunk = max(1, _CHUNK_BYTES // max(1, len(memoryview(ordered[0]))))
    rows: list[Any] = []
    blocks: list[Matrix] = []
    for start in range(0, len(ordered), per_chunk):
        chunk = b"[" + b",".join(ordered[start : start + per_chunk]) + b"]"
        try:
            decoded = decoder.decode(chunk)
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"response vectors cannot be decoded: {exc}") from None
        if base64:
            rows.extend(decoded)  # joined once at the end: one copy, one frombuffer
        else:
            blocks.append(_matrix(decoded, {list}, dimensions))
        yield
    if base64:
        return _matrix(rows, {bytes}, dimensions)
    if len({block.shape[1] for block in blocks}) > 1:
        raise ProtocolError("response vectors differ in length")
    return np.concatenate(blocks)


def _raw_kinds(body: _LazyResponse) -> set[bytes]:
    """The first byte of each raw vector: ``"`` (base64), ``[`` (floats), ``{``..."""
    return {memoryview(item.embedding)[:1].tobytes() for item in body.data}


def _in_index_order(data: list[Any], embeddings: list[Any]) -> list[Any]:
    """``embeddings`` (one per item of ``data``) placed by each item's ``index``."""
    indices = [item.index for item in data]
    n = len(data)
    if indices == list(range(n)) or indices.count(None) == n:
        return embeddings  # in order already, or no index at all: position is all there is
    ordered: list[Any] = [None] * n
    for i, embedding in zip(indices, embeddings, strict=True):
        if i is None or not 0 <= i < n or ordered[i] is not None:
            raise ProtocolError(
                f"response indices do not cover the {n} inputs exactly once: "
                f"{_short(sorted(i for i in indices if i is not None))}"
            )
        ordered[i] = embedding
    return ordered  # every slot was filled exactly once


def _matrix(rows: list[Any], kinds: set[type], dimensions: int | None) -> Matrix:
    try:
        if kinds == {bytes}:
            sizes = set(map(len, rows))
            if len(sizes) != 1:
                raise ProtocolError("response vectors differ in length")
            size = sizes.pop()
            if size % 4:
                raise ProtocolError(f"base64 vector of {size} bytes is not float32")
            # bytearray: one copy like bytes, but the matrix it backs is writable, as
            # every matrix handed to users is.
            joined = bytearray().join(rows)
            matrix = np.frombuffer(joined, dtype="<f4").reshape(len(rows), -1)
        elif bytes in kinds:
            raise ProtocolError("response mixes base64 and float vectors")
        else:
            if dict in kinds:
                rows = [_dict_to_list(e) if isinstance(e, dict) else e for e in rows]
            matrix = np.array(rows, dtype=np.float32)
    except ValueError as exc:
        raise ProtocolError(f"response vectors differ in length or type: {exc}") from None
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ProtocolError("response vectors are empty")
    if dimensions is not None and matrix.shape[1] != dimensions:
        raise ProtocolError(f"expected {dimensions}-dimensional vectors, got {matrix.shape[1]}")
    if not np.isfinite(matrix).all():
        raise ProtocolError("response vectors contain NaN or infinity")
    return matrix.astype(np.float32, copy=False)


def _dict_to_list(embedding: Any) -> list[float]:
    # Some gateways send {"0": 0.1, "1": 0.2, ...} instead of an array.
    try:
        return [embedding[k] for k in sorted(embedding, key=int)]
    except (TypeError, ValueError):
        raise ProtocolError("embedding object has non-numeric keys") from None


def _short(values: list[int], limit: int = 12) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return f"[{shown}{', …' if len(values) > limit else ''}]"
