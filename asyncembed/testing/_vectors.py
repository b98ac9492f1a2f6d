"""Deterministic embeddings: the same (model, input) always gives the same unit vector.

Each input is hashed once (BLAKE2b, 8 bytes) into a 64-bit seed; component ``j`` of
its vector is a 32-bit integer hash of ``(seed, j)`` (two rounds of the "lowbias32"
mixer by Chris Wellons), so a whole ``(n, d)`` block is built with a handful of
vectorised numpy operations, about 1 ms for 256 x 1536 values.

Components are 16-bit integers before scaling, so the sum of squares is exact in
float64 whatever the summation order: a row is bit-for-bit identical whether it is
computed alone (:func:`expected_vector`) or inside a batch. Component ``j`` does not
depend on the requested dimension, so a shorter vector is a renormalised prefix of a
longer one (as with OpenAI's ``dimensions`` parameter).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from .._types import Matrix, Vector

__all__ = ["MAX_DIMENSIONS", "count_tokens", "embed_block", "expected_vector"]

MAX_DIMENSIONS = 65536
"""The largest vector dimension the local server produces."""

# Golden-ratio spaced counters: distinct, well spread inputs for the mixer.
_COUNTERS = np.arange(1, MAX_DIMENSIONS + 1, dtype=np.uint32) * np.uint32(0x9E3779B9)
_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_S15 = np.uint32(15)
_S16 = np.uint32(16)
_S32 = np.uint64(32)


def _seed_bytes(model: str, item: str | Sequence[int]) -> bytes:
    # Strings and token arrays get different tags, so "1" and [1] differ.
    if isinstance(item, str):
        payload = b"s" + item.encode("utf-8", "surrogatepass")
    else:
        payload = b"t" + np.asarray(item, dtype="<i8").tobytes()
    return hashlib.blake2b(
        model.encode("utf-8", "surrogatepass") + b"\x00" + payload, digest_size=8
    ).digest()


def embed_block(
    model: str, items: Sequence[str] | Sequence[Sequence[int]], dimensions: int
) -> Matrix:
    """The vectors of several inputs, one float32 unit-norm row per input.

    Args:
        model: The model name; part of the seed, so models give different vectors.
        items: Texts, or token-id arrays.
        dimensions: The length of each vector, 1 to :data:`MAX_DIMENSIONS`.

    Returns:
        A C-contiguous float32 array of shape ``(len(items), dimensions)``.

    Raises:
        ValueError: If ``dimensions`` is out of range.
    """
    if not 1 <= dimensions <= MAX_DIMENSIONS:
        raise ValueError(f"dimensions must be in 1..{MAX_DIMENSIONS}, got {dimensions}")
    seeds = np.frombuffer(b"".join([_seed_bytes(model, item) for item in items]), dtype="<u8")
    lo = seeds.astype(np.uint32)
    hi = (seeds >> _S32).astype(np.uint32)
    z = lo[:, None] ^ _COUNTERS[None, :dimensions]
    z ^= z >> _S16
    z *= _M1
    z ^= hi[:, None]
    z ^= z >> _S15
    z *= _M2
    z ^= z >> _S16
    block = (z.view(np.int32) >> np.int32(16)).astype(np.float32)
    # Exact: at most 65536 squares of 16-bit integers, far below 2**53.
    squares = np.einsum("ij,ij->i", block, block, dtype=np.float64)
    # An all-zero row is possible in theory only for tiny dimensions; keep it finite.
    squares[squares == 0.0] = 1.0
    block *= (1.0 / np.sqrt(squares)).astype(np.float32)[:, None]
    return block


def expected_vector(model: str, text: str | Sequence[int], dimensions: int) -> Vector:
    """The vector the local server returns for one input.

    Use it to check that a client handed each caller the vector of its own text.

    Args:
        model: The model name sent in the request.
        text: The input text, or one token-id array.
        dimensions: The vector length: the request's ``dimensions`` if it sent one,
            else the model's configured dimension.

    Returns:
        A float32 unit-norm vector of shape ``(dimensions,)``.

    Raises:
        ValueError: If ``dimensions`` is out of range.
    """
    block = embed_block(model, [text] if isinstance(text, str) else [list(text)], dimensions)
    vector: Vector = block[0]
    return vector


def count_tokens(items: Sequence[str] | Sequence[Sequence[int]]) -> int:
    """The local server's token count: ``max(1, len(text) // 4)`` per text, ``len`` per token array.

    Args:
        items: Texts, or token-id arrays (not mixed).

    Returns:
        The total number of tokens.
    """
    if not items:
        return 0
    if isinstance(items[0], str):
        return sum([max(1, len(text) // 4) for text in items])
    return sum(map(len, items))
