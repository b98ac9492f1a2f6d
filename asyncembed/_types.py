"""Type aliases shared across modules."""

from __future__ import annotations

from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = ["EncodingFormat", "Input", "Matrix", "Vector"]

Input: TypeAlias = str | list[str] | list[int] | list[list[int]]
"""What the API's ``input`` field accepts: text(s) or token-id list(s)."""

EncodingFormat: TypeAlias = Literal["float", "base64"]

Vector: TypeAlias = npt.NDArray[np.float32]
"""One embedding: float32, shape ``(d,)``."""

Matrix: TypeAlias = npt.NDArray[np.float32]
"""Several embeddings: float32, shape ``(n, d)``, one row per input in input order."""
