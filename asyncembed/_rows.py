"""Base64 answers as one vector per input, each in its own writable buffer.

The coalescing path (``embed()``) hands every caller its own vector: each base64
string is decoded to ``bytes`` and copied once into an array that owns its data. No
matrix is joined from the rows (a fresh block per batch, whose pages are faulted in
every time), and no vector is a view of a buffer: numpy holds a buffer it did not
allocate through a ``memoryview`` (two objects the garbage collector tracks, for as
long as the caller keeps the vector), while an owning array is invisible to it. The
checks are those of ``_codec._matrix``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from ._exceptions import ProtocolError
from ._models import ErrorDetail, Usage
from ._types import EncodingFormat, Matrix, Vector

__all__ = ["_ROWS", "Rows", "_RowResponse", "_rows"]


@dataclass(frozen=True, slots=True)
class Rows:
    """A decoded base64 answer as one vector per input, each in its own writable buffer.

    The coalescing path's form: each caller gets its row as it is, so no row pins the
    others (as a view of one matrix would) and none is copied twice. Nothing joins the
    rows into one large block, whose fresh pages would be faulted in on every batch.

    Attributes:
        vectors: float32 vectors, shape ``(d,)`` each, in input order.
        model: The model that answered.
        usage: Token counts and cost.
        encoding: Always ``"base64"``.
    """

    vectors: list[Vector]
    model: str
    usage: Usage
    encoding: EncodingFormat = "base64"


class _RowItem(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    # EmbeddingItem, with the struct not tracked by the collector (no field refers back).
    embedding: list[float] | bytes | dict[str, float]
    index: int | None = None


class _RowResponse(msgspec.Struct, kw_only=True, frozen=True):
    data: list[_RowItem] = msgspec.field(default_factory=list)
    model: str = ""
    id: str | None = None
    usage: Usage | None = None
    provider: str | None = None
    error: ErrorDetail | None = None


_ROWS = msgspec.json.Decoder(_RowResponse)


def _rows(raw: list[bytes], dimensions: int | None) -> list[Vector]:
    """One writable float32 vector per base64 row, checked as :func:`_matrix` checks."""
    sizes = set(map(len, raw))
    if len(sizes) != 1:
        raise ProtocolError("response vectors differ in length")
    size = sizes.pop()
    if size % 4:
        raise ProtocolError(f"base64 vector of {size} bytes is not float32")
    if size == 0:
        raise ProtocolError("response vectors are empty")
    width = size // 4
    if dimensions is not None and width != dimensions:
        raise ProtocolError(f"expected {dimensions}-dimensional vectors, got {width}")
    frombuffer, f32 = np.frombuffer, _F32
    # .copy(): an array that owns its data (see the module docstring).
    vectors: list[Vector] = [frombuffer(row, f32).copy() for row in raw]
    flat, finite = _scratch(len(raw) * width)
    np.concatenate(vectors, out=flat)
    if not np.isfinite(flat, out=finite).all():
        raise ProtocolError("response vectors contain NaN or infinity")
    return vectors


_F32 = np.dtype("<f4")
_SCRATCH = threading.local()
_SCRATCH_KEPT = 1 << 20  # floats: up to 4 MB (a 256 x 3072 batch) is kept for reuse


def _scratch(size: int) -> tuple[Matrix, Any]:
    """Float32 and bool buffers of ``size`` for the finiteness check, reused per thread.

    Reused because a fresh block of this size comes from ``mmap`` each time (glibc's
    threshold), and faulting its pages in cost more than the check itself.
    """
    flat: Matrix | None = getattr(_SCRATCH, "flat", None)
    if flat is not None and flat.size >= size:
        return flat[:size], _SCRATCH.finite[:size]
    flat, finite = np.empty(size, np.float32), np.empty(size, np.bool_)
    if size <= _SCRATCH_KEPT:
        _SCRATCH.flat, _SCRATCH.finite = flat, finite
    return flat, finite
