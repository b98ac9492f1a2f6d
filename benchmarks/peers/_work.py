"""The batch work every no-socket coalescer does: decode one pre-built base64 body.

A body of ``n`` x 1536 vectors is built once per ``n`` (outside the timing), as a
server would send it; decoding it is one msgspec pass (base64 strings to ``bytes``)
and one ``np.frombuffer`` over the joined rows. Peers that take a batch function get
the matrix's rows; asyncembed gets the same body from its transport and decodes it
with its own codec.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
import numpy as np

from benchmarks.peers.decode import build_body

__all__ = ["DIMS", "batch_rows", "body"]

DIMS = 1536


class _Item(msgspec.Struct):
    embedding: bytes


class _Body(msgspec.Struct):
    data: list[_Item]


_DECODER = msgspec.json.Decoder(_Body)


@functools.cache
def body(n: int) -> bytes:
    """An OpenAI-shaped base64 response of ``n`` unit vectors (built once per ``n``)."""
    return build_body(n, DIMS, "base64")


def batch_rows(n: int) -> list[np.ndarray[Any, Any]]:
    """The batch work: decode the body of ``n`` vectors; one row per input."""
    data = _DECODER.decode(body(n)).data
    joined = bytearray().join([item.embedding for item in data])
    return list(np.frombuffer(joined, dtype="<f4").reshape(n, -1))
