"""The rows of a finished ``.npy`` output nearest to a query vector (``embed --query``)."""

from __future__ import annotations

import os

import numpy as np

from .._types import Vector
from ._formats import open_reader

__all__ = ["nearest_rows", "texts_at"]

_STEP = 65_536  # rows scored at a time: memory bounded by the step, not the output


def nearest_rows(
    output: str | os.PathLike[str], query: Vector, *, k: int = 3
) -> list[tuple[int, float]]:
    """The ``k`` rows of ``output`` with the highest cosine similarity to ``query``.

    Args:
        output: A ``.npy`` file of shape ``(rows, dim)`` (memory-mapped, read in steps).
        query: A vector of length ``dim``.
        k: How many rows to return.

    Returns:
        ``(row, score)`` pairs, best first (ties: the lower row first).
    """
    vector = np.asarray(query, dtype=np.float64)
    matrix = np.load(output, mmap_mode="r")
    top: list[tuple[float, int]] = []
    for start in range(0, len(matrix), _STEP):
        block = np.asarray(matrix[start : start + _STEP], dtype=np.float64)
        norms = np.linalg.norm(block, axis=1) * (np.linalg.norm(vector) or 1.0)
        scores = block @ vector / np.where(norms == 0, 1.0, norms)
        top.extend((float(scores[i]), start + int(i)) for i in np.argsort(-scores)[:k])
        top = sorted(top, key=lambda pair: (-pair[0], pair[1]))[:k]
    return [(row, score) for score, row in top]


def texts_at(
    input: str | os.PathLike[str], rows: set[int], *, field: str | None, id_field: str | None
) -> dict[int, str]:
    """The texts of the corpus at ``rows`` (0-based record numbers), reading no further.

    Raises:
        InputFileError: The corpus cannot be read.
    """
    found: dict[int, str] = {}
    if not rows:
        return found
    reader = open_reader(input, field=field, id_field=id_field)
    for row, (_, text) in enumerate(reader.records()):
        if row in rows:
            found[row] = text
            if len(found) == len(rows):
                break
    return found
