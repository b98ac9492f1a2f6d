"""What a batch comes back as: vectors by input, and the errors of the inputs that failed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ._exceptions import ProtocolError
from ._types import Matrix, Vector

__all__ = ["Outcome"]


@dataclass(slots=True)
class Outcome:
    """A batch's result: row ``i`` of ``vectors`` is input ``i``, unless ``i`` is in ``errors``.

    ``vectors`` is ``None`` when every input failed, or when the vectors are ``rows``
    (asked for by :meth:`BatchRunner.run`'s ``rows``; never with errors).
    """

    vectors: Matrix | None
    errors: dict[int, BaseException] = field(default_factory=dict)
    rows: list[Vector] | None = None
    """Instead of ``vectors``: one vector per input, each its own buffer (see ``Rows``)."""

    @staticmethod
    def failed(size: int, exc: BaseException) -> Outcome:
        """Every one of ``size`` inputs failed with ``exc``."""
        return Outcome(None, dict.fromkeys(range(size), exc))

    @staticmethod
    def join(parts: Sequence[tuple[int, Outcome]]) -> Outcome:
        """One outcome from consecutive ``(size, outcome)`` parts.

        Raises:
            ProtocolError: the parts' vectors differ in length.
        """
        dims = {p.vectors.shape[1] for _, p in parts if p.vectors is not None}
        if len(dims) > 1:
            raise ProtocolError(f"vectors of one batch came back with lengths {sorted(dims)}")
        errors: dict[int, BaseException] = {}
        offset = 0
        for size, part in parts:
            errors.update({offset + i: exc for i, exc in part.errors.items()})
            offset += size
        if not dims:
            return Outcome(None, errors)
        dim = dims.pop()
        blocks = [
            p.vectors if p.vectors is not None else np.zeros((n, dim), np.float32) for n, p in parts
        ]
        return Outcome(np.concatenate(blocks), errors)
